package appliance

import (
	"fmt"
	"slices"
	"time"
)

// ScalingConfig is the [scaling] table as the decision needs it.
type ScalingConfig struct {
	// UpperLoad and LowerLoad are percentages of an instance's capacity.
	// The gap between them is the hysteresis: a step up or down is taken
	// only when the load projected after it stays at or below the midpoint
	// of the two, so the step cannot itself cross the other threshold.
	UpperLoad, LowerLoad float64
	// Hold is how long a threshold must stay crossed before acting, so a
	// spike shorter than that never scales anything.
	Hold time.Duration
	// Cooldown is the minimum time between two actions on one appliance:
	// the load needs time to settle on the new capacity before it is
	// judged again.
	Cooldown time.Duration
	// DrainTimeout bounds how long a draining instance waits for its
	// pinned flows to go idle before it is deleted anyway.
	DrainTimeout time.Duration
	// LatencyCeiling turns the DM's view of an instance into a load: a
	// return latency at the ceiling counts as 100 %. Zero ignores latency.
	LatencyCeiling time.Duration
	// HostCPUPercent and HostMemoryPercent cap the vCPUs and memory of all
	// appliance instances together, as a share of the host.
	HostCPUPercent, HostMemoryPercent float64
}

// HostResources is what the host has, from libvirt's node info.
type HostResources struct {
	CPUs      int
	MemoryKiB uint64
}

// ScalingLimits are one appliance's sizes from its configuration.
type ScalingLimits struct {
	VCPUs, MaxVCPUs         int
	MemoryKiB, MaxMemoryKiB uint64
	MaxInstances            int
}

// InstanceSample is one instance as the last poll saw it.
type InstanceSample struct {
	Name  string
	Index int
	// VCPUs and MemoryKiB are its current size; MaxVCPUs and MaxMemoryKiB,
	// if set, the maxima its domain was defined with, which bind it when
	// they are below the appliance's (the configuration was raised after
	// the instance was made).
	VCPUs        int
	MemoryKiB    uint64
	MaxVCPUs     int
	MaxMemoryKiB uint64
	InstanceLoad
	// Healthy false (stopped, crashed, silent) leaves it out of every
	// decision but the budget: its resources are still reserved.
	Healthy  bool
	Draining bool
}

// limits are the appliance's limits as far as this instance can go.
func (s InstanceSample) limits(lim ScalingLimits) ScalingLimits {
	if s.MaxVCPUs > 0 {
		lim.MaxVCPUs = max(min(lim.MaxVCPUs, s.MaxVCPUs), lim.VCPUs)
	}
	if s.MaxMemoryKiB > 0 {
		lim.MaxMemoryKiB = max(min(lim.MaxMemoryKiB, s.MaxMemoryKiB), lim.MemoryKiB)
	}
	return lim
}

// InstanceLoad is an instance's load over the last poll interval.
type InstanceLoad struct {
	// CPU is the percentage of its vCPUs' time spent running; Sampled is
	// false until two CPU readings exist.
	CPU     float64
	Sampled bool
	// The DM's load on it: flows pinned to it, frames per second sent to
	// it, frames sent and not yet returned, and the mean return latency.
	Flows          int64
	PPS            float64
	AwaitingReturn uint64
	ReturnLatency  time.Duration
}

// Load is the instance's utilisation for the decision: the higher of its
// CPU use and its return latency against the ceiling, because an appliance
// can be saturated on either without showing it on the other.
func (s InstanceSample) Load(cfg ScalingConfig) float64 {
	load := s.CPU
	if cfg.LatencyCeiling > 0 {
		load = max(load, 100*float64(s.ReturnLatency)/float64(cfg.LatencyCeiling))
	}
	return load
}

// ApplianceSample is one appliance with its instances.
type ApplianceSample struct {
	Name      string
	Limits    ScalingLimits
	Instances []InstanceSample
}

// ScaleKind is what a ScaleAction does.
type ScaleKind uint8

const (
	ScaleUp      ScaleKind = iota + 1 // grow an instance's vCPUs and memory live
	ScaleDown                         // shrink them one step towards the base
	ScaleOut                          // start another instance of the appliance
	ScaleDrain                        // give a duplicate no new flows
	ScaleUndrain                      // take a draining duplicate back instead of a new one
	ScaleDelete                       // destroy and undefine a drained duplicate
	ScaleBudget                       // a scale-up was refused by the host budget
	ScaleLimit                        // overloaded at max_vcpus, max_memory and max_instances
)

var scaleKindNames = [...]string{
	ScaleUp: "scale-up", ScaleDown: "scale-down", ScaleOut: "scale-out", ScaleDrain: "scale-in-drain",
	ScaleUndrain: "scale-in-cancelled", ScaleDelete: "scale-in", ScaleBudget: "budget-exceeded", ScaleLimit: "scale-limit",
}

func (k ScaleKind) String() string {
	if int(k) < len(scaleKindNames) && scaleKindNames[k] != "" {
		return scaleKindNames[k]
	}
	return fmt.Sprintf("ScaleKind(%d)", k)
}

// ScaleAction is one step the agent is to take. VCPUs and MemoryKiB are
// the target size for ScaleUp and ScaleDown, the new instance's size for
// ScaleOut.
type ScaleAction struct {
	Kind      ScaleKind
	Appliance string
	Instance  string // empty for ScaleOut, ScaleBudget and ScaleLimit
	VCPUs     int
	MemoryKiB uint64
	Load      float64 // the appliance's load that motivated it
	Reason    string
}

// ScalingState is what the decision remembers between polls. The zero
// value is ready to use.
type ScalingState struct {
	apps map[string]*applianceScaling
}

type applianceScaling struct {
	aboveSince, belowSince time.Time // zero: not crossed
	lastAction             time.Time
	lastRefusal            time.Time
	drainingSince          map[string]time.Time
}

func (s *ScalingState) of(name string) *applianceScaling {
	if s.apps == nil {
		s.apps = make(map[string]*applianceScaling)
	}
	a := s.apps[name]
	if a == nil {
		a = &applianceScaling{drainingSince: make(map[string]time.Time)}
		s.apps[name] = a
	}
	return a
}

// DecideScaling looks at every appliance once and says what to do now. It
// is a pure function of its inputs and the state, which it updates as if
// every action it returns is carried out; the budget is shared by all
// appliances, so one call decides for all of them.
func DecideScaling(st *ScalingState, cfg ScalingConfig, host HostResources, apps []ApplianceSample, now time.Time) []ScaleAction {
	b := newBudget(cfg, host, apps)
	var out []ScaleAction
	seen := make(map[string]bool, len(apps))
	for _, app := range apps {
		seen[app.Name] = true
		out = append(out, st.of(app.Name).decide(cfg, &b, app, now)...)
	}
	for name := range st.apps {
		if !seen[name] {
			delete(st.apps, name)
		}
	}
	return out
}

// budget is what remains of the host budget for appliances.
type budget struct {
	vcpus     int
	memoryKiB uint64
}

func newBudget(cfg ScalingConfig, host HostResources, apps []ApplianceSample) budget {
	b := budget{
		vcpus:     int(float64(host.CPUs) * cfg.HostCPUPercent / 100),
		memoryKiB: uint64(float64(host.MemoryKiB) * cfg.HostMemoryPercent / 100),
	}
	for _, app := range apps {
		for _, in := range app.Instances {
			b.vcpus -= in.VCPUs
			if in.MemoryKiB >= b.memoryKiB {
				b.memoryKiB = 0
			} else {
				b.memoryKiB -= in.MemoryKiB
			}
		}
	}
	return b
}

func (b *budget) allows(vcpus int, memoryKiB uint64) bool {
	return vcpus <= b.vcpus && memoryKiB <= b.memoryKiB
}

func (b *budget) take(vcpus int, memoryKiB uint64) {
	b.vcpus -= vcpus
	b.memoryKiB -= memoryKiB
}

func (a *applianceScaling) decide(cfg ScalingConfig, b *budget, app ApplianceSample, now time.Time) []ScaleAction {
	var out []ScaleAction
	// Draining instances finish on their own clock: the cooldown is for
	// capacity changes, and a drained instance only costs while it waits.
	var active []InstanceSample
	var draining []InstanceSample
	for _, in := range app.Instances {
		switch {
		case in.Draining:
			since, ok := a.drainingSince[in.Name]
			if !ok {
				since = now // an agent restart forgot when; start over
				a.drainingSince[in.Name] = since
			}
			if in.Flows <= 0 || now.Sub(since) >= cfg.DrainTimeout {
				reason := "its flows are idle"
				if in.Flows > 0 {
					reason = fmt.Sprintf("drain timeout with %d flows left", in.Flows)
				}
				out = append(out, ScaleAction{Kind: ScaleDelete, Appliance: app.Name, Instance: in.Name, Reason: reason})
				delete(a.drainingSince, in.Name)
				continue
			}
			draining = append(draining, in)
		case in.Healthy && in.Sampled:
			active = append(active, in)
		}
	}
	for name := range a.drainingSince {
		if !slices.ContainsFunc(draining, func(in InstanceSample) bool { return in.Name == name }) {
			delete(a.drainingSince, name)
		}
	}
	if len(active) == 0 {
		a.aboveSince, a.belowSince = time.Time{}, time.Time{}
		return out
	}
	load, work, capacity := appLoad(cfg, active)
	switch {
	case load > cfg.UpperLoad:
		a.belowSince = time.Time{}
		if a.aboveSince.IsZero() {
			a.aboveSince = now
		}
	case load < cfg.LowerLoad:
		a.aboveSince = time.Time{}
		if a.belowSince.IsZero() {
			a.belowSince = now
		}
	default:
		a.aboveSince, a.belowSince = time.Time{}, time.Time{}
	}
	cooling := !a.lastAction.IsZero() && now.Sub(a.lastAction) < cfg.Cooldown
	if cooling {
		return out
	}
	var act *ScaleAction
	switch {
	case !a.aboveSince.IsZero() && now.Sub(a.aboveSince) >= cfg.Hold:
		act = a.grow(cfg, b, app, active, draining, load, now)
	case !a.belowSince.IsZero() && now.Sub(a.belowSince) >= cfg.Hold:
		act = shrink(cfg, app, active, load, work, capacity)
	}
	if act == nil {
		return out
	}
	act.Appliance, act.Load = app.Name, load
	switch act.Kind {
	case ScaleBudget, ScaleLimit:
		// A refusal is repeated once per cooldown while it lasts, so an
		// operator sees it without a flood; it does not reset the timers.
		if !a.lastRefusal.IsZero() && now.Sub(a.lastRefusal) < cfg.Cooldown {
			return out
		}
		a.lastRefusal = now
	case ScaleDrain:
		a.drainingSince[act.Instance] = now
		a.lastAction = now
		a.aboveSince, a.belowSince = time.Time{}, time.Time{}
	default:
		a.lastAction = now
		a.aboveSince, a.belowSince = time.Time{}, time.Time{}
	}
	return append(out, *act)
}

// appLoad is the appliance's load as one pool: the work its instances do
// (load × vCPUs) over their capacity (vCPUs), so that a bigger instance
// weighs more.
func appLoad(cfg ScalingConfig, active []InstanceSample) (load, work float64, capacity int) {
	for _, in := range active {
		v := max(in.VCPUs, 1)
		work += in.Load(cfg) * float64(v)
		capacity += v
	}
	return work / float64(capacity), work, capacity
}

func (a *applianceScaling) grow(cfg ScalingConfig, b *budget, app ApplianceSample, active, draining []InstanceSample, load float64, now time.Time) *ScaleAction {
	// A draining duplicate is capacity that is already paid for.
	if len(draining) > 0 {
		in := slices.MinFunc(draining, func(x, y InstanceSample) int { return x.Index - y.Index })
		delete(a.drainingSince, in.Name)
		return &ScaleAction{Kind: ScaleUndrain, Instance: in.Name, Reason: "load is back above the upper threshold"}
	}
	// The busiest instance that can still grow grows by one vCPU, with
	// memory in proportion, so memory reaches its maximum with the vCPUs.
	var target *InstanceSample
	for i := range active {
		in := &active[i]
		if lim := in.limits(app.Limits); in.VCPUs >= lim.MaxVCPUs && in.MemoryKiB >= lim.MaxMemoryKiB {
			continue
		}
		if target == nil || in.Load(cfg) > target.Load(cfg) {
			target = in
		}
	}
	lim := app.Limits
	if target != nil {
		lim := target.limits(lim)
		v := min(target.VCPUs+1, lim.MaxVCPUs)
		mem := max(target.MemoryKiB, memoryFor(lim, v))
		if b.allows(v-target.VCPUs, mem-target.MemoryKiB) {
			b.take(v-target.VCPUs, mem-target.MemoryKiB)
			return &ScaleAction{Kind: ScaleUp, Instance: target.Name, VCPUs: v, MemoryKiB: mem,
				Reason: fmt.Sprintf("load %.0f%% above %.0f%% for %s", load, cfg.UpperLoad, cfg.Hold)}
		}
		return &ScaleAction{Kind: ScaleBudget, Instance: target.Name, VCPUs: v, MemoryKiB: mem,
			Reason: fmt.Sprintf("growing %s to %d vCPUs and %d KiB would exceed the host budget (%d vCPUs, %d KiB left)", target.Name, v, mem, b.vcpus, b.memoryKiB)}
	}
	instances := len(app.Instances)
	if instances >= lim.MaxInstances {
		return &ScaleAction{Kind: ScaleLimit,
			Reason: fmt.Sprintf("load %.0f%% with %d instances at max_vcpus, max_memory and max_instances", load, instances)}
	}
	if !b.allows(lim.VCPUs, lim.MemoryKiB) {
		return &ScaleAction{Kind: ScaleBudget, VCPUs: lim.VCPUs, MemoryKiB: lim.MemoryKiB,
			Reason: fmt.Sprintf("another instance (%d vCPUs, %d KiB) would exceed the host budget (%d vCPUs, %d KiB left)", lim.VCPUs, lim.MemoryKiB, b.vcpus, b.memoryKiB)}
	}
	b.take(lim.VCPUs, lim.MemoryKiB)
	return &ScaleAction{Kind: ScaleOut, VCPUs: lim.VCPUs, MemoryKiB: lim.MemoryKiB,
		Reason: fmt.Sprintf("load %.0f%% above %.0f%% with every instance at its maxima", load, cfg.UpperLoad)}
}

// memoryFor is the memory that goes with v vCPUs on the line from the
// base size to the maximum size.
func memoryFor(lim ScalingLimits, v int) uint64 {
	if lim.MaxVCPUs <= lim.VCPUs || v >= lim.MaxVCPUs {
		return lim.MaxMemoryKiB
	}
	if v <= lim.VCPUs {
		return lim.MemoryKiB
	}
	span := lim.MaxMemoryKiB - lim.MemoryKiB
	return lim.MemoryKiB + span*uint64(v-lim.VCPUs)/uint64(lim.MaxVCPUs-lim.VCPUs)
}

func shrink(cfg ScalingConfig, app ApplianceSample, active []InstanceSample, load, work float64, capacity int) *ScaleAction {
	lim := app.Limits
	safe := (cfg.UpperLoad + cfg.LowerLoad) / 2
	// Fewer instances first (the reverse of growing): the duplicate with
	// the highest index goes, if the others can carry its work.
	if len(active) > 1 {
		last := slices.MaxFunc(active, func(x, y InstanceSample) int { return x.Index - y.Index })
		if rest := capacity - max(last.VCPUs, 1); rest > 0 && work/float64(rest) <= safe {
			return &ScaleAction{Kind: ScaleDrain, Instance: last.Name,
				Reason: fmt.Sprintf("load %.0f%% below %.0f%% for %s", load, cfg.LowerLoad, cfg.Hold)}
		}
	}
	// Then the biggest instance gives back one vCPU and its share of
	// memory, again only if the load it leaves stays safe.
	var target *InstanceSample
	for i := range active {
		in := &active[i]
		if in.VCPUs <= lim.VCPUs && in.MemoryKiB <= lim.MemoryKiB {
			continue
		}
		if target == nil || in.VCPUs > target.VCPUs {
			target = in
		}
	}
	if target == nil {
		return nil
	}
	v := max(target.VCPUs-1, lim.VCPUs)
	if work/float64(capacity-target.VCPUs+max(v, 1)) > safe {
		return nil
	}
	return &ScaleAction{Kind: ScaleDown, Instance: target.Name, VCPUs: v, MemoryKiB: min(target.MemoryKiB, memoryFor(lim, v)),
		Reason: fmt.Sprintf("load %.0f%% below %.0f%% for %s", load, cfg.LowerLoad, cfg.Hold)}
}
