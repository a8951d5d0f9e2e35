package main

import (
	"encoding/binary"
	"net/netip"
)

// Builders of test frames. Checksums are left zero: the filter does not
// verify them (the guest's stack does).

func eth(etherType uint16, payload []byte, vlanTags ...uint16) []byte {
	b := []byte{0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1}
	for _, tag := range vlanTags {
		b = binary.BigEndian.AppendUint16(b, etherTypeVLAN)
		b = binary.BigEndian.AppendUint16(b, tag)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, payload...)
}

func ipv4(proto uint8, src, dst string, payload []byte) []byte {
	return ipv4Frag(proto, src, dst, 0, payload)
}

// ipv4Frag builds an IPv4 packet at fragment offset off (in 8-byte units).
func ipv4Frag(proto uint8, src, dst string, off uint16, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(b[6:], off)
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return append(b, payload...)
}

// ipv6 builds an IPv6 packet; ext are extension headers, each given as its
// own next-header value and body (padded to 8 bytes by the caller).
func ipv6(proto uint8, src, dst string, payload []byte, ext ...[]byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	next := proto
	var chain []byte
	for i := len(ext) - 1; i >= 0; i-- {
		h := append([]byte(nil), ext[i]...)
		h[0] = next
		next = h[len(h)-1] // the caller stores the header's own type in its last byte
		h = h[:len(h)-1]
		chain = append(h, chain...)
	}
	b[6] = next
	body := append(chain, payload...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(body)))
	return append(b, body...)
}

// hopByHop is an 8-byte hop-by-hop options header for ipv6's ext list.
func hopByHop() []byte { return []byte{0, 0, 1, 4, 0, 0, 0, 0, 0} }

// fragmentHeader is an IPv6 fragment header at offset off (8-byte units).
func fragmentHeader(off uint16) []byte {
	h := []byte{0, 0, 0, 0, 0, 0, 0, 1, 44}
	binary.BigEndian.PutUint16(h[2:], off<<3)
	return h
}

func tcp(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = 5 << 4
	return append(b, payload...)
}

func udp(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

func icmp(typ, code uint8, payload []byte) []byte {
	return append([]byte{typ, code, 0, 0, 0, 1, 0, 1}, payload...)
}
