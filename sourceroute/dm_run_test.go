package sourceroute

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// runDM runs the harness's engine until the test ends.
func runDM(t *testing.T, h *dmHarness) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// count is how many frames the port has sent so far, without taking them.
func (p *memPort) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sent)
}

// waitSent waits until port has sent at least n frames, failing the test
// after a generous bound (the bound is a hang guard, not an assertion).
func waitSent(t *testing.T, p *memPort, n int) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for p.count() < n {
		select {
		case <-p.wrote:
		case <-deadline:
			t.Fatalf("port %s sent %d frames, waited for %d", p.name, p.count(), n)
		}
	}
}

// TestDMRunUpdateQuiescence checks Update's promise under traffic: while
// a feeder keeps sending a's frames, a gets a chain; once Update has
// returned, not one more frame reaches b directly.
func TestDMRunUpdateQuiescence(t *testing.T) {
	h := newDMHarness(t, Config{})
	s := twoVSASnapshot()
	s.Guests[0].Policy = nil
	h.update(s)
	runDM(t, h)

	icpt, tapB := h.port(dmIntercept), h.port("tap-b")
	frame := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, "steady")
	stop := make(chan struct{})
	var feeder sync.WaitGroup
	feeder.Add(1)
	go func() {
		defer feeder.Done()
		for range 200_000 {
			select {
			case <-stop:
				return
			case icpt.rx <- frame:
			}
		}
	}()
	defer func() { close(stop); feeder.Wait() }()

	waitSent(t, tapB, 100)
	s.Guests[0].Policy = dmPolicy("protected", "ips")
	h.update(s)
	delivered := tapB.count()
	waitSent(t, h.port("vsa-ips-1"), 100)
	if got := tapB.count(); got != delivered {
		t.Errorf("%d frames reached b uninspected after Update returned", got-delivered)
	}
	// Readers may run at any time.
	for range 10 {
		h.e.Counters()
		h.e.Flows("a")
	}
}

// TestDMRunEvents checks the periodic scan and the event dispatcher: a
// silent appliance is reported through Config.Events while Run runs.
func TestDMRunEvents(t *testing.T) {
	h := newDMHarness(t, Config{ReturnTimeout: 20 * time.Millisecond})
	h.update(twoVSASnapshot())
	runDM(t, h)
	h.port(dmIntercept).rx <- dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, "into the void")
	waitSent(t, h.port("vsa-ips-1"), 1)
	h.clock.Advance(time.Second)
	select {
	case ev := <-h.evs:
		if ev.Kind != EventReturnTimeout || ev.Instance != "ips-1" || ev.Guest != "a" {
			t.Errorf("event %+v, want a return timeout blaming ips-1", ev)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no timeout event")
	}
	if err := h.e.Run(context.Background()); !errors.Is(err, ErrEngineRunning) {
		t.Errorf("second Run: %v", err)
	}
}

// TestDMFlowEntriesRecycled churns many more flows than the table holds
// and checks that the per-flow entries are reused, not grown without
// bound, and still forward correctly.
func TestDMFlowEntriesRecycled(t *testing.T) {
	const capacity = 64
	h := newDMHarness(t, Config{MaxFlows: capacity})
	h.update(twoVSASnapshot())
	ctx := context.Background()
	for i := range 2000 {
		h.inject(dmIntercept, dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", uint16(1000+i), 53, "churn"))
		if i%50 == 49 {
			h.e.reclaim(ctx, h.e.mono())
		}
	}
	if got := len(h.sent("vsa-ips-1")); got != 2000 {
		t.Errorf("%d frames forwarded, want 2000", got)
	}
	if hw := h.e.slab.highWater(); hw > 4*capacity {
		t.Errorf("%d flow entries for a table of %d flows: removed entries are not reused", hw, capacity)
	}
	// A flow created on a recycled entry carries only its own state.
	h.inject(dmIntercept, dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 999, 53, "fresh"))
	h.sent("vsa-ips-1")
	for _, f := range h.e.Flows("a") {
		if f.Key.SrcPort() == 999 && (f.Packets != [2]uint64{1, 0} || f.Notices != 0) {
			t.Errorf("recycled entry: %+v", f)
		}
	}
}

func TestDMCloseAndRunOrder(t *testing.T) {
	h := newDMHarness(t, Config{})
	h.update(twoVSASnapshot())
	if err := h.e.Close(); err != nil {
		t.Fatal(err)
	}
	if !h.port("vsa-ips-1").closed.Load() || !h.port(dmIntercept).closed.Load() {
		t.Error("Close left ports open")
	}
	if err := h.e.Run(context.Background()); !errors.Is(err, ErrEngineClosed) {
		t.Errorf("Run after Close: %v", err)
	}
	if err := h.e.Update(context.Background(), Snapshot{}); !errors.Is(err, ErrEngineClosed) {
		t.Errorf("Update after Close: %v", err)
	}
}
