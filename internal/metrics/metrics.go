package metrics

import (
	"context"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/appliance"
)

// Agent is what the metrics read from the control loop; *agent.Agent
// satisfies it.
type Agent interface {
	Guests() []agent.GuestInfo
	Appliances() []agent.ApplianceInfo
	Events(seq uint64) ([]agent.Event, <-chan struct{})
	Ready() <-chan struct{}
}

// Libvirt is the connection's health; *hypervisor.Conn satisfies it.
type Libvirt interface {
	Connected() bool
	Reconnects() uint64
	DroppedEvents() uint64
}

// Utilisation reports an appliance instance's recent CPU utilisation as a
// fraction of its vCPUs.
type Utilisation interface {
	CPUUtilisation(uuid string) (float64, bool)
}

// Dataplane is the distribution manager's counters. Stats is called at
// every scrape and must be cheap: a copy of counters it already keeps.
type Dataplane interface {
	Stats() DataplaneStats
}

// DataplaneStats is one reading of the dataplane's counters; counters are
// cumulative since the dataplane started.
type DataplaneStats struct {
	Traffic      []Traffic
	Drops        []Drop
	Flows        int // flows in the streams database now
	FlowCapacity int
	FlowsCreated uint64
	FlowsRemoved []FlowRemoval
}

// Traffic counts frames of one guest through one appliance with one
// verdict. Appliance is empty for frames delivered without a chain.
type Traffic struct {
	Guest, Appliance, Verdict string
	Frames, Bytes             uint64
}

// Drop counts frames dropped for one reason (a sourceroute.Reason label,
// or the DM's own reasons).
type Drop struct {
	Reason string
	Frames uint64
}

// FlowRemoval counts flows that left the streams database for one reason
// (expired, evicted, deleted).
type FlowRemoval struct {
	Reason string
	Flows  uint64
}

// Loads reports the figures of the autoscaler's last poll, per running
// instance: the distribution manager's load on it besides its CPU.
type Loads interface {
	Loads() []appliance.InstanceSample
}

// Sources is everything the metrics read. Agent and Libvirt are required;
// Dataplane, Utilisation and Loads may be nil until they exist.
type Sources struct {
	Agent       Agent
	Libvirt     Libvirt
	Dataplane   Dataplane
	Utilisation Utilisation
	Loads       Loads
	Version     string
}

// GateBuckets spans a gate that only waits for the dataplane (well under a
// second) to one that boots appliances under software emulation (minutes).
var GateBuckets = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600}

// Metrics is vsagent's registry and the recorders that feed it.
type Metrics struct {
	reg *prometheus.Registry
	now func() time.Time

	gateDuration      prometheus.Histogram
	events            *prometheus.CounterVec
	reloads           *prometheus.CounterVec
	lastReloadOK      prometheus.Gauge
	lastReloadSuccess prometheus.Gauge
}

// New builds the registry: vsagent's metrics, the Go runtime's and the
// process's.
func New(s Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		now: time.Now,
		gateDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vsagent_gate_duration_seconds",
			Help:    "How long guests were held by the gate, from gated to released.",
			Buckets: GateBuckets,
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vsagent_events_total",
			Help: "Agent events by kind: gates, releases, gate timeouts, appliance lifecycle, configuration changes.",
		}, []string{"kind"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vsagent_config_reloads_total",
			Help: "Configuration reloads by result; a failed reload keeps the previous configuration.",
		}, []string{"result"}),
		lastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vsagent_config_last_reload_successful",
			Help: "Whether the last configuration reload succeeded (1) or not (0).",
		}),
		lastReloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vsagent_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in force was loaded, in seconds since the epoch.",
		}),
	}
	// Both results exist from the start, so that rate() and alerts see a
	// zero rather than a missing series before the first failure.
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	// The daemon loaded its configuration before building the metrics.
	m.lastReloadOK.Set(1)
	m.lastReloadSuccess.Set(float64(m.now().UnixNano()) / 1e9)

	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "vsagent_build_info",
		Help:        "Always 1; the labels say which vsagent is running.",
		ConstLabels: prometheus.Labels{"version": s.Version, "go_version": runtime.Version()},
	})
	build.Set(1)

	m.reg.MustRegister(
		build, m.gateDuration, m.events, m.reloads, m.lastReloadOK, m.lastReloadSuccess,
		newCollector(s),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Registry is the private registry, for tests and embedders.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// RecordConfigReload counts a reload attempt (SIGHUP); err is why it was
// rejected, nil when the new configuration was applied.
func (m *Metrics) RecordConfigReload(err error) {
	if err != nil {
		m.reloads.WithLabelValues("failure").Inc()
		m.lastReloadOK.Set(0)
		return
	}
	m.reloads.WithLabelValues("success").Inc()
	m.lastReloadOK.Set(1)
	m.lastReloadSuccess.Set(float64(m.now().UnixNano()) / 1e9)
}

// FollowEvents counts the agent's events by kind and measures gates, until
// ctx ends. A gate is measured from its "gated" to its "released" event;
// gates that were already held when the agent started, and gates of guests
// that vanished while gated, have no pair and are not observed.
func (m *Metrics) FollowEvents(ctx context.Context, a Agent) {
	f := gateFollower{m: m, a: a, gatedAt: make(map[string]time.Time)}
	var after uint64
	for {
		evs, more := a.Events(after)
		if len(evs) > 0 {
			after = evs[len(evs)-1].Seq
			f.observe(evs)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-more:
		}
	}
}

type gateFollower struct {
	m       *Metrics
	a       Agent
	gatedAt map[string]time.Time // by guest name
}

func (f *gateFollower) observe(evs []agent.Event) {
	for _, e := range evs {
		f.m.events.WithLabelValues(string(e.Kind)).Inc()
		switch e.Kind {
		case agent.EventGated:
			f.gatedAt[e.Guest] = e.Time
		case agent.EventReleased:
			if t, ok := f.gatedAt[e.Guest]; ok {
				f.m.gateDuration.Observe(e.Time.Sub(t).Seconds())
				delete(f.gatedAt, e.Guest)
			}
		}
	}
	if len(f.gatedAt) == 0 {
		return
	}
	// A guest that is undefined or stopped while gated leaves without a
	// "released" event; forget it so the map cannot grow without bound.
	present := make(map[string]bool)
	for _, g := range f.a.Guests() {
		present[g.Name] = true
	}
	for name := range f.gatedAt {
		if !present[name] {
			delete(f.gatedAt, name)
		}
	}
}
