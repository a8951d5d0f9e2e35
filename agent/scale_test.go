package agent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/hypervisor"
)

const scaleConfig = `
[scaling]
poll_interval = "10s"
upper_cpu = 80
lower_cpu = 20
hold = "30s"
cooldown = "1m"
host_cpu_percent = %CPU%
host_memory_percent = 100

[[appliance]]
name = "ips"
template = "appliance.xml"
vcpus = 1
max_vcpus = 2
memory = "128MiB"
max_memory = "256MiB"
max_instances = 2

[[policy]]
name = "protected"
chain = ["ips"]
[policy.match]
domains = ["web-*"]
`

// scriptedLoad is a LoadSampler whose figures the test sets.
type scriptedLoad struct {
	mu    sync.Mutex
	cpu   float64
	flows map[string]int64
}

func (s *scriptedLoad) set(cpu float64, flows map[string]int64) {
	s.mu.Lock()
	s.cpu, s.flows = cpu, flows
	s.mu.Unlock()
}

func (s *scriptedLoad) SampleLoad(_ context.Context, insts []Instance) map[string]InstanceLoad {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]InstanceLoad{}
	for _, in := range insts {
		out[in.Name] = InstanceLoad{CPU: s.cpu, Sampled: true, Flows: s.flows[in.Name]}
	}
	return out
}

type recordingDrainer struct {
	mu    sync.Mutex
	calls []string
}

func (r *recordingDrainer) SetDraining(_ context.Context, uuid string, draining bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if draining {
		r.calls = append(r.calls, "drain "+uuid)
	} else {
		r.calls = append(r.calls, "undrain "+uuid)
	}
	return nil
}

type scaleLab struct {
	*harness
	load    *scriptedLoad
	drainer *recordingDrainer
	scaler  *Autoscaler
	now     time.Time
}

func newScaleLab(t *testing.T, hostCPUPercent string) *scaleLab {
	h := newHarness(t)
	cfg := h.config(strings.ReplaceAll(scaleConfig, "%CPU%", hostCPUPercent))
	h.start(cfg)
	l := &scaleLab{harness: h, load: &scriptedLoad{}, drainer: &recordingDrainer{}, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l.scaler = NewAutoscaler(h.agent, AutoscalerOptions{
		Hypervisor: h.conn, Sampler: l.load, Drainer: l.drainer, Now: func() time.Time { return l.now },
	})
	l.guest("web-1", true)
	l.eventually("web-1 inspected", func() bool { return l.guestState("web-1") == GuestInspected })
	return l
}

// poll advances the clock and runs one poll at the given load.
func (l *scaleLab) poll(after time.Duration, cpu float64, flows map[string]int64) {
	l.t.Helper()
	l.now = l.now.Add(after)
	l.load.set(cpu, flows)
	if err := l.scaler.Step(context.Background()); err != nil {
		l.t.Fatalf("poll at +%s: %v", after, err)
	}
}

// size is an instance's live vCPUs and memory as libvirt reports them.
func (l *scaleLab) size(name string) (int, uint64) {
	l.t.Helper()
	x, err := l.conn.DomainXML(context.Background(), l.byName(name).UUID, false)
	if err != nil {
		l.t.Fatal(err)
	}
	v := int(x.VCPU.Value)
	if x.VCPU.Current > 0 {
		v = int(x.VCPU.Current)
	}
	return v, uint64(x.CurrentMemory.Value)
}

func (l *scaleLab) scaleEvents() []string {
	evs, _ := l.agent.Events(0)
	var out []string
	for _, e := range evs {
		if _, ok := scaleEventSet[e.Kind]; ok {
			out = append(out, string(e.Kind)+" "+e.Appliance)
		}
	}
	return out
}

var scaleEventSet = map[EventKind]struct{}{
	EventScaleUp: {}, EventScaleDown: {}, EventScaleOut: {}, EventScaleDrain: {}, EventScaleUndrain: {},
	EventScaleIn: {}, EventBudgetExceeded: {}, EventScaleLimit: {}, EventApplianceFailed: {}, EventApplianceRecreated: {},
}

func TestAutoscalerScalesUpOutAndIn(t *testing.T) {
	l := newScaleLab(t, "100")
	if v, m := l.size("vsa-ips-1"); v != 1 || m != 128<<10 {
		t.Fatalf("vsa-ips-1 starts at %d vCPUs, %d KiB; want the base 1, 131072", v, m)
	}

	l.poll(0, 95, nil)
	l.poll(30*time.Second, 95, nil) // held long enough: scale up
	if v, m := l.size("vsa-ips-1"); v != 2 || m != 256<<10 {
		t.Fatalf("after scale-up vsa-ips-1 has %d vCPUs, %d KiB; want 2, 262144", v, m)
	}
	l.poll(30*time.Second, 95, nil) // cooling down
	if got := l.domainNames(); !slices.Equal(got, []string{"vsa-ips-1", "web-1"}) {
		t.Fatalf("during the cooldown: domains %v", got)
	}
	l.poll(40*time.Second, 95, nil) // at the maxima: scale out
	second := l.byName("vsa-ips-2")
	if second.State != hypervisor.StateRunning {
		t.Fatalf("vsa-ips-2 is %s, want running", second.State)
	}
	if v, m := l.size("vsa-ips-2"); v != 1 || m != 128<<10 {
		t.Fatalf("vsa-ips-2 starts at %d vCPUs, %d KiB; want the base", v, m)
	}

	// Load gone: the duplicate is drained first and kept while it has
	// flows, then deleted.
	l.poll(time.Minute, 5, map[string]int64{"vsa-ips-2": 3})
	l.poll(30*time.Second, 5, map[string]int64{"vsa-ips-2": 3})
	if got, want := l.drainer.calls, []string{"drain " + second.UUID}; !cmp.Equal(got, want) {
		t.Fatalf("drainer calls %v, want %v", got, want)
	}
	l.poll(10*time.Second, 5, map[string]int64{"vsa-ips-2": 3})
	if l.state(second.UUID) != hypervisor.StateRunning {
		t.Fatal("vsa-ips-2 deleted while flows were pinned to it")
	}
	l.hv.takeCalls()
	l.poll(10*time.Second, 5, nil)
	if diff := cmp.Diff([]string{"destroy vsa-ips-2", "undefine vsa-ips-2"}, l.hv.takeCalls()); diff != "" {
		t.Fatalf("scale-in calls (-want +got):\n%s", diff)
	}
	// Then the survivor shrinks to its base.
	l.poll(time.Minute, 5, nil)
	l.poll(30*time.Second, 5, nil)
	if v, m := l.size("vsa-ips-1"); v != 1 || m != 128<<10 {
		t.Fatalf("after scale-down vsa-ips-1 has %d vCPUs, %d KiB; want 1, 131072", v, m)
	}
	want := []string{"scale-up vsa-ips-1", "scale-out vsa-ips-2", "scale-in-drain vsa-ips-2", "scale-in vsa-ips-2", "scale-down vsa-ips-1"}
	if diff := cmp.Diff(want, l.scaleEvents()); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	if got := l.domainNames(); !slices.Equal(got, []string{"vsa-ips-1", "web-1"}) {
		t.Fatalf("domains at the end: %v", got)
	}
}

func TestAutoscalerRespectsHostBudget(t *testing.T) {
	// 25 % of the test host's 4 CPUs is one vCPU: what vsa-ips-1 has.
	l := newScaleLab(t, "25")
	l.poll(0, 95, nil)
	l.poll(30*time.Second, 95, nil)
	l.poll(2*time.Minute, 95, nil)
	if v, _ := l.size("vsa-ips-1"); v != 1 {
		t.Fatalf("vsa-ips-1 grew to %d vCPUs past the budget", v)
	}
	if got := l.domainNames(); !slices.Equal(got, []string{"vsa-ips-1", "web-1"}) {
		t.Fatalf("domains %v: an instance was added past the budget", got)
	}
	// Said once per cooldown while it lasts: at +30s and at +2m30s.
	if diff := cmp.Diff([]string{"budget-exceeded vsa-ips-1", "budget-exceeded vsa-ips-1"}, l.scaleEvents()); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
}

func TestAutoscalerRecreatesAFailedInstance(t *testing.T) {
	l := newScaleLab(t, "100")
	l.poll(0, 50, nil)
	ips := l.byName("vsa-ips-1")
	macs := func(uuid string) []string {
		x, err := l.conn.DomainXML(context.Background(), uuid, false)
		if err != nil {
			t.Fatal(err)
		}
		return macStrings(appliance.InstanceMACs(x))
	}
	oldMACs := macs(ips.UUID)
	// Stop the agent's reconcile from getting there first: the autoscaler
	// must recover an instance on its own (a duplicate is never started by
	// provisioning, which only needs one running instance).
	l.stop()
	if err := l.conn.Destroy(context.Background(), ips.UUID); err != nil {
		t.Fatal(err)
	}
	l.poll(10*time.Second, 50, nil)
	again := l.byName("vsa-ips-1")
	if again.UUID == ips.UUID {
		t.Fatalf("vsa-ips-1 kept its domain %s: restarted, not recreated from its template", ips.UUID)
	}
	if _, err := l.conn.Lookup(context.Background(), ips.UUID); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("the failed domain is still defined: %v", err)
	}
	if st := l.state(again.UUID); st != hypervisor.StateRunning {
		t.Fatalf("the new vsa-ips-1 is %s, want running", st)
	}
	if got := macs(again.UUID); len(got) == 0 || !slices.Equal(got, oldMACs) {
		t.Errorf("the new vsa-ips-1 has MACs %v, the old one had %v", got, oldMACs)
	}
	x, err := l.conn.DomainXML(context.Background(), again.UUID, false)
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := appliance.OwnerOf(x); !ok || o.Appliance != "ips" || o.Index != 1 {
		t.Errorf("the new vsa-ips-1 carries owner %+v (%v), want ips #1", o, ok)
	}
	if diff := cmp.Diff([]string{"appliance-failed vsa-ips-1", "appliance-recreated vsa-ips-1"}, l.scaleEvents()); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
}

func TestAutoscalerLeavesPausedInstancesAlone(t *testing.T) {
	l := newScaleLab(t, "100")
	ips := l.byName("vsa-ips-1")
	l.stop() // the agent's reconcile would resume it; the autoscaler must not
	if err := l.conn.Suspend(context.Background(), ips.UUID); err != nil {
		t.Fatal(err)
	}
	l.poll(0, 95, nil)
	l.poll(time.Minute, 95, nil)
	if st := l.state(ips.UUID); st != hypervisor.StatePaused {
		t.Fatalf("vsa-ips-1 is %s, want still paused", st)
	}
	if got := l.scaleEvents(); len(got) != 0 {
		t.Fatalf("events for a paused instance: %v", got)
	}
}
