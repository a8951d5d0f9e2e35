package sourceroute

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
)

// FlowKind says how a FlowKey's address and port fields are to be read.
type FlowKind uint8

const (
	kindNone     FlowKind = iota // never produced: marks an empty table slot
	KindIPv4                     // addresses are IPv4
	KindIPv6                     // addresses are IPv6
	KindEthernet                 // not IP: addresses are the MACs, keyed with the EtherType
)

func (k FlowKind) String() string {
	switch k {
	case KindIPv4:
		return "ipv4"
	case KindIPv6:
		return "ipv6"
	case KindEthernet:
		return "ethernet"
	}
	return "none"
}

// IP protocol numbers the key extraction understands.
const (
	protoHopByHop = 0
	protoICMP     = 1
	protoTCP      = 6
	protoUDP      = 17
	protoDCCP     = 33
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoICMPv6   = 58
	protoDestOpts = 60
	protoSCTP     = 132
	protoUDPLite  = 136
)

const (
	etherTypeIPv4   = 0x0800
	etherTypeIPv6   = 0x86DD
	etherTypeVLAN   = 0x8100
	etherTypeQinQ   = 0x88A8
	etherTypeQinQv1 = 0x9100 // pre-802.1ad QinQ, still emitted by some switches
)

// maxIPv6ExtHeaders bounds the extension-header walk. Legitimate packets
// carry two or three; a long chain is an evasion attempt, so it is refused
// rather than classified by whatever header the walk stopped at.
const maxIPv6ExtHeaders = 8

// FlowKey identifies a flow: zone, VLAN tags, and by kind either the IP
// addresses, protocol and ports (ICMP: type, code and echo identifier) or,
// for non-IP frames, the MACs and the EtherType.
//
// It is packed into eleven 32-bit words because it is hashed and compared
// on every packet and stored inline in the flow table, where its size is
// most of the per-flow memory (see FlowTable). Use the accessors to read it
// and MakeIPFlowKey or ExtractKey to make one.
//
// The input port is not part of the key: a reply enters the DM from the
// other endpoint's port, so a key containing the port could never match
// both directions. The caller maps each input port to a zone instead: the
// tenant or L2 domain within which addresses are unique. Both ends of a
// flow (guest ports and the uplink, as the caller configures them) share a
// zone, and overlapping tenant address spaces stay apart. A caller that
// wants per-port flows can use the port number as the zone.
type FlowKey struct {
	w [keyWords]uint32
}

// Word layout of FlowKey. Addresses are stored as loaded from the wire with
// little-endian word loads; only equality and a fixed total order matter.
const (
	keyWordA     = 0  // 4 words: source address (IPv4 in word 0; MAC in bytes 0..5)
	keyWordB     = 4  // 4 words: destination address
	keyWordPorts = 8  // source port << 16 | destination port; ICMP: type<<8|code << 16 | id; non-IP: EtherType << 16
	keyWordMeta  = 9  // zone << 16 | proto << 8 | kind flags
	keyWordVLAN  = 10 // outer VID << 12 | inner VID; the top byte is zero in a key
	keyWords     = 11

	kindMask     = 0x0f
	kindPorts    = 0x20 // the ports word holds source and destination ports, which swap with the addresses
	kindFragment = 0x80 // an IP fragment: keyed without ports, see ExtractKey
	vlanMask     = 0x00ffffff
)

// KeyReason says why ExtractKey could not classify a frame. Like Reason it is
// a dense index for per-reason drop counters, and String is the metric label.
type KeyReason uint8

const (
	KeyOK                KeyReason = iota
	KeyTruncatedEthernet           // shorter than an Ethernet header
	KeyTruncatedVLAN               // a VLAN tag is cut off
	KeyTooManyVLANs                // more than two VLAN tags
	KeyTruncatedIP                 // shorter than the IP header or than the IP length field says
	KeyBadIPVersion                // the version nibble does not match the EtherType
	KeyBadIPHeader                 // IPv4 header length below 20 or above the total length
	KeyTruncatedIPv6Ext            // an IPv6 extension header is cut off
	KeyTooManyIPv6Ext              // more than maxIPv6ExtHeaders extension headers
	KeyTruncatedL4                 // the ports or ICMP header are cut off
	NumKeyReasons                  // keep last
)

var keyReasonNames = [NumKeyReasons]string{
	KeyOK:                "ok",
	KeyTruncatedEthernet: "truncated_ethernet",
	KeyTruncatedVLAN:     "truncated_vlan",
	KeyTooManyVLANs:      "too_many_vlans",
	KeyTruncatedIP:       "truncated_ip",
	KeyBadIPVersion:      "bad_ip_version",
	KeyBadIPHeader:       "bad_ip_header",
	KeyTruncatedIPv6Ext:  "truncated_ipv6_ext",
	KeyTooManyIPv6Ext:    "too_many_ipv6_ext",
	KeyTruncatedL4:       "truncated_l4",
}

func (r KeyReason) String() string { return label(keyReasonNames[:], r) }

// ExtractKey classifies an Ethernet frame (the inner frame of an MSR frame,
// or a frame as a guest sent it) into its flow key, without allocating.
//
//   - Up to two VLAN tags (TPID 0x8100, 0x88A8 or 0x9100) are keyed by VID;
//     a priority tag (VID 0) counts as untagged.
//   - IPv4 and IPv6 are keyed by addresses and protocol, IPv6 after skipping
//     hop-by-hop, routing, destination-options and AH headers. TCP, UDP,
//     UDP-Lite, SCTP and DCCP add their ports; ICMP and ICMPv6 add type, code
//     and, for echo/timestamp/info requests and replies, the identifier, with
//     a reply keyed like its request so both directions meet in one flow.
//   - Every IP fragment, the first included, is keyed without ports and
//     marked as a fragment: only the first carries the ports, and all pieces
//     of a datagram must take the same chain. Such fragments are therefore a
//     flow of their own, apart from the unfragmented packets of the same
//     connection.
//   - Other frames are keyed by MACs and EtherType (802.3 length frames by
//     EtherType 0).
//
// ICMP errors are keyed as ICMP flows, not related to the connection they
// quote.
func ExtractKey(frame []byte, zone uint16) (FlowKey, KeyReason) {
	var k FlowKey
	if len(frame) < EthernetHeaderLen {
		return k, KeyTruncatedEthernet
	}
	etherType := binary.BigEndian.Uint16(frame[12:14])
	off := EthernetHeaderLen
	var vids [2]uint32
	tags := 0
	for etherType == etherTypeVLAN || etherType == etherTypeQinQ || etherType == etherTypeQinQv1 {
		if tags == len(vids) {
			return k, KeyTooManyVLANs
		}
		if len(frame) < off+4 {
			return k, KeyTruncatedVLAN
		}
		vids[tags] = uint32(binary.BigEndian.Uint16(frame[off:]) & 0x0fff)
		etherType = binary.BigEndian.Uint16(frame[off+2:])
		off += 4
		tags++
	}
	k.w[keyWordVLAN] = vids[0]<<12 | vids[1]
	payload := frame[off:]
	var r KeyReason
	switch etherType {
	case etherTypeIPv4:
		r = k.fromIPv4(payload)
	case etherTypeIPv6:
		r = k.fromIPv6(payload)
	default:
		if etherType < 0x0600 {
			etherType = 0 // an 802.3 length, different for every frame size
		}
		k.w[keyWordA] = binary.LittleEndian.Uint32(frame[6:10])
		k.w[keyWordA+1] = uint32(binary.LittleEndian.Uint16(frame[10:12]))
		k.w[keyWordB] = binary.LittleEndian.Uint32(frame[0:4])
		k.w[keyWordB+1] = uint32(binary.LittleEndian.Uint16(frame[4:6]))
		k.w[keyWordPorts] = uint32(etherType) << 16
		k.setMeta(0, KindEthernet)
	}
	if r != KeyOK {
		return FlowKey{}, r
	}
	k.w[keyWordMeta] |= uint32(zone) << 16
	return k, KeyOK
}

func (k *FlowKey) setMeta(proto uint8, kind FlowKind) {
	k.w[keyWordMeta] = k.w[keyWordMeta]&0xffff0000 | uint32(proto)<<8 | uint32(kind)
}

func (k *FlowKey) fromIPv4(ip []byte) KeyReason {
	if len(ip) < 20 {
		return KeyTruncatedIP
	}
	if ip[0]>>4 != 4 {
		return KeyBadIPVersion
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ihl < 20 || total < ihl {
		return KeyBadIPHeader
	}
	if len(ip) < total {
		return KeyTruncatedIP
	}
	ip = ip[:total] // drop Ethernet padding
	proto := ip[9]
	k.w[keyWordA] = binary.LittleEndian.Uint32(ip[12:16])
	k.w[keyWordB] = binary.LittleEndian.Uint32(ip[16:20])
	k.setMeta(proto, KindIPv4)
	if frag := binary.BigEndian.Uint16(ip[6:8]); frag&0x3fff != 0 { // MF or an offset
		k.w[keyWordMeta] |= kindFragment
		return KeyOK
	}
	return k.fromL4(proto, ip[ihl:], protoICMP)
}

func (k *FlowKey) fromIPv6(ip []byte) KeyReason {
	if len(ip) < 40 {
		return KeyTruncatedIP
	}
	if ip[0]>>4 != 6 {
		return KeyBadIPVersion
	}
	end := 40 + int(binary.BigEndian.Uint16(ip[4:6]))
	if len(ip) < end {
		return KeyTruncatedIP
	}
	for i := range 4 {
		k.w[keyWordA+i] = binary.LittleEndian.Uint32(ip[8+4*i:])
		k.w[keyWordB+i] = binary.LittleEndian.Uint32(ip[24+4*i:])
	}
	next := ip[6]
	rest := ip[40:end]
	for range maxIPv6ExtHeaders + 1 {
		var hdrLen int
		switch next {
		case protoHopByHop, protoRouting, protoDestOpts:
			if len(rest) < 2 {
				return KeyTruncatedIPv6Ext
			}
			hdrLen = (int(rest[1]) + 1) * 8
		case protoAH:
			if len(rest) < 2 {
				return KeyTruncatedIPv6Ext
			}
			hdrLen = (int(rest[1]) + 2) * 4
		case protoFragment:
			if len(rest) < 8 {
				return KeyTruncatedIPv6Ext
			}
			k.setMeta(rest[0], KindIPv6)
			k.w[keyWordMeta] |= kindFragment
			return KeyOK
		default:
			k.setMeta(next, KindIPv6)
			return k.fromL4(next, rest, protoICMPv6)
		}
		if len(rest) < hdrLen {
			return KeyTruncatedIPv6Ext
		}
		next, rest = rest[0], rest[hdrLen:]
	}
	return KeyTooManyIPv6Ext
}

// fromL4 adds ports, or ICMP type/code/id, for the protocols that have them.
func (k *FlowKey) fromL4(proto uint8, l4 []byte, icmp uint8) KeyReason {
	switch {
	case protoHasPorts(proto):
		if len(l4) < 4 {
			return KeyTruncatedL4
		}
		k.w[keyWordPorts] = binary.BigEndian.Uint32(l4[0:4])
		k.w[keyWordMeta] |= kindPorts
	case proto == icmp:
		if len(l4) < 4 {
			return KeyTruncatedL4
		}
		typ, code := l4[0], l4[1]
		var id uint16
		if req, paired := icmpRequestType(icmp, typ); paired {
			if len(l4) < 6 {
				return KeyTruncatedL4
			}
			typ, id = req, binary.BigEndian.Uint16(l4[4:6])
		}
		k.w[keyWordPorts] = uint32(typ)<<24 | uint32(code)<<16 | uint32(id)
	}
	return KeyOK
}

// icmpRequestType maps a query or its reply to the query type, so that both
// directions of an exchange share a key.
func icmpRequestType(icmp, typ uint8) (uint8, bool) {
	if icmp == protoICMP {
		switch typ {
		case 0, 8: // echo reply, echo
			return 8, true
		case 13, 14: // timestamp
			return 13, true
		case 15, 16: // information
			return 15, true
		case 17, 18: // address mask
			return 17, true
		}
		return typ, false
	}
	switch typ {
	case 128, 129: // echo request, echo reply
		return 128, true
	}
	return typ, false
}

func protoHasPorts(proto uint8) bool {
	switch proto {
	case protoTCP, protoUDP, protoUDPLite, protoSCTP, protoDCCP:
		return true
	}
	return false
}

// hasPorts reports whether the ports word holds a source and a destination
// port, which swap with the addresses when the direction is reversed. It is
// decided once, by ExtractKey, because canonical needs it on every packet.
func (k *FlowKey) hasPorts() bool { return k.w[keyWordMeta]&kindPorts != 0 }

// Reverse returns the key of the other direction of the same flow.
func (k FlowKey) Reverse() FlowKey {
	k.reverse()
	return k
}

func (k *FlowKey) reverse() {
	w := &k.w
	w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7] = w[4], w[5], w[6], w[7], w[0], w[1], w[2], w[3]
	if w[keyWordMeta]&kindPorts != 0 {
		w[keyWordPorts] = bits.RotateLeft32(w[keyWordPorts], 16)
	}
}

// canonical orders the two endpoints so both directions of a flow give the
// same key, and reports whether k had to be reversed to get there.
func (k *FlowKey) canonical() (c FlowKey, reversed bool) {
	reversed = k.canonicalInto(&c)
	return c, reversed
}

// canonicalInto is canonical for the per-packet path. It writes the result
// word by word into c, which the caller then reads word by word: returning
// the key by value would have it copied with wide loads right after narrow
// stores, which stalls store forwarding. Half of all packets are replies,
// so whether to swap is unpredictable: it is done with masks, not a branch.
func (k *FlowKey) canonicalInto(c *FlowKey) (reversed bool) {
	swap := k.reverseMask()
	w, cw := &k.w, &c.w
	for i := range 4 {
		x := (w[keyWordA+i] ^ w[keyWordB+i]) & swap
		cw[keyWordA+i] = w[keyWordA+i] ^ x
		cw[keyWordB+i] = w[keyWordB+i] ^ x
	}
	ports := w[keyWordPorts]
	swapPorts := swap & -(w[keyWordMeta] & kindPorts >> 5) // all ones if reversed and the key has ports
	cw[keyWordPorts] = ports ^ (ports^bits.RotateLeft32(ports, 16))&swapPorts
	cw[keyWordMeta] = w[keyWordMeta]
	cw[keyWordVLAN] = w[keyWordVLAN]
	return swap != 0
}

func (k *FlowKey) reversedIsSmaller() bool { return k.reverseMask() != 0 }

// reverseMask is all ones if the reversed key orders first, else zero. The
// addresses compare as two 128-bit numbers, words in order from the most
// significant, through the borrow of a subtraction: whether a packet is a
// reply is a coin toss, and a compare-and-branch per word would mispredict
// on half of them.
func (k *FlowKey) reverseMask() uint32 {
	w := &k.w
	ahi, alo := uint64(w[keyWordA])<<32|uint64(w[keyWordA+1]), uint64(w[keyWordA+2])<<32|uint64(w[keyWordA+3])
	bhi, blo := uint64(w[keyWordB])<<32|uint64(w[keyWordB+1]), uint64(w[keyWordB+2])<<32|uint64(w[keyWordB+3])
	if (ahi^bhi)|(alo^blo) == 0 { // the same address at both ends: rare, so predictable
		if w[keyWordMeta]&kindPorts != 0 && w[keyWordPorts]>>16 > w[keyWordPorts]&0xffff {
			return ^uint32(0)
		}
		return 0
	}
	_, borrow := bits.Sub64(blo, alo, 0)
	_, borrow = bits.Sub64(bhi, ahi, borrow) // 1 if B < A
	return -uint32(borrow)
}

// Kind says which fields are meaningful.
func (k FlowKey) Kind() FlowKind { return FlowKind(k.w[keyWordMeta] & kindMask) }

// Zone is the caller's zone of the input port (see FlowKey).
func (k FlowKey) Zone() uint16 { return uint16(k.w[keyWordMeta] >> 16) }

// Proto is the IP protocol (the upper-layer protocol after IPv6 extension
// headers); 0 for non-IP keys.
func (k FlowKey) Proto() uint8 { return uint8(k.w[keyWordMeta] >> 8) }

// IsFragment reports an IP fragment, keyed without ports.
func (k FlowKey) IsFragment() bool { return k.w[keyWordMeta]&kindFragment != 0 }

// VLAN is the outermost VLAN ID, InnerVLAN the second (QinQ); 0 if absent.
func (k FlowKey) VLAN() uint16      { return uint16(k.w[keyWordVLAN] >> 12 & 0x0fff) }
func (k FlowKey) InnerVLAN() uint16 { return uint16(k.w[keyWordVLAN] & 0x0fff) }

// SrcPort and DstPort are the L4 ports; 0 for protocols without ports.
func (k FlowKey) SrcPort() uint16 {
	if !k.hasPorts() {
		return 0
	}
	return uint16(k.w[keyWordPorts] >> 16)
}

func (k FlowKey) DstPort() uint16 {
	if !k.hasPorts() {
		return 0
	}
	return uint16(k.w[keyWordPorts])
}

// ICMP returns the type (a reply is reported as its request), code and
// identifier of an ICMP or ICMPv6 key; ok is false for other keys.
func (k FlowKey) ICMP() (typ, code uint8, id uint16, ok bool) {
	icmp := (k.Kind() == KindIPv4 && k.Proto() == protoICMP) || (k.Kind() == KindIPv6 && k.Proto() == protoICMPv6)
	if !icmp || k.IsFragment() {
		return 0, 0, 0, false
	}
	p := k.w[keyWordPorts]
	return uint8(p >> 24), uint8(p >> 16), uint16(p), true
}

// EtherType is the EtherType of a non-IP key (0 for 802.3 length frames),
// and 0x0800 or 0x86DD for IP keys.
func (k FlowKey) EtherType() uint16 {
	switch k.Kind() {
	case KindIPv4:
		return etherTypeIPv4
	case KindIPv6:
		return etherTypeIPv6
	}
	return uint16(k.w[keyWordPorts] >> 16)
}

// SrcAddr and DstAddr are the IP addresses of an IP key (invalid otherwise).
func (k FlowKey) SrcAddr() netip.Addr { return k.addr(keyWordA) }
func (k FlowKey) DstAddr() netip.Addr { return k.addr(keyWordB) }

func (k FlowKey) addr(at int) netip.Addr {
	var b [16]byte
	for i := range 4 {
		binary.LittleEndian.PutUint32(b[4*i:], k.w[at+i])
	}
	switch k.Kind() {
	case KindIPv4:
		return netip.AddrFrom4([4]byte(b[:4]))
	case KindIPv6:
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

// SrcMAC and DstMAC are the MACs of a non-IP key (zero otherwise).
func (k FlowKey) SrcMAC() MAC { return k.mac(keyWordA) }
func (k FlowKey) DstMAC() MAC { return k.mac(keyWordB) }

func (k FlowKey) mac(at int) MAC {
	var m MAC
	if k.Kind() == KindEthernet {
		binary.LittleEndian.PutUint32(m[0:4], k.w[at])
		binary.LittleEndian.PutUint16(m[4:6], uint16(k.w[at+1]))
	}
	return m
}

// MakeIPFlowKey builds the key ExtractKey would give an untagged, unfragmented
// TCP/UDP/SCTP/UDP-Lite/DCCP (or, with ports ignored, other protocol) packet
// from src to dst: for control-path lookups and tests.
func MakeIPFlowKey(zone uint16, proto uint8, src, dst netip.AddrPort) (FlowKey, error) {
	var k FlowKey
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	switch {
	case s.Is4() && d.Is4():
		a, b := s.As4(), d.As4()
		k.w[keyWordA] = binary.LittleEndian.Uint32(a[:])
		k.w[keyWordB] = binary.LittleEndian.Uint32(b[:])
		k.setMeta(proto, KindIPv4)
	case s.Is6() && d.Is6():
		a, b := s.As16(), d.As16()
		for i := range 4 {
			k.w[keyWordA+i] = binary.LittleEndian.Uint32(a[4*i:])
			k.w[keyWordB+i] = binary.LittleEndian.Uint32(b[4*i:])
		}
		k.setMeta(proto, KindIPv6)
	default:
		return FlowKey{}, fmt.Errorf("sourceroute: flow key needs two IPv4 or two IPv6 addresses, got %v and %v", src.Addr(), dst.Addr())
	}
	k.w[keyWordMeta] |= uint32(zone) << 16
	if protoHasPorts(proto) {
		k.w[keyWordMeta] |= kindPorts
		k.w[keyWordPorts] = uint32(src.Port())<<16 | uint32(dst.Port())
	}
	return k, nil
}

// String formats the key for logs, e.g. "zone 1 vlan 100 udp 10.0.0.1:40000 > 10.0.0.2:53".
func (k FlowKey) String() string {
	prefix := fmt.Sprintf("zone %d", k.Zone())
	if v := k.VLAN(); v != 0 || k.InnerVLAN() != 0 {
		prefix += fmt.Sprintf(" vlan %d", v)
		if iv := k.InnerVLAN(); iv != 0 {
			prefix += fmt.Sprintf(".%d", iv)
		}
	}
	switch k.Kind() {
	case KindEthernet:
		return fmt.Sprintf("%s ethertype %#04x %s > %s", prefix, k.EtherType(), k.SrcMAC(), k.DstMAC())
	case KindIPv4, KindIPv6:
	default:
		return prefix + " none"
	}
	frag := ""
	if k.IsFragment() {
		frag = " fragment"
	}
	if typ, code, id, ok := k.ICMP(); ok {
		return fmt.Sprintf("%s icmp type %d code %d id %d %s > %s", prefix, typ, code, id, k.SrcAddr(), k.DstAddr())
	}
	if k.hasPorts() {
		return fmt.Sprintf("%s proto %d %s > %s", prefix, k.Proto(),
			netip.AddrPortFrom(k.SrcAddr(), k.SrcPort()), netip.AddrPortFrom(k.DstAddr(), k.DstPort()))
	}
	return fmt.Sprintf("%s proto %d%s %s > %s", prefix, k.Proto(), frag, k.SrcAddr(), k.DstAddr())
}
