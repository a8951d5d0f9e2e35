//go:build linux

package sourceroute

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
	"github.com/vsagent/vsagent/internal/xdpfast"
)

// The XDP fast path is the engine's chain-carrying fast path.
var _ ChainFastPath = (*xdpfast.FastPath)(nil)

// TestDMFastChainInNamespaces runs a chained flow through two vsafilter
// appliances (ips, then fw; replies fw, then ips) with the XDP fast path,
// which pushes, switches and strips the MSR header in the kernel:
//   - frames arrive byte for byte both ways, both appliances forwarded
//     every one, the DM's per-instance counters include what the kernel
//     carried, and the kernel's counters show it carried them;
//   - frames ips denies are still dropped, each with a drop notice Event,
//     whether the DM or the kernel pushed them, and raise no timeout;
//   - after an Update that takes ips out of the chain, no frame of the
//     flow reaches ips any more;
//   - when fw goes silent, the flow raises a return timeout naming fw and
//     is taken back to the userspace path, which carries it once fw is
//     back.
func TestDMFastChainInNamespaces(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := vsafiltertest.Build(t, "..")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	lab := newChainLab(t, ctx, bin)
	dmNS, aNS, bNS, macA, macB, ips, fw := lab.dm, lab.a, lab.b, lab.macA, lab.macB, lab.ips, lab.fw
	// Redirected frames enter a veth only if its peer runs XDP.
	for _, ns := range []*netnstest.NS{aNS, bNS, lab.ips.ns, lab.fw.ns} {
		attachPass(t, ns, "eth0")
	}

	events := make(chan Event, 256)
	e := newNetnsEngine(t, dmNS, true, Config{ReturnTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Events: func(ev Event) { events <- ev }})
	snapshot := func(chain ...string) Snapshot { return lab.snapshot(dmPolicy("protected", chain...)) }
	if err := e.Update(ctx, snapshot("ips", "fw")); err != nil {
		t.Fatal(err)
	}
	runEngine(t, ctx, e)

	ab := openRawGuests(t, ctx, aNS, bNS, macA)
	ba := openRawGuests(t, ctx, bNS, aNS, macB)
	for _, l := range []struct {
		ns   *netnstest.NS
		addr string
	}{{aNS, "10.9.0.1:40000"}, {bNS, "10.9.0.2:5000"}} {
		var c net.PacketConn
		if err := l.ns.Do(func() (err error) { c, err = net.ListenPacket("udp4", l.addr); return err }); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	toB := func(dport uint16, payload string) []byte {
		return dmUDPFrame(macA, macB, "10.9.0.1", "10.9.0.2", 40000, dport, payload)
	}
	toA := func(payload string) []byte {
		return dmUDPFrame(macB, macA, "10.9.0.2", "10.9.0.1", 5000, 40000, payload)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: never happened; counters %+v, fast path %+v", what, e.Counters(), e.FastPathStats())
			}
		}
	}
	exchange := func(g *rawGuests, n int, frame func(i int) []byte) {
		t.Helper()
		for i := range n {
			want := frame(i)
			g.send(want)
			if got := g.receive(10 * time.Second); !bytes.Equal(got, want) {
				t.Fatalf("frame %d arrived as %x, want %x", i, got, want)
			}
		}
	}
	event := func(kind EventKind) Event {
		t.Helper()
		timeout := time.After(15 * time.Second)
		for {
			select {
			case ev := <-events:
				if ev.Kind == kind {
					return ev
				}
			case <-timeout:
				t.Fatalf("no %v event", kind)
			}
		}
	}
	noEvent := func(kind EventKind) {
		t.Helper()
		for {
			select {
			case ev := <-events:
				if ev.Kind == kind {
					t.Fatalf("unexpected event %+v", ev)
				}
			default:
				return
			}
		}
	}

	// Settle: the links and processes, bounded.
	probe := toB(5000, "probe")
	for attempt := 0; ab.receive(time.Second) == nil; attempt++ {
		if attempt == 10 {
			t.Fatalf("no probe crossed the chain; DM counters %+v", e.Counters())
		}
		ab.send(probe)
	}
	for ab.receive(300*time.Millisecond) != nil {
	}
	// The engine reads the kernel's counters back every half return
	// timeout: let it read the probes' before taking the baselines.
	time.Sleep(1200 * time.Millisecond)

	// 1. Both ways, byte for byte; the kernel carries it all but the
	// first reply's push, and every hop of it is counted.
	const n = 30
	kernel0 := e.FastPathStats().Frames
	ips0, fw0 := ips.Counters(t), fw.Counters(t)
	inst0 := e.Counters().Instances
	exchange(ab, n, func(i int) []byte { return toB(5000, fmt.Sprintf("request %02d", i)) })
	exchange(ba, n, func(i int) []byte { return toA(fmt.Sprintf("reply %02d", i)) })
	if got := e.FastPathStats().Entries; got != 6 {
		t.Errorf("%d kernel entries, want 6 (a push and two returns each way)", got)
	}
	// Each frame the kernel carries crosses three entries: the push, the
	// switch from the first appliance to the second, the strip.
	waitFor("the kernel's counters read back", func() bool { return e.FastPathStats().Frames-kernel0 >= 3*2*n-1 })
	if got := e.FastPathStats().Frames - kernel0; got != 3*2*n-1 {
		t.Errorf("the kernel carried %d frame-hops, want %d", got, 3*2*n-1)
	}
	ips1, fw1 := ips.Counters(t), fw.Counters(t)
	if d := ips1.Appliance.Forwarded - ips0.Appliance.Forwarded; d != 2*n {
		t.Errorf("ips forwarded %d, want %d", d, 2*n)
	}
	if d := fw1.Appliance.Forwarded - fw0.Appliance.Forwarded; d != 2*n {
		t.Errorf("fw forwarded %d, want %d", d, 2*n)
	}
	waitFor("every frame counted for both instances", func() bool {
		c := e.Counters().Instances
		for _, name := range []string{"ips-1", "fw-1"} {
			if c[name].Sent-inst0[name].Sent != 2*n || c[name].Returned-inst0[name].Returned != 2*n {
				return false
			}
		}
		return true
	})
	noEvent(EventReturnTimeout)

	// 2. A flow ips denies: its first frame pushed by the DM, the next by
	// the kernel; both dropped, both noticed, no timeout.
	for i := range 2 {
		ab.send(toB(9, fmt.Sprintf("discard %d", i)))
		ev := event(EventDropNotice)
		if ev.Instance != "ips-1" || ev.Guest != "a" || ev.Notice != NoticePolicyDeny || !ev.HasFlow || ev.Flow.DstPort() != 9 {
			t.Errorf("event %+v, want ips's policy-deny notice for a's flow to port 9", ev)
		}
	}
	exchange(ab, 1, func(int) []byte { return toB(5000, "marker") })
	if got := e.Counters().Instances["ips-1"].Notices - inst0["ips-1"].Notices; got != 2 {
		t.Errorf("DM counted %d notices from ips-1, want 2", got)
	}
	time.Sleep(2500 * time.Millisecond) // past the return timeout
	noEvent(EventReturnTimeout)

	// 3. ips leaves the chain: once Update returns no frame reaches it.
	if err := e.Update(ctx, snapshot("fw")); err != nil {
		t.Fatal(err)
	}
	ips2 := ips.Counters(t)
	const m = 20
	exchange(ab, m, func(i int) []byte { return toB(5000, fmt.Sprintf("after %02d", i)) })
	if got := ips.Counters(t).Appliance.Received - ips2.Appliance.Received; got != 0 {
		t.Errorf("ips received %d frames after it left the chain", got)
	}
	if got := e.FastPathStats().Entries; got != 2 {
		t.Fatalf("%d kernel entries for the new chain, want 2 (push, strip)", got)
	}

	// 4. fw goes silent: a return timeout naming it, and the flow is
	// taken back to the userspace path.
	if err := fw.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// The signal takes effect a little later: keep sending, bounded, until
	// frames are lost.
	var ev Event
	for i := 0; ev.Kind != EventReturnTimeout; i++ {
		if i == 50 {
			t.Fatal("no return timeout while fw was stopped")
		}
		ab.send(toB(5000, fmt.Sprintf("lost %02d", i)))
		select {
		case ev = <-events:
		case <-time.After(300 * time.Millisecond):
		}
	}
	if ev.Instance != "fw-1" || ev.Guest != "a" || !ev.HasFlow || ev.Flow.DstPort() != 5000 {
		t.Errorf("event %+v, want a timeout of a's flow at fw-1", ev)
	}
	waitFor("the flow taken back from the kernel", func() bool { return e.FastPathStats().Entries == 0 })
	if err := fw.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for ab.receive(500*time.Millisecond) != nil { // what fw held
	}
	kernel1 := e.FastPathStats().Frames
	exchange(ab, 5, func(i int) []byte { return toB(5000, fmt.Sprintf("back %d", i)) })
	if got := e.FastPathStats(); got.Entries != 0 || got.Frames != kernel1 {
		t.Errorf("fast path %+v after the timeout, want no entries and %d frames", got, kernel1)
	}
}

// chainLab is the namespaces of the chain tests: guests a (10.9.0.1) and
// b (10.9.0.2) on dedicated ports ga and gb, and two vsafilter
// appliances, ips (denies UDP to port 9) on v1 and fw on v2, on links with
// room for a header.
type chainLab struct {
	dm, a, b   *netnstest.NS
	macA, macB MAC
	ips, fw    labAppliance
}

type labAppliance struct {
	*vsafiltertest.Run
	ns *netnstest.NS
}

// snapshot is the lab's rules: a with policy pol, b unmanaged, both
// appliances healthy.
func (l *chainLab) snapshot(pol *PolicyRule) Snapshot {
	return Snapshot{
		Guests: []GuestRule{
			{Name: "a", Ready: true, Policy: pol, Interfaces: []GuestInterface{{MAC: l.macA, Port: "ga", Dedicated: true}}},
			{Name: "b", Ready: true, Interfaces: []GuestInterface{{MAC: l.macB, Port: "gb", Dedicated: true}}},
		},
		Appliances: []ApplianceRule{
			{Appliance: "ips", Instance: "ips-1", MAC: ipsMAC, Port: "v1", Healthy: true},
			{Appliance: "fw", Instance: "fw-1", MAC: fwMAC, Port: "v2", Healthy: true},
		},
	}
}

func newChainLab(t *testing.T, ctx context.Context, bin string) *chainLab {
	t.Helper()
	dmNS, aNS, bNS, ipsNS, fwNS := netnstest.New(t), netnstest.New(t), netnstest.New(t), netnstest.New(t), netnstest.New(t)
	for _, ns := range []*netnstest.NS{dmNS, aNS, bNS, ipsNS, fwNS} {
		ns.QuietIPv6(t)
	}
	macA, macB := gMAC(0xa1), gMAC(0xb1)
	// Appliance links carry the guests' MTU plus a header's worth.
	for _, l := range []struct {
		ns   *netnstest.NS
		port string
		mac  MAC
		mtu  int
	}{{aNS, "ga", macA, 1500}, {bNS, "gb", macB, 1500}, {ipsNS, "v1", ipsMAC, 1600}, {fwNS, "v2", fwMAC, 1600}} {
		netnstest.Veth(t,
			netnstest.End{NS: l.ns, Name: "eth0", MAC: net.HardwareAddr(l.mac[:]), MTU: l.mtu},
			netnstest.End{NS: dmNS, Name: l.port, MTU: l.mtu})
	}
	for _, g := range []struct {
		ns   *netnstest.NS
		addr string
	}{{aNS, "10.9.0.1/24"}, {bNS, "10.9.0.2/24"}} {
		if _, err := g.ns.Exec(ctx, "ip", "addr", "add", g.addr, "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	return &chainLab{dm: dmNS, a: aNS, b: bNS, macA: macA, macB: macB,
		ips: labAppliance{vsafiltertest.Start(t, ctx, ipsNS, bin, "ips", "eth0",
			"[output]\nstats_interval = \"0s\"\n[[rule]]\nname = \"deny-discard\"\naction = \"deny\"\nproto = \"udp\"\ndport = 9\n"), ipsNS},
		fw: labAppliance{vsafiltertest.Start(t, ctx, fwNS, bin, "fw", "eth0", "[output]\nstats_interval = \"0s\"\n"), fwNS},
	}
}

// TestDMFastPathOnInterceptLinkInNamespaces: guest a's frames reach the DM
// as on a tc-redirect host, redirected from its tap's ingress out of one
// end of a jumbo-MTU veth pair into the other, the engine's intercept port,
// where native XDP is refused. The fast path's tc variant on the feeding
// end carries the flow after its first frame: every frame reaches b once,
// byte for byte, and the kernel counted all but the first.
func TestDMFastPathOnInterceptLinkInNamespaces(t *testing.T) {
	netnstest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dmNS, aNS, bNS := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	for _, ns := range []*netnstest.NS{dmNS, aNS, bNS} {
		ns.QuietIPv6(t)
	}
	macA, macB := gMAC(0xa1), gMAC(0xb1)
	netnstest.Veth(t, netnstest.End{NS: aNS, Name: "eth0", MAC: net.HardwareAddr(macA[:])}, netnstest.End{NS: dmNS, Name: "ta", MTU: 1500})
	netnstest.Veth(t, netnstest.End{NS: bNS, Name: "eth0", MAC: net.HardwareAddr(macB[:])}, netnstest.End{NS: dmNS, Name: "gb", MTU: 1500})
	netnstest.Veth(t, netnstest.End{NS: dmNS, Name: "feed", MTU: 9000}, netnstest.End{NS: dmNS, Name: "in", MTU: 9000})
	redirectIngress(t, dmNS, "ta", "feed")

	fp := newTestFastPathWith(t, xdpfast.Config{Do: dmNS.Do, MaxEntries: 64, Feeds: map[string]string{"in": "feed"}})
	e := newNetnsEngine(t, dmNS, false, Config{InterceptPort: "in", FastPath: fp,
		Logger: slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err := e.Update(ctx, Snapshot{Guests: []GuestRule{
		{Name: "a", Ready: true, Policy: dmPolicy("open"), Interfaces: []GuestInterface{{MAC: macA, Port: "ta"}}},
		{Name: "b", Ready: true, Interfaces: []GuestInterface{{MAC: macB, Port: "gb", Dedicated: true}}},
	}}); err != nil {
		t.Fatal(err)
	}
	runEngine(t, ctx, e)
	g := openRawGuests(t, ctx, aNS, bNS, macA)
	const n = 30
	for i := range n {
		want := dmUDPFrame(macA, macB, "10.9.0.1", "10.9.0.2", 40000, 5000, fmt.Sprintf("datagram %02d", i))
		g.send(want)
		if got := g.receive(10 * time.Second); !bytes.Equal(got, want) {
			t.Fatalf("frame %d arrived as %x, want %x", i, got, want)
		}
	}
	if got := g.receive(300 * time.Millisecond); got != nil {
		t.Fatalf("a frame arrived twice: %x", got)
	}
	for deadline := time.Now().Add(10 * time.Second); e.FastPathStats().Frames != n-1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the kernel carried %+v, want %d frames", e.FastPathStats(), n-1)
		}
	}
}

// redirectIngress makes every frame arriving on from leave by to, as the
// tc-redirect intercept backend does with a diverted guest's tap.
func redirectIngress(t *testing.T, ns *netnstest.NS, from, to string) {
	t.Helper()
	err := ns.Do(func() error {
		src, err := net.InterfaceByName(from)
		if err != nil {
			return err
		}
		dst, err := net.InterfaceByName(to)
		if err != nil {
			return err
		}
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, int32(dst.Index)),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirect.Call(),
			asm.Return(),
		}})
		if err != nil {
			return err
		}
		t.Cleanup(func() { prog.Close() })
		l, err := link.AttachTCX(link.TCXOptions{Program: prog, Interface: src.Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		return nil
	})
	if err != nil {
		t.Skipf("cannot redirect with tcx here: %v", err)
	}
}
