package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
)

const baseConfig = `
[agent]
gate_timeout = "1s"

[[appliance]]
name = "ips"
template = "appliance.xml"
vcpus = 1
max_vcpus = 2
memory = "128MiB"
max_memory = "256MiB"

[[appliance]]
name = "fw"
template = "appliance.xml"
vcpus = 2
max_vcpus = 4
memory = "256MiB"
max_memory = "512MiB"

[[policy]]
name = "protected"
chain = ["ips", "fw"]
[policy.match]
domains = ["web-*"]

[[policy]]
name = "light"
chain = ["fw"]
`

// recordingHV is the real test-driver connection with a log of the calls
// that change domains, and a switch to make Define fail.
type recordingHV struct {
	*hypervisor.Conn
	mu         sync.Mutex
	calls      []string
	failDefine error
}

func (r *recordingHV) record(op, uuid string) {
	name := uuid
	if d, err := r.Conn.Lookup(context.Background(), uuid); err == nil {
		name = d.Name
	}
	r.mu.Lock()
	r.calls = append(r.calls, op+" "+name)
	r.mu.Unlock()
}

func (r *recordingHV) Define(ctx context.Context, dom *libvirtxml.Domain) (hypervisor.Domain, error) {
	r.mu.Lock()
	fail := r.failDefine
	r.mu.Unlock()
	if fail != nil {
		return hypervisor.Domain{}, fail
	}
	d, err := r.Conn.Define(ctx, dom)
	if err == nil {
		r.record("define", d.UUID)
	}
	return d, err
}

func (r *recordingHV) Start(ctx context.Context, uuid string) error {
	r.record("start", uuid)
	return r.Conn.Start(ctx, uuid)
}

func (r *recordingHV) Suspend(ctx context.Context, uuid string) error {
	r.record("suspend", uuid)
	return r.Conn.Suspend(ctx, uuid)
}

func (r *recordingHV) Resume(ctx context.Context, uuid string) error {
	r.record("resume", uuid)
	return r.Conn.Resume(ctx, uuid)
}

func (r *recordingHV) Destroy(ctx context.Context, uuid string) error {
	r.record("destroy", uuid)
	return r.Conn.Destroy(ctx, uuid)
}

func (r *recordingHV) Undefine(ctx context.Context, uuid string) error {
	r.record("undefine", uuid)
	return r.Conn.Undefine(ctx, uuid)
}

func (r *recordingHV) SetMetadata(ctx context.Context, uuid, ns, xml string) error {
	if ns == hypervisor.StateNamespace {
		op := "gate"
		if xml == "" {
			op = "ungate"
		}
		r.record(op, uuid)
	}
	return r.Conn.SetMetadata(ctx, uuid, ns, xml)
}

func (r *recordingHV) takeCalls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.calls
	r.calls = nil
	return out
}

type harness struct {
	t      testing.TB
	conn   *hypervisor.Conn
	hv     *recordingHV
	dir    string
	agent  *Agent
	cancel context.CancelFunc
	done   chan error
}

// newHarness gives each test its own private test-driver host: the
// connection is shared by the test and the agent because every connection to
// test:///<file> sees a state of its own.
func newHarness(t testing.TB) *harness {
	t.Helper()
	node, err := filepath.Abs("testdata/node.xml")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := hypervisor.Connect(context.Background(), "test://"+node, hypervisor.Options{Logger: quietLogger()})
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
	return &harness{t: t, conn: conn, hv: &recordingHV{Conn: conn}, dir: dir}
}

func (h *harness) config(text string) *config.Config {
	h.t.Helper()
	cfg, err := config.Parse("vsagent.toml", []byte(text), h.dir)
	if err != nil {
		h.t.Fatalf("test config: %v", err)
	}
	return cfg
}

func quietLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (h *harness) start(cfg *config.Config) {
	h.t.Helper()
	h.agent = New(h.hv, cfg, Options{Logger: quietLogger(), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.agent.Run(ctx) }()
	h.t.Cleanup(h.stop)
	select {
	case <-h.agent.Ready():
	case err := <-h.done:
		h.t.Fatalf("agent stopped before ready: %v", err)
	case <-time.After(20 * time.Second):
		h.t.Fatal("agent not ready after its first resync")
	}
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	if err := <-h.done; err != nil {
		h.t.Errorf("agent Run: %v", err)
	}
	h.cancel = nil
}

// guest defines a test-driver domain; start=true also boots it.
func (h *harness) guest(name string, start bool) string {
	h.t.Helper()
	ctx := context.Background()
	d, err := h.conn.Define(ctx, &libvirtxml.Domain{
		Type:   "test",
		Name:   name,
		Memory: &libvirtxml.DomainMemory{Value: 65536, Unit: "KiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS:     &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"}},
	})
	if err != nil {
		h.t.Fatalf("define guest %s: %v", name, err)
	}
	if start {
		if err := h.conn.Start(ctx, d.UUID); err != nil {
			h.t.Fatalf("start guest %s: %v", name, err)
		}
	}
	return d.UUID
}

// eventually polls cond until it holds; the bound is for a hung agent, not
// a speed target.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting until %s; domains: %s", what, h.describe())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) state(uuid string) hypervisor.State {
	d, err := h.conn.Lookup(context.Background(), uuid)
	if err != nil {
		return hypervisor.StateOther
	}
	return d.State
}

func (h *harness) guestState(name string) GuestState {
	for _, g := range h.agent.Guests() {
		if g.Name == name {
			return g.State
		}
	}
	return ""
}

func (h *harness) domainNames() []string {
	doms, err := h.conn.ListDomains(context.Background())
	if err != nil {
		h.t.Fatalf("list: %v", err)
	}
	var names []string
	for _, d := range doms {
		names = append(names, d.Name)
	}
	slices.Sort(names)
	return names
}

func (h *harness) describe() string {
	doms, _ := h.conn.ListDomains(context.Background())
	var parts []string
	for _, d := range doms {
		parts = append(parts, d.Name+"="+d.State.String())
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

func (h *harness) byName(name string) hypervisor.Domain {
	h.t.Helper()
	doms, err := h.conn.ListDomains(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	for _, d := range doms {
		if d.Name == name {
			return d
		}
	}
	h.t.Fatalf("no domain %s; have %s", name, h.describe())
	return hypervisor.Domain{}
}

func (h *harness) gateRecord(uuid string) string {
	s, err := h.conn.Metadata(context.Background(), uuid, hypervisor.StateNamespace)
	if errors.Is(err, hypervisor.ErrNoMetadata) {
		return ""
	}
	if err != nil {
		h.t.Fatalf("metadata: %v", err)
	}
	return s
}

func TestGuestIsGatedUntilAppliancesRun(t *testing.T) {
	h := newHarness(t)
	h.start(h.config(baseConfig))
	h.hv.takeCalls()

	web := h.guest("web-1", true)
	h.eventually("web-1 is inspected", func() bool { return h.guestState("web-1") == GuestInspected })

	want := []string{
		"gate web-1", "suspend web-1",
		"define vsa-ips-1", "start vsa-ips-1",
		"define vsa-fw-1", "start vsa-fw-1",
		"resume web-1", "ungate web-1",
	}
	if diff := cmp.Diff(want, h.hv.takeCalls()); diff != "" {
		t.Errorf("libvirt calls (-want +got):\n%s", diff)
	}
	if got := h.state(web); got != hypervisor.StateRunning {
		t.Errorf("web-1 is %s, want running", got)
	}
	if rec := h.gateRecord(web); rec != "" {
		t.Errorf("gate record left behind: %s", rec)
	}
	for _, name := range []string{"vsa-ips-1", "vsa-fw-1"} {
		if got := h.byName(name).State; got != hypervisor.StateRunning {
			t.Errorf("%s is %s, want running", name, got)
		}
	}
}

func TestApplianceDomainBuiltFromTemplate(t *testing.T) {
	h := newHarness(t)
	h.start(h.config(baseConfig))
	h.guest("web-1", true)
	h.eventually("web-1 is inspected", func() bool { return h.guestState("web-1") == GuestInspected })

	fw := h.byName("vsa-fw-1")
	x, err := h.conn.DomainXML(context.Background(), fw.UUID, true)
	if err != nil {
		t.Fatal(err)
	}
	if x.UUID == "" || x.UUID == fw.Name {
		t.Errorf("UUID = %q", x.UUID)
	}
	if x.VCPU == nil || x.VCPU.Value != 4 || x.VCPU.Current != 2 {
		t.Errorf("vcpu = %+v, want current 2 of max 4", x.VCPU)
	}
	if x.CurrentMemory == nil || x.CurrentMemory.Value != 256*1024 {
		t.Errorf("currentMemory = %+v, want 262144 KiB", x.CurrentMemory)
	}
	if x.Memory == nil || x.Memory.Value != 512*1024 {
		t.Errorf("memory = %+v, want 524288 KiB", x.Memory)
	}
	if x.Devices == nil || len(x.Devices.Interfaces) != 1 || x.Devices.Interfaces[0].MAC == nil {
		t.Fatalf("interfaces = %+v", x.Devices)
	}
	mac := x.Devices.Interfaces[0].MAC.Address
	if hw, err := net.ParseMAC(mac); err != nil || hw[0]&0x02 == 0 || hw[0]&0x01 != 0 {
		t.Errorf("MAC %s is not a locally administered unicast address (%v)", mac, err)
	}
	owner, ok := appliance.OwnerOf(x)
	if !ok {
		t.Fatalf("no ownership element in %s's metadata", fw.Name)
	}
	if owner.Appliance != "fw" || owner.Index != 1 || owner.Kind != "header" {
		t.Errorf("owner = %+v", owner)
	}
	apps := h.agent.Appliances()
	if len(apps) != 2 {
		t.Fatalf("agent reports %d appliances, want 2: %+v", len(apps), apps)
	}
	for _, a := range apps {
		if a.Name == "vsa-fw-1" && !slices.Contains(a.MACs, mac) {
			t.Errorf("agent's MACs %v for vsa-fw-1 lack %s", a.MACs, mac)
		}
	}
}

func TestGuestsShareInstancesAndLastOneOutDeletesThem(t *testing.T) {
	h := newHarness(t)
	h.start(h.config(baseConfig))

	a := h.guest("web-a", true)
	b := h.guest("web-b", true)
	h.eventually("both guests inspected", func() bool {
		return h.guestState("web-a") == GuestInspected && h.guestState("web-b") == GuestInspected
	})
	if diff := cmp.Diff([]string{"vsa-fw-1", "vsa-ips-1", "web-a", "web-b"}, h.domainNames()); diff != "" {
		t.Fatalf("domains (-want +got):\n%s", diff)
	}

	ctx := context.Background()
	for _, step := range []struct{ uuid, name string }{{a, "web-a"}} {
		if err := h.conn.Destroy(ctx, step.uuid); err != nil {
			t.Fatal(err)
		}
		if err := h.conn.Undefine(ctx, step.uuid); err != nil {
			t.Fatal(err)
		}
	}
	// One guest still needs them: wait for the agent to have seen the
	// undefine, then check nothing was deleted.
	h.eventually("web-a forgotten", func() bool { return h.guestState("web-a") == "" })
	h.eventually("queue drained", h.agent.queue.idle)
	if diff := cmp.Diff([]string{"vsa-fw-1", "vsa-ips-1", "web-b"}, h.domainNames()); diff != "" {
		t.Fatalf("after the first guest left (-want +got):\n%s", diff)
	}

	if err := h.conn.Destroy(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := h.conn.Undefine(ctx, b); err != nil {
		t.Fatal(err)
	}
	h.eventually("appliances deleted", func() bool { return len(h.domainNames()) == 0 })
}

func TestStoppedGuestReleasesAppliancesAndRestartGatesAgain(t *testing.T) {
	h := newHarness(t)
	h.start(h.config(baseConfig))
	web := h.guest("web-1", true)
	h.eventually("inspected", func() bool { return h.guestState("web-1") == GuestInspected })
	if err := h.conn.Destroy(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	h.eventually("appliances deleted", func() bool { return slices.Equal(h.domainNames(), []string{"web-1"}) })
	h.hv.takeCalls()
	if err := h.conn.Start(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	h.eventually("inspected again", func() bool { return h.guestState("web-1") == GuestInspected && h.state(web) == hypervisor.StateRunning })
	calls := h.hv.takeCalls()
	if len(calls) < 2 || calls[0] != "gate web-1" || calls[1] != "suspend web-1" {
		t.Errorf("restarted guest not gated first: %v", calls)
	}
}

func TestForeignDomainsAreNeverTouched(t *testing.T) {
	h := newHarness(t)
	// A domain that merely looks like an appliance, and an unrelated one,
	// both exist before the agent starts.
	impostor := h.guest("vsa-fw-1", true)
	other := h.guest("db-1", true)
	h.start(h.config(baseConfig))
	h.hv.takeCalls()

	web := h.guest("web-1", true)
	h.eventually("inspected", func() bool { return h.guestState("web-1") == GuestInspected })
	if err := h.conn.Destroy(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	if err := h.conn.Undefine(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	h.eventually("owned appliances deleted", func() bool { return len(h.agent.Appliances()) == 0 && len(h.domainNames()) == 2 })

	for _, c := range h.hv.takeCalls() {
		if strings.HasSuffix(c, " vsa-fw-1") || strings.HasSuffix(c, " db-1") {
			t.Errorf("agent touched a foreign domain: %s", c)
		}
	}
	if h.state(impostor) != hypervisor.StateRunning || h.state(other) != hypervisor.StateRunning {
		t.Errorf("foreign domains changed: %s", h.describe())
	}
	// The impostor held the name vsa-fw-1, so the real instance got the next.
	evs, _ := h.agent.Events(0)
	var defined []string
	for _, e := range evs {
		if e.Kind == EventApplianceDefined {
			defined = append(defined, e.Appliance)
		}
	}
	if diff := cmp.Diff([]string{"vsa-ips-1", "vsa-fw-2"}, defined); diff != "" {
		t.Errorf("defined appliances (-want +got):\n%s", diff)
	}
}

func TestDefineFailureKeepsGuestPaused(t *testing.T) {
	h := newHarness(t)
	h.start(h.config(baseConfig))
	h.hv.mu.Lock()
	h.hv.failDefine = errors.New("injected: storage pool full")
	h.hv.mu.Unlock()

	web := h.guest("web-1", true)
	h.eventually("the error is visible", func() bool {
		for _, g := range h.agent.Guests() {
			if g.Name == "web-1" && strings.Contains(g.LastError, "storage pool full") {
				return true
			}
		}
		return false
	})
	h.eventually("the gate timeout is reported", func() bool {
		evs, _ := h.agent.Events(0)
		return slices.ContainsFunc(evs, func(e Event) bool { return e.Kind == EventGateTimeout && e.Guest == "web-1" })
	})
	if got := h.state(web); got != hypervisor.StatePaused {
		t.Fatalf("web-1 is %s while its appliances cannot be defined, want paused", got)
	}
	if h.gateRecord(web) == "" {
		t.Error("no gate record on a gated guest")
	}

	// Once provisioning works again the retries finish the job.
	h.hv.mu.Lock()
	h.hv.failDefine = nil
	h.hv.mu.Unlock()
	h.eventually("recovered", func() bool { return h.state(web) == hypervisor.StateRunning && h.guestState("web-1") == GuestInspected })
}

func TestUnknownBoundPolicyHoldsGuest(t *testing.T) {
	h := newHarness(t)
	web := h.guest("db-7", false)
	if err := h.conn.SetMetadata(context.Background(), web, hypervisor.BindingNamespace, `<binding policy="nonesuch"/>`); err != nil {
		t.Fatal(err)
	}
	h.start(h.config(baseConfig))
	if err := h.conn.Start(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	h.eventually("held", func() bool { return h.guestState("db-7") == GuestGated && h.state(web) == hypervisor.StatePaused })
}

func TestMetadataBindingBeatsGlobs(t *testing.T) {
	h := newHarness(t)
	h.start(h.config(baseConfig))
	web := h.guest("web-9", false)
	if err := h.conn.SetMetadata(context.Background(), web, hypervisor.BindingNamespace, `<binding policy="light"/>`); err != nil {
		t.Fatal(err)
	}
	if err := h.conn.Start(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	h.eventually("inspected", func() bool { return h.guestState("web-9") == GuestInspected })
	if diff := cmp.Diff([]string{"vsa-fw-1", "web-9"}, h.domainNames()); diff != "" {
		t.Errorf("domains (-want +got):\n%s", diff)
	}
}

func TestRestartMidGateRecovers(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	cfg := h.config(baseConfig)

	// The state a crashed agent leaves: web-1 gated and paused by us, one
	// appliance defined but never started, the other not defined at all.
	web := h.guest("web-1", true)
	rec, _ := gateRecord{Since: time.Now().UTC(), Policy: "protected", Waiting: "ips,fw", Resume: true}.marshal()
	if err := h.conn.SetMetadata(ctx, web, hypervisor.StateNamespace, rec); err != nil {
		t.Fatal(err)
	}
	if err := h.conn.Suspend(ctx, web); err != nil {
		t.Fatal(err)
	}
	app, _ := cfg.Appliance("ips")
	tmpl, err := appliance.ParseTemplate([]byte(app.TemplateXML))
	if err != nil {
		t.Fatal(err)
	}
	inst, _, err := appliance.NewInstance(tmpl, appliance.Spec{Appliance: "ips", Index: 1, Kind: "header", VCPUs: 1, MaxVCPUs: 1, MemoryKiB: 131072, MaxMemoryKiB: 131072, HostID: "host"}, appliance.NewMACMap())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.conn.Define(ctx, inst); err != nil {
		t.Fatal(err)
	}
	// A guest the operator paused, without a gate record and without a
	// policy, and a guest whose gate outlived its policy.
	held := h.guest("db-1", true)
	if err := h.conn.Suspend(ctx, held); err != nil {
		t.Fatal(err)
	}
	orphan := h.guest("mail-1", true)
	rec2, _ := gateRecord{Since: time.Now().UTC(), Policy: "gone", Resume: true}.marshal()
	if err := h.conn.SetMetadata(ctx, orphan, hypervisor.StateNamespace, rec2); err != nil {
		t.Fatal(err)
	}
	if err := h.conn.Suspend(ctx, orphan); err != nil {
		t.Fatal(err)
	}

	h.start(cfg)
	if got := h.state(web); got != hypervisor.StateRunning {
		t.Errorf("web-1 is %s after resync, want running", got)
	}
	if h.gateRecord(web) != "" {
		t.Error("web-1's gate record survived the resync")
	}
	if diff := cmp.Diff([]string{"db-1", "mail-1", "vsa-fw-1", "vsa-ips-1", "web-1"}, h.domainNames()); diff != "" {
		t.Errorf("domains (-want +got):\n%s", diff)
	}
	if got := h.byName("vsa-ips-1").State; got != hypervisor.StateRunning {
		t.Errorf("adopted vsa-ips-1 is %s, want running", got)
	}
	if got := h.state(held); got != hypervisor.StatePaused {
		t.Errorf("operator-paused db-1 is %s, want still paused", got)
	}
	if got := h.state(orphan); got != hypervisor.StateRunning {
		t.Errorf("mail-1, gated under a policy that is gone, is %s, want resumed", got)
	}
}

func TestAgentRestartAdoptsRunningAppliancesWithoutGating(t *testing.T) {
	h := newHarness(t)
	cfg := h.config(baseConfig)
	h.start(cfg)
	web := h.guest("web-1", true)
	h.eventually("inspected", func() bool { return h.guestState("web-1") == GuestInspected })
	h.stop()

	h.hv.takeCalls()
	h.start(cfg)
	if calls := h.hv.takeCalls(); len(calls) != 0 {
		t.Errorf("a restarted agent changed domains that were fine: %v", calls)
	}
	if h.state(web) != hypervisor.StateRunning || h.guestState("web-1") != GuestInspected {
		t.Errorf("web-1 after restart: %s / %s", h.state(web), h.guestState("web-1"))
	}
}

func TestReloadAppliesChangedPolicy(t *testing.T) {
	h := newHarness(t)
	h.start(h.config(baseConfig))
	web := h.guest("web-1", true)
	h.eventually("inspected", func() bool { return h.guestState("web-1") == GuestInspected })

	// The policy now needs only fw: ips must go.
	h.agent.SetConfig(h.config(strings.Replace(baseConfig, `chain = ["ips", "fw"]`, `chain = ["fw"]`, 1)))
	h.eventually("ips deleted", func() bool { return slices.Equal(h.domainNames(), []string{"vsa-fw-1", "web-1"}) })

	// The guest no longer matches any policy: everything goes, the guest
	// keeps running.
	h.agent.SetConfig(h.config(strings.Replace(baseConfig, `domains = ["web-*"]`, `domains = ["db-*"]`, 1)))
	h.eventually("fw deleted", func() bool { return slices.Equal(h.domainNames(), []string{"web-1"}) })
	if h.state(web) != hypervisor.StateRunning || h.guestState("web-1") != GuestUnmanaged {
		t.Errorf("web-1 after reload: %s / %s", h.state(web), h.guestState("web-1"))
	}

	// And back: a running guest that gains a policy is gated and provisioned.
	h.hv.takeCalls()
	h.agent.SetConfig(h.config(baseConfig))
	h.eventually("inspected again", func() bool { return h.guestState("web-1") == GuestInspected && h.state(web) == hypervisor.StateRunning })
	if calls := h.hv.takeCalls(); len(calls) < 2 || calls[0] != "gate web-1" {
		t.Errorf("calls after reload: %v", calls)
	}
}

func TestMetadataChangeRebindsGuest(t *testing.T) {
	h := newHarness(t)
	h.start(h.config(baseConfig))
	db := h.guest("db-1", true)
	h.eventually("seen unmanaged", func() bool { return h.guestState("db-1") == GuestUnmanaged })
	if err := h.conn.SetMetadata(context.Background(), db, hypervisor.BindingNamespace, `<binding policy="light"/>`); err != nil {
		t.Fatal(err)
	}
	h.eventually("inspected after binding", func() bool { return h.guestState("db-1") == GuestInspected })
	if diff := cmp.Diff([]string{"db-1", "vsa-fw-1"}, h.domainNames()); diff != "" {
		t.Errorf("domains (-want +got):\n%s", diff)
	}
}

func TestManyGuestsShareOneChain(t *testing.T) {
	// Many guests at once: every one ends inspected and the appliances are
	// shared, with no duplicate instance from concurrent provisioning.
	h := newHarness(t)
	h.start(h.config(baseConfig))
	for i := range 30 {
		h.guest(fmt.Sprintf("web-%02d", i), true)
	}
	h.eventually("all inspected", func() bool {
		n := 0
		for _, g := range h.agent.Guests() {
			if g.State == GuestInspected {
				n++
			}
		}
		return n == 30
	})
	apps := 0
	for _, n := range h.domainNames() {
		if strings.HasPrefix(n, "vsa-") {
			apps++
		}
	}
	if apps != 2 {
		t.Errorf("%d appliance domains for one chain, want 2: %v", apps, h.domainNames())
	}
}
