package sourceroute

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Frame builders for key extraction tests. Checksums are left zero: the key
// extraction does not verify them (the kernel or the guest does).

var (
	macA = MAC{0x52, 0x54, 0, 0, 0, 0x01}
	macB = MAC{0x52, 0x54, 0, 0, 0, 0x02}
)

type vlanTag struct{ tpid, tci uint16 }

func ethFrame(dst, src MAC, tags []vlanTag, etherType uint16, payload []byte) []byte {
	b := append(append([]byte{}, dst[:]...), src[:]...)
	for _, t := range tags {
		b = binary.BigEndian.AppendUint16(b, t.tpid)
		b = binary.BigEndian.AppendUint16(b, t.tci)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, payload...)
}

func ipv4Packet(proto uint8, src, dst string, fragField uint16, l4 []byte) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := []byte{0x45, 0, 0, 0, 0, 1, byte(fragField >> 8), byte(fragField), 64, proto, 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(l4)))
	b = append(append(b, s[:]...), d[:]...)
	return append(b, l4...)
}

func ipv6Packet(next uint8, src, dst string, ext, l4 []byte) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	b := []byte{0x60, 0, 0, 0, 0, 0, next, 64}
	binary.BigEndian.PutUint16(b[4:], uint16(len(ext)+len(l4)))
	b = append(append(b, s[:]...), d[:]...)
	return append(append(b, ext...), l4...)
}

// ipv6Ext is an extension header of the given total length (a multiple of 8).
func ipv6Ext(next uint8, length int) []byte {
	b := make([]byte, length)
	b[0], b[1] = next, byte(length/8-1)
	return b
}

func ports(sp, dp uint16, rest int) []byte {
	b := binary.BigEndian.AppendUint16(nil, sp)
	b = binary.BigEndian.AppendUint16(b, dp)
	return append(b, make([]byte, rest)...)
}

func icmpMsg(typ, code uint8, id uint16) []byte {
	b := []byte{typ, code, 0, 0}
	b = binary.BigEndian.AppendUint16(b, id)
	return append(b, 0, 1)
}

func v4(payload []byte) []byte { return ethFrame(macB, macA, nil, etherTypeIPv4, payload) }
func v6(payload []byte) []byte { return ethFrame(macB, macA, nil, etherTypeIPv6, payload) }

// keyView is FlowKey through its accessors, for readable diffs.
type keyView struct {
	Kind            string
	Zone            uint16
	VLAN, InnerVLAN uint16
	EtherType       uint16
	Proto           uint8
	Fragment        bool
	Src, Dst        string
	SrcPort         uint16
	DstPort         uint16
	ICMP            string
}

func viewOf(k FlowKey) keyView {
	v := keyView{
		Kind: k.Kind().String(), Zone: k.Zone(), VLAN: k.VLAN(), InnerVLAN: k.InnerVLAN(),
		EtherType: k.EtherType(), Proto: k.Proto(), Fragment: k.IsFragment(),
		SrcPort: k.SrcPort(), DstPort: k.DstPort(),
	}
	if k.Kind() == KindEthernet {
		v.Src, v.Dst = k.SrcMAC().String(), k.DstMAC().String()
	} else {
		v.Src, v.Dst = k.SrcAddr().String(), k.DstAddr().String()
	}
	if typ, code, id, ok := k.ICMP(); ok {
		v.ICMP = netip.AddrPortFrom(netip.AddrFrom4([4]byte{typ, code, 0, 0}), id).String()
	}
	return v
}

func udp4View(src, dst string, sp, dp uint16) keyView {
	return keyView{Kind: "ipv4", EtherType: etherTypeIPv4, Proto: protoUDP, Src: src, Dst: dst, SrcPort: sp, DstPort: dp}
}

func TestExtractKey(t *testing.T) {
	vector := loadChainVectors(t).Original
	padded := append(append([]byte{}, vector...), make([]byte, 60-len(vector))...)
	udp := ipv4Packet(protoUDP, "10.0.0.1", "10.0.0.2", 0, ports(40000, 53, 4))
	v6src, v6dst := "2001:db8::1", "2001:db8::2"
	tcp6 := ports(5000, 443, 16)
	withVLAN := func(v keyView, outer, inner uint16) keyView { v.VLAN, v.InnerVLAN = outer, inner; return v }
	icmp4 := func(typ, code uint8, id uint16) keyView {
		return keyView{Kind: "ipv4", EtherType: etherTypeIPv4, Proto: protoICMP, Src: "10.0.0.1", Dst: "10.0.0.2",
			ICMP: netip.AddrPortFrom(netip.AddrFrom4([4]byte{typ, code, 0, 0}), id).String()}
	}
	tests := []struct {
		name  string
		frame []byte
		zone  uint16
		want  keyView
	}{
		{"vector IPv4/UDP", vector, 0, udp4View("10.0.0.1", "10.0.0.2", 40000, 53)},
		{"Ethernet padding ignored", padded, 0, udp4View("10.0.0.1", "10.0.0.2", 40000, 53)},
		{"zone", vector, 7, func() keyView { v := udp4View("10.0.0.1", "10.0.0.2", 40000, 53); v.Zone = 7; return v }()},
		{"802.1Q", ethFrame(macB, macA, []vlanTag{{0x8100, 0x2000 | 100}}, etherTypeIPv4, udp), 0,
			withVLAN(udp4View("10.0.0.1", "10.0.0.2", 40000, 53), 100, 0)},
		{"QinQ 802.1ad", ethFrame(macB, macA, []vlanTag{{0x88a8, 10}, {0x8100, 20}}, etherTypeIPv4, udp), 0,
			withVLAN(udp4View("10.0.0.1", "10.0.0.2", 40000, 53), 10, 20)},
		{"QinQ 0x9100", ethFrame(macB, macA, []vlanTag{{0x9100, 11}, {0x8100, 21}}, etherTypeIPv4, udp), 0,
			withVLAN(udp4View("10.0.0.1", "10.0.0.2", 40000, 53), 11, 21)},
		{"priority tag", ethFrame(macB, macA, []vlanTag{{0x8100, 5 << 13}}, etherTypeIPv4, udp), 0,
			udp4View("10.0.0.1", "10.0.0.2", 40000, 53)},
		{"IPv4/TCP with options", v4(func() []byte {
			p := ipv4Packet(protoTCP, "192.0.2.1", "198.51.100.7", 0, nil)
			p[0] = 0x46 // IHL 6: one option word
			p = append(p, 1, 1, 1, 0)
			p = append(p, ports(1234, 80, 16)...)
			binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
			return p
		}()), 0, keyView{Kind: "ipv4", EtherType: etherTypeIPv4, Proto: protoTCP, Src: "192.0.2.1", Dst: "198.51.100.7", SrcPort: 1234, DstPort: 80}},
		{"SCTP", v4(ipv4Packet(protoSCTP, "10.0.0.1", "10.0.0.2", 0, ports(2905, 2905, 8))), 0,
			keyView{Kind: "ipv4", EtherType: etherTypeIPv4, Proto: protoSCTP, Src: "10.0.0.1", Dst: "10.0.0.2", SrcPort: 2905, DstPort: 2905}},
		{"ICMP echo request", v4(ipv4Packet(protoICMP, "10.0.0.1", "10.0.0.2", 0, icmpMsg(8, 0, 77))), 0, icmp4(8, 0, 77)},
		{"ICMP echo reply keyed as request", v4(ipv4Packet(protoICMP, "10.0.0.1", "10.0.0.2", 0, icmpMsg(0, 0, 77))), 0, icmp4(8, 0, 77)},
		{"ICMP unreachable", v4(ipv4Packet(protoICMP, "10.0.0.1", "10.0.0.2", 0, icmpMsg(3, 1, 99))), 0, icmp4(3, 1, 0)},
		{"GRE: addresses and protocol", v4(ipv4Packet(47, "10.0.0.1", "10.0.0.2", 0, make([]byte, 8))), 0,
			keyView{Kind: "ipv4", EtherType: etherTypeIPv4, Proto: 47, Src: "10.0.0.1", Dst: "10.0.0.2"}},
		{"first IPv4 fragment", v4(ipv4Packet(protoUDP, "10.0.0.1", "10.0.0.2", 0x2000, ports(40000, 53, 4))), 0,
			keyView{Kind: "ipv4", EtherType: etherTypeIPv4, Proto: protoUDP, Fragment: true, Src: "10.0.0.1", Dst: "10.0.0.2"}},
		{"later IPv4 fragment", v4(ipv4Packet(protoUDP, "10.0.0.1", "10.0.0.2", 185, []byte{1, 2})), 0,
			keyView{Kind: "ipv4", EtherType: etherTypeIPv4, Proto: protoUDP, Fragment: true, Src: "10.0.0.1", Dst: "10.0.0.2"}},
		{"DF is not a fragment", v4(ipv4Packet(protoUDP, "10.0.0.1", "10.0.0.2", 0x4000, ports(40000, 53, 4))), 0,
			udp4View("10.0.0.1", "10.0.0.2", 40000, 53)},
		{"IPv6/UDP", v6(ipv6Packet(protoUDP, v6src, v6dst, nil, ports(546, 547, 4))), 0,
			keyView{Kind: "ipv6", EtherType: etherTypeIPv6, Proto: protoUDP, Src: v6src, Dst: v6dst, SrcPort: 546, DstPort: 547}},
		{"IPv6 hop-by-hop, dest opts, routing, AH then TCP", v6(ipv6Packet(protoHopByHop, v6src, v6dst,
			append(append(append(ipv6Ext(protoDestOpts, 8), ipv6Ext(protoRouting, 24)...), ipv6Ext(protoAH, 16)...),
				[]byte{protoTCP, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}...), tcp6)), 0,
			keyView{Kind: "ipv6", EtherType: etherTypeIPv6, Proto: protoTCP, Src: v6src, Dst: v6dst, SrcPort: 5000, DstPort: 443}},
		{"IPv6 fragment header", v6(ipv6Packet(protoFragment, v6src, v6dst, []byte{protoTCP, 0, 0, 1, 0, 0, 0, 9}, tcp6)), 0,
			keyView{Kind: "ipv6", EtherType: etherTypeIPv6, Proto: protoTCP, Fragment: true, Src: v6src, Dst: v6dst}},
		{"IPv6 no next header", v6(ipv6Packet(59, v6src, v6dst, nil, nil)), 0,
			keyView{Kind: "ipv6", EtherType: etherTypeIPv6, Proto: 59, Src: v6src, Dst: v6dst}},
		{"ICMPv6 echo reply keyed as request", v6(ipv6Packet(protoICMPv6, v6src, v6dst, nil, icmpMsg(129, 0, 5))), 0,
			keyView{Kind: "ipv6", EtherType: etherTypeIPv6, Proto: protoICMPv6, Src: v6src, Dst: v6dst,
				ICMP: netip.AddrPortFrom(netip.AddrFrom4([4]byte{128, 0, 0, 0}), 5).String()}},
		{"ARP", ethFrame(MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, macA, nil, 0x0806, make([]byte, 28)), 3,
			keyView{Kind: "ethernet", Zone: 3, EtherType: 0x0806, Src: macA.String(), Dst: "ff:ff:ff:ff:ff:ff"}},
		{"802.3 length frame", ethFrame(macB, macA, nil, 46, make([]byte, 46)), 0,
			keyView{Kind: "ethernet", EtherType: 0, Src: macA.String(), Dst: macB.String()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, r := ExtractKey(tt.frame, tt.zone)
			if r != KeyOK {
				t.Fatalf("ExtractKey: %v", r)
			}
			if diff := cmp.Diff(tt.want, viewOf(k)); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
			_ = k.String()
		})
	}
}

func TestExtractKeyRejects(t *testing.T) {
	udp := ipv4Packet(protoUDP, "10.0.0.1", "10.0.0.2", 0, ports(40000, 53, 4))
	badVersion := append([]byte{}, udp...)
	badVersion[0] = 0x65
	shortIHL := append([]byte{}, udp...)
	shortIHL[0] = 0x44
	totalBelowIHL := append([]byte{}, udp...)
	binary.BigEndian.PutUint16(totalBelowIHL[2:], 19)
	longTotal := append([]byte{}, udp...)
	binary.BigEndian.PutUint16(longTotal[2:], uint16(len(udp)+1))
	v6src, v6dst := "2001:db8::1", "2001:db8::2"
	extChain := func(n int) []byte {
		var b []byte
		for i := range n {
			next := uint8(protoDestOpts)
			if i == n-1 {
				next = protoUDP
			}
			b = append(b, ipv6Ext(next, 8)...)
		}
		return b
	}
	nineExt := extChain(9)
	tests := []struct {
		name  string
		frame []byte
		want  KeyReason
	}{
		{"empty", nil, KeyTruncatedEthernet},
		{"13 bytes", make([]byte, 13), KeyTruncatedEthernet},
		{"cut VLAN tag", ethFrame(macB, macA, nil, 0x8100, []byte{0, 100}), KeyTruncatedVLAN},
		{"three VLAN tags", ethFrame(macB, macA, []vlanTag{{0x88a8, 1}, {0x8100, 2}, {0x8100, 3}}, etherTypeIPv4, udp), KeyTooManyVLANs},
		{"IPv4 header cut", v4(udp[:19]), KeyTruncatedIP},
		{"IPv4 version 6", v4(badVersion), KeyBadIPVersion},
		{"IPv4 IHL 4", v4(shortIHL), KeyBadIPHeader},
		{"IPv4 total length below header", v4(totalBelowIHL), KeyBadIPHeader},
		{"IPv4 total length beyond frame", v4(longTotal), KeyTruncatedIP},
		{"UDP ports cut", v4(ipv4Packet(protoUDP, "10.0.0.1", "10.0.0.2", 0, []byte{1, 2, 3})), KeyTruncatedL4},
		{"ICMP echo without id", v4(ipv4Packet(protoICMP, "10.0.0.1", "10.0.0.2", 0, []byte{8, 0, 0, 0, 1})), KeyTruncatedL4},
		{"ICMP header cut", v4(ipv4Packet(protoICMP, "10.0.0.1", "10.0.0.2", 0, []byte{3, 1, 0})), KeyTruncatedL4},
		{"IPv6 header cut", v6(make([]byte, 39)), KeyTruncatedIP},
		{"IPv6 version 4", v6(append([]byte{0x40}, make([]byte, 39)...)), KeyBadIPVersion},
		{"IPv6 payload length beyond frame", v6(func() []byte {
			p := ipv6Packet(protoUDP, v6src, v6dst, nil, ports(1, 2, 4))
			binary.BigEndian.PutUint16(p[4:], 100)
			return p
		}()), KeyTruncatedIP},
		{"IPv6 ext header cut", v6(ipv6Packet(protoHopByHop, v6src, v6dst, ipv6Ext(protoTCP, 16)[:12], nil)), KeyTruncatedIPv6Ext},
		{"IPv6 ext header missing", v6(ipv6Packet(protoRouting, v6src, v6dst, nil, nil)), KeyTruncatedIPv6Ext},
		{"IPv6 fragment header cut", v6(ipv6Packet(protoFragment, v6src, v6dst, []byte{protoTCP, 0, 0, 1}, nil)), KeyTruncatedIPv6Ext},
		{"nine IPv6 ext headers", v6(ipv6Packet(protoDestOpts, v6src, v6dst, nineExt, ports(1, 2, 4))), KeyTooManyIPv6Ext},
		{"IPv6 TCP ports cut", v6(ipv6Packet(protoTCP, v6src, v6dst, nil, []byte{0, 1})), KeyTruncatedL4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, r := ExtractKey(tt.frame, 0)
			if r != tt.want {
				t.Fatalf("ExtractKey = %v, want %v", r, tt.want)
			}
			if k != (FlowKey{}) {
				t.Fatal("rejected frame returned a non-zero key")
			}
		})
	}
	// Eight extension headers are still accepted.
	eight := extChain(8)
	if _, r := ExtractKey(v6(ipv6Packet(protoDestOpts, v6src, v6dst, eight, ports(1, 2, 4))), 0); r != KeyOK {
		t.Fatalf("eight extension headers: %v", r)
	}
}

// Both directions of a flow must meet in one canonical key, and the
// canonical form must tell them apart.
func TestFlowKeyCanonicalPairs(t *testing.T) {
	v6src, v6dst := "2001:db8::1", "2001:db8::2"
	pairs := []struct {
		name      string
		fwd, back []byte
	}{
		{"UDP", v4(ipv4Packet(protoUDP, "10.0.0.9", "10.0.0.2", 0, ports(40000, 53, 4))),
			v4(ipv4Packet(protoUDP, "10.0.0.2", "10.0.0.9", 0, ports(53, 40000, 4)))},
		{"same host, ports differ", v4(ipv4Packet(protoTCP, "10.0.0.1", "10.0.0.1", 0, ports(9000, 22, 16))),
			v4(ipv4Packet(protoTCP, "10.0.0.1", "10.0.0.1", 0, ports(22, 9000, 16)))},
		{"ICMP echo", v4(ipv4Packet(protoICMP, "10.0.0.9", "10.0.0.2", 0, icmpMsg(8, 0, 3))),
			v4(ipv4Packet(protoICMP, "10.0.0.2", "10.0.0.9", 0, icmpMsg(0, 0, 3)))},
		{"ICMPv6 echo", v6(ipv6Packet(protoICMPv6, v6dst, v6src, nil, icmpMsg(128, 0, 3))),
			v6(ipv6Packet(protoICMPv6, v6src, v6dst, nil, icmpMsg(129, 0, 3)))},
		{"IPv6 TCP", v6(ipv6Packet(protoTCP, v6dst, v6src, nil, ports(1, 2, 16))),
			v6(ipv6Packet(protoTCP, v6src, v6dst, nil, ports(2, 1, 16)))},
		{"ARP", ethFrame(macA, macB, nil, 0x0806, make([]byte, 28)), ethFrame(macB, macA, nil, 0x0806, make([]byte, 28))},
		{"fragments", v4(ipv4Packet(protoUDP, "10.0.0.9", "10.0.0.2", 0x2000, ports(1, 2, 4))),
			v4(ipv4Packet(protoUDP, "10.0.0.2", "10.0.0.9", 100, []byte{1}))},
	}
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			f, r := ExtractKey(p.fwd, 1)
			if r != KeyOK {
				t.Fatal(r)
			}
			b, r := ExtractKey(p.back, 1)
			if r != KeyOK {
				t.Fatal(r)
			}
			if f.Reverse() != b || b.Reverse() != f {
				t.Fatalf("Reverse does not map the directions onto each other:\n%v\n%v", f, b)
			}
			cf, rf := f.canonical()
			cb, rb := b.canonical()
			if cf != cb {
				t.Fatalf("canonical keys differ:\n%v\n%v", cf, cb)
			}
			if rf == rb {
				t.Fatalf("both directions report reversed=%v", rf)
			}
		})
	}
	// Different zones never meet.
	a, _ := ExtractKey(pairs[0].fwd, 1)
	b, _ := ExtractKey(pairs[0].back, 2)
	ca, _ := a.canonical()
	if cb, _ := b.canonical(); ca == cb {
		t.Fatal("flows of different zones share a key")
	}
}

func TestMakeIPFlowKey(t *testing.T) {
	k, err := MakeIPFlowKey(0, protoUDP, netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.2:53"))
	if err != nil {
		t.Fatal(err)
	}
	got, r := ExtractKey(loadChainVectors(t).Original, 0)
	if r != KeyOK || got != k {
		t.Fatalf("MakeIPFlowKey %v, ExtractKey %v (%v)", k, got, r)
	}
	k6, err := MakeIPFlowKey(0, protoTCP, netip.MustParseAddrPort("[2001:db8::1]:5000"), netip.MustParseAddrPort("[2001:db8::2]:443"))
	if err != nil {
		t.Fatal(err)
	}
	got, r = ExtractKey(v6(ipv6Packet(protoTCP, "2001:db8::1", "2001:db8::2", nil, ports(5000, 443, 16))), 0)
	if r != KeyOK || got != k6 {
		t.Fatalf("MakeIPFlowKey %v, ExtractKey %v (%v)", k6, got, r)
	}
	if _, err := MakeIPFlowKey(0, protoTCP, netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("[2001:db8::2]:2")); err == nil {
		t.Fatal("mixed families accepted")
	}
}

func TestKeyReasonNames(t *testing.T) {
	seen := map[string]bool{}
	for r := KeyOK; r < NumKeyReasons; r++ {
		s := r.String()
		if s == "" || s == "unknown" || seen[s] {
			t.Errorf("KeyReason(%d).String() = %q: want a distinct label", r, s)
		}
		seen[s] = true
	}
}

func FuzzExtractKey(f *testing.F) {
	seeds := [][]byte{
		loadChainVectors(f).Original,
		ethFrame(macB, macA, []vlanTag{{0x88a8, 10}, {0x8100, 20}}, etherTypeIPv4, ipv4Packet(protoTCP, "10.0.0.1", "10.0.0.2", 0, ports(1, 2, 16))),
		v4(ipv4Packet(protoICMP, "10.0.0.1", "10.0.0.2", 0, icmpMsg(8, 0, 1))),
		v4(ipv4Packet(protoUDP, "10.0.0.1", "10.0.0.2", 0x2000, ports(1, 2, 4))),
		v6(ipv6Packet(protoHopByHop, "2001:db8::1", "2001:db8::2", append(ipv6Ext(protoFragment, 8), protoUDP, 0, 0, 0, 0, 0, 0, 0), ports(1, 2, 4))),
		v6(ipv6Packet(protoAH, "2001:db8::1", "2001:db8::2", []byte{protoICMPv6, 1, 0, 0, 0, 0, 0, 0}, icmpMsg(128, 0, 1))),
		ethFrame(macB, macA, nil, 0x0806, make([]byte, 28)),
	}
	seedTruncations(f, seeds)
	f.Fuzz(func(t *testing.T, frame []byte) {
		k, r := ExtractKey(frame, 9)
		if r >= NumKeyReasons {
			t.Fatalf("reason %d out of range", r)
		}
		if r != KeyOK {
			if k != (FlowKey{}) {
				t.Fatal("rejected frame has a key")
			}
			return
		}
		if k.Kind() == kindNone || k.Zone() != 9 || k.w[keyWordVLAN]&^vlanMask != 0 || k.w[keyWordMeta]&metaReversed != 0 {
			t.Fatalf("malformed key %v", k)
		}
		if k.Reverse().Reverse() != k {
			t.Fatal("Reverse is not an involution")
		}
		c1, r1 := k.canonical()
		rev := k.Reverse()
		c2, r2 := rev.canonical()
		if c1 != c2 {
			t.Fatal("a key and its reverse have different canonical forms")
		}
		if r1 == r2 && k != k.Reverse() {
			t.Fatal("direction not told apart")
		}
		_ = k.String()
	})
}
