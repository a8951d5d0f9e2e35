//go:build linux

package xdpfast

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// The Go statement of the rule completeChecksum's instructions follow,
// written from RFC 1071 and the kernel's CHECKSUM_PARTIAL convention
// rather than from the program.

// sum16 adds b as big-endian 16-bit words (an odd last byte padded with a
// zero) to sum, folded.
func sum16(sum uint32, b []byte) uint16 {
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// l4Checksum locates the TCP or UDP checksum of the IPv4 frame at in: the
// field's offset in in, the segment, and the pseudo-header's folded sum.
func l4Checksum(in []byte) (at int, segment []byte, pseudo uint16, ok bool) {
	if len(in) < minUDPFrame {
		return 0, nil, 0, false
	}
	proto := in[ipProtoOff]
	switch proto {
	case unix.IPPROTO_TCP:
		at = l4Off + 16
	case unix.IPPROTO_UDP:
		at = l4Off + 6
	default:
		return 0, nil, 0, false
	}
	total := int(binary.BigEndian.Uint16(in[ipLenOff:]))
	if len(in) < at+2 || total < minIPTotal || ethLen+total > len(in) {
		return 0, nil, 0, false
	}
	var p [4]byte
	p[1] = proto
	binary.BigEndian.PutUint16(p[2:], uint16(total-20))
	pseudo = sum16(uint32(sum16(0, in[ipSaddrOff:ipSaddrOff+8])), p[:])
	return at, in[l4Off : ethLen+total], pseudo, true
}

// withCompletedChecksum is frame with the checksum of the inner frame at
// innerOff completed if its field holds only the pseudo-header's sum, as a
// sender leaves it to checksum offload.
func withCompletedChecksum(frame []byte, innerOff int) []byte {
	in := frame[innerOff:]
	at, seg, pseudo, ok := l4Checksum(in)
	if !ok || binary.BigEndian.Uint16(in[at:]) != pseudo {
		return frame
	}
	if in[ipProtoOff] == unix.IPPROTO_UDP && pseudo == 0 {
		return frame
	}
	out := append([]byte(nil), frame...)
	c := ^sum16(0, seg) // the field's pseudo-header sum is part of seg
	if c == 0 && in[ipProtoOff] == unix.IPPROTO_UDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(out[innerOff+at:], c)
	return out
}

// checksumOK says whether the frame's TCP or UDP checksum verifies.
func checksumOK(in []byte) bool {
	at, seg, pseudo, ok := l4Checksum(in)
	if !ok {
		return false
	}
	if in[ipProtoOff] == unix.IPPROTO_UDP && binary.BigEndian.Uint16(in[at:]) == 0 {
		return true
	}
	return sum16(uint32(pseudo), seg) == 0xffff
}

// offloaded is a frame of size bytes with its checksum left to offload;
// complete is the same with its checksum filled in.
func offloaded(proto byte, size int) []byte {
	f := udp(size)
	f[ipProtoOff] = proto
	if proto == unix.IPPROTO_TCP {
		f[tcpFlagsOff] = 0x18 // PSH, ACK
		f[l4Off+12] = 5 << 4
	}
	for i := l4Off + 20; i < len(f); i++ {
		f[i] = byte(i*7 + size)
	}
	at, _, pseudo, ok := l4Checksum(f)
	if !ok {
		panic(fmt.Sprintf("no checksum in a %d-byte frame", size))
	}
	binary.BigEndian.PutUint16(f[at:], pseudo)
	return f
}

func complete(f []byte) []byte { return withCompletedChecksum(f, 0) }

// TestProgramCompletesOffloadedChecksums: a frame whose sender left its
// TCP or UDP checksum to offload leaves the XDP program with the checksum
// complete, for every length around the program's chunk boundaries, in
// all four kinds of entry; any other frame's checksum, right or wrong, is
// left alone. The tc program leaves it to the skb.
func TestProgramCompletesOffloadedChecksums(t *testing.T) {
	f := loProgram(t)
	sizes := []int{60, 61, 62, 63, 64, 65, 300, 309, 310, 311, 312, 313, 565, 566, 567, 568, 569, 1000, 1513, 1514, 3000}
	for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		for _, size := range sizes {
			partial := offloaded(proto, size)
			good := complete(partial)
			if !checksumOK(good) {
				t.Fatalf("the reference's own checksum does not verify for %d bytes", size)
			}
			if checksumOK(partial) {
				t.Fatalf("a frame left to offload verifies already (%d bytes)", size)
			}
			wrong := edited(good, func(b []byte) { b[len(b)-1] ^= 0x5a })
			zeroUDP := edited(good, func(b []byte) {
				if proto == unix.IPPROTO_UDP {
					b[l4Off+6], b[l4Off+7] = 0, 0
				}
			})
			for _, tc := range []struct {
				name     string
				in, want []byte
			}{
				{"left to offload", partial, good},
				{"complete", good, good},
				{"wrong", wrong, wrong},
				{"udp without checksum", zeroUDP, zeroUDP},
			} {
				t.Run(fmt.Sprintf("proto %d/%d bytes/%s", proto, size, tc.name), func(t *testing.T) {
					key, ok := KeyOf(1, tc.in)
					if !ok {
						t.Fatal("no key")
					}
					var val [valueLen]byte
					binary.NativeEndian.PutUint32(val[vOut:], 1)
					if err := f.flows.Put(key[:], val[:]); err != nil {
						t.Fatal(err)
					}
					defer f.flows.Delete(key[:])
					verdict, out := runOut(t, f, tc.in)
					if verdict != xdpRedirect {
						t.Fatalf("verdict %d, want XDP_REDIRECT", verdict)
					}
					if diff := cmp.Diff(tc.want, out); diff != "" {
						t.Errorf("frame as it leaves (-want +got):\n%s", diff)
					}
					if _, ref := reference(map[Entry]refEntry{key: {kind: kindDirect}}, tc.in); !cmp.Equal(ref, out) {
						t.Errorf("the reference disagrees")
					}
					if tcVerdict, tcOut := runTC(t, f, tc.in); tcVerdict != 7 || !cmp.Equal(tcOut, tc.in) { // TC_ACT_REDIRECT
						t.Errorf("tc program: verdict %d, changed the frame: %v", tcVerdict, !cmp.Equal(tcOut, tc.in))
					}
				})
			}
		}
	}
}

// TestChainCompletesOffloadedChecksums: the inner frame's checksum left to
// offload is completed when the program pushes the header, switches the
// frame to the next appliance, and strips it for delivery.
func TestChainCompletesOffloadedChecksums(t *testing.T) {
	f := loProgram(t)
	c := loadChain(t)
	// The vector's inner frame, with a payload long enough for two chunks
	// and its checksum left to offload.
	inner := offloaded(unix.IPPROTO_UDP, 700)
	copy(inner, c.inner[:ethLen])
	copy(inner[ipSaddrOff:], c.inner[ipSaddrOff:ipSaddrOff+8])
	copy(inner[l4Off:], c.inner[l4Off:l4Off+4])
	binary.BigEndian.PutUint16(inner[l4Off+6:], 0)
	at, _, pseudo, _ := l4Checksum(inner)
	binary.BigEndian.PutUint16(inner[at:], pseudo)
	wrap := func(hdrFrom []byte) []byte { return append(append([]byte(nil), hdrFrom[:c.hdrLen]...), inner...) }
	long := chainFrames{inner: inner, toVSA1: wrap(c.toVSA1), toVSA2: wrap(c.toVSA2), toDM: wrap(c.toDM), hdrLen: c.hdrLen}
	entries := chainEntries(t, f, long, 1500)
	defer clearMap(t, f)
	good := complete(inner)
	for _, tc := range []struct {
		name     string
		in, want []byte
	}{
		{"push", long.inner, wrap(c.toVSA1)[:c.hdrLen]},
		{"switch", long.toVSA2, long.toVSA2[:c.hdrLen]},
		{"strip", long.toDM, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			verdict, out := runOut(t, f, tc.in)
			if verdict != xdpRedirect {
				t.Fatalf("verdict %d, want XDP_REDIRECT", verdict)
			}
			want := append(append([]byte(nil), tc.want...), good...)
			if diff := cmp.Diff(want, out); diff != "" {
				t.Errorf("frame as it leaves (-want +got):\n%s", diff)
			}
			if _, ref := reference(entries, tc.in); !cmp.Equal(ref, out) {
				t.Errorf("the reference disagrees")
			}
		})
	}
}
