package sourceroute

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
)

// benchPort replays a fixed set of frames to the engine and counts what
// the engine sends, allocating nothing.
type benchPort struct {
	name   string
	frames [][]byte
	pos    int
	sent   int
	last   [2048]byte
}

func (p *benchPort) Name() string { return p.name }
func (p *benchPort) Release()     {}

func (p *benchPort) ReadBatch(_ context.Context, out [][]byte) (int, error) {
	for i := range out {
		out[i] = p.frames[p.pos]
		if p.pos++; p.pos == len(p.frames) {
			p.pos = 0
		}
	}
	return len(out), nil
}

func (p *benchPort) WriteBatch(heads, bodies [][]byte) (int, error) {
	p.sent += len(bodies)
	n := copy(p.last[:], heads[len(heads)-1])
	copy(p.last[n:], bodies[len(bodies)-1])
	return len(bodies), nil
}

// dmScenario is an engine on benchPorts with flows guest a → guest b.
type dmScenario struct {
	e     *Engine
	ports map[string]*benchPort
}

const dmBenchBatch = 32

// newDMScenario makes an engine whose guest a talks to b over n flows,
// through chain (appliance names, one instance each; empty: direct).
func newDMScenario(tb testing.TB, n int, chain ...string) *dmScenario {
	tb.Helper()
	sc := &dmScenario{ports: map[string]*benchPort{}}
	e, err := NewEngine(Config{Self: dmSelf, InterceptPort: dmIntercept, MaxFlows: 2 * n, BatchSize: dmBenchBatch,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Open: func(name string) (Port, error) {
			p := &benchPort{name: name}
			sc.ports[name] = p
			return p, nil
		}})
	if err != nil {
		tb.Fatal(err)
	}
	sc.e = e
	var pol *PolicyRule
	if len(chain) > 0 {
		pol = dmPolicy("p", chain...)
	}
	s := Snapshot{Guests: []GuestRule{dmGuest("a", gMAC(1), pol), dmGuest("b", gMAC(2), nil)}}
	macs := map[string]MAC{"ips": ipsMAC, "fw": fwMAC}
	for _, app := range chain {
		s.Appliances = append(s.Appliances, dmHeaderInst(app, app+"-1", macs[app]))
	}
	if err := e.Update(context.Background(), s); err != nil {
		tb.Fatal(err)
	}
	// n flows: source ports and, beyond 60000, source addresses vary.
	frames := make([][]byte, n)
	for i := range frames {
		src := fmt.Sprintf("10.0.%d.%d", 1+i/60000/250, 1+i/60000%250)
		frames[i] = dmUDPFrame(gMAC(1), gMAC(2), src, "10.1.0.2", uint16(1024+i%60000), 53, "benchmark payload 0123456789")
	}
	sc.ports[dmIntercept].frames = frames
	return sc
}

// poll runs one batch on the named port's worker.
func (sc *dmScenario) poll(tb testing.TB, port string) {
	w := sc.e.workers[sc.e.state.Load().ports[port]]
	if err := w.poll(context.Background()); err != nil {
		tb.Fatal(err)
	}
}

// warm creates every flow, and returns for each the frame as the given
// appliance port would see it come back from hop (0-based) of the chain.
func (sc *dmScenario) warm(tb testing.TB, chainMACs []MAC, hop int) [][]byte {
	tb.Helper()
	in := sc.ports[dmIntercept]
	var back [][]byte
	for range (len(in.frames) + dmBenchBatch - 1) / dmBenchBatch {
		sc.poll(tb, dmIntercept)
	}
	if hop < 0 {
		return nil
	}
	route := append(append([]MAC(nil), chainMACs...), dmSelf)
	for _, inner := range in.frames {
		f := make([]byte, HeaderLen(len(route))+len(inner))
		if _, err := sc.e.codec.BuildHeader(f, dmSelf, route); err != nil {
			tb.Fatal(err)
		}
		copy(f[HeaderLen(len(route)):], inner)
		for j := 0; j <= hop; j++ {
			fr, _ := sc.e.codec.Parse(f)
			if r := sc.e.codec.Advance(fr, route[j]); r != OK {
				tb.Fatal(r)
			}
		}
		back = append(back, f)
	}
	return back
}

// ipsHeader is the header of the chain [ips, fw] as the DM sends it to ips.
func ipsHeader(tb testing.TB, sc *dmScenario) []byte {
	hdr := make([]byte, HeaderLen(3))
	if _, err := sc.e.codec.BuildHeader(hdr, dmSelf, []MAC{ipsMAC, fwMAC, dmSelf}); err != nil {
		tb.Fatal(err)
	}
	return hdr
}

type dmBenchCase struct {
	name   string
	chain  []string
	port   string // the port whose frames are measured
	hop    int    // frames come back from this hop; -1: guest frames
	target string // where they must go
}

var dmBenchCases = []dmBenchCase{
	{"pass-through", nil, dmIntercept, -1, "tap-b"},
	{"encapsulate", []string{"ips", "fw"}, dmIntercept, -1, "vsa-ips-1"},
	{"switch", []string{"ips", "fw"}, "vsa-ips-1", 0, "vsa-fw-1"},
	{"return-strip", []string{"ips", "fw"}, "vsa-fw-1", 1, "tap-b"},
}

// setup builds the scenario and points the measured port at its frames.
func (c dmBenchCase) setup(tb testing.TB, flows int) *dmScenario {
	sc := newDMScenario(tb, flows, c.chain...)
	back := sc.warm(tb, []MAC{ipsMAC, fwMAC}, c.hop)
	if c.hop >= 0 {
		sc.ports[c.port].frames = back
	}
	return sc
}

// BenchmarkDMEngine is the engine's cost per frame with in-memory ports:
// one op is one frame; batches of 32 frames are read and written.
func BenchmarkDMEngine(b *testing.B) {
	for _, c := range dmBenchCases {
		for _, flows := range []int{1_000, 100_000} {
			b.Run(fmt.Sprintf("%s/flows=%d", c.name, flows), func(b *testing.B) {
				sc := c.setup(b, flows)
				target := sc.ports[c.target]
				target.sent = 0
				b.ReportAllocs()
				b.ResetTimer()
				cpu := startCPUClock(b)
				frames := 0
				for frames < b.N {
					sc.poll(b, c.port)
					frames += dmBenchBatch
				}
				cpu.report(b)
				b.StopTimer()
				if target.sent != frames {
					b.Fatalf("%d of %d frames reached %s; drops %v", target.sent, frames, c.target, sc.e.Counters().Drops)
				}
			})
		}
	}
}

func TestDMZeroAllocsPerFrame(t *testing.T) {
	for _, c := range dmBenchCases {
		t.Run(c.name, func(t *testing.T) {
			sc := c.setup(t, 1000)
			target := sc.ports[c.target]
			target.sent = 0
			if allocs := testing.AllocsPerRun(200, func() { sc.poll(t, c.port) }); allocs != 0 {
				t.Errorf("%v allocations per batch of %d frames", allocs, dmBenchBatch)
			}
			if want := 201 * dmBenchBatch; target.sent != want {
				t.Errorf("%d frames reached %s, want %d; drops %v", target.sent, c.target, want, sc.e.Counters().Drops)
			}
			// The last frame sent is the one the last frame read must
			// become: the guest's frame delivered or encapsulated, or the
			// appliance's frame switched as it is.
			in := sc.ports[c.port]
			i := (in.pos + len(in.frames) - 1) % len(in.frames)
			guestFrame := sc.ports[dmIntercept].frames[i]
			want := guestFrame
			switch c.name {
			case "encapsulate":
				want = append(ipsHeader(t, sc), guestFrame...)
			case "switch":
				want = in.frames[i]
			}
			if got := target.last[:len(want)]; !bytes.Equal(got, want) {
				t.Errorf("last frame sent to %s:\n%x\nwant\n%x", c.target, got, want)
			}
		})
	}
}

// BenchmarkDMNewFlow is the cost of a frame that starts a flow: every
// frame is new, the table is full, so each one also evicts a flow; the
// evicted flows' entries are reclaimed every 4096 frames, as the
// maintenance loop would. One op is one frame.
func BenchmarkDMNewFlow(b *testing.B) {
	sc := newDMScenario(b, 100_000, "ips", "fw")
	sc.e.table, _ = NewFlowTable(FlowTableConfig{Capacity: 1000, IdleTimeout: DefaultFlowIdleTimeout, OnRemove: sc.e.slab.onRemove})
	for _, w := range sc.e.workers {
		w.fw = sc.e.table.NewWorker()
	}
	inserts := sc.e.table.Stats().Inserts
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPUClock(b)
	frames := 0
	for frames < b.N {
		sc.poll(b, dmIntercept)
		if frames += dmBenchBatch; frames%4096 == 0 {
			sc.e.reclaim(context.Background(), sc.e.mono())
		}
	}
	cpu.report(b)
	b.StopTimer()
	if got := sc.e.table.Stats().Inserts - inserts; got != uint64(frames) {
		b.Fatalf("%d new flows for %d frames", got, frames)
	}
}

// BenchmarkDMUpdate is the cost of an Update while the table holds 100 000
// flows: "untouched" changes a guest no flow refers to (the table is not
// visited), "visit" is the pass over the table that an update touching
// flows makes, here finding none to delete.
func BenchmarkDMUpdate(b *testing.B) {
	sc := newDMScenario(b, 100_000, "ips", "fw")
	sc.warm(b, nil, -1)
	s := Snapshot{Guests: []GuestRule{dmGuest("a", gMAC(1), dmPolicy("p", "ips", "fw")), dmGuest("b", gMAC(2), nil),
		dmGuest("c", gMAC(3), nil)},
		Appliances: []ApplianceRule{dmHeaderInst("ips", "ips-1", ipsMAC), dmHeaderInst("fw", "fw-1", fwMAC)}}
	ctx := context.Background()
	b.Run("untouched", func(b *testing.B) {
		for i := range b.N {
			s.Guests[2].Ready = i%2 == 0
			if err := sc.e.Update(ctx, s); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("visit", func(b *testing.B) {
		ch := &changes{gen: sc.e.reg.gen}
		for range b.N {
			_, deleted := sc.e.table.Visit(sc.e.mono(), func(f *Flow) VisitAction {
				if sc.e.stale(sc.e.slab.at(f.Value.Handle), ch) {
					return VisitDelete
				}
				return VisitKeep
			})
			if deleted != 0 {
				b.Fatalf("deleted %d flows", deleted)
			}
		}
	})
	if n := sc.e.table.Len(); n != 100_000 {
		b.Fatalf("%d flows left, the updates must keep all 100000", n)
	}
}
