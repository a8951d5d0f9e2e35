package metrics

import (
	"cmp"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vsagent/vsagent/agent"
)

// The agent names appliance domain states after libvirt's; only a running
// instance can carry traffic or report utilisation.
const runningState = "running"

// noAppliance labels traffic delivered without passing any appliance.
const noAppliance = "none"

var (
	descReady = prometheus.NewDesc("vsagent_ready",
		"Whether the agent has reconciled every domain once since it started (1) or not yet (0).", nil, nil)
	descLibvirtConnected = prometheus.NewDesc("vsagent_libvirt_connected",
		"Whether the agent is connected to libvirt (1) or reconnecting (0).", nil, nil)
	descLibvirtReconnects = prometheus.NewDesc("vsagent_libvirt_reconnects_total",
		"Connections to libvirt re-established after it went away.", nil, nil)
	descLibvirtDropped = prometheus.NewDesc("vsagent_libvirt_dropped_events_total",
		"libvirt events that overflowed the agent's queue; each overflow triggers a full resync.", nil, nil)
	descGuests = prometheus.NewDesc("vsagent_guests",
		"Guests the agent has examined, by state (unmanaged, gated, inspected).", []string{"state"}, nil)
	descInstances = prometheus.NewDesc("vsagent_appliance_instances",
		"Appliance instances vsagent owns, by appliance and libvirt state.", []string{"appliance", "state"}, nil)
	descApplianceGuests = prometheus.NewDesc("vsagent_appliance_guests",
		"Guests whose policies need the appliance.", []string{"appliance"}, nil)
	descUtilisation = prometheus.NewDesc("vsagent_appliance_cpu_utilisation_ratio",
		"CPU use of an appliance instance over the last sampling interval, as a fraction of its vCPUs.", []string{"appliance", "instance"}, nil)
	descInstanceFlows = prometheus.NewDesc("vsagent_appliance_instance_flows",
		"Flows the distribution manager has pinned to an instance, at the autoscaler's last poll.", []string{"appliance", "instance"}, nil)
	descInstancePPS = prometheus.NewDesc("vsagent_appliance_instance_frames_per_second",
		"Frames per second the distribution manager sent an instance over the autoscaler's last poll interval.", []string{"appliance", "instance"}, nil)
	descInstanceAwaiting = prometheus.NewDesc("vsagent_appliance_instance_awaiting_return_frames",
		"Frames sent to an instance and neither returned, noticed nor timed out, at the autoscaler's last poll.", []string{"appliance", "instance"}, nil)
	descInstanceLatency = prometheus.NewDesc("vsagent_appliance_instance_return_latency_seconds",
		"Mean round trip of the distribution manager's health probes through an instance over the autoscaler's last poll interval.", []string{"appliance", "instance"}, nil)
	descDataplaneUp = prometheus.NewDesc("vsagent_dataplane_up",
		"Whether the distribution manager is running (1) or not (0).", nil, nil)
	descFrames = prometheus.NewDesc("vsagent_dataplane_frames_total",
		"Frames handled by the distribution manager, by guest, appliance (none: delivered without a chain) and verdict.", []string{"guest", "appliance", "verdict"}, nil)
	descBytes = prometheus.NewDesc("vsagent_dataplane_bytes_total",
		"Bytes of the frames counted by vsagent_dataplane_frames_total.", []string{"guest", "appliance", "verdict"}, nil)
	descDrops = prometheus.NewDesc("vsagent_dataplane_drops_total",
		"Frames the distribution manager dropped, by reason.", []string{"reason"}, nil)
	descFlows = prometheus.NewDesc("vsagent_dataplane_flows",
		"Flows in the streams database.", nil, nil)
	descFlowCapacity = prometheus.NewDesc("vsagent_dataplane_flow_capacity",
		"Maximum number of flows the streams database holds.", nil, nil)
	descFlowsCreated = prometheus.NewDesc("vsagent_dataplane_flows_created_total",
		"Flows created in the streams database.", nil, nil)
	descFlowsRemoved = prometheus.NewDesc("vsagent_dataplane_flows_removed_total",
		"Flows removed from the streams database, by reason (expired, evicted, deleted).", []string{"reason"}, nil)
)

// collector reads the sources at scrape time.
type collector struct{ s Sources }

func newCollector(s Sources) *collector { return &collector{s: s} }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descReady, descLibvirtConnected, descLibvirtReconnects, descLibvirtDropped,
		descGuests, descInstances, descApplianceGuests, descUtilisation,
		descInstanceFlows, descInstancePPS, descInstanceAwaiting, descInstanceLatency,
		descDataplaneUp, descFrames, descBytes, descDrops,
		descFlows, descFlowCapacity, descFlowsCreated, descFlowsRemoved,
	} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	gauge(ch, descReady, boolValue(isClosed(c.s.Agent.Ready())))
	gauge(ch, descLibvirtConnected, boolValue(c.s.Libvirt.Connected()))
	counter(ch, descLibvirtReconnects, float64(c.s.Libvirt.Reconnects()))
	counter(ch, descLibvirtDropped, float64(c.s.Libvirt.DroppedEvents()))
	c.collectGuests(ch)
	c.collectAppliances(ch)
	c.collectDataplane(ch)
}

func (c *collector) collectGuests(ch chan<- prometheus.Metric) {
	// Every state is reported, zero included, so that a dashboard's
	// "gated" line drops to 0 instead of vanishing.
	counts := map[agent.GuestState]int{agent.GuestUnmanaged: 0, agent.GuestGated: 0, agent.GuestInspected: 0}
	for _, g := range c.s.Agent.Guests() {
		counts[g.State]++
	}
	for state, n := range counts {
		gauge(ch, descGuests, float64(n), string(state))
	}
}

func (c *collector) collectAppliances(ch chan<- prometheus.Metric) {
	type key struct{ appliance, state string }
	instances := make(map[key]int)
	guests := make(map[string]int)
	applianceOf := make(map[string]string) // running instance → appliance
	for _, a := range c.s.Agent.Appliances() {
		instances[key{a.Appliance, a.State}]++
		if a.State == runningState {
			applianceOf[a.Name] = a.Appliance
		}
		// Every instance of an appliance reports the same number of guests.
		guests[a.Appliance] = a.Guests
		if c.s.Utilisation == nil || a.State != runningState {
			continue
		}
		if u, ok := c.s.Utilisation.CPUUtilisation(a.UUID); ok {
			gauge(ch, descUtilisation, u, a.Appliance, a.Name)
		}
	}
	for k, n := range instances {
		gauge(ch, descInstances, float64(n), k.appliance, k.state)
	}
	for app, n := range guests {
		gauge(ch, descApplianceGuests, float64(n), app)
	}
	if c.s.Loads == nil {
		return
	}
	for _, in := range c.s.Loads.Loads() {
		app, ok := applianceOf[in.Name]
		if !ok {
			continue // gone or stopped since the poll
		}
		gauge(ch, descInstanceFlows, float64(in.Flows), app, in.Name)
		gauge(ch, descInstancePPS, in.PPS, app, in.Name)
		gauge(ch, descInstanceAwaiting, float64(in.AwaitingReturn), app, in.Name)
		gauge(ch, descInstanceLatency, in.ReturnLatency.Seconds(), app, in.Name)
	}
}

func (c *collector) collectDataplane(ch chan<- prometheus.Metric) {
	if c.s.Dataplane == nil {
		gauge(ch, descDataplaneUp, 0)
		return
	}
	gauge(ch, descDataplaneUp, 1)
	st := c.s.Dataplane.Stats()
	// The dataplane may report one label set in several pieces (one per
	// worker); Prometheus rejects duplicates, so they are summed here.
	type key struct{ guest, appliance, verdict string }
	frames, bytes := make(map[key]uint64), make(map[key]uint64)
	for _, t := range st.Traffic {
		k := key{t.Guest, cmp.Or(t.Appliance, noAppliance), t.Verdict}
		frames[k] += t.Frames
		bytes[k] += t.Bytes
	}
	for k, n := range frames {
		counter(ch, descFrames, float64(n), k.guest, k.appliance, k.verdict)
		counter(ch, descBytes, float64(bytes[k]), k.guest, k.appliance, k.verdict)
	}
	drops := make(map[string]uint64)
	for _, d := range st.Drops {
		drops[d.Reason] += d.Frames
	}
	for reason, n := range drops {
		counter(ch, descDrops, float64(n), reason)
	}
	gauge(ch, descFlows, float64(st.Flows))
	gauge(ch, descFlowCapacity, float64(st.FlowCapacity))
	counter(ch, descFlowsCreated, float64(st.FlowsCreated))
	removed := make(map[string]uint64)
	for _, r := range st.FlowsRemoved {
		removed[r.Reason] += r.Flows
	}
	for reason, n := range removed {
		counter(ch, descFlowsRemoved, float64(n), reason)
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	constMetric(ch, d, prometheus.GaugeValue, v, labels)
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	constMetric(ch, d, prometheus.CounterValue, v, labels)
}

// constMetric never panics: a label value that is not valid UTF-8 (a
// domain name is whatever libvirt accepted) fails that one series in the
// scrape instead of the whole process.
func constMetric(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels []string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
