//go:build linux

package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/afpacket"
	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/xdpfast"
	"github.com/vsagent/vsagent/internal/xdpgen"
	"github.com/vsagent/vsagent/sourceroute"
)

// Sizes of one measurement. Three rounds of four modes of (warm-up +
// window) per frame size keep the whole benchmark near a minute and a half.
const (
	fwdRounds = 3
	fwdWarmup = 500 * time.Millisecond
	// With a million flows, a few seconds for the flow table to fill.
	fwdManyWarmup = 3 * time.Second
	fwdWindow     = 3 * time.Second
	// Flow counts of the runs: distinct UDP source ports, or source and
	// destination ports together for the million.
	fwdFewFlows  = 1 << 10
	fwdManyFlows = 1 << 20
	fwdFirstSP   = 10000
)

// Interface names, each unique within its own namespace.
const (
	fwdGenLink    = "g0" // generator's end
	fwdSrcPort    = "ga" // host end of the generator's link: the source guest's port
	fwdDstPort    = "gb" // host end of the sink's link: the destination guest's port
	fwdSinkLink   = "s0"
	fwdBridge     = "br0"
	fwdApplLink   = "eth0" // appliance's end of its link
	fwdApplPortFm = "ap%d" // host end of appliance i's link
)

var (
	fwdSrcMAC  = net.HardwareAddr{0x52, 0x54, 0, 0xbe, 0, 1}
	fwdDstMAC  = net.HardwareAddr{0x52, 0x54, 0, 0xbe, 0, 2}
	fwdSinkMAC = net.HardwareAddr{0x02, 0, 0, 0xbe, 0x5e, 1} // not fwdDstMAC: the sink drops frames early, as other-host
	fwdApplMAC = [2]sourceroute.MAC{{0x02, 0, 0, 0xbe, 0xa1, 1}, {0x02, 0, 0, 0xbe, 0xa2, 1}}
)

// BenchmarkDMForwardVsBridge measures the distribution manager's
// forwarding rate next to the kernel bridge's on the same veth topology,
// in the same run:
//
//	generator ns: g0 ── ga :host ns: gb ── s0 :sink ns
//	                       ap1, ap2 ── eth0 :appliance ns 1, 2
//
// The generator is xdpgen (XDP live frames, faster than any skb-based
// one): UDP frames from the source guest's MAC to the destination guest's,
// over fwdFewFlows source ports, or fwdManyFlows port pairs (the flow
// table then holds about a million flows, and a window's frames are a mix
// of new and known flows: the warm-up is longer). What the sink namespace receives per second
// over a fixed window is the rate (its kernel then drops the frames, which
// are not addressed to its own MAC). Modes, interleaved round by round so
// that the machine's load drifts over all of them alike:
//
//   - bridge: ga and gb enslaved to a Linux bridge with a static FDB entry
//     for the destination; br_netfilter's hooks off if the module is loaded.
//   - pass-through: the DM engine reads ga (a Dedicated guest port, AF_PACKET
//     TPACKET_V3 ring) and writes to gb; both guests unmanaged.
//   - pass-fast: the same with the kernel fast path (internal/xdpfast): the
//     engine classifies each flow's first frame and offloads it, and the
//     XDP program on ga redirects the rest to gb. Its XDP receive work runs
//     in the softirq of the CPU that sent the frame, the generator's (RPS
//     moves the other modes' work off that CPU only once an skb exists),
//     so where pass-fast equals offered-pps the generator, sharing its
//     core with the fast path, is the limit and the ratio a lower bound.
//   - chain: the source guest's policy has the chain [a1, a2] of header
//     appliances; each appliance is a reflector in its own namespace (an
//     AF_PACKET ring that parses the MSR header, advances it and sends the
//     batch back with WriteBatch), so each frame crosses five veth hops and
//     the DM handles it three times: encapsulate, switch, strip.
//   - chain-fast: the same chain with the kernel fast path, which pushes,
//     switches and strips the header in XDP; the appliances' ends of their
//     links run a pass-everything XDP program for the mode's duration, as
//     redirects into a veth need. Only the reflectors (Go, AF_PACKET) are
//     left in userspace, so they bound this mode.
//
// CPUs: the generator's thread runs alone on CPU 0; the host end of its
// link steers its receive work (RPS) to the other CPUs, where the DM's
// threads and reflectors run too, so each forwarder has the rest of the
// machine (one core on the development VM). See fwdCPUs for the
// priorities this takes on a shared machine.
//
// Metrics are medians of fwdRounds windows: pps (pass-through),
// bridge-pps, fast-pps, chain-pps, chain-fast-pps, their ratios to the
// bridge, and each chain mode's ratio to its pass-through; offered-pps, the
// lowest generator rate of any window (it must exceed every pps for the
// figures to measure the forwarder); gen-ns/frame, the generator thread's
// CPU time per frame sent. ns/op is the whole run's time, meaningless.
// Each window is logged with -v. Run:
//
//	go test -run '^$' -bench DMForwardVsBridge -benchtime 1x -v ./agent
func BenchmarkDMForwardVsBridge(b *testing.B) {
	netnstest.RequireRoot(b)
	topo := newFwdTopology(b)
	topo.cpus = claimForwarderCPUs(b)
	for _, flows := range []int{fwdFewFlows, fwdManyFlows} {
		for _, size := range []int{60, 1514} {
			b.Run(fmt.Sprintf("%dB/flows=%d", size, flows), func(b *testing.B) { topo.bench(b, size, flows) })
		}
	}
}

type fwdTopology struct {
	gen, host, sink *netnstest.NS
	hostPath        string
	genIfindex      int
	cpus            *fwdCPUs
	reflected       [2]*atomic.Uint64
	appl            [2]*netnstest.NS // the appliances' namespaces
	pass            *ebpf.Program
	flows           int           // of the run under way
	warmup          time.Duration // before each window
}

// setApplianceXDP attaches the program fd to both appliances' ends of
// their links (-1 detaches).
func (t *fwdTopology) setApplianceXDP(b *testing.B, fd int) {
	if err := setXDP(t.appl[:], fwdApplLink, fd); err != nil {
		b.Fatal(err)
	}
}

// setSrcPortXDP attaches the program fd to ga (-1 detaches): the pass
// program, which the generator's XDP_TX frames need, except while the fast
// path's own program takes its place.
func (t *fwdTopology) setSrcPortXDP(b *testing.B, fd int) {
	if err := setXDP([]*netnstest.NS{t.host}, fwdSrcPort, fd); err != nil {
		b.Fatal(err)
	}
}

func newFwdTopology(b *testing.B) *fwdTopology {
	t := &fwdTopology{gen: netnstest.New(b), host: netnstest.New(b), sink: netnstest.New(b)}
	t.hostPath = filepath.Join("/var/run/netns", t.host.Name())
	for _, ns := range []*netnstest.NS{t.gen, t.host, t.sink} {
		ns.QuietIPv6(b)
	}
	netnstest.Veth(b, netnstest.End{NS: t.gen, Name: fwdGenLink, MAC: fwdSrcMAC}, netnstest.End{NS: t.host, Name: fwdSrcPort})
	netnstest.Veth(b, netnstest.End{NS: t.host, Name: fwdDstPort}, netnstest.End{NS: t.sink, Name: fwdSinkLink, MAC: fwdSinkMAC})
	l, err := t.gen.Netlink().LinkByName(fwdGenLink)
	if err != nil {
		b.Fatal(err)
	}
	t.genIfindex = l.Attrs().Index

	// Frames sent with XDP_TX reach a veth's peer only through the peer's
	// XDP receive path.
	pass, err := xdpgen.PassProgram()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pass.Close() })
	t.pass = pass
	t.setSrcPortXDP(b, pass.FD())
	// Frames the fast path redirects out of gb reach s0 only through s0's
	// XDP receive path too. Every mode runs with it, so that the sink is
	// the same for all.
	if err := t.sink.Do(func() error {
		l, err := netlink.LinkByName(fwdSinkLink)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFd(l, pass.FD())
	}); err != nil {
		b.Fatalf("attach XDP to %s: %v", fwdSinkLink, err)
	}

	t.steerReceiveAwayFromGenerator(b)
	t.host.AddBridge(b, fwdBridge)
	b.Log(t.disableBridgeNetfilter(b))

	t.appl, t.reflected = startReflectors(b, t.host)
	return t
}

// fwdGenCPU is the CPU the generator's thread is pinned to.
const fwdGenCPU = 0

// steerReceiveAwayFromGenerator makes the forwarder's work happen on the
// other CPUs. A veth receives an XDP_TX frame in a NAPI poll on the
// sending CPU, so without Receive Packet Steering everything the host
// does with the frame (bridge forwarding, or the copy into the DM's ring,
// and the delivery into the sink) would run on the generator's core and
// hold the generator down to the forwarder's rate. With it, that core only
// builds the skb and queues it to another CPU's backlog.
func (t *fwdTopology) steerReceiveAwayFromGenerator(b *testing.B) {
	n := runtime.NumCPU()
	if n < 2 {
		b.Log("one CPU: the generator shares it with the forwarder and may be the limit")
		return
	}
	mask := fmt.Sprintf("%x", (uint64(1)<<min(n, 64)-1)&^(1<<fwdGenCPU))
	if _, err := t.host.Exec(context.Background(), "sh", "-c",
		fmt.Sprintf("echo %s > /sys/class/net/%s/queues/rx-0/rps_cpus", mask, fwdSrcPort)); err != nil {
		b.Fatalf("steer %s's receive work: %v", fwdSrcPort, err)
	}
	b.Logf("generator pinned to CPU %d; %s's receive work steered to CPU mask %s", fwdGenCPU, fwdSrcPort, mask)
}

// fwdCPUs keeps the generator's CPU for the generator and gives both
// forwarders the same priority. The development machine is shared: at a
// load average of 5–10 on two cores a nice-0 thread gets a fraction of a
// core, which would measure the scheduler's share, not the forwarder. So
// for the benchmark's duration the generator's thread runs alone on
// fwdGenCPU and every other thread of this process (the DM, the
// reflectors) on the remaining CPUs, all at nice -20; so do this
// process's scheduling autogroup (with sched_autogroup_enabled a thread's
// nice only counts inside its session's group) and the forwarder CPUs'
// ksoftirqd threads, which do most of the bridge's work, and the kernel
// side of the DM's, at these rates. Everything is restored at the end.
type fwdCPUs struct {
	all, rest unix.CPUSet
	nice      int
}

func claimForwarderCPUs(b *testing.B) *fwdCPUs {
	c := &fwdCPUs{}
	if err := unix.SchedGetaffinity(0, &c.all); err != nil {
		b.Fatal(err)
	}
	c.rest = c.all
	c.rest.Clear(fwdGenCPU)
	// The raw system call returns 20 - nice.
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		b.Fatal(err)
	}
	c.nice = 20 - prio
	if restore, err := setAutogroupNice(-20); err != nil {
		b.Logf("autogroup priority unchanged: %v", err)
	} else {
		b.Cleanup(restore)
	}
	for cpu := range 1024 {
		if c.rest.IsSet(cpu) {
			c.boostKsoftirqd(b, cpu)
		}
	}
	c.reclaim(b, 0)
	b.Cleanup(func() {
		c.forEachThread(b, func(tid int) error {
			return errors.Join(unix.SchedSetaffinity(tid, &c.all), unix.Setpriority(unix.PRIO_PROCESS, tid, c.nice))
		})
	})
	return c
}

// reclaim applies the settings to every thread but the generator's (gen,
// 0 for none). It is repeated once the generator runs because a thread
// the runtime starts from the generator's thread inherits its pinning.
func (c *fwdCPUs) reclaim(b *testing.B, gen int) {
	if c.rest.Count() == 0 {
		return
	}
	c.forEachThread(b, func(tid int) error {
		if tid == gen {
			return nil
		}
		return errors.Join(unix.SchedSetaffinity(tid, &c.rest), unix.Setpriority(unix.PRIO_PROCESS, tid, -20))
	})
}

// boostKsoftirqd gives ksoftirqd/cpu nice -20 until the benchmark ends.
func (c *fwdCPUs) boostKsoftirqd(b *testing.B, cpu int) {
	want := fmt.Sprintf("ksoftirqd/%d", cpu)
	pids := kernelThreads(b, func(comm string) bool { return comm == want })
	if len(pids) == 0 {
		b.Logf("no %s found", want)
		return
	}
	pid := pids[0]
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, pid)
	if err == nil {
		err = unix.Setpriority(unix.PRIO_PROCESS, pid, -20)
	}
	if err != nil {
		b.Fatalf("raise priority of %s: %v", want, err)
	}
	b.Cleanup(func() { _ = unix.Setpriority(unix.PRIO_PROCESS, pid, 20-prio) })
}

// kernelThreads lists the processes whose name matches.
func kernelThreads(b *testing.B, match func(comm string) bool) []int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + p.Name() + "/comm"); err == nil && match(strings.TrimSuffix(string(comm), "\n")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// setAutogroupNice sets the nice value of this process's scheduling
// autogroup and returns how to put the old one back.
func setAutogroupNice(nice int) (restore func(), err error) {
	const path = "/proc/self/autogroup"
	cur, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// "/autogroup-123 nice 0"
	var name string
	var old int
	if _, err := fmt.Sscanf(string(cur), "%s nice %d", &name, &old); err != nil {
		return nil, fmt.Errorf("parse %q: %w", cur, err)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(nice)), 0); err != nil {
		return nil, err
	}
	return func() { _ = os.WriteFile(path, []byte(strconv.Itoa(old)), 0) }, nil
}

func (c *fwdCPUs) forEachThread(b *testing.B, fn func(tid int) error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		b.Fatal(err)
	}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := fn(tid); err != nil && !errors.Is(err, unix.ESRCH) {
			b.Errorf("thread %d: %v", tid, err)
		}
	}
}

// disableBridgeNetfilter turns br_netfilter's iptables hooks off in the
// host namespace if the module is loaded, and says which it was.
func (t *fwdTopology) disableBridgeNetfilter(b *testing.B) string {
	keys := []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"}
	loaded := false
	err := t.host.Do(func() error {
		for _, k := range keys {
			path := "/proc/sys/net/bridge/" + k
			if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				continue
			}
			loaded = true
			if err := os.WriteFile(path, []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatalf("turn br_netfilter hooks off: %v", err)
	}
	if !loaded {
		return "bridge baseline: br_netfilter not loaded"
	}
	return "bridge baseline: br_netfilter loaded, net.bridge." + strings.Join(keys, ", ") + " = 0 in the host namespace"
}

// startReflector plays a header appliance at full speed: it advances the
// MSR header of every frame addressed to it and sends the frames back
// through its link in the batches they arrived in. It returns how many it
// reflected so far.
// startReflectors makes the two appliances a1 and a2: each a reflector in
// a namespace of its own, linked to host by ap1 and ap2.
func startReflectors(b *testing.B, host *netnstest.NS) (appl [2]*netnstest.NS, reflected [2]*atomic.Uint64) {
	for i := range 2 {
		ns := netnstest.New(b)
		ns.QuietIPv6(b)
		// Room for the 34-byte header of a two-appliance route on top of
		// a full-size guest frame.
		netnstest.Veth(b, netnstest.End{NS: ns, Name: fwdApplLink, MAC: net.HardwareAddr(fwdApplMAC[i][:]), MTU: 1600},
			netnstest.End{NS: host, Name: fmt.Sprintf(fwdApplPortFm, i+1), MTU: 1600})
		reflected[i] = startReflector(b, ns, fwdApplMAC[i])
		appl[i] = ns
	}
	return appl, reflected
}

// reflectorAppliances are the DM's rules for the two reflectors, a1 and
// a2, header appliances on the host ends ap1 and ap2 of their links.
func reflectorAppliances() []sourceroute.ApplianceRule {
	var rules []sourceroute.ApplianceRule
	for i, mac := range fwdApplMAC {
		rules = append(rules, sourceroute.ApplianceRule{
			Appliance: fmt.Sprintf("a%d", i+1), Instance: fmt.Sprintf("a%d-1", i+1), MAC: mac,
			Kind: sourceroute.HeaderAppliance, Port: fmt.Sprintf(fwdApplPortFm, i+1), Healthy: true,
		})
	}
	return rules
}

func startReflector(b *testing.B, ns *netnstest.NS, self sourceroute.MAC) *atomic.Uint64 {
	var s *afpacket.Socket
	if err := ns.Do(func() error {
		var err error
		s, err = afpacket.Open(afpacket.Config{Iface: fwdApplLink})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	codec := sourceroute.DefaultCodec()
	var reflected atomic.Uint64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		views := make([][]byte, 64)
		heads := make([][]byte, 64)
		for {
			n, err := s.ReadBatch(ctx, views)
			if err != nil {
				return
			}
			out := views[:0]
			for _, v := range views[:n] {
				f, r := codec.Parse(v)
				if r != sourceroute.OK || codec.Advance(f, self) != sourceroute.OK {
					continue
				}
				out = append(out, v)
			}
			sent, _ := s.WriteBatch(heads[:len(out)], out)
			s.Release()
			reflected.Add(uint64(sent))
		}
	}()
	b.Cleanup(func() { cancel(); <-done; s.Close() })
	return &reflected
}

type fwdMode string

const (
	modeBridge    fwdMode = "bridge"
	modePass      fwdMode = "pass-through"
	modePassFast  fwdMode = "pass-fast"
	modeChain     fwdMode = "chain"
	modeChainFast fwdMode = "chain-fast"
)

// fwdSample is one window: what the sink received, what the generator
// offered, and what reached the forwarder's input port, per second; and
// the CPU time the generator's thread got, as a share of the window and
// per frame it sent.
type fwdSample struct{ pps, offered, arrived, genShare, genNsPerFrame float64 }

func (t *fwdTopology) bench(b *testing.B, size, flows int) {
	cfg := xdpgen.Config{
		Frame:       xdpgen.UDPFrame(fwdDstMAC, fwdSrcMAC, size),
		FieldOffset: xdpgen.UDPPortOffset, First: fwdFirstSP, Flows: flows,
	}
	t.flows, t.warmup = flows, fwdWarmup
	if flows > 1<<16 {
		cfg.FieldSize, cfg.First = 4, fwdFirstSP<<16
		t.warmup = fwdManyWarmup
	}
	gen, err := xdpgen.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer gen.Close()
	modes := []fwdMode{modeBridge, modePass, modePassFast, modeChain, modeChainFast}
	samples := map[fwdMode][]fwdSample{}
	b.ResetTimer()
	for round := range fwdRounds {
		for _, m := range modes {
			var s fwdSample
			var note string
			switch m {
			case modeBridge:
				s = t.withBridge(b, func() fwdSample { return t.measure(b, gen) })
			default:
				chain, fast := m == modeChain || m == modeChainFast, m == modePassFast || m == modeChainFast
				s, note = t.withDM(b, chain, fast, func() fwdSample { return t.measure(b, gen) })
			}
			b.Logf("%dB round %d %-12s %7.0f pps  offered %7.0f  arrived at %s %7.0f  generator %3.0f%% of a CPU, %4.0f ns/frame%s",
				size, round+1, m, s.pps, s.offered, fwdSrcPort, s.arrived, 100*s.genShare, s.genNsPerFrame, note)
			samples[m] = append(samples[m], s)
		}
	}
	b.StopTimer()
	pps := func(m fwdMode) float64 {
		return median(samples[m], func(s fwdSample) float64 { return s.pps })
	}
	bridge := pps(modeBridge)
	b.ReportMetric(pps(modePass), "pps")
	b.ReportMetric(bridge, "bridge-pps")
	b.ReportMetric(pps(modeChain), "chain-pps")
	b.ReportMetric(pps(modePassFast), "fast-pps")
	b.ReportMetric(pps(modeChainFast), "chain-fast-pps")
	if bridge > 0 {
		b.ReportMetric(pps(modePass)/bridge, "pass/bridge")
		b.ReportMetric(pps(modePassFast)/bridge, "fast/bridge")
		b.ReportMetric(pps(modeChain)/bridge, "chain/bridge")
		b.ReportMetric(pps(modeChainFast)/bridge, "chain-fast/bridge")
	}
	if p := pps(modePass); p > 0 {
		b.ReportMetric(pps(modeChain)/p, "chain/pass")
	}
	if p := pps(modePassFast); p > 0 {
		b.ReportMetric(pps(modeChainFast)/p, "chain-fast/fast")
	}
	lowest := -1.0
	for _, ss := range samples {
		for _, s := range ss {
			if lowest < 0 || s.offered < lowest {
				lowest = s.offered
			}
		}
	}
	b.ReportMetric(lowest, "offered-pps")
	var all []fwdSample
	for _, m := range modes {
		all = append(all, samples[m]...)
	}
	b.ReportMetric(median(all, func(s fwdSample) float64 { return s.genNsPerFrame }), "gen-ns/frame")
}

func median(ss []fwdSample, of func(fwdSample) float64) float64 {
	if len(ss) == 0 {
		return 0
	}
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = of(s)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// measure runs the generator for a warm-up and a window and returns the
// window's rates.
func (t *fwdTopology) measure(b *testing.B, gen *xdpgen.Generator) fwdSample {
	ctx, cancel := context.WithTimeout(context.Background(), t.warmup+fwdWindow+10*time.Second)
	defer cancel()
	genErr := make(chan error, 1)
	genTid := make(chan int, 1)
	go func() {
		genErr <- t.gen.Do(func() error {
			genTid <- unix.Gettid()
			return pinned(fwdGenCPU, func() error { return gen.Run(ctx, t.genIfindex) })
		})
	}()
	wait := func(d time.Duration) {
		select {
		case <-time.After(d):
		case err := <-genErr:
			b.Fatalf("generator stopped early: %v", err)
		}
	}
	var tid int
	select {
	case tid = <-genTid:
	case err := <-genErr:
		b.Fatalf("generator did not start: %v", err)
	}
	wait(t.warmup)
	t.cpus.reclaim(b, tid)
	sink0, in0, sent0, cpu0, t0 := t.rxPackets(b, t.sink, fwdSinkLink), t.rxPackets(b, t.host, fwdSrcPort), t.sent(b, gen), threadCPU(b, tid), time.Now()
	wait(fwdWindow)
	sink1, in1, sent1, cpu1, t1 := t.rxPackets(b, t.sink, fwdSinkLink), t.rxPackets(b, t.host, fwdSrcPort), t.sent(b, gen), threadCPU(b, tid), time.Now()
	cancel()
	if err := <-genErr; err != nil {
		b.Fatal(err)
	}
	secs := t1.Sub(t0).Seconds()
	s := fwdSample{
		pps:      float64(sink1-sink0) / secs,
		offered:  float64(sent1-sent0) / secs,
		arrived:  float64(in1-in0) / secs,
		genShare: (cpu1 - cpu0).Seconds() / secs,
	}
	if sent1 > sent0 {
		s.genNsPerFrame = float64((cpu1 - cpu0).Nanoseconds()) / float64(sent1-sent0)
	}
	return s
}

// threadCPU is the CPU time thread tid of this process has used,
// softirq work done on its behalf included.
func threadCPU(b *testing.B, tid int) time.Duration {
	// MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED) of the kernel.
	clock := int32(^uint32(tid)<<3 | 4 | 2)
	var ts unix.Timespec
	if err := unix.ClockGettime(clock, &ts); err != nil {
		b.Fatalf("CPU clock of thread %d: %v", tid, err)
	}
	return time.Duration(ts.Nano())
}

// pinned runs fn with the calling thread (which must be locked to its
// goroutine) restricted to cpu, then restores the thread's affinity.
// The thread keeps the priority fwdCPUs gave it.
func pinned(cpu int, fn func() error) error {
	var all, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		return fmt.Errorf("read CPU affinity: %w", err)
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return fmt.Errorf("pin to CPU %d: %w", cpu, err)
	}
	err := fn()
	if rerr := unix.SchedSetaffinity(0, &all); rerr != nil {
		err = errors.Join(err, fmt.Errorf("restore CPU affinity: %w", rerr))
	}
	return err
}

func (t *fwdTopology) rxPackets(b *testing.B, ns *netnstest.NS, name string) uint64 {
	l, err := ns.Netlink().LinkByName(name)
	if err != nil {
		b.Fatal(err)
	}
	return l.Attrs().Statistics.RxPackets
}

func (t *fwdTopology) sent(b *testing.B, gen *xdpgen.Generator) uint64 {
	n, err := gen.Sent()
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// withBridge enslaves the guests' ports to the bridge for the duration of
// run; the destination is a static FDB entry, so no frame is flooded.
func (t *fwdTopology) withBridge(b *testing.B, run func() fwdSample) fwdSample {
	nl := t.host.Netlink()
	br, err := nl.LinkByName(fwdBridge)
	if err != nil {
		b.Fatal(err)
	}
	var ports []netlink.Link
	for _, name := range []string{fwdSrcPort, fwdDstPort} {
		l, err := nl.LinkByName(name)
		if err != nil {
			b.Fatal(err)
		}
		if err := nl.LinkSetMaster(l, br); err != nil {
			b.Fatalf("enslave %s: %v", name, err)
		}
		ports = append(ports, l)
	}
	defer func() {
		for _, l := range ports {
			if err := nl.LinkSetNoMaster(l); err != nil {
				b.Errorf("release %s from the bridge: %v", l.Attrs().Name, err)
			}
		}
	}()
	if _, err := t.host.Exec(context.Background(), "bridge", "fdb", "replace", fwdDstMAC.String(), "dev", fwdDstPort, "master", "static"); err != nil {
		b.Fatal(err)
	}
	return run()
}

// withDM runs the DM engine on the host namespace's ports for the
// duration of run, and notes the engine's drops, if any.
func (t *fwdTopology) withDM(b *testing.B, chain, fast bool, run func() fwdSample) (fwdSample, string) {
	open, openTx := PacketPorts(t.hostPath)
	cfg := sourceroute.Config{
		Codec:    sourceroute.DefaultCodec(),
		Self:     DMMAC("bench-host"),
		MaxFlows: max(1<<16, 2*t.flows),
		Open:     open,
		OpenTx:   openTx,
		Logger:   quietLogger(),
	}
	var fp *xdpfast.FastPath
	if fast {
		var err error
		// Three entries per chained flow: push, switch, strip.
		fp, err = xdpfast.New(xdpfast.Config{Do: t.host.Do, MaxEntries: max(1<<17, 4*t.flows)})
		if err != nil {
			b.Skipf("no XDP fast path: %v", err)
		}
		t.setSrcPortXDP(b, -1)
		if err := fp.Attach(fwdSrcPort); err != nil {
			b.Fatal(err)
		}
		if chain {
			t.setApplianceXDP(b, t.pass.FD())
		}
		defer func() {
			if err := fp.Close(); err != nil {
				b.Error(err)
			}
			t.setSrcPortXDP(b, t.pass.FD())
			if chain {
				t.setApplianceXDP(b, -1)
			}
		}()
		cfg.FastPath = fp
	}
	eng, err := sourceroute.NewEngine(cfg)
	if err != nil {
		b.Fatal(err)
	}
	src := sourceroute.GuestRule{Name: "src", Ready: true, Interfaces: []sourceroute.GuestInterface{
		{MAC: sourceroute.MAC(fwdSrcMAC), Port: fwdSrcPort, Network: "lan", Dedicated: true},
	}}
	dst := sourceroute.GuestRule{Name: "dst", Ready: true, Interfaces: []sourceroute.GuestInterface{
		{MAC: sourceroute.MAC(fwdDstMAC), Port: fwdDstPort, Network: "lan", Dedicated: true},
	}}
	snap := sourceroute.Snapshot{Guests: []sourceroute.GuestRule{src, dst}}
	if chain {
		snap.Guests[0].Policy = &sourceroute.PolicyRule{Name: "bench", Chain: []string{"a1", "a2"}}
		snap.Appliances = reflectorAppliances()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := eng.Update(ctx, snap); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	var reflected0 [2]uint64
	for i, r := range t.reflected {
		reflected0[i] = r.Load()
	}
	s := run()
	cancel()
	if err := errors.Join(<-done, eng.Close()); err != nil {
		b.Fatalf("DM engine: %v", err)
	}
	c := eng.Counters()
	note := fmt.Sprintf("  flows %d", c.Flows.Flows)
	if fast {
		st := eng.FastPathStats()
		note = fmt.Sprintf("  fast-path entries %d, kernel-forwarded %d", st.Entries, st.Frames)
	}
	if chain {
		note += fmt.Sprintf("  reflected %d/%d", t.reflected[0].Load()-reflected0[0], t.reflected[1].Load()-reflected0[1])
	}
	for reason, n := range c.Drops {
		if n > 0 {
			note += fmt.Sprintf("  drop %s=%d", reason, n)
		}
	}
	return s, note
}
