package appliance

import (
	"testing"

	"github.com/vsagent/vsagent/sourceroute"
)

// FuzzApplianceHandle feeds arbitrary frames and verdicts to the core and
// checks what SOURCE-ROUTE.md promises: only valid frames addressed to us
// leave, advanced by exactly one hop and sent by us; notices parse; and
// every frame is accounted for exactly once.
func FuzzApplianceHandle(f *testing.F) {
	for _, name := range []string{"two-vsa-chain.json", "invalid-frames.json"} {
		for _, frame := range loadVectors(f, name) {
			for v := range byte(4) {
				f.Add(frame, v)
			}
		}
	}
	f.Add([]byte{}, byte(0))
	f.Add([]byte{0x02, 0, 0, 0, 0x10, 0x01}, byte(0))

	f.Fuzz(func(t *testing.T, frame []byte, verdict byte) {
		insp := InspectorFunc(func(inner []byte, _ FrameMeta) Verdict {
			switch verdict % 4 {
			case 0:
				return Pass()
			case 1:
				return DropNotify(sourceroute.NoticeReason(verdict>>2 | 1))
			case 2:
				if len(inner) > 0 {
					inner[0] ^= 0xff
				}
				return Rewrite(int(verdict >> 2))
			}
			return Drop()
		})
		a, rec := newTestAppliance(t, vsa1, insp, true)
		in := append([]byte(nil), frame...)
		feed(a, frame)

		c := a.Counters()
		if sum := c.Ignored + c.Forwarded + c.Dropped + c.InvalidTotal() + c.SendErrors; c.Received != 1 || sum != 1 {
			t.Fatalf("frame accounted %d times (received %d): %+v", sum, c.Received, c)
		}
		if int(c.NoticesSent) > len(rec.sent) || len(rec.sent) > 1 {
			t.Fatalf("sent %d frames, counters %+v", len(rec.sent), c)
		}
		if len(rec.sent) == 0 {
			return
		}
		out := rec.sent[0]
		codec := sourceroute.DefaultCodec()
		if c.NoticesSent == 1 {
			n, r := sourceroute.ParseDropNotice(out)
			if r != sourceroute.OK || n.From != vsa1 {
				t.Fatalf("bad notice %x: %v", out, r)
			}
			return
		}
		orig, r := codec.Parse(in)
		if r != sourceroute.OK || orig.Dst() != vsa1 {
			t.Fatalf("forwarded a frame that was invalid (%v) or not ours (%s)", r, orig.Dst())
		}
		fwd, r := codec.Parse(out)
		if r != sourceroute.OK {
			t.Fatalf("forwarded frame does not parse: %v", r)
		}
		if fwd.Src() != vsa1 || fwd.Next() != orig.Next()+1 || fwd.Num() != orig.Num() {
			t.Fatalf("forwarded src %s next %d num %d from next %d num %d", fwd.Src(), fwd.Next(), fwd.Num(), orig.Next(), orig.Num())
		}
		for i := range orig.Num() {
			if fwd.Hop(i) != orig.Hop(i) {
				t.Fatalf("route entry %d changed from %s to %s", i, orig.Hop(i), fwd.Hop(i))
			}
		}
	})
}
