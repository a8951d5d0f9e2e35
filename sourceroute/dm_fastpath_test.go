package sourceroute

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeFastPath is a FastPath in memory: entries the test can make "forward"
// frames, as the kernel would.
type fakeFastPath struct {
	mu      sync.Mutex
	next    byte
	entries map[FastEntry]*fakeEntry
	offers  int
	refuse  error
}

type fakeEntry struct {
	in, out        string
	cookie         uint64
	packets, bytes uint64
}

func newFakeFastPath() *fakeFastPath { return &fakeFastPath{entries: map[FastEntry]*fakeEntry{}} }

func (f *fakeFastPath) Offload(in, out string, frame []byte, cookie uint64) (FastEntry, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.offers++
	if f.refuse != nil {
		return FastEntry{}, false, f.refuse
	}
	f.next++
	var id FastEntry
	id[0] = f.next
	f.entries[id] = &fakeEntry{in: in, out: out, cookie: cookie}
	return id, true, nil
}

func (f *fakeFastPath) Remove(id FastEntry) (uint64, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	en := f.entries[id]
	if en == nil {
		return 0, 0, nil
	}
	delete(f.entries, id)
	return en.packets, en.bytes, nil
}

func (f *fakeFastPath) Visit(fn func(cookie, packets, bytes uint64)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, en := range f.entries {
		fn(en.cookie, en.packets, en.bytes)
	}
	return nil
}

// forward plays the kernel forwarding n frames of size bytes under every
// entry from port in to port out.
func (f *fakeFastPath) forward(in, out string, n, size uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	hit := 0
	for _, en := range f.entries {
		if en.in == in && en.out == out {
			en.packets += n
			en.bytes += n * size
			hit++
		}
	}
	return hit
}

// sortedPaths lists the entries as in→out, in order.
func (f *fakeFastPath) sortedPaths() []string {
	p := f.paths()
	slices.Sort(p)
	return p
}

// paths lists the entries as in→out.
func (f *fakeFastPath) paths() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, en := range f.entries {
		out = append(out, en.in+"→"+en.out)
	}
	return out
}

func openSnapshot() Snapshot {
	return Snapshot{Guests: []GuestRule{dmGuest("a", gMAC(1), dmPolicy("open")), dmGuest("b", gMAC(2), nil)}}
}

// TestDMFastPathWaitsForEstablishedFlows: a flow direction goes to the
// fast path only once it has taken FastPathAfter frames on the userspace
// path (8 by default), each direction counting its own.
func TestDMFastPathWaitsForEstablishedFlows(t *testing.T) {
	for _, tc := range []struct {
		after, want int
	}{{-1, defaultFastPathAfter}, {3, 3}} {
		fp := newFakeFastPath()
		h := newDMHarness(t, Config{FastPath: fp, FastPathAfter: tc.after})
		h.update(openSnapshot())
		ab := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 4000, 53, "q")
		ba := dmUDPFrame(gMAC(2), gMAC(1), "10.0.0.2", "10.0.0.1", 53, 4000, "r")
		for i := 1; i <= tc.want; i++ {
			h.inject(dmIntercept, ab)
			if wantOffers := min(i/tc.want, 1); fp.offers != wantOffers {
				t.Fatalf("FastPathAfter %d: %d offers after %d frames, want %d", tc.after, fp.offers, i, wantOffers)
			}
		}
		h.inject(dmIntercept, ba)
		if diff := cmp.Diff([]string{"icpt→tap-b"}, fp.sortedPaths()); diff != "" {
			t.Errorf("FastPathAfter %d: entries after one reply (-want +got):\n%s", tc.after, diff)
		}
	}
}

// TestDMFastPathKeptInStep drives the engine's side of the fast path with
// a fake kernel: a pass-through flow is offloaded once per direction; the
// frames the kernel forwards are counted and keep the flow alive through
// idle timeouts; it expires once they stop, taking its entries along; a
// policy change removes the entries before Update returns; chained flows
// are never offloaded.
func TestDMFastPathKeptInStep(t *testing.T) {
	fp := newFakeFastPath()
	const idle = 10 * time.Second
	h := newDMHarness(t, Config{FastPath: fp, FlowIdleTimeout: idle})
	h.update(openSnapshot())
	ab := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 4000, 53, "q")
	ba := dmUDPFrame(gMAC(2), gMAC(1), "10.0.0.2", "10.0.0.1", 53, 4000, "r")
	h.inject(dmIntercept, ab, ab)
	h.inject(dmIntercept, ba)
	if got, want := len(h.sent("tap-b"))+len(h.sent("tap-a")), 3; got != want {
		t.Fatalf("%d frames delivered by userspace, want %d", got, want)
	}
	if diff := cmp.Diff([]string{"icpt→tap-a", "icpt→tap-b"}, fp.sortedPaths()); diff != "" {
		t.Fatalf("entries (-want +got):\n%s", diff)
	}
	if fp.offers != 2 {
		t.Errorf("%d offers, want one per direction", fp.offers)
	}

	// The kernel forwards; the engine reads its counters back and the flow
	// stays alive through three idle timeouts.
	size := uint64(len(ab))
	for range 3 {
		fp.forward(dmIntercept, "tap-b", 5, size)
		h.clock.Advance(idle * 3 / 4)
		h.e.reclaim(context.Background(), h.e.mono())
	}
	flows := h.e.Flows("a")
	if len(flows) != 1 {
		t.Fatalf("%d flows, want the one flow alive", len(flows))
	}
	if got, want := flows[0].Packets, [2]uint64{17, 1}; got != want {
		t.Errorf("flow packets %v, want %v", got, want)
	}
	c := h.e.Counters()
	if got := c.Guests["a"].FramesOut; got != 17 {
		t.Errorf("a sent %d frames, want 17", got)
	}
	if got := c.Guests["b"].FramesIn; got != 17 {
		t.Errorf("b received %d frames, want 17", got)
	}
	if got := c.Guests["b"].BytesIn; got != 17*size {
		t.Errorf("b received %d bytes, want %d", got, 17*size)
	}
	if got := c.Ports["tap-b"].TxFrames; got != 17 {
		t.Errorf("tap-b sent %d frames, want 17", got)
	}
	if got := h.e.FastPathStats(); got != (FastPathStats{Entries: 2, Frames: 15, Bytes: 15 * size}) {
		t.Errorf("fast path stats %+v", got)
	}

	// Quiet, it expires with its entries.
	h.clock.Advance(2 * idle)
	h.e.reclaim(context.Background(), h.e.mono())
	if n := len(h.e.Flows("a")); n != 0 || len(fp.paths()) != 0 {
		t.Fatalf("after the idle timeout: %d flows, entries %v", n, fp.paths())
	}

	// Re-established, then re-policied: the entries are gone when Update
	// returns, and the flow's next frame takes its new chain.
	h.inject(dmIntercept, ab)
	h.sent("tap-b")
	if len(fp.paths()) != 1 {
		t.Fatalf("entries %v, want the flow's", fp.paths())
	}
	fp.forward(dmIntercept, "tap-b", 7, size) // forwarded before the change: still counted
	s := twoVSASnapshot()
	h.update(s)
	if len(fp.paths()) != 0 {
		t.Fatalf("entries %v survived the policy change", fp.paths())
	}
	if got := h.e.Counters().Guests["a"].FramesOut; got != 17+1+7 {
		t.Errorf("a sent %d frames, want %d (the kernel's last frames counted on removal)", got, 17+1+7)
	}
	h.inject(dmIntercept, ab)
	if got := len(h.sent("vsa-ips-1")); got != 1 {
		t.Fatalf("%d frames to ips after the change, want 1", got)
	}
	h.quiet()
	if len(fp.paths()) != 0 || fp.offers != 3 {
		t.Errorf("a chained flow was offered or offloaded: %d offers, entries %v", fp.offers, fp.paths())
	}
}

// TestDMFastPathRemoteBecomesLocal: a flow to a remote peer is in the
// kernel as "to the uplink"; once that MAC belongs to a local guest, the
// entry goes at the Update, so the next frame reaches userspace, which
// decides the flow again and delivers it locally.
func TestDMFastPathRemoteBecomesLocal(t *testing.T) {
	fp := newFakeFastPath()
	h := newDMHarness(t, Config{FastPath: fp, UplinkPort: "up0"})
	h.update(openSnapshot())
	peer := gMAC(9)
	f := dmUDPFrame(gMAC(1), peer, "10.0.0.1", "10.0.0.9", 4000, 53, "q")
	h.inject(dmIntercept, f)
	if got := len(h.sent("up0")); got != 1 {
		t.Fatalf("%d frames to the uplink, want 1", got)
	}
	if diff := cmp.Diff([]string{"icpt→up0"}, fp.paths()); diff != "" {
		t.Fatalf("entries (-want +got):\n%s", diff)
	}
	s := openSnapshot()
	s.Guests = append(s.Guests, dmGuest("c", peer, nil))
	h.update(s)
	if len(fp.paths()) != 0 {
		t.Fatalf("entries %v still send the now-local peer's frames to the uplink", fp.paths())
	}
	h.inject(dmIntercept, f)
	if got := len(h.sent("tap-c")); got != 1 {
		t.Fatalf("%d frames to c, want 1", got)
	}
	h.quiet()
	if diff := cmp.Diff([]string{"icpt→tap-c"}, fp.paths()); diff != "" {
		t.Errorf("entries after the new decision (-want +got):\n%s", diff)
	}
}

// TestDMFastPathRefused: where the fast path cannot take a flow, the flow
// stays on the userspace path and is not offered again for every frame.
func TestDMFastPathRefused(t *testing.T) {
	fp := newFakeFastPath()
	fp.refuse = errors.New("cannot attach")
	h := newDMHarness(t, Config{FastPath: fp})
	h.update(openSnapshot())
	ab := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 4000, 53, "q")
	h.inject(dmIntercept, ab, ab, ab)
	if got := len(h.sent("tap-b")); got != 3 {
		t.Fatalf("%d frames delivered, want 3", got)
	}
	if fp.offers != 1 || h.e.FastPathStats().Entries != 0 {
		t.Errorf("%d offers, %d entries; want one refused offer", fp.offers, h.e.FastPathStats().Entries)
	}
}

// TestDMFastPathOffloadRacingRemoval: a worker that found a flow just
// before the flow was removed (by an Update, an expiry) may add the flow's
// kernel entry after the removal ran and found nothing to remove. The
// worker must then take the entry out itself.
func TestDMFastPathOffloadRacingRemoval(t *testing.T) {
	fp := newFakeFastPath()
	fp.refuse = errors.New("not yet")
	h := newDMHarness(t, Config{FastPath: fp})
	h.update(openSnapshot())
	ab := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 4000, 53, "q")
	h.inject(dmIntercept, ab)
	h.sent("tap-b")
	st := h.e.state.Load()
	src, dst := st.ifaceByMAC[macKey(ab[6:12])], st.ifaceByMAC[macKey(ab[0:6])]
	key, _ := ExtractKey(ab, src.zone)
	v, dir, found := h.e.table.NewWorker().Lookup(&key, h.e.mono())
	if !found {
		t.Fatal("no flow")
	}
	fe := h.e.slab.at(v.Handle)

	// The removal runs to its end first: no entry yet, nothing to remove.
	h.e.table.Delete(&key)
	// Then the worker, with its view from before, offloads.
	fp.refuse = nil
	fe.fast[dir].Store(fastNone)
	op := st.ports[dmIntercept]
	h.e.mu.Lock()
	w := h.e.workers[op]
	h.e.mu.Unlock()
	w.offload(fe, v.Handle, dir, src, dst, ab)

	if fp.offers != 2 || len(fp.paths()) != 0 || h.e.FastPathStats().Entries != 0 {
		t.Errorf("%d offers, entries %v, stats %+v; want the entry added and taken out again",
			fp.offers, fp.paths(), h.e.FastPathStats())
	}
}
