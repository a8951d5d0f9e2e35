//go:build linux

package sourceroute

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/xdpfast"
	"github.com/vsagent/vsagent/internal/xdpgen"
)

// dataplaneModes are the ways the namespace tests run the engine: the
// userspace path alone; with the XDP fast path; and with the fast path
// configured where the guests' ends cannot receive redirected frames, so
// that it must fall back to the userspace path for everything.
var dataplaneModes = []struct {
	name        string
	fast        bool
	guestXDP    bool // XDP on the guests' veth ends, which redirects into them need
	wantOffload bool
}{
	{"userspace", false, false, false},
	{"fastpath", true, true, true},
	{"fastpath-fallback", true, false, false},
}

// newNetnsEngine makes an engine whose ports are packet sockets in dmNS,
// with the XDP fast path if fast.
func newNetnsEngine(t *testing.T, dmNS *netnstest.NS, fast bool, cfg Config) *Engine {
	t.Helper()
	cfg.Self = dmSelf
	cfg.FastPathAfter = fastPathAfterInTests(cfg.FastPathAfter)
	cfg.Open = func(name string) (Port, error) { return openPacketPort(dmNS, name) }
	if fast {
		cfg.FastPath = newTestFastPath(t, dmNS)
	}
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// runEngine runs e until the test ends.
func runEngine(t *testing.T, ctx context.Context, e *Engine) {
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// rawGuests are raw sockets on the guests' eth0: one in a to send exact
// frames, one in b to see the frames from a arrive exactly.
type rawGuests struct {
	t    *testing.T
	ctx  context.Context
	a, b *packetPort
	from MAC
}

func openRawGuests(t *testing.T, ctx context.Context, aNS, bNS *netnstest.NS, from MAC) *rawGuests {
	t.Helper()
	g := &rawGuests{t: t, ctx: ctx, from: from}
	for _, end := range []struct {
		ns *netnstest.NS
		p  **packetPort
	}{{aNS, &g.a}, {bNS, &g.b}} {
		p, err := openPacketPort(end.ns, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		*end.p = p
	}
	return g
}

func (g *rawGuests) send(f []byte) {
	g.t.Helper()
	if _, err := g.a.WriteBatch([][]byte{nil}, [][]byte{f}); err != nil {
		g.t.Fatal(err)
	}
}

// receive returns the next frame from a that reaches b, or nil after wait.
func (g *rawGuests) receive(wait time.Duration) []byte {
	rctx, cancel := context.WithTimeout(g.ctx, wait)
	defer cancel()
	out := make([][]byte, 1)
	for {
		if _, err := g.b.ReadBatch(rctx, out); err != nil {
			return nil
		}
		if bytes.Equal(out[0][6:12], g.from[:]) {
			return append([]byte(nil), out[0]...)
		}
	}
}

// tLogWriter sends the engine's logs to the test's, shown on failure.
type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(b)))
	return len(b), nil
}

// newTestFastPath loads the fast path for ports in ns, or skips the test
// where the kernel cannot.
func newTestFastPath(t *testing.T, ns *netnstest.NS) *xdpfast.FastPath {
	t.Helper()
	return newTestFastPathWith(t, xdpfast.Config{Do: ns.Do, MaxEntries: 1024})
}

// newTestFastPathWith is newTestFastPath with its configuration.
func newTestFastPathWith(t *testing.T, cfg xdpfast.Config) *xdpfast.FastPath {
	t.Helper()
	fp, err := xdpfast.New(cfg)
	if err != nil {
		// Only a kernel without XDP is a reason to skip: one that loads
		// XDP programs but rejects the fast path's is a failure.
		if pass, perr := xdpgen.PassProgram(); perr != nil {
			t.Skipf("no XDP on this kernel (%v): %v", perr, err)
		} else {
			pass.Close()
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { fp.Close() })
	return fp
}

// attachPass puts a pass-everything XDP program on each named link of ns:
// a veth end needs one (or GRO) before XDP frames can be redirected into
// its peer.
func attachPass(t *testing.T, ns *netnstest.NS, names ...string) {
	t.Helper()
	pass, err := xdpgen.PassProgram()
	if err != nil {
		t.Skipf("no XDP on this kernel: %v", err)
	}
	t.Cleanup(func() { pass.Close() })
	for _, name := range names {
		if err := ns.Do(func() error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			return netlink.LinkSetXdpFd(l, pass.FD())
		}); err != nil {
			t.Fatalf("attach XDP to %s: %v", name, err)
		}
	}
}

// TestDMFastPathInNamespaces runs a pass-through flow between two guests
// on dedicated veth ports, in every dataplane mode: frames arrive byte for
// byte; with the fast path they are forwarded by the kernel after the
// first, and still counted; the flow survives while the kernel alone
// carries it, and expires once it goes quiet, taking its kernel entry with
// it; and after an Update that puts the flow's guest behind an appliance
// that is missing returns, no frame of the flow reaches the other guest.
func TestDMFastPathInNamespaces(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, mode := range dataplaneModes {
		t.Run(mode.name, func(t *testing.T) {
			testDMFastPath(t, mode.fast, mode.guestXDP, mode.wantOffload)
		})
	}
}

func testDMFastPath(t *testing.T, fast, guestXDP, wantOffload bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dmNS, aNS, bNS := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	for _, ns := range []*netnstest.NS{dmNS, aNS, bNS} {
		ns.QuietIPv6(t)
	}
	macA, macB := gMAC(0xa1), gMAC(0xb1)
	netnstest.Veth(t, netnstest.End{NS: aNS, Name: "eth0", MAC: net.HardwareAddr(macA[:]), MTU: 1500}, netnstest.End{NS: dmNS, Name: "ga", MTU: 1500})
	netnstest.Veth(t, netnstest.End{NS: bNS, Name: "eth0", MAC: net.HardwareAddr(macB[:]), MTU: 1500}, netnstest.End{NS: dmNS, Name: "gb", MTU: 1500})
	if guestXDP {
		attachPass(t, aNS, "eth0")
		attachPass(t, bNS, "eth0")
	}

	const idle = time.Second
	e := newNetnsEngine(t, dmNS, fast, Config{FlowIdleTimeout: idle, Logger: slog.New(slog.NewTextHandler(tLogWriter{t}, nil))})
	snapshot := func(pol *PolicyRule) Snapshot {
		return Snapshot{Guests: []GuestRule{
			{Name: "a", Ready: true, Policy: pol, Interfaces: []GuestInterface{{MAC: macA, Port: "ga", Dedicated: true}}},
			{Name: "b", Ready: true, Interfaces: []GuestInterface{{MAC: macB, Port: "gb", Dedicated: true}}},
		}}
	}
	if err := e.Update(ctx, snapshot(dmPolicy("open"))); err != nil {
		t.Fatal(err)
	}
	runEngine(t, ctx, e)
	g := openRawGuests(t, ctx, aNS, bNS, macA)
	send, receive := g.send, g.receive
	frame := func(i int) []byte {
		return dmUDPFrame(macA, macB, "10.9.0.1", "10.9.0.2", 40000, 5000, fmt.Sprintf("datagram %04d", i))
	}
	// waitFor polls cond, bounded: the engine reads kernel counters back
	// once a second.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: never happened; counters %+v, fast path %+v, flows %+v", what, e.Counters(), e.FastPathStats(), e.Flows("a"))
			}
		}
	}
	sent := 0
	exchange := func(n int) {
		t.Helper()
		for range n {
			want := frame(sent)
			sent++
			send(want)
			if got := receive(10 * time.Second); !bytes.Equal(got, want) {
				t.Fatalf("frame %d arrived as %x, want %x", sent-1, got, want)
			}
		}
	}
	flowPackets := func() uint64 {
		if fl := e.Flows("a"); len(fl) == 1 {
			return fl[0].Packets[Forward]
		}
		return 0
	}

	// 1. An established flow; with the fast path, all but its first frame
	// cross the kernel, and every frame is counted.
	const n = 40
	exchange(n)
	if got := e.FastPathStats().Entries; (got > 0) != wantOffload {
		t.Fatalf("%d fast-path entries, want offloaded = %v", got, wantOffload)
	}
	waitFor("all frames counted for the flow and the guests", func() bool {
		c := e.Counters()
		return flowPackets() == uint64(sent) && c.Guests["a"].FramesOut == uint64(sent) && c.Guests["b"].FramesIn == uint64(sent) &&
			c.Ports["gb"].TxFrames == uint64(sent)
	})
	if wantOffload {
		if got := e.FastPathStats().Frames; got != uint64(sent-1) {
			t.Errorf("the kernel forwarded %d frames, want %d", got, sent-1)
		}
	} else if got := e.FastPathStats().Frames; got != 0 {
		t.Errorf("the kernel forwarded %d frames without a working fast path", got)
	}

	// 2. The flow stays alive through several idle timeouts while frames
	// keep coming, whichever path carries them: it is never decided again,
	// so its counters run on.
	for until := time.Now().Add(3 * idle); time.Now().Before(until); {
		exchange(1)
		time.Sleep(idle / 10)
	}
	waitFor("the flow counted every frame since it started", func() bool { return flowPackets() == uint64(sent) })

	// 3. Quiet, it expires, and its kernel entry goes with it.
	waitFor("the idle flow expired", func() bool { return len(e.Flows("a")) == 0 && e.FastPathStats().Entries == 0 })
	exchange(3)
	if got := e.FastPathStats().Entries; (got > 0) != wantOffload {
		t.Fatalf("%d fast-path entries for the new flow, want offloaded = %v", got, wantOffload)
	}

	// 4. Re-policied in the middle of the flow: once Update returns, no
	// frame of it may be delivered. Every frame sent after must show up
	// as a fail-closed drop, and none at b.
	if err := e.Update(ctx, snapshot(dmPolicy("guarded", "fw"))); err != nil {
		t.Fatal(err)
	}
	if got := e.FastPathStats().Entries; got != 0 {
		t.Fatalf("%d fast-path entries survived the policy change", got)
	}
	drops0 := e.Counters().Guests["a"].Drops[DropChainNotReady.String()]
	const m = 20
	for i := range m {
		send(frame(sent + i))
	}
	waitFor("every frame after the change dropped as chain_not_ready", func() bool {
		return e.Counters().Guests["a"].Drops[DropChainNotReady.String()]-drops0 == m
	})
	if got := receive(200 * time.Millisecond); got != nil {
		t.Fatalf("a frame of the re-policied flow was delivered: %x", got)
	}
}
