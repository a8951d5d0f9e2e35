package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
)

// Events of the autoscaler.
const (
	EventScaleUp         EventKind = "scale-up"           // an instance got vCPUs and memory live
	EventScaleDown       EventKind = "scale-down"         // an instance gave some back
	EventScaleOut        EventKind = "scale-out"          // another instance of an appliance was started
	EventScaleDrain      EventKind = "scale-in-drain"     // a duplicate gets no new flows
	EventScaleUndrain    EventKind = "scale-in-cancelled" // a draining duplicate was taken back
	EventScaleIn         EventKind = "scale-in"           // a drained duplicate was deleted
	EventBudgetExceeded  EventKind = "budget-exceeded"    // the host budget stopped a scale-up
	EventScaleLimit      EventKind = "scale-limit"        // overloaded at every maximum
	EventApplianceFailed EventKind = "appliance-failed"   // an instance guests need stopped or crashed
)

var scaleEventKinds = map[appliance.ScaleKind]EventKind{
	appliance.ScaleUp: EventScaleUp, appliance.ScaleDown: EventScaleDown, appliance.ScaleOut: EventScaleOut,
	appliance.ScaleDrain: EventScaleDrain, appliance.ScaleUndrain: EventScaleUndrain, appliance.ScaleDelete: EventScaleIn,
	appliance.ScaleBudget: EventBudgetExceeded, appliance.ScaleLimit: EventScaleLimit,
}

// ScalingHypervisor is what the autoscaler needs from libvirt beyond the
// agent's Hypervisor; *hypervisor.Conn is one.
type ScalingHypervisor interface {
	SetVCPUs(ctx context.Context, uuid string, n uint) error
	SetMemory(ctx context.Context, uuid string, kib uint64) error
	NodeInfo(ctx context.Context) (hypervisor.NodeInfo, error)
	CPUTime(ctx context.Context, uuid string) (time.Duration, uint, error)
}

// InstanceLoad is one instance's load over the last poll interval.
type InstanceLoad = appliance.InstanceLoad

// LoadSampler measures the load of running appliance instances, by
// instance name. Instances it has no figure for are simply absent.
type LoadSampler interface {
	SampleLoad(ctx context.Context, insts []Instance) map[string]InstanceLoad
}

// FlowDrainer stops giving an instance (by domain UUID, which is never
// reused as names are) new flows while the ones pinned to it carry on;
// *DistributionManager is one.
type FlowDrainer interface {
	SetDraining(ctx context.Context, uuid string, draining bool) error
}

// AutoscalerOptions configure an Autoscaler; Hypervisor is required.
type AutoscalerOptions struct {
	Hypervisor ScalingHypervisor
	// Sampler defaults to CPU time from Hypervisor plus, if Dataplane
	// has counters, the distribution manager's per-instance figures.
	Sampler LoadSampler
	// Drainer is told which duplicates drain; without one a drain is only
	// a wait for DrainTimeout.
	Drainer FlowDrainer
	// Health, if set, is told which instances are silent (see
	// checkSilence); it must also be the source of the distribution
	// manager's counters, as *DistributionManager is.
	Health HealthMarker
	// DrainTimeout bounds a drain; it defaults to twice the dataplane's
	// flow idle timeout, by when an idle flow's entry is gone anyway.
	DrainTimeout time.Duration
	Now          func() time.Time
}

// Autoscaler resizes, adds and removes appliance instances by their load
// (see docs/elasticity.md), and recreates from their templates instances
// that guests need and that stopped, crashed or went silent. Decisions
// are appliance.DecideScaling's.
type Autoscaler struct {
	a    *Agent
	opts AutoscalerOptions
	log  *slog.Logger

	mu         sync.Mutex // one poll at a time; guards everything below
	state      appliance.ScalingState
	draining   map[string]bool           // instance names
	silence    map[string]silenceReading // by domain UUID
	recovering map[string]uint64         // recreated domain UUIDs → probes answered before
	loads      []appliance.InstanceSample
}

// NewAutoscaler prepares the autoscaler of an agent; drive it with Run.
func NewAutoscaler(a *Agent, opts AutoscalerOptions) *Autoscaler {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Sampler == nil {
		s := newLoadSampler(opts.Hypervisor, opts.Now)
		if c, ok := opts.Health.(instanceCounters); ok {
			s.dm = c
		} else if c, ok := opts.Drainer.(instanceCounters); ok {
			s.dm = c
		}
		opts.Sampler = s
	}
	return &Autoscaler{a: a, opts: opts, log: a.log.With("component", "autoscaler"),
		draining: make(map[string]bool), silence: make(map[string]silenceReading), recovering: make(map[string]uint64)}
}

// Run polls at the configured interval until ctx ends. It waits for the
// agent's first resync: before it, which instance is whose is not known.
func (s *Autoscaler) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-s.a.Ready():
	}
	for {
		if err := s.Step(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("autoscaler poll incomplete; next poll retries", "error", err)
		}
		// Read every time, so a reload's poll_interval takes effect.
		every := s.a.Config().Scaling.PollInterval
		if every <= 0 {
			every = 10 * time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// Loads returns what the last poll measured, for operators and metrics.
func (s *Autoscaler) Loads() []appliance.InstanceSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.loads)
}

// Step is one poll: measure, recreate what failed, decide, act.
func (s *Autoscaler) Step(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cfg := s.a.Config()
	if _, err := s.a.scanAppliances(ctx); err != nil {
		return err
	}
	needed := s.a.neededAppliances()
	var errs []error
	byApp := map[string][]ownedDomain{}
	var running []Instance
	for _, d := range s.a.owned.all() {
		if !needed[d.Owner.Appliance] {
			continue // garbage collection's, not ours
		}
		switch d.State {
		case hypervisor.StateRunning:
		case hypervisor.StateShutoff, hypervisor.StateCrashed:
			errs = append(errs, s.failed(ctx, d))
			continue
		default:
			// Paused (provisioning resumes it), shutting down, blocked
			// on I/O, suspended by its guest: not ours to judge or act on.
			continue
		}
		byApp[d.Owner.Appliance] = append(byApp[d.Owner.Appliance], d)
		running = append(running, instanceOf(d))
	}
	var runningDoms []ownedDomain
	for _, doms := range byApp {
		runningDoms = append(runningDoms, doms...)
	}
	errs = append(errs, s.checkSilence(ctx, runningDoms))
	// A recreated instance is a new domain: the next poll measures it.
	gone := func(uuid string) bool { _, ok := s.a.owned.lookup(uuid); return !ok }
	for app, doms := range byApp {
		byApp[app] = slices.DeleteFunc(doms, func(d ownedDomain) bool { return gone(d.UUID) })
	}
	running = slices.DeleteFunc(running, func(in Instance) bool { return gone(in.UUID) })
	loads := s.opts.Sampler.SampleLoad(ctx, running)
	samples := make([]appliance.ApplianceSample, 0, len(byApp))
	s.loads = s.loads[:0]
	for _, app := range cfg.Appliances {
		doms := byApp[app.Name]
		if len(doms) == 0 {
			continue
		}
		as := appliance.ApplianceSample{Name: app.Name, Limits: limitsOf(&app)}
		for _, d := range doms {
			in, err := s.sample(ctx, d, loads[d.Name])
			if err != nil {
				errs = append(errs, err)
				continue
			}
			as.Instances = append(as.Instances, in)
			s.loads = append(s.loads, in)
			s.log.Debug("appliance load", "domain", d.Name, "cpu_percent", in.CPU, "vcpus", in.VCPUs, "memory_kib", in.MemoryKiB,
				"flows", in.Flows, "pps", in.PPS, "awaiting_return", in.AwaitingReturn, "return_latency", in.ReturnLatency, "draining", in.Draining)
		}
		samples = append(samples, as)
	}
	for name := range s.draining {
		if !slices.ContainsFunc(s.loads, func(in appliance.InstanceSample) bool { return in.Name == name }) {
			delete(s.draining, name) // gone, by our hand or another's
		}
	}
	node, err := s.opts.Hypervisor.NodeInfo(ctx)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("node info: %w", err))...)
	}
	host := appliance.HostResources{CPUs: int(node.CPUs), MemoryKiB: node.MemoryKiB}
	for _, act := range appliance.DecideScaling(&s.state, s.scalingConfig(cfg), host, samples, s.opts.Now()) {
		if err := s.act(ctx, act, byApp[act.Appliance]); err != nil {
			errs = append(errs, fmt.Errorf("%s of %s: %w", act.Kind, act.Appliance, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Autoscaler) scalingConfig(cfg *config.Config) appliance.ScalingConfig {
	sc := cfg.Scaling
	drain := s.opts.DrainTimeout
	if drain <= 0 {
		drain = 2 * cfg.Dataplane.FlowIdleTimeout
	}
	return appliance.ScalingConfig{
		UpperLoad: sc.UpperCPU, LowerLoad: sc.LowerCPU, Hold: sc.Hold, Cooldown: sc.Cooldown,
		DrainTimeout: drain, LatencyCeiling: cfg.Dataplane.ReturnTimeout,
		HostCPUPercent: sc.HostCPUPercent, HostMemoryPercent: sc.HostMemoryPercent,
	}
}

func limitsOf(app *config.Appliance) appliance.ScalingLimits {
	return appliance.ScalingLimits{
		VCPUs: app.VCPUs, MaxVCPUs: max(app.MaxVCPUs, app.VCPUs),
		MemoryKiB: app.MemoryKiB, MaxMemoryKiB: max(app.MaxMemoryKiB, app.MemoryKiB),
		MaxInstances: max(app.MaxInstances, 1),
	}
}

// sample completes an instance's load with its current size, read from
// its live definition because a resize by hand must not be overwritten by
// a stale figure.
func (s *Autoscaler) sample(ctx context.Context, d ownedDomain, load InstanceLoad) (appliance.InstanceSample, error) {
	x, err := s.a.hv.DomainXML(ctx, d.UUID, false)
	if err != nil {
		return appliance.InstanceSample{}, fmt.Errorf("size of %s: %w", d.Name, err)
	}
	in := appliance.InstanceSample{
		Name: d.Name, Index: d.Owner.Index, Healthy: !s.isRecovering(d.UUID), Draining: s.draining[d.Name],
		InstanceLoad: load,
	}
	if x.VCPU != nil {
		in.VCPUs, in.MaxVCPUs = int(x.VCPU.Value), int(x.VCPU.Value)
		if x.VCPU.Current > 0 {
			in.VCPUs = int(x.VCPU.Current)
		}
	}
	if x.Memory != nil {
		in.MaxMemoryKiB = kibOf(x.Memory.Value, x.Memory.Unit)
	}
	switch {
	case x.CurrentMemory != nil:
		in.MemoryKiB = kibOf(x.CurrentMemory.Value, x.CurrentMemory.Unit)
	case x.Memory != nil:
		in.MemoryKiB = kibOf(x.Memory.Value, x.Memory.Unit)
	}
	return in, nil
}

func kibOf(v uint, unit string) uint64 {
	switch unit {
	case "b", "bytes":
		return uint64(v) >> 10
	case "M", "MiB":
		return uint64(v) << 10
	case "G", "GiB":
		return uint64(v) << 20
	}
	return uint64(v) // libvirt's default unit, and what it writes back
}

func (s *Autoscaler) act(ctx context.Context, act appliance.ScaleAction, doms []ownedDomain) error {
	who := act.Instance
	if who == "" {
		who = act.Appliance
	}
	msg := act.Reason
	level := slog.LevelInfo
	var d ownedDomain
	if act.Instance != "" {
		i := slices.IndexFunc(doms, func(d ownedDomain) bool { return d.Name == act.Instance })
		if i < 0 {
			return fmt.Errorf("instance %s vanished", act.Instance)
		}
		d = doms[i]
	}
	var err error
	switch act.Kind {
	case appliance.ScaleUp, appliance.ScaleDown:
		err = s.resize(ctx, d, act)
		msg = fmt.Sprintf("%d vCPUs, %d KiB: %s", act.VCPUs, act.MemoryKiB, act.Reason)
	case appliance.ScaleOut:
		var name string
		name, err = s.scaleOut(ctx, act.Appliance)
		who, msg = name, act.Reason
	case appliance.ScaleDrain, appliance.ScaleUndrain:
		drain := act.Kind == appliance.ScaleDrain
		s.draining[d.Name] = drain
		if !drain {
			delete(s.draining, d.Name)
		}
		if s.opts.Drainer != nil {
			err = s.opts.Drainer.SetDraining(ctx, d.UUID, drain)
		}
	case appliance.ScaleDelete:
		err = s.deleteDrained(ctx, d)
	case appliance.ScaleBudget, appliance.ScaleLimit:
		level = slog.LevelWarn
	}
	if err != nil {
		return err
	}
	s.log.Log(ctx, level, "autoscaler: "+act.Kind.String(), "appliance", act.Appliance, "domain", who, "load_percent", act.Load, "reason", act.Reason)
	s.a.recordEvent(Event{Kind: scaleEventKinds[act.Kind], Appliance: who, Message: msg})
	return nil
}

func (s *Autoscaler) resize(ctx context.Context, d ownedDomain, act appliance.ScaleAction) error {
	hv := s.opts.Hypervisor
	// Growing: vCPUs before memory, so a refused memory step still leaves
	// the instance with more of what it was short of; shrinking the other
	// way round for the same reason.
	steps := []func() error{
		func() error { return hv.SetVCPUs(ctx, d.UUID, uint(act.VCPUs)) },
		func() error { return hv.SetMemory(ctx, d.UUID, act.MemoryKiB) },
	}
	if act.Kind == appliance.ScaleDown {
		slices.Reverse(steps)
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("resize %s: %w", d.Name, err)
		}
	}
	return nil
}

// scaleOut starts another instance through the same provisioning as the
// first one, then has the guests that use the appliance re-wired so the
// distribution manager hashes new flows across both.
func (s *Autoscaler) scaleOut(ctx context.Context, app string) (string, error) {
	a := s.a
	cfg := a.Config()
	ac, ok := cfg.Appliance(app)
	if !ok {
		return "", fmt.Errorf("%w: appliance %q is not in the configuration", ErrProvision, app)
	}
	a.provisionMu.Lock()
	doms, err := a.scanAppliances(ctx)
	if err != nil {
		a.provisionMu.Unlock()
		return "", err
	}
	names := make(map[string]bool, len(doms))
	for _, d := range doms {
		names[d.Name] = true
	}
	name, err := a.defineAndStart(ctx, ac, 0, names, s.log)
	a.provisionMu.Unlock()
	if err != nil {
		return "", err
	}
	s.requeueGuests(app)
	return name, nil
}

// deleteDrained deletes a drained duplicate, with the same ownership check
// as garbage collection, and has its guests re-wired without it.
func (s *Autoscaler) deleteDrained(ctx context.Context, d ownedDomain) error {
	a := s.a
	a.provisionMu.Lock()
	err := a.deleteAppliance(ctx, d)
	a.provisionMu.Unlock()
	if err != nil {
		return err
	}
	// The drainer keeps its mark: the instance leaves the rules with its
	// guests' next attach, and until then it must get no new flow.
	delete(s.draining, d.Name)
	s.requeueGuests(d.Owner.Appliance)
	return nil
}

func (s *Autoscaler) requeueGuests(app string) {
	for _, g := range s.a.guestsNeeding(app) {
		s.a.queue.add(g)
	}
}

func (s *Autoscaler) isRecovering(uuid string) bool {
	_, ok := s.recovering[uuid]
	return ok
}
