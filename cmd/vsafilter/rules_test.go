package main

import (
	"fmt"
	"testing"
)

// mustConfig parses a configuration written for a test.
func mustConfig(t testing.TB, doc string) *config {
	t.Helper()
	cfg, err := parseConfig("test.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func mustPacket(t testing.TB, frame []byte) *packet {
	t.Helper()
	p := new(packet)
	if why := parsePacket(frame, p); why != parsedOK {
		t.Fatalf("test frame malformed: %v", why)
	}
	return p
}

func TestRuleMatching(t *testing.T) {
	v4udp := func(src, dst string, sport, dport uint16) []byte {
		return eth(etherTypeIPv4, ipv4(protoUDP, src, dst, udp(sport, dport, []byte("x"))))
	}
	v6tcp := func(src, dst string, sport, dport uint16) []byte {
		return eth(etherTypeIPv6, ipv6(protoTCP, src, dst, tcp(sport, dport, nil)))
	}
	ping4 := eth(etherTypeIPv4, ipv4(protoICMP, "10.0.0.1", "10.0.0.2", icmp(8, 0, nil)))
	reply4 := eth(etherTypeIPv4, ipv4(protoICMP, "10.0.0.2", "10.0.0.1", icmp(0, 0, nil)))
	unreach4 := eth(etherTypeIPv4, ipv4(protoICMP, "10.0.0.2", "10.0.0.1", icmp(3, 3, nil)))
	ping6 := eth(etherTypeIPv6, ipv6(protoICMPv6, "fd00::1", "fd00::2", icmp(128, 0, nil)))
	arp := eth(0x0806, make([]byte, 28))
	frag4 := eth(etherTypeIPv4, ipv4Frag(protoUDP, "10.0.0.1", "10.0.0.2", 100, []byte("tail")))

	tests := []struct {
		name  string
		rule  string
		frame []byte
		want  bool
	}{
		{"empty rule matches IP", ``, v4udp("10.0.0.1", "10.0.0.2", 1, 2), true},
		{"empty rule matches ARP", ``, arp, true},
		{"proto matches", `proto = "udp"`, v4udp("10.0.0.1", "10.0.0.2", 1, 2), true},
		{"proto differs", `proto = "tcp"`, v4udp("10.0.0.1", "10.0.0.2", 1, 2), false},
		{"proto never matches ARP", `proto = "udp"`, arp, false},
		{"v4 src in CIDR", `src = "10.0.0.0/8"`, v4udp("10.9.8.7", "1.1.1.1", 1, 2), true},
		{"v4 src outside CIDR", `src = "10.0.0.0/8"`, v4udp("11.0.0.1", "1.1.1.1", 1, 2), false},
		{"v4 CIDR list, second matches", `dst = ["192.168.0.0/16", "1.1.1.1"]`, v4udp("10.0.0.1", "1.1.1.1", 1, 2), true},
		{"v6 src in CIDR", `src = "fd00::/8"`, v6tcp("fd12::1", "2001:db8::1", 1, 2), true},
		{"v6 CIDR does not match v4", `src = "::/0"`, v4udp("10.0.0.1", "10.0.0.2", 1, 2), false},
		{"v4 CIDR does not match v6", `src = "0.0.0.0/0"`, v6tcp("fd00::1", "fd00::2", 1, 2), false},
		{"mixed families list", `dst = ["10.0.0.0/8", "2001:db8::/32"]`, v6tcp("fd00::1", "2001:db8::5", 1, 2), true},
		{"host address", `dst = "fd00::2"`, v6tcp("fd00::1", "fd00::2", 1, 2), true},
		{"dport exact", `proto = "udp"` + "\n" + `dport = 53`, v4udp("10.0.0.1", "10.0.0.2", 40000, 53), true},
		{"dport miss", `proto = "udp"` + "\n" + `dport = 53`, v4udp("10.0.0.1", "10.0.0.2", 40000, 54), false},
		{"sport range low edge", `proto = "udp"` + "\n" + `sport = "1024-65535"`, v4udp("10.0.0.1", "10.0.0.2", 1024, 1), true},
		{"sport range below", `proto = "udp"` + "\n" + `sport = "1024-65535"`, v4udp("10.0.0.1", "10.0.0.2", 1023, 1), false},
		{"sport range high edge", `proto = "tcp"` + "\n" + `sport = "1024-65535"`, v6tcp("::1", "::2", 65535, 1), true},
		{"port list", `proto = "tcp"` + "\n" + `dport = [22, "8000-8100"]`, v6tcp("::1", "::2", 1, 8050), true},
		{"ports and CIDR together", `proto = "udp"` + "\n" + `src = "10.0.0.0/24"` + "\n" + `dport = 53`, v4udp("10.0.1.1", "10.0.0.2", 1, 53), false},
		{"icmp type", `proto = "icmp"` + "\n" + `icmp_type = 8`, ping4, true},
		{"icmp other type", `proto = "icmp"` + "\n" + `icmp_type = 8`, reply4, false},
		{"icmp type and code", `proto = "icmp"` + "\n" + `icmp_type = 3` + "\n" + `icmp_code = 3`, unreach4, true},
		{"icmp code differs", `proto = "icmp"` + "\n" + `icmp_type = 3` + "\n" + `icmp_code = 1`, unreach4, false},
		{"icmpv6 type", `proto = "icmpv6"` + "\n" + `icmp_type = 128`, ping6, true},
		{"icmp rule does not match icmpv6", `proto = "icmp"` + "\n" + `icmp_type = 128`, ping6, false},
		{"ports never match a later fragment", `proto = "udp"` + "\n" + `dport = 53`, frag4, false},
		{"addresses match a later fragment", `dst = "10.0.0.2"`, frag4, true},
		{"ethertype ARP", `ethertype = 0x0806`, arp, true},
		{"ethertype ARP does not match IPv4", `ethertype = 0x0806`, v4udp("10.0.0.1", "10.0.0.2", 1, 2), false},
		{"ethertype IPv6 with CIDR", "ethertype = 0x86DD\nsrc = \"fd00::/8\"", v6tcp("fd00::1", "fd00::2", 1, 2), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustConfig(t, "[[rule]]\naction = \"deny\"\n"+tt.rule)
			if got := cfg.rules[0].matches(mustPacket(t, tt.frame)); got != tt.want {
				t.Errorf("matches = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFirstMatchWins(t *testing.T) {
	cfg := mustConfig(t, `
[[rule]]
name = "allow-dns-server"
action = "allow"
proto = "udp"
dst = "10.0.0.2"
dport = 53
[[rule]]
name = "deny-dns"
action = "deny"
proto = "udp"
dport = 53
[[rule]]
name = "catch-all"
action = "allow"
`)
	tests := []struct {
		frame []byte
		want  string
	}{
		{eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", udp(1, 53, nil))), "allow-dns-server"},
		{eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.3", udp(1, 53, nil))), "deny-dns"},
		{eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.3", udp(1, 54, nil))), "catch-all"},
	}
	for i, tt := range tests {
		if r := firstMatch(cfg.rules, mustPacket(t, tt.frame)); r == nil || r.name != tt.want {
			t.Errorf("frame %d matched %v, want %s", i, r, tt.want)
		}
	}
}

// BenchmarkRules measures rule evaluation: a packet that matches only the
// last of n rules, each with a protocol, two CIDRs and a port range, so
// every rule is fully examined.
func BenchmarkRules(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		doc := ""
		for i := range n - 1 {
			doc += fmt.Sprintf("[[rule]]\naction = \"deny\"\nproto = \"udp\"\nsrc = [\"10.%d.0.0/16\", \"fd%02x::/16\"]\ndport = \"1000-2000\"\n", i%256, i%256)
		}
		doc += "[[rule]]\naction = \"allow\"\nproto = \"udp\"\nsrc = [\"192.0.2.0/24\", \"2001:db8::/32\"]\ndport = 53\n"
		cfg := mustConfig(b, doc)
		for _, fam := range []struct {
			name  string
			frame []byte
		}{
			{"v4", eth(etherTypeIPv4, ipv4(protoUDP, "192.0.2.1", "10.0.0.2", udp(1, 53, nil)))},
			{"v6", eth(etherTypeIPv6, ipv6(protoUDP, "2001:db8::1", "fd00::2", udp(1, 53, nil)))},
		} {
			b.Run(fmt.Sprintf("%drules/%s", n, fam.name), func(b *testing.B) {
				b.ReportAllocs()
				var p packet
				for b.Loop() {
					parsePacket(fam.frame, &p)
					if firstMatch(cfg.rules, &p) == nil {
						b.Fatal("no match")
					}
				}
			})
		}
	}
}
