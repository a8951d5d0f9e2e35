package sourceroute

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Test harness of the DM engine: in-memory ports, a settable clock, and
// synchronous driving of the workers, so that a test can inject a frame,
// see exactly what the engine sent where, and play the appliances itself.

var dmUpdateGolden = flag.Bool("dm.update", false, "rewrite the DM's golden files in testdata/dm")

// memPort is an in-memory Port: frames pushed into rx are read by the
// engine, frames it writes collect in sent.
type memPort struct {
	name   string
	mtu    int
	rx     chan []byte
	mu     sync.Mutex
	sent   [][]byte
	closed atomic.Bool
	wrote  chan struct{} // signalled after every WriteBatch
}

func newMemPort(name string) *memPort {
	return &memPort{name: name, rx: make(chan []byte, 4096), wrote: make(chan struct{}, 1)}
}

func (p *memPort) Name() string { return p.name }
func (p *memPort) MTU() int     { return p.mtu }
func (p *memPort) Release()     {}
func (p *memPort) Close() error { p.closed.Store(true); return nil }

func (p *memPort) ReadBatch(ctx context.Context, out [][]byte) (int, error) {
	select {
	case f := <-p.rx:
		out[0] = f
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	n := 1
	for n < len(out) {
		select {
		case f := <-p.rx:
			out[n] = f
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (p *memPort) WriteBatch(heads, bodies [][]byte) (int, error) {
	p.mu.Lock()
	for i := range bodies {
		p.sent = append(p.sent, append(append([]byte(nil), heads[i]...), bodies[i]...))
	}
	p.mu.Unlock()
	select {
	case p.wrote <- struct{}{}:
	default:
	}
	return len(bodies), nil
}

// take returns and forgets what the engine sent on the port.
func (p *memPort) take() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.sent
	p.sent = nil
	return s
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type dmHarness struct {
	t     testing.TB
	e     *Engine
	clock *fakeClock
	mu    sync.Mutex
	ports map[string]*memPort
	mtus  map[string]int // MTU of ports not yet opened
	evs   chan Event     // Run mode: events delivered by the engine
}

const dmIntercept = "icpt"

var (
	dmSelf = MAC{0x02, 0, 0, 0, 0x0d, 0x01} // the DM of SOURCE-ROUTE.md's vectors
	ipsMAC = MAC{0x02, 0, 0, 0, 0x10, 0x01} // VSA₁ of the vectors
	fwMAC  = MAC{0x02, 0, 0, 0, 0x10, 0x02} // VSA₂ of the vectors
	fw2MAC = MAC{0x02, 0, 0, 0, 0x10, 0x03}
	fw3MAC = MAC{0x02, 0, 0, 0, 0x10, 0x04}
	wireM  = MAC{0x02, 0, 0, 0, 0x20, 0x01}
	gMAC   = func(i byte) MAC { return MAC{0x52, 0x54, 0, 0, 0, i} }
)

// newDMHarness makes an engine whose ports are memPorts, with the
// intercept port "icpt" and cfg's other settings.
// fastPathAfterInTests is the FastPathAfter of the tests' engines: they
// count on a flow being offloaded on its first frame unless they say
// otherwise (-1: the engine's default), which only
// TestDMFastPathWaitsForEstablishedFlows needs.
func fastPathAfterInTests(n int) int {
	switch n {
	case 0:
		return 1
	case -1:
		return 0
	}
	return n
}

func newDMHarness(t testing.TB, cfg Config) *dmHarness {
	t.Helper()
	h := &dmHarness{t: t, clock: &fakeClock{t: time.Unix(1_700_000_000, 0)}, ports: map[string]*memPort{},
		mtus: map[string]int{}, evs: make(chan Event, 4096)}
	if cfg.Self.IsZero() {
		cfg.Self = dmSelf
	}
	cfg.FastPathAfter = fastPathAfterInTests(cfg.FastPathAfter)
	if cfg.InterceptPort == "" {
		cfg.InterceptPort = dmIntercept
	}
	cfg.Open = func(name string) (Port, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if strings.HasPrefix(name, "missing") {
			return nil, fmt.Errorf("no such interface %q", name)
		}
		p := newMemPort(name)
		p.mtu = h.mtus[name]
		h.ports[name] = p
		return p, nil
	}
	if cfg.Now == nil {
		cfg.Now = h.clock.Now
	}
	if cfg.Events == nil {
		cfg.Events = func(ev Event) { h.evs <- ev }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	h.e = e
	return h
}

func (h *dmHarness) port(name string) *memPort {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.ports[name]
	if p == nil {
		h.t.Fatalf("port %q was never opened", name)
	}
	return p
}

func (h *dmHarness) update(s Snapshot) {
	h.t.Helper()
	if err := h.e.Update(context.Background(), s); err != nil {
		h.t.Fatalf("Update: %v", err)
	}
}

// inject feeds frames to a port and runs its worker synchronously until
// they are all handled. The engine must not be running.
func (h *dmHarness) inject(port string, frames ...[]byte) {
	h.t.Helper()
	p := h.port(port)
	for _, f := range frames {
		p.rx <- append([]byte(nil), f...)
	}
	op := h.e.state.Load().ports[port]
	h.e.mu.Lock()
	w := h.e.workers[op]
	h.e.mu.Unlock()
	if w == nil {
		h.t.Fatalf("no worker reads port %q", port)
	}
	for len(p.rx) > 0 {
		if err := w.poll(context.Background()); err != nil {
			h.t.Fatal(err)
		}
	}
}

// sent takes what the engine sent on a port (nil for a port never opened).
func (h *dmHarness) sent(port string) [][]byte {
	h.mu.Lock()
	p := h.ports[port]
	h.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.take()
}

// quiet asserts that nothing was sent on any port.
func (h *dmHarness) quiet() {
	h.t.Helper()
	h.mu.Lock()
	names := make([]string, 0, len(h.ports))
	for name := range h.ports {
		names = append(names, name)
	}
	h.mu.Unlock()
	sort.Strings(names)
	for _, name := range names {
		if got := h.sent(name); len(got) > 0 {
			h.t.Errorf("port %s: %d unexpected frames, first %x", name, len(got), got[0])
		}
	}
}

// events drains the events the engine queued (synchronous mode).
func (h *dmHarness) events() []Event {
	var out []Event
	for {
		select {
		case ev := <-h.e.events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

// vsa plays a header appliance: every frame sent to its port is advanced
// and sent back, like SOURCE-ROUTE.md's VSA. It returns how many.
func (h *dmHarness) vsa(port string, self MAC) int {
	h.t.Helper()
	frames := h.sent(port)
	for _, f := range frames {
		fr, r := h.e.codec.Parse(f)
		if r == OK {
			r = h.e.codec.Advance(fr, self)
		}
		if r != OK {
			h.t.Fatalf("appliance %s got a frame it cannot forward (%v): %x", self, r, f)
		}
	}
	if len(frames) > 0 {
		h.inject(port, frames...)
	}
	return len(frames)
}

// wire plays a bump in the wire between two ports.
func (h *dmHarness) wire(in, out string) int {
	h.t.Helper()
	a, b := h.sent(in), h.sent(out)
	if len(a) > 0 {
		h.inject(out, a...)
	}
	if len(b) > 0 {
		h.inject(in, b...)
	}
	return len(a) + len(b)
}

func (h *dmHarness) dropsOf(guest string) map[string]uint64 {
	return h.e.Counters().Guests[guest].Drops
}

// Snapshot builders.

func dmGuest(name string, mac MAC, pol *PolicyRule) GuestRule {
	return GuestRule{Name: name, Interfaces: []GuestInterface{{MAC: mac, Port: "tap-" + name}}, Policy: pol, Ready: true}
}

func dmHeaderInst(app, inst string, mac MAC) ApplianceRule {
	return ApplianceRule{Appliance: app, Instance: inst, MAC: mac, Port: "vsa-" + inst, Healthy: true}
}

func dmWireInst(app, inst string, mac MAC) ApplianceRule {
	return ApplianceRule{Appliance: app, Instance: inst, MAC: mac, Kind: WireAppliance,
		Port: inst + "-in", OutPort: inst + "-out", Healthy: true}
}

func dmPolicy(name string, chain ...string) *PolicyRule {
	return &PolicyRule{Name: name, Chain: chain, Symmetric: true}
}

// Frame builders. Checksums stay zero: nothing on the path verifies them.

func dmEth(dst, src MAC, etherType uint16, payload []byte) []byte {
	b := append(append([]byte{}, dst[:]...), src[:]...)
	return append(binary.BigEndian.AppendUint16(b, etherType), payload...)
}

func dmIP4(proto uint8, src, dst string, l4 []byte) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := []byte{0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(l4)))
	return append(append(append(b, s[:]...), d[:]...), l4...)
}

func dmIP6(next uint8, src, dst string, l4 []byte) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	b := []byte{0x60, 0, 0, 0, 0, 0, next, 64}
	binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
	return append(append(append(b, s[:]...), d[:]...), l4...)
}

func dmUDP(sp, dp uint16, payload string) []byte {
	b := binary.BigEndian.AppendUint16(nil, sp)
	b = binary.BigEndian.AppendUint16(b, dp)
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(payload)))
	return append(append(b, 0, 0), payload...)
}

func dmTCP(sp, dp uint16, flags byte, payload string) []byte {
	b := binary.BigEndian.AppendUint16(nil, sp)
	b = binary.BigEndian.AppendUint16(b, dp)
	b = append(b, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0)
	return append(b, payload...)
}

func dmICMP(typ uint8, id, seq uint16) []byte {
	b := []byte{typ, 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, id)
	return append(binary.BigEndian.AppendUint16(b, seq), "ping"...)
}

// dmUDPFrame is a UDP/IPv4 frame from guest-style MAC src to dst.
func dmUDPFrame(src, dst MAC, sip, dip string, sp, dp uint16, payload string) []byte {
	return dmEth(dst, src, etherTypeIPv4, dmIP4(protoUDP, sip, dip, dmUDP(sp, dp, payload)))
}

// dmKeys lets cmp compare flow keys, whose fields are unexported.
var dmKeys = cmp.Comparer(func(a, b FlowKey) bool { return a == b })

// hdrView is an MSR frame's header through the codec, for readable diffs.
type hdrView struct {
	Dst, Src MAC
	Route    []MAC
	Next     int
	Inner    string
}

func (h *dmHarness) view(frame []byte) hdrView {
	h.t.Helper()
	f, r := h.e.codec.Parse(frame)
	if r != OK {
		h.t.Fatalf("not an MSR frame (%v): %x", r, frame)
	}
	v := hdrView{Dst: f.Dst(), Src: f.Src(), Next: f.Next(), Inner: hex.EncodeToString(f.Inner())}
	for i := range f.Num() {
		v.Route = append(v.Route, f.Hop(i))
	}
	return v
}

// golden compares got with testdata/dm/name, or rewrites it with -dm.update.
func dmGolden(t *testing.T, name string, got string) {
	t.Helper()
	path := filepath.Join("testdata", "dm", name)
	if *dmUpdateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -dm.update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}
