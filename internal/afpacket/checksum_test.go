package afpacket

import (
	"encoding/binary"
	"encoding/hex"
	"testing"
)

// udpVector is the IPv4/UDP frame of the MSR test vectors, whose checksum
// (0x0000 there means "none") is recomputed here against a known value.
const udpVector = "52540000000252540000000108004500002100010000401166c90a0000010a0000029c400035000d000068656c6c6f"

func TestCompleteChecksum(t *testing.T) {
	frame, _ := hex.DecodeString(udpVector)
	const want = 0x0b8a                                 // computed independently over the pseudo-header and segment
	binary.BigEndian.PutUint16(frame[14+20+6:], 0x1234) // a partial sum, as offload leaves it
	if !completeChecksum(frame) {
		t.Fatal("UDP frame not completed")
	}
	if got := binary.BigEndian.Uint16(frame[14+20+6:]); got != want {
		t.Fatalf("checksum %#04x, want %#04x", got, want)
	}
	// Verifying: the sum over pseudo-header and segment is all ones.
	ip := frame[14:]
	sum := sumBytes(uint32(17)+uint32(13), ip[12:20])
	sum = sumBytes(sum, ip[20:33])
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	if uint16(sum) != 0xffff {
		t.Fatalf("checksum does not verify: %#x", sum)
	}

	arp := make([]byte, 42)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	if completeChecksum(arp) {
		t.Error("ARP frame rewritten")
	}
	frag, _ := hex.DecodeString(udpVector)
	frag[14+6] = 0x20 // more fragments
	if completeChecksum(frag) {
		t.Error("fragment rewritten")
	}
}

func FuzzCompleteChecksum(f *testing.F) {
	frame, _ := hex.DecodeString(udpVector)
	f.Add(frame)
	for i := range frame {
		f.Add(frame[:i])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		completeChecksum(b) // must never read or write out of bounds
	})
}
