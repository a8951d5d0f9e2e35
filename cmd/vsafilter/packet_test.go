package main

import (
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
)

// packetView is packet with comparable, exported fields.
type packetView struct {
	EtherType          uint16
	IPVersion, Proto   uint8
	Fragment           bool
	HasPorts, HasICMP  bool
	Src, Dst           string
	Sport, Dport       uint16
	ICMPType, ICMPCode uint8
	Payload            string
}

func view(p *packet) packetView {
	s := func(a ipAddr) string {
		if p.ipVersion == 0 {
			return ""
		}
		return a.addr(p.ipVersion).String()
	}
	return packetView{p.etherType, p.ipVersion, p.proto, p.fragment, p.hasPorts, p.hasICMP, s(p.src), s(p.dst),
		p.sport, p.dport, p.icmpType, p.icmpCode, string(p.payload)}
}

func TestParsePacket(t *testing.T) {
	padded := append(eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", udp(1, 2, []byte("x")))), make([]byte, 20)...)
	tests := []struct {
		name  string
		frame []byte
		want  packetView
	}{
		{"ipv4 udp", eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", udp(40000, 53, []byte("hello")))),
			packetView{etherTypeIPv4, 4, protoUDP, false, true, false, "10.0.0.1", "10.0.0.2", 40000, 53, 0, 0, "hello"}},
		{"ipv4 tcp in two vlan tags", eth(etherTypeIPv4, ipv4(protoTCP, "192.0.2.1", "198.51.100.7", tcp(1234, 443, []byte("tls"))), 10, 20),
			packetView{etherTypeIPv4, 4, protoTCP, false, true, false, "192.0.2.1", "198.51.100.7", 1234, 443, 0, 0, "tls"}},
		{"ipv4 icmp echo", eth(etherTypeIPv4, ipv4(protoICMP, "10.1.1.1", "10.2.2.2", icmp(8, 0, []byte("ping")))),
			packetView{etherTypeIPv4, 4, protoICMP, false, false, true, "10.1.1.1", "10.2.2.2", 0, 0, 8, 0, "ping"}},
		{"ethernet padding is not payload", padded,
			packetView{etherTypeIPv4, 4, protoUDP, false, true, false, "10.0.0.1", "10.0.0.2", 1, 2, 0, 0, "x"}},
		{"ipv4 later fragment", eth(etherTypeIPv4, ipv4Frag(protoTCP, "10.0.0.1", "10.0.0.2", 185, []byte("middle"))),
			packetView{etherTypeIPv4, 4, protoTCP, true, false, false, "10.0.0.1", "10.0.0.2", 0, 0, 0, 0, "middle"}},
		{"ipv6 tcp", eth(etherTypeIPv6, ipv6(protoTCP, "fd00::1", "fd00::2", tcp(5555, 22, []byte("ssh")))),
			packetView{etherTypeIPv6, 6, protoTCP, false, true, false, "fd00::1", "fd00::2", 5555, 22, 0, 0, "ssh"}},
		{"ipv6 udp after hop-by-hop", eth(etherTypeIPv6, ipv6(protoUDP, "fd00::1", "fd00::2", udp(1, 53, []byte("q")), hopByHop())),
			packetView{etherTypeIPv6, 6, protoUDP, false, true, false, "fd00::1", "fd00::2", 1, 53, 0, 0, "q"}},
		{"ipv6 first fragment has ports", eth(etherTypeIPv6, ipv6(protoUDP, "fd00::1", "fd00::2", udp(1, 53, []byte("q")), fragmentHeader(0))),
			packetView{etherTypeIPv6, 6, protoUDP, false, true, false, "fd00::1", "fd00::2", 1, 53, 0, 0, "q"}},
		{"ipv6 later fragment", eth(etherTypeIPv6, ipv6(protoUDP, "fd00::1", "fd00::2", []byte("rest"), fragmentHeader(3))),
			packetView{etherTypeIPv6, 6, protoUDP, true, false, false, "fd00::1", "fd00::2", 0, 0, 0, 0, "rest"}},
		{"icmpv6", eth(etherTypeIPv6, ipv6(protoICMPv6, "fe80::1", "ff02::1", icmp(135, 0, nil))),
			packetView{etherTypeIPv6, 6, protoICMPv6, false, false, true, "fe80::1", "ff02::1", 0, 0, 135, 0, ""}},
		{"arp is not IP", eth(0x0806, []byte("arp body")),
			packetView{EtherType: 0x0806, Payload: "arp body"}},
		{"other protocol keeps the IP payload", eth(etherTypeIPv4, ipv4(protoGRE, "10.0.0.1", "10.0.0.2", []byte("gre"))),
			packetView{etherTypeIPv4, 4, protoGRE, false, false, false, "10.0.0.1", "10.0.0.2", 0, 0, 0, 0, "gre"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p packet
			if why := parsePacket(tt.frame, &p); why != parsedOK {
				t.Fatalf("malformed: %v", why)
			}
			if diff := cmp.Diff(tt.want, view(&p)); diff != "" {
				t.Errorf("packet (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParsePacketMalformed(t *testing.T) {
	good4 := ipv4(protoTCP, "10.0.0.1", "10.0.0.2", tcp(1, 2, nil))
	badIHL := append([]byte(nil), good4...)
	badIHL[0] = 0x44
	longTotal := append([]byte(nil), good4...)
	longTotal[3] = 200
	badTCPOffset := ipv4(protoTCP, "10.0.0.1", "10.0.0.2", append(tcp(1, 2, nil)[:12], 0xf0, 0, 0, 0, 0, 0, 0, 0))
	longExt := hopByHop()
	longExt[1] = 9 // claims 80 bytes
	var loop [][]byte
	for range maxIPv6Extensions + 1 {
		loop = append(loop, hopByHop())
	}
	tests := []struct {
		name  string
		frame []byte
		want  malformedReason
	}{
		{"short ethernet", []byte{1, 2, 3}, malformedEthernet},
		{"cut vlan tag", eth(etherTypeVLAN, []byte{0, 1}), malformedVLAN},
		{"ipv4 header cut", eth(etherTypeIPv4, good4[:19]), malformedIPv4Header},
		{"ipv4 wrong version", eth(etherTypeIPv4, ipv6(protoTCP, "::1", "::2", nil)), malformedIPv4Header},
		{"ipv4 ihl below 5", eth(etherTypeIPv4, badIHL), malformedIPv4Header},
		{"ipv4 total length past the frame", eth(etherTypeIPv4, longTotal), malformedIPv4Length},
		{"tcp cut", eth(etherTypeIPv4, ipv4(protoTCP, "10.0.0.1", "10.0.0.2", make([]byte, 19))), malformedTCP},
		{"tcp data offset past the segment", eth(etherTypeIPv4, badTCPOffset), malformedTCP},
		{"udp cut", eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", make([]byte, 7))), malformedUDP},
		{"sctp cut", eth(etherTypeIPv4, ipv4(protoSCTP, "10.0.0.1", "10.0.0.2", make([]byte, 11))), malformedSCTP},
		{"icmp cut", eth(etherTypeIPv4, ipv4(protoICMP, "10.0.0.1", "10.0.0.2", make([]byte, 7))), malformedICMP},
		{"ipv6 header cut", eth(etherTypeIPv6, make([]byte, 39)), malformedIPv6Header},
		{"ipv6 payload length past the frame", eth(etherTypeIPv6, ipv6(protoUDP, "::1", "::2", udp(1, 2, nil))[:47]), malformedIPv6Length},
		{"ipv6 extension past the packet", eth(etherTypeIPv6, ipv6(protoUDP, "::1", "::2", nil, longExt)), malformedIPv6Extension},
		{"ipv6 extension chain too long", eth(etherTypeIPv6, ipv6(protoUDP, "::1", "::2", udp(1, 2, nil), loop...)), malformedIPv6Extension},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p packet
			if got := parsePacket(tt.frame, &p); got != tt.want {
				t.Errorf("parsePacket = %v, want %v", got, tt.want)
			}
		})
	}
}

// FuzzParsePacket: any frame parses or is refused with a reason, never
// panics, and a parsed payload lies inside the frame.
func FuzzParsePacket(f *testing.F) {
	f.Add(eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", udp(40000, 53, []byte("hello")))))
	f.Add(eth(etherTypeIPv6, ipv6(protoTCP, "fd00::1", "fd00::2", tcp(1, 2, []byte("x")), hopByHop(), fragmentHeader(0))))
	f.Add(eth(etherTypeIPv4, ipv4(protoICMP, "10.0.0.1", "10.0.0.2", icmp(8, 0, nil)), 5))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		var p packet
		why := parsePacket(frame, &p)
		if why >= numMalformedReasons {
			t.Fatalf("reason %d out of range", why)
		}
		if why != parsedOK || len(p.payload) == 0 {
			return
		}
		start := uintptr(unsafe.Pointer(unsafe.SliceData(frame)))
		pl := uintptr(unsafe.Pointer(unsafe.SliceData(p.payload)))
		if pl < start || pl+uintptr(len(p.payload)) > start+uintptr(len(frame)) {
			t.Fatalf("payload of %d bytes lies outside the %d-byte frame", len(p.payload), len(frame))
		}
	})
}
