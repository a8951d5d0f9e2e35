package sourceroute

import (
	"encoding/binary"
	"testing"
)

// The codec's per-frame operations must not allocate: they run for every
// packet on the DM and on every VSA.
func TestCodecZeroAllocs(t *testing.T) {
	v := loadChainVectors(t)
	c := DefaultCodec()
	hdr := v.ToVSA1[:v.HeaderLength]
	buf := make([]byte, 1500)
	wire := append([]byte{}, v.ToVSA1...)
	notice := make([]byte, 300)
	nn, err := BuildDropNotice(notice, dm, vsa1, NoticeSignature, v.ToVSA1)
	if err != nil {
		t.Fatal(err)
	}
	var sink int
	ops := []struct {
		name string
		fn   func()
	}{
		{"Parse", func() { f, _ := c.Parse(wire); sink += f.Num() }},
		{"Encapsulate", func() { n, _ := Encapsulate(buf, hdr, v.Original); sink += n }},
		{"Advance", func() {
			copy(wire, v.ToVSA1)
			f, _ := c.Parse(wire)
			if c.Advance(f, vsa1) != OK {
				panic("advance")
			}
		}},
		{"Strip", func() {
			f, _ := c.Parse(v.VSA2ToDM)
			in, _ := c.Strip(f, dm)
			sink += len(in)
		}},
		{"ParseDropNotice", func() { d, _ := ParseDropNotice(notice[:nn]); sink += len(d.Dropped) }},
		{"ReasonString", func() { sink += len(ReasonDstMismatch.String()) }},
	}
	for _, op := range ops {
		if a := testing.AllocsPerRun(100, op.fn); a != 0 {
			t.Errorf("%s: %v allocs per frame, want 0", op.name, a)
		}
	}
	_ = sink
}

func BenchmarkParse(b *testing.B) {
	v := loadChainVectors(b)
	c := DefaultCodec()
	b.ReportAllocs()
	b.SetBytes(int64(len(v.ToVSA1)))
	cpu := startCPUClock(b)
	for b.Loop() {
		if _, r := c.Parse(v.ToVSA1); r != OK {
			b.Fatal(r)
		}
	}
	cpu.report(b)
}

func BenchmarkParseMaxHops(b *testing.B) {
	v := loadChainVectors(b)
	frame := msrFrame(DefaultEtherType, routeOf(DefaultMaxHops), 0, v.Original)
	c := DefaultCodec()
	b.ReportAllocs()
	cpu := startCPUClock(b)
	for b.Loop() {
		if _, r := c.Parse(frame); r != OK {
			b.Fatal(r)
		}
	}
	cpu.report(b)
}

func BenchmarkEncapsulate(b *testing.B) {
	v := loadChainVectors(b)
	hdr := v.ToVSA1[:v.HeaderLength]
	dst := make([]byte, 1600)
	b.ReportAllocs()
	b.SetBytes(int64(len(v.ToVSA1)))
	cpu := startCPUClock(b)
	for b.Loop() {
		if _, r := Encapsulate(dst, hdr, v.Original); r != OK {
			b.Fatal(r)
		}
	}
	cpu.report(b)
}

// BenchmarkAdvance measures the VSA hop alone on an already parsed frame.
// The frame is rewound (next=0, dst=VSA1) by two stores rather than a copy so
// the number is the hop, not the rewind; the dst store is 16 bits wide like
// Advance's load of that field, because a narrower store would stall
// store-to-load forwarding, a cost a frame fresh from the NIC never pays.
func BenchmarkAdvance(b *testing.B) {
	v := loadChainVectors(b)
	wire := append([]byte{}, v.ToVSA1...)
	c := DefaultCodec()
	f, r := c.Parse(wire)
	if r != OK {
		b.Fatal(r)
	}
	b.ReportAllocs()
	cpu := startCPUClock(b)
	for b.Loop() {
		if c.Advance(f, vsa1) != OK {
			b.Fatal("advance")
		}
		wire[15] = 0
		binary.BigEndian.PutUint16(wire[4:6], 0x1001)
	}
	cpu.report(b)
}

func BenchmarkStrip(b *testing.B) {
	v := loadChainVectors(b)
	c := DefaultCodec()
	f, r := c.Parse(v.VSA2ToDM)
	if r != OK {
		b.Fatal(r)
	}
	b.ReportAllocs()
	cpu := startCPUClock(b)
	for b.Loop() {
		if _, r := c.Strip(f, dm); r != OK {
			b.Fatal(r)
		}
	}
	cpu.report(b)
}

func BenchmarkParseDropNotice(b *testing.B) {
	v := loadChainVectors(b)
	notice := make([]byte, 300)
	n, err := BuildDropNotice(notice, dm, vsa1, NoticeSignature, v.ToVSA1)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	cpu := startCPUClock(b)
	for b.Loop() {
		if _, r := ParseDropNotice(notice[:n]); r != OK {
			b.Fatal(r)
		}
	}
	cpu.report(b)
}
