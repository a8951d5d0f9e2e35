package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/e2elab"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/vmimage"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
)

// TestEndToEnd plays the whole story on real components: a private
// libvirtd, QEMU guests on a bridge, appliance VMs booted from the
// appliance image, and the agent with its distribution manager diverting
// the guests' taps. Each step's duration is logged.
func TestEndToEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the end-to-end test needs root (namespaces, libvirtd, QEMU)")
	}
	if err := libvirtlab.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	timer := newStepTimer(t)

	img := buildApplianceImage(ctx, t)
	timer.done("appliance image built")

	virt, err := e2elab.DomainType(ctx, img.Kernel, img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("appliance domain type %q: %s", virt.DomainType, virt.Reason)
	timer.done("KVM probe")
	lab, err := e2elab.Start(ctx, e2elab.Options{
		Dir: dir, Template: "../../testdata/templates/vsa-header.xml",
		Kernel: img.Kernel, Initrd: img.Initrd, GuestPrefix: "web", DomainType: virt.DomainType,
	})
	if errors.Is(err, libvirtlab.ErrUnavailable) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = lab.Stop(context.Background())
		}
	})
	linksBefore, err := lab.Links(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bridgeBefore, err := intercept.DumpLink(ctx, lab.NetNSPath, e2elab.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	timer.done("lab up: libvirtd, bridge, agent and DM")

	// 1. Two guests: gated, appliances defined and booted, resumed. A
	// connection of the test's own sees what libvirt really did.
	watch, err := hypervisor.Connect(ctx, lab.Libvirt.URI(), hypervisor.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	var mu sync.Mutex
	lifecycle := map[string][]string{}
	go func() {
		for e := range watch.Events() {
			if e.Kind == hypervisor.EventSuspended || e.Kind == hypervisor.EventResumed {
				mu.Lock()
				lifecycle[e.Name] = append(lifecycle[e.Name], e.Kind.String())
				mu.Unlock()
			}
		}
	}()
	web2, err := lab.BootGuest(ctx, "web-2", 2, "")
	if err != nil {
		t.Fatal(err)
	}
	web1, err := lab.BootGuest(ctx, "web-1", 1, e2elab.TrafficScript(web2.IP, true))
	if err != nil {
		t.Fatal(err)
	}
	waitStep(ctx, t, "web-1 and web-2 inspected", func() bool {
		return lab.GuestState("web-1") == agent.GuestInspected && lab.GuestState("web-2") == agent.GuestInspected
	})
	evs, _ := lab.Agent.Events(0)
	for _, g := range []string{"web-1", "web-2"} {
		gated := slices.IndexFunc(evs, func(e agent.Event) bool { return e.Kind == agent.EventGated && e.Guest == g })
		released := slices.IndexFunc(evs, func(e agent.Event) bool { return e.Kind == agent.EventReleased && e.Guest == g })
		if gated < 0 || released < gated {
			t.Errorf("%s: gated at event %d, released at %d; want gated, then released", g, gated, released)
		}
		for _, inst := range []string{"vsa-ips-1", "vsa-fw-1"} {
			started := slices.IndexFunc(evs, func(e agent.Event) bool { return e.Kind == agent.EventApplianceStarted && e.Appliance == inst })
			if started < 0 || (released >= 0 && started > released) {
				t.Errorf("%s released (event %d) before %s started (event %d)", g, released, inst, started)
			}
		}
	}
	// The events are in flight at most: a short wait is enough.
	evCtx, evCancel := context.WithTimeout(ctx, time.Minute)
	defer evCancel()
	waitStep(evCtx, t, "libvirt to report both guests paused and resumed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, g := range []string{"web-1", "web-2"} {
			// Starting a domain emits "resumed" first (LAB.md); the
			// gate's pause and release follow it.
			if l := lifecycle[g]; !slices.Contains(l, "suspended") || l[len(l)-1] != "resumed" {
				return false
			}
		}
		return true
	})
	if got, want := applianceNames(lab), []string{"vsa-fw-1", "vsa-ips-1"}; !slices.Equal(got, want) {
		t.Errorf("appliances %v, want %v", got, want)
	}
	timer.done("guests gated, appliances defined and started, guests resumed")

	// 2. web-1 talks to web-2 through ips then fw; what the rules deny
	// does not arrive. The guest's script reports on its console.
	var chains [][2][]string
	waitStep(ctx, t, "web-1's traffic script to finish", func() bool {
		for _, f := range lab.DM.Engine().Flows("web-1") {
			c := [2][]string{f.Forward, f.Reverse}
			if f.Verdict == "chain" && !slices.ContainsFunc(chains, func(x [2][]string) bool { return cmp.Equal(x, c) }) {
				chains = append(chains, c)
			}
		}
		doc, _ := os.ReadFile(web1.Console)
		return strings.Contains(string(doc), e2elab.MarkDone)
	})
	out, err := web1.Outcome(ctx, func(_, line string) { t.Logf("web-1 console: %s", line) }, e2elab.AllMarks...)
	if err != nil {
		t.Fatal(err)
	}
	for _, mark := range e2elab.AllMarks {
		if !out.Passed(mark) {
			t.Errorf("web-1 → web-2: %q is not what the policy wants", out.Lines[mark])
		}
	}
	wantChain := [2][]string{{"vsa-ips-1", "vsa-fw-1"}, {"vsa-fw-1", "vsa-ips-1"}}
	if !slices.ContainsFunc(chains, func(c [2][]string) bool { return cmp.Equal(c, wantChain) }) {
		t.Errorf("no flow of web-1 took ips then fw (and back fw then ips); chains seen: %v", chains)
	}
	c := lab.DM.Engine().Counters()
	for _, inst := range []string{"vsa-ips-1", "vsa-fw-1"} {
		ic := c.Instances[inst]
		t.Logf("DM counters for %s: sent %d, returned %d, notices %d, timeouts %d", inst, ic.Sent, ic.Returned, ic.Notices, ic.Timeouts)
		if ic.Sent == 0 || ic.Returned == 0 || ic.Notices == 0 {
			t.Errorf("%s: %+v; want frames sent and returned, and a drop notice", inst, ic)
		}
	}
	// The bulk echo's connection is long enough for the kernel fast path
	// to carry it (real virtio guests leave their checksums to offload).
	fastCtx, fastDone := context.WithTimeout(ctx, 15*time.Second) // counters are read back once a second
	waitStep(fastCtx, t, "the kernel fast path to have carried frames", func() bool {
		return lab.DM.Engine().FastPathStats().Frames > 0
	})
	fastDone()
	t.Logf("kernel fast path: %+v", lab.DM.Engine().FastPathStats())
	waitStep(ctx, t, "drop notices from ips and fw as agent events", func() bool {
		return hasEvent(lab, agent.EventDropNotice, "vsa-ips-1") && hasEvent(lab, agent.EventDropNotice, "vsa-fw-1")
	})
	timer.done("traffic through ips → fw; telnet and EICAR dropped")

	// 3. A third guest with the same policy reuses the running appliances.
	web3, err := lab.BootGuest(ctx, "web-3", 3, e2elab.TrafficScript(web2.IP, false))
	if err != nil {
		t.Fatal(err)
	}
	waitStep(ctx, t, "web-3 inspected", func() bool { return lab.GuestState("web-3") == agent.GuestInspected })
	out3, err := web3.Outcome(ctx, nil, e2elab.MarkHTTP)
	if err != nil {
		t.Fatal(err)
	}
	if !out3.Passed(e2elab.MarkHTTP) || !strings.Contains(out3.Lines[e2elab.MarkHTTP], "web-2") {
		t.Errorf("HTTP from web-3: %q", out3.Lines[e2elab.MarkHTTP])
	}
	names, err := lab.DomainNames(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"vsa-fw-1", "vsa-ips-1", "web-1", "web-2", "web-3"}; !slices.Equal(names, want) {
		t.Errorf("domains %v, want %v: web-3 must reuse the appliances", names, want)
	}
	timer.done("third guest reuses the running appliances")

	// 4. Guests gone: appliances deleted, links as they were.
	for _, g := range []*e2elab.Guest{web1, web2, web3} {
		if err := lab.RemoveGuest(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	waitStep(ctx, t, "every domain gone", func() bool {
		names, err := lab.DomainNames(ctx)
		return err == nil && len(names) == 0 && len(lab.Agent.Appliances()) == 0 && lab.Agent.Settled()
	})
	// The taps of destroyed domains disappear asynchronously.
	var links []string
	waitStep(ctx, t, "the lab's links as they were", func() bool {
		links, _ = lab.Links(ctx)
		return slices.Equal(links, linksBefore)
	})
	bridgeAfter, err := intercept.DumpLink(ctx, lab.NetNSPath, e2elab.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(bridgeBefore, bridgeAfter); diff != "" {
		t.Errorf("bridge after teardown (-before +after):\n%s", diff)
	}
	timer.done("guests removed, appliances deleted, links restored")

	// 5. Nothing left behind.
	libvirtDir, netns := lab.Libvirt.Dir, lab.NetNSPath
	stopped = true
	if err := lab.Stop(ctx); err != nil {
		t.Errorf("stopping the lab: %v", err)
	}
	for _, p := range []string{libvirtDir, netns} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after teardown (%v)", p, err)
		}
	}
	if pids := processesMentioning(libvirtDir); len(pids) > 0 {
		t.Errorf("processes of the lab still running: %v", pids)
	}
	timer.done("lab stopped, nothing left")
	timer.report()
}

// buildApplianceImage builds the appliance image into a temporary folder,
// with a static vsafilter and the kernel from the lab's cache.
func buildApplianceImage(ctx context.Context, t *testing.T) vmimage.Appliance {
	t.Helper()
	bin := vsafiltertest.Build(t, "../..")
	cacheDir, err := libvirtlab.CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	img, err := vmimage.BuildAppliance(ctx, vmimage.ApplianceOptions{
		OutDir: t.TempDir(), Vsafilter: bin, Cache: vmimage.Cache{Dir: cacheDir, Logf: t.Logf},
	})
	if errors.Is(err, vmimage.ErrMissingTool) || errors.Is(err, vmimage.ErrDownload) {
		t.Skipf("skipping: cannot build the appliance image here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return img
}

type stepTimer struct {
	t     *testing.T
	start time.Time
	last  time.Time
	steps []string
}

func newStepTimer(t *testing.T) *stepTimer {
	now := time.Now()
	return &stepTimer{t: t, start: now, last: now}
}

func (s *stepTimer) done(step string) {
	now := time.Now()
	line := now.Sub(s.last).Round(10*time.Millisecond).String() + "\t" + step
	s.steps = append(s.steps, line)
	s.t.Logf("step took %s", line)
	s.last = now
}

func (s *stepTimer) report() {
	s.t.Logf("steps:\n  %s\n  total %s", strings.Join(s.steps, "\n  "), time.Since(s.start).Round(10*time.Millisecond))
}

func waitStep(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := e2elab.WaitFor(ctx, what, cond); err != nil {
		t.Fatal(err)
	}
}

func applianceNames(lab *e2elab.Lab) []string {
	var names []string
	for _, a := range lab.Agent.Appliances() {
		names = append(names, a.Name)
	}
	slices.Sort(names)
	return names
}

func hasEvent(lab *e2elab.Lab, kind agent.EventKind, appliance string) bool {
	evs, _ := lab.Agent.Events(0)
	return slices.ContainsFunc(evs, func(e agent.Event) bool { return e.Kind == kind && e.Appliance == appliance })
}

// processesMentioning lists the PIDs whose command line contains s.
func processesMentioning(s string) []string {
	ents, _ := os.ReadDir("/proc")
	var pids []string
	for _, e := range ents {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), s) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// The simulated demo needs neither root nor QEMU: it must always play to
// the end.
func TestSimulatedDemo(t *testing.T) {
	var out, errOut strings.Builder
	if code := dispatch([]string{"demo", "--simulated"}, &out, &errOut); code != 0 {
		t.Fatalf("vsagent demo --simulated exited %d: %s\n%s", code, errOut.String(), out.String())
	}
	for _, want := range []string{"demo-web runs; its traffic is bound to ips → fw", "all deleted"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("narration lacks %q:\n%s", want, out.String())
		}
	}
	if code := dispatch([]string{"demo", "extra"}, &out, &errOut); code != 2 {
		t.Errorf("vsagent demo extra exited %d, want 2 (usage)", code)
	}
}
