package afpacket

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
)

// ringEntry is one frame as the kernel leaves it in a block: data is what
// follows the frame header (with any VLAN tag already lifted out), wire the
// frame's length on the wire without that tag.
type ringEntry struct {
	data   []byte
	wire   int // 0: len(data)
	status uint32
	tci    uint32
	tpid   uint16
	mac    int // 0: where the kernel puts an Ethernet frame
}

// kernelMacOffset is where tpacket_rcv puts an Ethernet frame behind its
// header: TPACKET_ALIGN(TPACKET3_HDRLEN + 16) - ETH_HLEN.
const kernelMacOffset = 96 - 14

// buildBlock lays entries out in a block of size bytes exactly as the
// kernel does: descriptor, then each entry 16-byte aligned, the last one's
// next offset 0.
func buildBlock(size int, entries []ringEntry) []byte {
	b := make([]byte, size)
	ne := binary.NativeEndian
	off := blockDescLen
	for i, e := range entries {
		mac := e.mac
		if mac == 0 {
			mac = kernelMacOffset
		}
		wire := e.wire
		if wire == 0 {
			wire = len(e.data)
		}
		h := b[off:]
		step := (mac + len(e.data) + frameAlignment - 1) &^ (frameAlignment - 1)
		if i < len(entries)-1 {
			ne.PutUint32(h[fhNextOff:], uint32(step))
		}
		ne.PutUint32(h[fhSnaplenOff:], uint32(len(e.data)))
		ne.PutUint32(h[fhLenOff:], uint32(wire))
		ne.PutUint32(h[fhStatusOff:], e.status|statusUser)
		ne.PutUint16(h[fhMacOff:], uint16(mac))
		ne.PutUint32(h[fhVLANTCIOff:], e.tci)
		ne.PutUint16(h[fhVLANTPIDOff:], e.tpid)
		copy(h[mac:], e.data)
		off += step
	}
	ne.PutUint32(b[0:], 3) // TPACKET_V3
	ne.PutUint32(b[bdStatusOff:], statusUser)
	ne.PutUint32(b[bdNumPktsOff:], uint32(len(entries)))
	ne.PutUint32(b[bdFirstPktOff:], blockDescLen)
	ne.PutUint32(b[bdBlockLenOff:], uint32(off))
	return b
}

// walkResult is what a whole walk produced, in order: frames (copied) and
// the verdicts of entries that were not handed out.
type walkResult struct {
	Frames   [][]byte
	Skipped  []verdict
	Restored uint64
	Partial  uint64
}

func walkAll(t testing.TB, block []byte) walkResult {
	var w blockWalker
	var r walkResult
	if w.open(block) == verdictMalformed {
		r.Skipped = append(r.Skipped, verdictMalformed)
		return r
	}
	for {
		f, v := w.next()
		switch v {
		case verdictFrame:
			if !within(block, f) || cap(f) != len(f) {
				t.Fatalf("frame of %d bytes (cap %d) is not a capped view into the block", len(f), cap(f))
			}
			r.Frames = append(r.Frames, bytes.Clone(f))
			continue
		case verdictDone:
		default:
			r.Skipped = append(r.Skipped, v)
			if v != verdictMalformed {
				continue
			}
		}
		r.Restored, r.Partial = w.vlanRestored, w.checksumPartial
		return r
	}
}

// within reports whether inner's bytes lie inside outer's.
func within(outer, inner []byte) bool {
	if len(inner) == 0 {
		return true
	}
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(outer)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(inner)))
	return p >= lo && p+uintptr(len(inner)) <= lo+uintptr(len(outer))
}

// ethFrame is a test frame: broadcast destination, a fixed source, the
// given EtherType, then payload.
func ethFrame(etherType uint16, payload []byte) []byte {
	f := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0, 0}, payload...)
	binary.BigEndian.PutUint16(f[12:], etherType)
	return f
}

// tagged inserts an 802.1Q-style tag after the addresses of frame.
func tagged(frame []byte, tpid, tci uint16) []byte {
	out := append([]byte(nil), frame[:12]...)
	out = binary.BigEndian.AppendUint16(out, tpid)
	out = binary.BigEndian.AppendUint16(out, tci)
	return append(out, frame[12:]...)
}

func TestBlockWalker(t *testing.T) {
	plain := ethFrame(0x88b5, []byte("plain frame payload"))
	second := ethFrame(0x0800, bytes.Repeat([]byte{0xab}, 46))
	inner := tagged(ethFrame(0x0800, []byte("qinq payload")), 0x8100, 7)
	const size = 4096
	le32 := func(b []byte, off int, v uint32) []byte {
		binary.NativeEndian.PutUint32(b[off:], v)
		return b
	}
	tests := []struct {
		name  string
		block []byte
		want  walkResult
	}{
		{
			name:  "frames in order",
			block: buildBlock(size, []ringEntry{{data: plain}, {data: second}}),
			want:  walkResult{Frames: [][]byte{plain, second}},
		},
		{
			name: "802.1Q tag restored with its TPID",
			block: buildBlock(size, []ringEntry{
				{data: plain, status: statusVLAN | statusVLANTPID, tci: 0x2005, tpid: 0x8100},
				{data: second},
			}),
			want: walkResult{Frames: [][]byte{tagged(plain, 0x8100, 0x2005), second}, Restored: 1},
		},
		{
			name:  "tag without a valid TPID is 802.1Q",
			block: buildBlock(size, []ringEntry{{data: plain, status: statusVLAN, tci: 0}}),
			want:  walkResult{Frames: [][]byte{tagged(plain, 0x8100, 0)}, Restored: 1},
		},
		{
			name:  "outer 802.1ad tag restored in front of the inner one",
			block: buildBlock(size, []ringEntry{{data: inner, status: statusVLAN | statusVLANTPID, tci: 100, tpid: 0x88a8}}),
			want:  walkResult{Frames: [][]byte{tagged(inner, 0x88a8, 100)}, Restored: 1},
		},
		{
			name:  "partial checksum counted, frame handed out",
			block: buildBlock(size, []ringEntry{{data: plain, status: statusCsumNotReady}}),
			want:  walkResult{Frames: [][]byte{plain}, Partial: 1},
		},
		{
			name:  "truncated frame skipped, walk goes on",
			block: buildBlock(size, []ringEntry{{data: plain, wire: 9000}, {data: second}}),
			want:  walkResult{Frames: [][]byte{second}, Skipped: []verdict{verdictTruncated}},
		},
		{
			name:  "tag on a frame too short for addresses skipped, walk goes on",
			block: buildBlock(size, []ringEntry{{data: plain[:8], status: statusVLAN}, {data: second}}),
			want:  walkResult{Frames: [][]byte{second}, Skipped: []verdict{verdictBadFrame}},
		},
		{
			name:  "tag with no room in front of the frame skipped",
			block: buildBlock(size, []ringEntry{{data: plain, status: statusVLAN, mac: frameHdrLen}}),
			want:  walkResult{Skipped: []verdict{verdictBadFrame}},
		},
		{
			name:  "empty block",
			block: buildBlock(size, nil),
			want:  walkResult{},
		},
		{
			name:  "shorter than a descriptor",
			block: make([]byte, blockDescLen-1),
			want:  walkResult{Skipped: []verdict{verdictMalformed}},
		},
		{
			name:  "used length beyond the block",
			block: le32(buildBlock(size, []ringEntry{{data: plain}}), bdBlockLenOff, size+1),
			want:  walkResult{Skipped: []verdict{verdictMalformed}},
		},
		{
			name:  "first frame inside the descriptor",
			block: le32(buildBlock(size, []ringEntry{{data: plain}}), bdFirstPktOff, 8),
			want:  walkResult{Skipped: []verdict{verdictMalformed}},
		},
		{
			name:  "more frames claimed than present",
			block: le32(buildBlock(size, []ringEntry{{data: plain}}), bdNumPktsOff, 1000),
			want:  walkResult{Skipped: []verdict{verdictMalformed}},
		},
		{
			name:  "next offset inside the frame",
			block: le32(buildBlock(size, []ringEntry{{data: plain}, {data: second}}), blockDescLen+fhNextOff, 16),
			want:  walkResult{Skipped: []verdict{verdictMalformed}},
		},
		{
			name:  "frame runs past the used length",
			block: le32(buildBlock(size, []ringEntry{{data: second}, {data: plain}}), blockDescLen+fhSnaplenOff, size),
			want:  walkResult{Skipped: []verdict{verdictMalformed}},
		},
		{
			name: "mac offset inside the frame header",
			block: func() []byte {
				b := buildBlock(size, []ringEntry{{data: plain}})
				binary.NativeEndian.PutUint16(b[blockDescLen+fhMacOff:], 20)
				return b
			}(),
			want: walkResult{Skipped: []verdict{verdictMalformed}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := walkAll(t, tt.block)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("walk (-want +got):\n%s", diff)
			}
		})
	}
}

// capturedFrames are the frames TestCaptureGoldenBlock sends through a real
// ring to make testdata/captured-block.bin.
func capturedFrames() [][]byte {
	plain := ethFrame(0x88b5, []byte("captured: plain"))
	inner := tagged(ethFrame(0x88b5, []byte("captured: q-in-q")), 0x8100, 20)
	return [][]byte{
		plain,
		tagged(ethFrame(0x88b5, []byte("captured: 802.1Q, PCP 5, VID 5")), 0x8100, 0xa005),
		tagged(inner, 0x88a8, 10),
	}
}

const capturedBlockFile = "captured-block.bin"

// TestWalkCapturedBlock walks a block a real kernel filled (the frames of
// capturedFrames, two of them VLAN-tagged), proving that the walker's idea
// of the layout is the kernel's.
func TestWalkCapturedBlock(t *testing.T) {
	block, err := os.ReadFile(filepath.Join("testdata", capturedBlockFile))
	if err != nil {
		t.Fatal(err)
	}
	got := walkAll(t, block)
	want := walkResult{Frames: capturedFrames(), Restored: 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("walk of the captured block (-want +got):\n%s", diff)
	}
}

// FuzzBlockWalker feeds arbitrary bytes to the walker as a ring block. It
// must never panic (an out-of-range slice would), every frame must be a
// capped view inside the block, and the walk must end.
func FuzzBlockWalker(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", capturedBlockFile)); err == nil {
		f.Add(b)
	}
	plain := ethFrame(0x88b5, []byte("seed"))
	f.Add(buildBlock(512, []ringEntry{{data: plain}, {data: plain, status: statusVLAN | statusVLANTPID, tci: 1, tpid: 0x88a8}}))
	f.Add(buildBlock(256, []ringEntry{{data: plain, wire: 100}}))
	f.Add(buildBlock(128, nil))
	f.Fuzz(func(t *testing.T, block []byte) {
		var w blockWalker
		if w.open(block) == verdictMalformed {
			return
		}
		claimed := w.left
		var entries uint32
		for {
			frame, v := w.next()
			if v == verdictDone || v == verdictMalformed {
				break
			}
			entries++
			if entries > claimed || entries > uint32(len(block)/frameHdrLen) {
				t.Fatalf("walk went on for %d entries; the descriptor claims %d in %d bytes", entries, claimed, len(block))
			}
			if v == verdictFrame && (!within(block, frame) || cap(frame) != len(frame)) {
				t.Fatalf("frame of %d bytes (cap %d) is not a capped view into the block", len(frame), cap(frame))
			}
		}
	})
}

// BenchmarkBlockWalker is the per-frame cost of walking a ring block: 64
// frames of 60 bytes, plain or with a VLAN tag to restore in place. The
// tagged walk moves the addresses again on every pass, which costs the
// same as the first time.
func BenchmarkBlockWalker(b *testing.B) {
	frame := ethFrame(0x0800, make([]byte, 46))
	for _, bc := range []struct {
		name   string
		status uint32
	}{{"plain", 0}, {"vlan", statusVLAN | statusVLANTPID}} {
		b.Run(bc.name, func(b *testing.B) {
			entries := make([]ringEntry, 64)
			for i := range entries {
				entries[i] = ringEntry{data: frame, status: bc.status, tci: 5, tpid: 0x8100}
			}
			block := buildBlock(64<<10, entries)
			var w blockWalker
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				w.open(block)
				for {
					if _, v := w.next(); v == verdictDone {
						break
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(entries)), "ns/frame")
		})
	}
}
