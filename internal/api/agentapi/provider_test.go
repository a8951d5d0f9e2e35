package agentapi_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/api/agentapi"
	"github.com/vsagent/vsagent/internal/api/apitest"
	"github.com/vsagent/vsagent/internal/config"
)

const labConfig = `
[[appliance]]
name = "ips"
template = "appliance.xml"
vcpus = 1
memory = "128MiB"

[[appliance]]
name = "fw"
template = "appliance.xml"
vcpus = 1
memory = "128MiB"
on_failure = "bypass"

[[policy]]
name = "protected"
chain = ["ips", "fw"]
[policy.match]
domains = ["web-*"]

[[policy.classifier]]
protocol = "udp"
ports = [53]
chain = ["fw"]

[[policy]]
name = "light"
chain = ["fw"]
`

// lab is a private libvirt test-driver host with a real agent running on
// it, served through the provider on a real socket.
type lab struct {
	conn   *hypervisor.Conn
	agent  *agent.Agent
	client *api.Client
}

func newLab(t *testing.T) *lab {
	t.Helper()
	ctx := context.Background()
	node, err := filepath.Abs("testdata/node.xml")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := hypervisor.Connect(ctx, "test://"+node, hypervisor.Options{Logger: apitest.Logger()})
	if err != nil {
		t.Fatalf("connect test driver: %v", err)
	}
	t.Cleanup(func() { conn.Close() })

	dir := t.TempDir()
	tmpl, err := os.ReadFile("testdata/appliance.xml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "appliance.xml"), tmpl, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("vsagent.toml", []byte(labConfig), dir)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	l := &lab{conn: conn}
	l.guest(t, "web-1", "")
	l.guest(t, "db-1", `<binding policy="light"/>`)
	l.guest(t, "odd-1", `<binding policy="nonesuch"/>`)
	l.guest(t, "idle-1", "")

	l.agent = agent.New(conn, cfg, agent.Options{Logger: apitest.Logger(), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.agent.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	select {
	case <-l.agent.Ready():
	case err := <-done:
		t.Fatalf("agent stopped before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
	l.eventually(t, func() bool {
		return l.state("web-1") == agent.GuestInspected && l.state("db-1") == agent.GuestInspected && l.state("odd-1") == agent.GuestGated
	})

	p := agentapi.New(agentapi.Sources{Agent: l.agent, Libvirt: conn, Version: "9.9.9", StartedAt: time.Now()})
	srv := apitest.Serve(t, p, api.ServerOptions{AllowedUIDs: []uint32{uint32(os.Geteuid())}})
	l.client = api.NewClient(srv.Socket)
	t.Cleanup(l.client.Close)
	return l
}

func (l *lab) guest(t *testing.T, name, binding string) {
	t.Helper()
	ctx := context.Background()
	d, err := l.conn.Define(ctx, &libvirtxml.Domain{
		Type: "test", Name: name,
		Memory: &libvirtxml.DomainMemory{Value: 65536, Unit: "KiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS:     &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"}},
	})
	if err != nil {
		t.Fatalf("define %s: %v", name, err)
	}
	if binding != "" {
		if err := l.conn.SetMetadata(ctx, d.UUID, hypervisor.BindingNamespace, binding); err != nil {
			t.Fatalf("bind %s: %v", name, err)
		}
	}
	if err := l.conn.Start(ctx, d.UUID); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
}

func (l *lab) state(name string) agent.GuestState {
	for _, g := range l.agent.Guests() {
		if g.Name == name {
			return g.State
		}
	}
	return ""
}

// eventually bounds a wait on the agent; it is not a speed assertion.
func (l *lab) eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("agent did not settle; guests: %+v", l.agent.Guests())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestAgentThroughTheSocket drives the real agent on the libvirt test
// driver and reads it through the provider, the server and the client, as
// vsactl does.
func TestAgentThroughTheSocket(t *testing.T) {
	l := newLab(t)
	ctx := ctxFor(t)

	st, err := l.client.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.Health != api.HealthOK || !st.Ready || !st.Libvirt.Connected || st.AgentVersion != "9.9.9" || st.APIVersion != api.Version {
		t.Errorf("status %+v, want a healthy, ready, connected agent 9.9.9 on API %s", st, api.Version)
	}
	wantCounts := api.Counts{Guests: 4, GuestsInspected: 2, GuestsGated: 1, GuestsUnmanaged: 1, GuestsWithErrors: 1, Appliances: 2, AppliancesRunning: 2}
	if diff := cmp.Diff(wantCounts, st.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if st.Dataplane.Running || st.Dataplane.Note == "" {
		t.Errorf("dataplane %+v, want not running, with a note", st.Dataplane)
	}

	gs, err := l.client.Guests(ctx)
	if err != nil {
		t.Fatalf("Guests: %v", err)
	}
	var got []string
	for _, g := range gs {
		got = append(got, g.Name+"="+g.State+"/"+g.Policy+"/"+strings.Join(g.Chain, ">"))
	}
	want := []string{"db-1=inspected/light/fw", "idle-1=unmanaged//", "odd-1=gated//", "web-1=inspected/protected/ips>fw"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("guests (-want +got):\n%s", diff)
	}

	as, err := l.client.Appliances(ctx)
	if err != nil {
		t.Fatalf("Appliances: %v", err)
	}
	got = nil
	for _, a := range as {
		got = append(got, a.Name+"="+a.State+"/"+a.Health)
		if len(a.MACs) == 0 || a.UUID == "" {
			t.Errorf("appliance %s lacks MACs or UUID: %+v", a.Name, a)
		}
	}
	if diff := cmp.Diff([]string{"vsa-fw-1=running/ok", "vsa-ips-1=running/ok"}, got); diff != "" {
		t.Errorf("appliances (-want +got):\n%s", diff)
	}

	fl, err := l.client.Flows(ctx, "web-1")
	if err != nil || len(fl.Flows) != 0 || fl.Note != agentapi.NoDataplane {
		t.Errorf("Flows(web-1) = %+v, %v; want none and the no-dataplane note", fl, err)
	}
	if _, err := l.client.Flows(ctx, "nosuch"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Flows(nosuch) = %v, want ErrNotFound", err)
	}

	evs, err := l.client.Events(ctx, 0)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	kinds := map[string]bool{}
	for i, e := range evs {
		kinds[e.Kind] = true
		if e.Seq != uint64(i+1) || e.Time.IsZero() {
			t.Errorf("event %d = %+v, want seq %d and a time", i, e, i+1)
		}
	}
	for _, k := range []string{"gated", "released", "gate-held", "appliance-defined", "appliance-started"} {
		if !kinds[k] {
			t.Errorf("no %q event among %v", k, kinds)
		}
	}
}

func TestExplainFromLibvirt(t *testing.T) {
	l := newLab(t)
	ctx := ctxFor(t)
	tests := []struct {
		domain                      string
		matched, policy, appliance  string
		binding                     string
		problem                     bool
		agentState                  string
		defaultChain, classifierOne []string
	}{
		{domain: "web-1", matched: api.MatchedGlob, policy: "protected", agentState: api.GuestInspected,
			defaultChain: []string{"ips", "fw"}, classifierOne: []string{"fw"}},
		{domain: "db-1", matched: api.MatchedBinding, binding: "light", policy: "light", agentState: api.GuestInspected,
			defaultChain: []string{"fw"}},
		{domain: "odd-1", matched: api.MatchedBinding, binding: "nonesuch", problem: true, agentState: api.GuestGated},
		{domain: "idle-1", matched: api.MatchedNone, agentState: api.GuestUnmanaged},
		{domain: "vsa-fw-1", matched: api.MatchedNone, appliance: "fw"},
	}
	for _, tt := range tests {
		t.Run(tt.domain, func(t *testing.T) {
			e, err := l.client.Explain(ctx, tt.domain)
			if err != nil {
				t.Fatalf("Explain: %v", err)
			}
			if e.Matched != tt.matched || e.Policy != tt.policy || e.Appliance != tt.appliance || e.Binding != tt.binding || (e.Error != "") != tt.problem {
				t.Errorf("explanation %+v, want matched %s policy %q appliance %q binding %q problem %v", e, tt.matched, tt.policy, tt.appliance, tt.binding, tt.problem)
			}
			if e.UUID == "" {
				t.Error("no UUID")
			}
			if tt.agentState != "" && (e.Agent == nil || e.Agent.State != tt.agentState) {
				t.Errorf("agent view %+v, want state %s", e.Agent, tt.agentState)
			}
			if diff := cmp.Diff(tt.defaultChain, stepNames(e.Default)); diff != "" {
				t.Errorf("default chain (-want +got):\n%s", diff)
			}
			if tt.classifierOne != nil {
				if len(e.Classifiers) == 0 {
					t.Fatal("no classifiers")
				}
				if diff := cmp.Diff(tt.classifierOne, stepNames(e.Classifiers[0].Chain)); diff != "" {
					t.Errorf("classifier 1 chain (-want +got):\n%s", diff)
				}
			}
		})
	}
	if _, err := l.client.Explain(ctx, "nosuch"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Explain(nosuch) = %v, want ErrNotFound", err)
	}
}

func stepNames(steps []api.ChainStep) []string {
	var out []string
	for _, s := range steps {
		out = append(out, s.Appliance)
	}
	return out
}

// disconnected is a libvirt connection that is down.
type disconnected struct{}

func (disconnected) URI() string           { return "qemu:///system" }
func (disconnected) Connected() bool       { return false }
func (disconnected) Reconnects() uint64    { return 3 }
func (disconnected) DroppedEvents() uint64 { return 0 }
func (disconnected) ListDomains(context.Context) ([]hypervisor.Domain, error) {
	return nil, hypervisor.ErrDisconnected
}
func (disconnected) Metadata(context.Context, string, string) (string, error) {
	return "", hypervisor.ErrDisconnected
}

// stillAgent is an agent snapshot that does not change.
type stillAgent struct {
	guests     []agent.GuestInfo
	appliances []agent.ApplianceInfo
	ready      chan struct{}
}

func (a stillAgent) Guests() []agent.GuestInfo         { return a.guests }
func (a stillAgent) Appliances() []agent.ApplianceInfo { return a.appliances }
func (a stillAgent) Config() *config.Config {
	return &config.Config{Files: []string{"/etc/vsagent/vsagent.toml"}}
}
func (a stillAgent) Ready() <-chan struct{}                       { return a.ready }
func (stillAgent) Events(uint64) ([]agent.Event, <-chan struct{}) { return nil, make(chan struct{}) }

type fixedUtilisation map[string]float64

func (u fixedUtilisation) CPUUtilisation(uuid string) (float64, bool) {
	v, ok := u[uuid]
	return v, ok
}

func TestWhileLibvirtIsDown(t *testing.T) {
	ctx := ctxFor(t)
	p := agentapi.New(agentapi.Sources{Agent: stillAgent{ready: make(chan struct{})}, Libvirt: disconnected{}})
	st, err := p.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.Health != api.HealthDegraded || st.Libvirt.Connected || st.Libvirt.Reconnects != 3 {
		t.Errorf("status %+v, want degraded, disconnected, 3 reconnects", st)
	}
	if _, err := p.Explain(ctx, "web-1"); !errors.Is(err, api.ErrUnavailable) {
		t.Errorf("Explain while disconnected = %v, want ErrUnavailable", err)
	}
}

func TestApplianceHealthAndUtilisation(t *testing.T) {
	ready := make(chan struct{})
	close(ready)
	a := stillAgent{ready: ready, appliances: []agent.ApplianceInfo{
		{Appliance: "ips", Index: 2, Name: "vsa-ips-2", UUID: "u-ips-2", State: "shut off"},
		{Appliance: "fw", Index: 1, Name: "vsa-fw-1", UUID: "u-fw-1", State: "running", MACs: []string{"52:54:00:aa:00:01"}, Guests: 2},
		{Appliance: "ips", Index: 1, Name: "vsa-ips-1", UUID: "u-ips-1", State: "running"},
	}}
	p := agentapi.New(agentapi.Sources{Agent: a, Libvirt: disconnected{}, Utilisation: fixedUtilisation{"u-fw-1": 0.5}})
	got, err := p.Appliances(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	half := 0.5
	want := []api.Appliance{
		{Appliance: "fw", Index: 1, Name: "vsa-fw-1", UUID: "u-fw-1", State: "running", Health: api.HealthOK, MACs: []string{"52:54:00:aa:00:01"}, Guests: 2, CPUUtilisation: &half},
		{Appliance: "ips", Index: 1, Name: "vsa-ips-1", UUID: "u-ips-1", State: "running", Health: api.HealthOK},
		{Appliance: "ips", Index: 2, Name: "vsa-ips-2", UUID: "u-ips-2", State: "shut off", Health: api.HealthDown},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("appliances (-want +got):\n%s", diff)
	}
}
