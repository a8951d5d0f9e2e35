package main

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers the filter knows by name.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoGRE    = 47
	protoESP    = 50
	protoAH     = 51
	protoICMPv6 = 58
	protoSCTP   = 132
)

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86DD
	etherTypeVLAN = 0x8100
	etherTypeQinQ = 0x88A8
)

// packet is what the filter needs to know about one inner frame. It is
// filled in place by parsePacket and holds no pointers into the frame
// except payload, so it lives on the stack.
type packet struct {
	etherType uint16 // after any VLAN tags
	ipVersion uint8  // 0 for non-IP frames, 4 or 6
	proto     uint8  // IP protocol (IPv6: after extension headers)
	// fragment is set on IP fragments other than the first: they carry no
	// transport header, so port and ICMP criteria cannot match them.
	fragment   bool
	hasPorts   bool // TCP, UDP or SCTP header present
	hasICMP    bool // ICMP or ICMPv6 header present
	src, dst   ipAddr
	sport      uint16
	dport      uint16
	icmpType   uint8
	icmpCode   uint8
	payload    []byte // transport payload (or IP/Ethernet payload when there is no transport header)
	wireLength int    // length of the inner frame
}

// ipAddr is an IPv4 or IPv6 address as two words, IPv4 in the low 32 bits
// of lo; the packet's ipVersion says which. Matching CIDRs on words is a
// few mask-and-compare instructions, cheaper than netip's general code.
type ipAddr struct{ hi, lo uint64 }

// addr converts a for display.
func (a ipAddr) addr(ipVersion uint8) netip.Addr {
	switch ipVersion {
	case 4:
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(a.lo))
		return netip.AddrFrom4(b)
	case 6:
		var b [16]byte
		binary.BigEndian.PutUint64(b[:8], a.hi)
		binary.BigEndian.PutUint64(b[8:], a.lo)
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

// malformedReason says why an inner frame could not be parsed. Frames that
// are merely not IP are not malformed.
type malformedReason uint8

const (
	parsedOK malformedReason = iota
	malformedEthernet
	malformedVLAN
	malformedIPv4Header
	malformedIPv4Length
	malformedIPv6Header
	malformedIPv6Length
	malformedIPv6Extension
	malformedTCP
	malformedUDP
	malformedSCTP
	malformedICMP
	numMalformedReasons
)

var malformedNames = [numMalformedReasons]string{
	parsedOK:               "ok",
	malformedEthernet:      "ethernet_truncated",
	malformedVLAN:          "vlan_truncated",
	malformedIPv4Header:    "ipv4_bad_header",
	malformedIPv4Length:    "ipv4_bad_length",
	malformedIPv6Header:    "ipv6_truncated",
	malformedIPv6Length:    "ipv6_bad_length",
	malformedIPv6Extension: "ipv6_bad_extension",
	malformedTCP:           "tcp_bad_header",
	malformedUDP:           "udp_truncated",
	malformedSCTP:          "sctp_truncated",
	malformedICMP:          "icmp_truncated",
}

func (r malformedReason) String() string {
	if r < numMalformedReasons {
		return malformedNames[r]
	}
	return "unknown"
}

// maxIPv6Extensions bounds the extension-header walk; a longer chain is
// almost certainly an evasion attempt and is refused as malformed.
const maxIPv6Extensions = 8

// parsePacket decodes an Ethernet frame (up to two VLAN tags, IPv4 or IPv6
// with extension headers, TCP/UDP/SCTP ports or ICMP type and code) into p.
// Lengths are taken from the IP headers, so Ethernet padding never counts as
// payload; a header that claims more than the frame holds is malformed.
func parsePacket(frame []byte, p *packet) malformedReason {
	*p = packet{wireLength: len(frame)}
	if len(frame) < 14 {
		return malformedEthernet
	}
	et := binary.BigEndian.Uint16(frame[12:14])
	b := frame[14:]
	for tags := 0; tags < 2 && (et == etherTypeVLAN || et == etherTypeQinQ); tags++ {
		if len(b) < 4 {
			return malformedVLAN
		}
		et = binary.BigEndian.Uint16(b[2:4])
		b = b[4:]
	}
	p.etherType = et
	p.payload = b
	switch et {
	case etherTypeIPv4:
		return parseIPv4(b, p)
	case etherTypeIPv6:
		return parseIPv6(b, p)
	}
	return parsedOK
}

func parseIPv4(b []byte, p *packet) malformedReason {
	if len(b) < 20 || b[0]>>4 != 4 {
		return malformedIPv4Header
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || len(b) < ihl {
		return malformedIPv4Header
	}
	if total < ihl || total > len(b) {
		return malformedIPv4Length
	}
	p.ipVersion = 4
	p.proto = b[9]
	p.src = ipAddr{lo: uint64(binary.BigEndian.Uint32(b[12:16]))}
	p.dst = ipAddr{lo: uint64(binary.BigEndian.Uint32(b[16:20]))}
	p.payload = b[ihl:total]
	if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
		p.fragment = true
		return parsedOK
	}
	return parseTransport(p)
}

func parseIPv6(b []byte, p *packet) malformedReason {
	if len(b) < 40 || b[0]>>4 != 6 {
		return malformedIPv6Header
	}
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	if 40+plen > len(b) {
		return malformedIPv6Length
	}
	p.ipVersion = 6
	p.src = ipAddr{hi: binary.BigEndian.Uint64(b[8:16]), lo: binary.BigEndian.Uint64(b[16:24])}
	p.dst = ipAddr{hi: binary.BigEndian.Uint64(b[24:32]), lo: binary.BigEndian.Uint64(b[32:40])}
	next := b[6]
	// A zero payload length means a jumbogram (hop-by-hop option); take
	// the rest of the frame then.
	rest := b[40:]
	if plen != 0 {
		rest = rest[:plen]
	}
	for range maxIPv6Extensions {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(rest) < 8 {
				return malformedIPv6Extension
			}
			n := (int(rest[1]) + 1) * 8
			if n > len(rest) {
				return malformedIPv6Extension
			}
			next, rest = rest[0], rest[n:]
		case 44: // fragment
			if len(rest) < 8 {
				return malformedIPv6Extension
			}
			offset := binary.BigEndian.Uint16(rest[2:4]) >> 3
			next, rest = rest[0], rest[8:]
			if offset != 0 {
				p.proto, p.payload, p.fragment = next, rest, true
				return parsedOK
			}
		case protoAH:
			if len(rest) < 8 {
				return malformedIPv6Extension
			}
			n := (int(rest[1]) + 2) * 4
			if n > len(rest) {
				return malformedIPv6Extension
			}
			next, rest = rest[0], rest[n:]
		default:
			p.proto, p.payload = next, rest
			return parseTransport(p)
		}
	}
	return malformedIPv6Extension
}

// parseTransport reads ports or ICMP type and code from p.payload and moves
// payload past the transport header.
func parseTransport(p *packet) malformedReason {
	b := p.payload
	switch p.proto {
	case protoTCP:
		if len(b) < 20 {
			return malformedTCP
		}
		off := int(b[12]>>4) * 4
		if off < 20 || off > len(b) {
			return malformedTCP
		}
		p.setPorts(b)
		p.payload = b[off:]
	case protoUDP:
		if len(b) < 8 {
			return malformedUDP
		}
		p.setPorts(b)
		p.payload = b[8:]
	case protoSCTP:
		if len(b) < 12 {
			return malformedSCTP
		}
		p.setPorts(b)
		p.payload = b[12:]
	case protoICMP, protoICMPv6:
		if len(b) < 8 {
			return malformedICMP
		}
		p.hasICMP = true
		p.icmpType, p.icmpCode = b[0], b[1]
		p.payload = b[8:]
	}
	return parsedOK
}

func (p *packet) setPorts(b []byte) {
	p.hasPorts = true
	p.sport = binary.BigEndian.Uint16(b[0:2])
	p.dport = binary.BigEndian.Uint16(b[2:4])
}
