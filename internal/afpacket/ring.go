package afpacket

import "encoding/binary"

// The TPACKET_V3 ring layout of linux/if_packet.h. The offsets are kernel
// ABI; they are spelled out here rather than taken from x/sys structs so the
// walker reads the ring as plain bytes, with bounds checks, on any platform
// the fuzzer runs on.
const (
	// struct tpacket_block_desc with its tpacket_hdr_v1.
	blockDescLen       = 48
	bdStatusOff        = 8
	bdNumPktsOff       = 12
	bdFirstPktOff      = 16
	bdBlockLenOff      = 20
	frameHdrLen        = 48 // struct tpacket3_hdr
	fhNextOff          = 0
	fhSnaplenOff       = 12
	fhLenOff           = 16
	fhStatusOff        = 20
	fhMacOff           = 24
	fhVLANTCIOff       = 32
	fhVLANTPIDOff      = 36
	statusUser         = 1 << 0 // TP_STATUS_USER: the block belongs to user space
	statusCsumNotReady = 1 << 3 // TP_STATUS_CSUMNOTREADY
	statusVLAN         = 1 << 4 // TP_STATUS_VLAN_VALID
	statusVLANTPID     = 1 << 6 // TP_STATUS_VLAN_TPID_VALID
	vlanTagLen         = 4
	macAddrsLen        = 12
	tpid8021Q          = 0x8100
)

// verdict is what the walker made of one ring entry.
type verdict uint8

const (
	verdictFrame     verdict = iota // a whole frame, handed out
	verdictTruncated                // the ring holds only part of the frame: skip it
	verdictBadFrame                 // this frame's header is unusable, the walk can go on
	verdictMalformed                // the block's descriptors are inconsistent: abandon the rest
	verdictDone                     // no frames left in the block
)

// blockWalker hands out the frames of one retired ring block in order. It
// trusts nothing it reads: every offset and length is checked against the
// block before it is used, so a corrupt descriptor ends the walk instead of
// reading (or, for VLAN tags, writing) outside the block.
type blockWalker struct {
	b    []byte // the block, cut to the length its descriptor claims
	off  int    // offset of the next frame header in b
	left uint32 // frames the descriptor says are still ahead

	// Counted per walk for the socket's statistics.
	vlanRestored    uint64
	checksumPartial uint64
}

// open starts a walk over block. A block the kernel could never have
// produced yields verdictMalformed; otherwise the walk is ready for next.
func (w *blockWalker) open(block []byte) verdict {
	w.b, w.off, w.left = nil, 0, 0
	if len(block) < blockDescLen {
		return verdictMalformed
	}
	numPkts := binary.NativeEndian.Uint32(block[bdNumPktsOff:])
	first := uint64(binary.NativeEndian.Uint32(block[bdFirstPktOff:]))
	used := uint64(binary.NativeEndian.Uint32(block[bdBlockLenOff:]))
	if used < blockDescLen || used > uint64(len(block)) {
		return verdictMalformed
	}
	if numPkts > 0 && (first < blockDescLen || first > used) {
		return verdictMalformed
	}
	w.b, w.off, w.left = block[:used], int(first), numPkts
	return verdictFrame
}

// next returns the next frame of the block. The frame is a view into the
// block with its capacity cut to its length, so appending to it can never
// overwrite the ring. A frame the kernel stripped a VLAN tag from gets the
// tag back in place: the ring leaves room between the frame header and the
// frame, so the 12 address bytes move four bytes down and the tag goes in
// behind them, without copying the frame.
func (w *blockWalker) next() ([]byte, verdict) {
	if w.left == 0 {
		return nil, verdictDone
	}
	off := w.off
	if off > len(w.b)-frameHdrLen {
		return w.abandon()
	}
	h := w.b[off : off+frameHdrLen]
	snap := uint64(binary.NativeEndian.Uint32(h[fhSnaplenOff:]))
	wire := binary.NativeEndian.Uint32(h[fhLenOff:])
	status := binary.NativeEndian.Uint32(h[fhStatusOff:])
	mac := uint64(binary.NativeEndian.Uint16(h[fhMacOff:]))
	end := uint64(off) + mac + snap
	if mac < frameHdrLen || end > uint64(len(w.b)) {
		return w.abandon()
	}
	w.left--
	if w.left > 0 {
		// The next header must lie past this frame; that also guarantees
		// the walk moves forward, so it ends on any input.
		step := uint64(binary.NativeEndian.Uint32(h[fhNextOff:]))
		if step < mac+snap || uint64(off)+step > uint64(len(w.b)) {
			return w.abandon()
		}
		w.off = off + int(step)
	}
	if snap < uint64(wire) {
		return nil, verdictTruncated
	}
	start, stop := off+int(mac), int(end)
	if status&statusVLAN != 0 {
		if snap < macAddrsLen || mac-vlanTagLen < frameHdrLen {
			return nil, verdictBadFrame
		}
		tpid := uint16(tpid8021Q)
		if status&statusVLANTPID != 0 {
			if t := binary.NativeEndian.Uint16(h[fhVLANTPIDOff:]); t != 0 {
				tpid = t
			}
		}
		tci := uint16(binary.NativeEndian.Uint32(h[fhVLANTCIOff:]))
		copy(w.b[start-vlanTagLen:], w.b[start:start+macAddrsLen])
		start -= vlanTagLen
		binary.BigEndian.PutUint16(w.b[start+macAddrsLen:], tpid)
		binary.BigEndian.PutUint16(w.b[start+macAddrsLen+2:], tci)
		w.vlanRestored++
	}
	if status&statusCsumNotReady != 0 {
		w.checksumPartial++
		completeChecksum(w.b[start:stop])
	}
	return w.b[start:stop:stop], verdictFrame
}

// abandon ends the walk: once one offset is wrong, none after it can be
// trusted.
func (w *blockWalker) abandon() ([]byte, verdict) {
	w.left = 0
	return nil, verdictMalformed
}
