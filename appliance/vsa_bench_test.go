package appliance

import (
	"context"
	"testing"

	"github.com/vsagent/vsagent/sourceroute"
)

// discard is a Transport whose writes vanish, to measure the core alone.
type discard struct{}

func (discard) ReadFrame(ctx context.Context, _ []byte) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}
func (discard) WriteFrame(context.Context, []byte) error { return nil }

// handleCases are the per-frame paths whose cost matters: a forward, a drop
// with a notice, and a malformed frame.
func handleCases(t testing.TB) []struct {
	name    string
	frame   []byte
	verdict Verdict
} {
	v := loadVectors(t, "two-vsa-chain.json")
	inv := loadVectors(t, "invalid-frames.json")
	return []struct {
		name    string
		frame   []byte
		verdict Verdict
	}{
		{"forward", v["dm_encapsulated_to_vsa1"], Pass()},
		{"drop_notice", v["dm_encapsulated_to_vsa1"], DropNotify(sourceroute.NoticeSignature)},
		{"malformed", inv["multicast_hop_in_route"], Pass()},
	}
}

func newDiscardAppliance(t testing.TB, verdict Verdict) *Appliance {
	a, err := NewAppliance(ApplianceConfig{Self: vsa1, Transport: discard{}, NotifyDrops: true,
		Inspector: InspectorFunc(func([]byte, FrameMeta) Verdict { return verdict })})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestHandleAllocatesNothing(t *testing.T) {
	for _, tc := range handleCases(t) {
		a := newDiscardAppliance(t, tc.verdict)
		ctx := context.Background()
		allocs := testing.AllocsPerRun(1000, func() {
			// Advance rewrites the header in place, so every run starts
			// from the received bytes again, as a real receive would.
			n := copy(a.buf, tc.frame)
			a.handle(ctx, a.buf[:n])
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per frame, want 0", tc.name, allocs)
		}
	}
}

// BenchmarkHandle measures the core's per-frame work (copy in, validate,
// inspect, advance, hand to the transport), without any I/O.
func BenchmarkHandle(b *testing.B) {
	for _, tc := range handleCases(b) {
		b.Run(tc.name, func(b *testing.B) {
			a := newDiscardAppliance(b, tc.verdict)
			ctx := context.Background()
			b.SetBytes(int64(len(tc.frame)))
			b.ReportAllocs()
			for b.Loop() {
				n := copy(a.buf, tc.frame)
				a.handle(ctx, a.buf[:n])
			}
		})
	}
}
