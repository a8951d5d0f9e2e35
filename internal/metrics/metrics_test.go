package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/metrics"
)

// fakeAgent is a scriptable agent snapshot with a live event log.
type fakeAgent struct {
	mu         sync.Mutex
	guests     []agent.GuestInfo
	appliances []agent.ApplianceInfo
	events     []agent.Event
	changed    chan struct{}
	ready      chan struct{}
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{changed: make(chan struct{}), ready: make(chan struct{})}
}

func (a *fakeAgent) Guests() []agent.GuestInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.guests
}

func (a *fakeAgent) Appliances() []agent.ApplianceInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.appliances
}

func (a *fakeAgent) Ready() <-chan struct{} { return a.ready }

func (a *fakeAgent) Events(after uint64) ([]agent.Event, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []agent.Event
	for _, e := range a.events {
		if e.Seq > after {
			out = append(out, e)
		}
	}
	return out, a.changed
}

func (a *fakeAgent) add(e agent.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e.Seq = uint64(len(a.events)) + 1
	a.events = append(a.events, e)
	close(a.changed)
	a.changed = make(chan struct{})
}

type fakeLibvirt struct{ connected bool }

func (l fakeLibvirt) Connected() bool       { return l.connected }
func (l fakeLibvirt) Reconnects() uint64    { return 4 }
func (l fakeLibvirt) DroppedEvents() uint64 { return 17 }

type fakeDataplane struct{ stats metrics.DataplaneStats }

func (d fakeDataplane) Stats() metrics.DataplaneStats { return d.stats }

type fakeUtilisation map[string]float64

func (u fakeUtilisation) CPUUtilisation(uuid string) (float64, bool) {
	v, ok := u[uuid]
	return v, ok
}

// The real components satisfy the interfaces.
var (
	_ metrics.Agent   = (*agent.Agent)(nil)
	_ metrics.Libvirt = (*hypervisor.Conn)(nil)
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// serve runs the endpoint on a loopback port of its own and returns its
// URL.
func serve(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := metrics.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln, quiet()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String() + "/metrics"
}

// scrape fetches and parses the exposition as Prometheus would.
func scrape(t *testing.T, url string) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	c := &http.Client{Timeout: 20 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: HTTP %d: %s", resp.StatusCode, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse exposition: %v\n%s", err, body)
	}
	return mfs, body
}

// series renders a family's samples as "name{l=v,…} value" lines, sorted,
// which makes a readable diff.
func series(mfs map[string]*dto.MetricFamily, name string) []string {
	mf, ok := mfs[name]
	if !ok {
		return nil
	}
	var out []string
	for _, m := range mf.GetMetric() {
		var labels []string
		for _, l := range m.GetLabel() {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		var v float64
		switch {
		case m.Gauge != nil:
			v = m.GetGauge().GetValue()
		case m.Counter != nil:
			v = m.GetCounter().GetValue()
		case m.Untyped != nil:
			v = m.GetUntyped().GetValue()
		}
		out = append(out, fmt.Sprintf("%s{%s} %g", name, strings.Join(labels, ","), v))
	}
	sort.Strings(out)
	return out
}

func populatedAgent() *fakeAgent {
	a := newFakeAgent()
	close(a.ready)
	a.guests = []agent.GuestInfo{
		{Name: "web-1", State: agent.GuestInspected},
		{Name: "web-2", State: agent.GuestInspected},
		{Name: "db-1", State: agent.GuestGated},
	}
	a.appliances = []agent.ApplianceInfo{
		{Appliance: "fw", Index: 1, Name: "vsa-fw-1", UUID: "u-fw-1", State: "running", Guests: 3},
		{Appliance: "fw", Index: 2, Name: "vsa-fw-2", UUID: "u-fw-2", State: "running", Guests: 3},
		{Appliance: "ips", Index: 1, Name: "vsa-ips-1", UUID: "u-ips-1", State: "shut off", Guests: 2},
	}
	return a
}

func TestScrape(t *testing.T) {
	a := populatedAgent()
	dp := fakeDataplane{metrics.DataplaneStats{
		Traffic: []metrics.Traffic{
			{Guest: "web-1", Appliance: "fw", Verdict: "forward", Frames: 10, Bytes: 1500},
			{Guest: "web-1", Appliance: "fw", Verdict: "forward", Frames: 5, Bytes: 500}, // a second worker's share
			{Guest: "web-1", Verdict: "forward", Frames: 2, Bytes: 128},
			{Guest: "db-1", Appliance: "ips", Verdict: "drop", Frames: 1, Bytes: 60},
		},
		Drops:        []metrics.Drop{{Reason: "dst_mismatch", Frames: 3}, {Reason: "return_timeout", Frames: 1}},
		Flows:        42,
		FlowCapacity: 1000,
		FlowsCreated: 50,
		FlowsRemoved: []metrics.FlowRemoval{{Reason: "expired", Flows: 7}, {Reason: "evicted", Flows: 1}},
	}}
	m := metrics.New(metrics.Sources{Agent: a, Libvirt: fakeLibvirt{connected: true}, Dataplane: dp,
		Utilisation: fakeUtilisation{"u-fw-1": 0.5, "u-ips-1": 0.9}, Version: "1.2.3",
		Loads: fakeLoads{
			{Name: "vsa-fw-1", InstanceLoad: appliance.InstanceLoad{Flows: 12, PPS: 250.5, AwaitingReturn: 3, ReturnLatency: 1500 * time.Microsecond}},
			{Name: "vsa-ips-1", InstanceLoad: appliance.InstanceLoad{Flows: 4}}, // shut off since the poll
		}})
	m.RecordConfigReload(nil)
	m.RecordConfigReload(errors.New("bad file"))
	mfs, body := scrape(t, serve(t, m))

	want := map[string][]string{
		"vsagent_ready":                         {"vsagent_ready{} 1"},
		"vsagent_libvirt_connected":             {"vsagent_libvirt_connected{} 1"},
		"vsagent_libvirt_reconnects_total":      {"vsagent_libvirt_reconnects_total{} 4"},
		"vsagent_libvirt_dropped_events_total":  {"vsagent_libvirt_dropped_events_total{} 17"},
		"vsagent_config_reloads_total":          {"vsagent_config_reloads_total{result=failure} 1", "vsagent_config_reloads_total{result=success} 1"},
		"vsagent_config_last_reload_successful": {"vsagent_config_last_reload_successful{} 0"},
		"vsagent_guests": {
			"vsagent_guests{state=gated} 1", "vsagent_guests{state=inspected} 2", "vsagent_guests{state=unmanaged} 0",
		},
		"vsagent_appliance_instances": {
			"vsagent_appliance_instances{appliance=fw,state=running} 2", "vsagent_appliance_instances{appliance=ips,state=shut off} 1",
		},
		"vsagent_appliance_guests": {"vsagent_appliance_guests{appliance=fw} 3", "vsagent_appliance_guests{appliance=ips} 2"},
		// vsa-fw-2 has no sample yet; vsa-ips-1 is not running, so its
		// stale figure is not reported.
		"vsagent_appliance_cpu_utilisation_ratio":           {"vsagent_appliance_cpu_utilisation_ratio{appliance=fw,instance=vsa-fw-1} 0.5"},
		"vsagent_dataplane_up":                              {"vsagent_dataplane_up{} 1"},
		"vsagent_appliance_instance_flows":                  {"vsagent_appliance_instance_flows{appliance=fw,instance=vsa-fw-1} 12"},
		"vsagent_appliance_instance_frames_per_second":      {"vsagent_appliance_instance_frames_per_second{appliance=fw,instance=vsa-fw-1} 250.5"},
		"vsagent_appliance_instance_awaiting_return_frames": {"vsagent_appliance_instance_awaiting_return_frames{appliance=fw,instance=vsa-fw-1} 3"},
		"vsagent_appliance_instance_return_latency_seconds": {"vsagent_appliance_instance_return_latency_seconds{appliance=fw,instance=vsa-fw-1} 0.0015"},
		"vsagent_dataplane_frames_total": {
			"vsagent_dataplane_frames_total{appliance=fw,guest=web-1,verdict=forward} 15",
			"vsagent_dataplane_frames_total{appliance=ips,guest=db-1,verdict=drop} 1",
			"vsagent_dataplane_frames_total{appliance=none,guest=web-1,verdict=forward} 2",
		},
		"vsagent_dataplane_bytes_total": {
			"vsagent_dataplane_bytes_total{appliance=fw,guest=web-1,verdict=forward} 2000",
			"vsagent_dataplane_bytes_total{appliance=ips,guest=db-1,verdict=drop} 60",
			"vsagent_dataplane_bytes_total{appliance=none,guest=web-1,verdict=forward} 128",
		},
		"vsagent_dataplane_drops_total": {
			"vsagent_dataplane_drops_total{reason=dst_mismatch} 3", "vsagent_dataplane_drops_total{reason=return_timeout} 1",
		},
		"vsagent_dataplane_flows":               {"vsagent_dataplane_flows{} 42"},
		"vsagent_dataplane_flow_capacity":       {"vsagent_dataplane_flow_capacity{} 1000"},
		"vsagent_dataplane_flows_created_total": {"vsagent_dataplane_flows_created_total{} 50"},
		"vsagent_dataplane_flows_removed_total": {
			"vsagent_dataplane_flows_removed_total{reason=evicted} 1", "vsagent_dataplane_flows_removed_total{reason=expired} 7",
		},
	}
	for name, w := range want {
		if diff := cmp.Diff(w, series(mfs, name)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	for name, typ := range map[string]dto.MetricType{
		"vsagent_libvirt_reconnects_total": dto.MetricType_COUNTER,
		"vsagent_dataplane_frames_total":   dto.MetricType_COUNTER,
		"vsagent_dataplane_flows":          dto.MetricType_GAUGE,
		"vsagent_gate_duration_seconds":    dto.MetricType_HISTOGRAM,
	} {
		if got := mfs[name].GetType(); got != typ {
			t.Errorf("%s has type %v, want %v", name, got, typ)
		}
	}
	build := mfs["vsagent_build_info"].GetMetric()
	if len(build) != 1 || !hasLabel(build[0], "version", "1.2.3") || !hasLabel(build[0], "go_version", "") {
		t.Errorf("vsagent_build_info = %v, want one series labelled version=1.2.3 and go_version", build)
	}
	for _, std := range []string{"go_goroutines", "process_cpu_seconds_total", "promhttp_metric_handler_requests_total"} {
		if _, ok := mfs[std]; !ok {
			t.Errorf("standard metric %s missing", std)
		}
	}
	lint(t, body)
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && (value == "" && l.GetValue() != "" || l.GetValue() == value) {
			return true
		}
	}
	return false
}

// lint applies Prometheus' own naming rules to vsagent's metrics.
func lint(t *testing.T, body []byte) {
	t.Helper()
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "vsagent_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestScrapeWithoutDataplane(t *testing.T) {
	a := newFakeAgent()
	m := metrics.New(metrics.Sources{Agent: a, Libvirt: fakeLibvirt{}})
	mfs, body := scrape(t, serve(t, m))
	for name, w := range map[string][]string{
		"vsagent_dataplane_up":                    {"vsagent_dataplane_up{} 0"},
		"vsagent_ready":                           {"vsagent_ready{} 0"},
		"vsagent_libvirt_connected":               {"vsagent_libvirt_connected{} 0"},
		"vsagent_config_last_reload_successful":   {"vsagent_config_last_reload_successful{} 1"},
		"vsagent_config_reloads_total":            {"vsagent_config_reloads_total{result=failure} 0", "vsagent_config_reloads_total{result=success} 0"},
		"vsagent_dataplane_frames_total":          nil,
		"vsagent_appliance_cpu_utilisation_ratio": nil,
	} {
		if diff := cmp.Diff(w, series(mfs, name)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	if ts := mfs["vsagent_config_last_reload_success_timestamp_seconds"].GetMetric(); len(ts) != 1 || ts[0].GetGauge().GetValue() <= 0 {
		t.Errorf("last reload timestamp = %v, want the start time", ts)
	}
	lint(t, body)
}

// A domain name is whatever libvirt accepted; one that is not valid UTF-8
// must cost its own series, not the scrape or the process.
func TestInvalidLabelValueFailsOnlyItsSeries(t *testing.T) {
	a := newFakeAgent()
	dp := fakeDataplane{metrics.DataplaneStats{Traffic: []metrics.Traffic{
		{Guest: "bad-\xff", Appliance: "fw", Verdict: "forward", Frames: 1},
		{Guest: "good", Appliance: "fw", Verdict: "forward", Frames: 2},
	}}}
	m := metrics.New(metrics.Sources{Agent: a, Libvirt: fakeLibvirt{}, Dataplane: dp})
	mfs, err := m.Registry().Gather()
	if err == nil {
		t.Error("gathering an invalid label value reported no error")
	}
	var good bool
	for _, mf := range mfs {
		if mf.GetName() == "vsagent_dataplane_frames_total" {
			for _, s := range mf.GetMetric() {
				good = good || hasLabel(s, "guest", "good")
			}
		}
	}
	if !good {
		t.Error("the valid series was lost with the invalid one")
	}
}

func TestGateDurationFromEvents(t *testing.T) {
	a := populatedAgent()
	m := metrics.New(metrics.Sources{Agent: a, Libvirt: fakeLibvirt{connected: true}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.FollowEvents(ctx, a); close(done) }()
	defer func() { cancel(); <-done }()

	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	a.add(agent.Event{Time: base, Kind: agent.EventGated, Guest: "web-1"})
	a.add(agent.Event{Time: base.Add(time.Second), Kind: agent.EventGated, Guest: "web-2"})
	a.add(agent.Event{Time: base.Add(3 * time.Second), Kind: agent.EventReleased, Guest: "web-1"})  // held 3 s
	a.add(agent.Event{Time: base.Add(41 * time.Second), Kind: agent.EventReleased, Guest: "web-2"}) // held 40 s
	a.add(agent.Event{Time: base.Add(50 * time.Second), Kind: agent.EventReleased, Guest: "db-1"})  // gated before we looked: no pair
	a.add(agent.Event{Time: base.Add(60 * time.Second), Kind: agent.EventGateTimeout, Guest: "db-1"})

	url := serve(t, m)
	deadline := time.Now().Add(20 * time.Second)
	var h *dto.Histogram
	for {
		mfs, _ := scrape(t, url)
		if ms := mfs["vsagent_gate_duration_seconds"].GetMetric(); len(ms) == 1 {
			h = ms[0].GetHistogram()
		}
		if h.GetSampleCount() >= 2 && len(series(mfs, "vsagent_events_total")) == 3 {
			if diff := cmp.Diff([]string{
				"vsagent_events_total{kind=gate-timeout} 1", "vsagent_events_total{kind=gated} 2", "vsagent_events_total{kind=released} 3",
			}, series(mfs, "vsagent_events_total")); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gate histogram never filled: %v", h)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if h.GetSampleCount() != 2 || h.GetSampleSum() != 43 {
		t.Errorf("gate histogram count %d sum %g, want 2 observations summing to 43 s", h.GetSampleCount(), h.GetSampleSum())
	}
	cumulative := map[float64]uint64{}
	for _, b := range h.GetBucket() {
		cumulative[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	if cumulative[2.5] != 0 || cumulative[5] != 1 || cumulative[30] != 1 || cumulative[60] != 2 {
		t.Errorf("buckets %v, want 3 s in le=5 and 40 s in le=60", cumulative)
	}
}

func TestListenRequiresAnAddress(t *testing.T) {
	if _, err := metrics.Listen(context.Background(), ""); err == nil {
		t.Error("Listen(\"\") succeeded; an empty address means the endpoint is off")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := metrics.Listen(context.Background(), ln.Addr().String()); err == nil {
		t.Error("Listen on a taken port succeeded")
	}
}

type fakeLoads []appliance.InstanceSample

func (f fakeLoads) Loads() []appliance.InstanceSample { return f }
