package afpacket

import "encoding/binary"

// completeChecksum fills in the TCP or UDP checksum of an Ethernet frame
// whose sender left it to offload (TP_STATUS_CSUMNOTREADY: taps and veths
// hand such frames over with only the pseudo-header sum in place). A frame
// forwarded on as is would be dropped by its receiver as corrupt. It
// reports whether it rewrote a checksum; frames it cannot parse, fragments
// and other protocols are left untouched.
func completeChecksum(frame []byte) bool {
	off := 12
	if len(frame) < off+2 {
		return false
	}
	etype := binary.BigEndian.Uint16(frame[off:])
	for (etype == 0x8100 || etype == 0x88a8) && len(frame) >= off+6 {
		off += 4
		etype = binary.BigEndian.Uint16(frame[off:])
	}
	off += 2
	var proto uint8
	var sum uint32
	var l4 []byte
	switch etype {
	case 0x0800:
		ip := frame[off:]
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return false
		}
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if ihl < 20 || total < ihl || total > len(ip) {
			return false
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return false // a fragment: its L4 header may not even be here
		}
		proto = ip[9]
		l4 = ip[ihl:total]
		sum = sumBytes(0, ip[12:20])
	case 0x86dd:
		ip := frame[off:]
		if len(ip) < 40 || ip[0]>>4 != 6 {
			return false
		}
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if 40+plen > len(ip) {
			return false
		}
		proto = ip[6] // extension headers are not walked: left as they are
		l4 = ip[40 : 40+plen]
		sum = sumBytes(0, ip[8:40])
	default:
		return false
	}
	var at int
	switch proto {
	case 6:
		at = 16
	case 17:
		at = 6
	default:
		return false
	}
	if len(l4) < at+2 {
		return false
	}
	sum += uint32(proto) + uint32(len(l4))
	l4[at], l4[at+1] = 0, 0
	sum = sumBytes(sum, l4)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 && proto == 17 {
		c = 0xffff // 0 means "no checksum" in UDP over IPv4
	}
	binary.BigEndian.PutUint16(l4[at:], c)
	return true
}

// sumBytes adds b as big-endian 16-bit words to sum (one's complement,
// carries folded later).
func sumBytes(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}
