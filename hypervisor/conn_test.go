package hypervisor

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirt"
)

func TestLifecycleEventsArriveInOrder(t *testing.T) {
	c := connectTest(t, Options{})
	ctx := context.Background()
	d := defineTest(t, c, "life")

	steps := []struct {
		name string
		op   func(context.Context, string) error
	}{
		{"start", c.Start},
		{"suspend", c.Suspend},
		{"resume", c.Resume},
		{"destroy", c.Destroy},
		{"undefine", c.Undefine},
	}
	for _, s := range steps {
		if err := s.op(ctx, d.UUID); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	expectLifecycle(t, c, d.UUID,
		kindDetail{EventDefined, "added"},
		kindDetail{EventStarted, "booted"},
		kindDetail{EventSuspended, "paused"},
		kindDetail{EventResumed, "unpaused"},
		kindDetail{EventStopped, "destroyed"},
		kindDetail{EventUndefined, "removed"},
	)
}

func TestEventsCarryIdentity(t *testing.T) {
	c := connectTest(t, Options{})
	d := defineTest(t, c, "ident")
	ev := nextEvent(t, c, func(ev Event) bool { return ev.UUID == d.UUID })
	want := Event{UUID: d.UUID, Name: d.Name, Kind: EventDefined, Detail: "added"}
	if diff := cmp.Diff(want, ev); diff != "" {
		t.Fatalf("event (-want +got):\n%s", diff)
	}
}

func TestOperationsAreIdempotent(t *testing.T) {
	ctx := context.Background()
	c := connectTest(t, Options{})
	d := defineTest(t, c, "idem")

	tests := []struct {
		name      string
		op        func(context.Context, string) error
		wantState State
	}{
		{"start", c.Start, StateRunning},
		{"start again", c.Start, StateRunning},
		{"suspend", c.Suspend, StatePaused},
		{"suspend again", c.Suspend, StatePaused},
		{"start while paused", c.Start, StatePaused},
		{"resume", c.Resume, StateRunning},
		{"resume again", c.Resume, StateRunning},
		{"destroy", c.Destroy, StateShutoff},
		{"destroy again", c.Destroy, StateShutoff},
	}
	for _, tt := range tests {
		if err := tt.op(ctx, d.UUID); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		got, err := c.Lookup(ctx, d.UUID)
		if err != nil {
			t.Fatalf("%s: Lookup: %v", tt.name, err)
		}
		if got.State != tt.wantState {
			t.Fatalf("%s: state %v, want %v", tt.name, got.State, tt.wantState)
		}
	}
	for _, op := range []struct {
		name string
		fn   func(context.Context, string) error
	}{{"suspend", c.Suspend}, {"resume", c.Resume}} {
		if err := op.fn(ctx, d.UUID); !errors.Is(err, ErrNotRunning) {
			t.Errorf("%s of a shut off domain: %v, want ErrNotRunning", op.name, err)
		}
	}
	for i := 0; i < 2; i++ {
		if err := c.Undefine(ctx, d.UUID); err != nil {
			t.Fatalf("undefine #%d: %v", i+1, err)
		}
	}
	if _, err := c.Lookup(ctx, d.UUID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup after undefine: %v, want ErrNotFound", err)
	}
}

func TestTransientDomains(t *testing.T) {
	ctx := context.Background()
	c := connectTest(t, Options{})
	doc, err := testDomainXML("transient-" + randomSuffix()).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.Raw().DomainCreateXML(doc, 0)
	if err != nil {
		t.Fatal(err)
	}
	uuid, _ := raw.GetUUIDString()
	raw.Free()

	got, err := c.Lookup(ctx, uuid)
	if err != nil {
		t.Fatal(err)
	}
	if got.Persistent || got.State != StateRunning || got.ID == 0 {
		t.Fatalf("transient domain = %+v, want running, not persistent, with an id", got)
	}
	// Live only: a transient domain has no persistent config to write.
	if err := c.SetMetadata(ctx, uuid, StateNamespace, `<gate paused="true"/>`); err != nil {
		t.Fatalf("SetMetadata on a transient domain: %v", err)
	}
	if got, err := c.Metadata(ctx, uuid, StateNamespace); err != nil || got != `<gate paused="true"/>` {
		t.Fatalf("Metadata = %q, %v", got, err)
	}
	if err := c.Undefine(ctx, uuid); err != nil {
		t.Fatalf("Undefine of a transient domain: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := c.Destroy(ctx, uuid); err != nil {
			t.Fatalf("Destroy #%d of a transient domain: %v", i+1, err)
		}
	}
	if _, err := c.Lookup(ctx, uuid); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup of a destroyed transient domain: %v, want ErrNotFound", err)
	}
}

func TestMissingDomain(t *testing.T) {
	ctx := context.Background()
	c := connectTest(t, Options{})
	const missing = "6695eb01-f6a4-8304-79aa-97f2502e193f"

	notFound := map[string]error{}
	_, notFound["Lookup"] = c.Lookup(ctx, missing)
	_, notFound["DomainXML"] = c.DomainXML(ctx, missing, false)
	_, notFound["Metadata"] = c.Metadata(ctx, missing, BindingNamespace)
	notFound["SetMetadata"] = c.SetMetadata(ctx, missing, BindingNamespace, `<binding policy="x"/>`)
	notFound["Start"] = c.Start(ctx, missing)
	notFound["Suspend"] = c.Suspend(ctx, missing)
	notFound["Resume"] = c.Resume(ctx, missing)
	notFound["SetVCPUs"] = c.SetVCPUs(ctx, missing, 1)
	notFound["SetMemory"] = c.SetMemory(ctx, missing, 65536)
	_, _, notFound["CPUTime"] = c.CPUTime(ctx, missing)
	for op, err := range notFound {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", op, err)
			continue
		}
		var lerr libvirt.Error
		if !errors.As(err, &lerr) || lerr.Code != libvirt.ERR_NO_DOMAIN {
			t.Errorf("%s: %v does not keep the libvirt error", op, err)
		}
		if !strings.Contains(err.Error(), missing) {
			t.Errorf("%s: %q does not name the domain", op, err)
		}
	}
	for op, fn := range map[string]func(context.Context, string) error{"Destroy": c.Destroy, "Undefine": c.Undefine} {
		if err := fn(ctx, missing); err != nil {
			t.Errorf("%s of a missing domain: %v, want success", op, err)
		}
	}
}

func TestMetadata(t *testing.T) {
	ctx := context.Background()
	c := connectTest(t, Options{})

	tests := []struct {
		name    string
		running bool
	}{
		{"inactive", false},
		{"running", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := defineTest(t, c, "meta")
			if tt.running {
				if err := c.Start(ctx, d.UUID); err != nil {
					t.Fatal(err)
				}
			}
			values := map[string]string{
				BindingNamespace: `<binding policy="web"/>`,
				StateNamespace:   `<state owner="vsagent" gate="paused"/>`,
			}
			for ns := range values {
				if _, err := c.Metadata(ctx, d.UUID, ns); !errors.Is(err, ErrNoMetadata) {
					t.Fatalf("unset %s: %v, want ErrNoMetadata", ns, err)
				}
			}
			for ns, v := range values {
				if err := c.SetMetadata(ctx, d.UUID, ns, v); err != nil {
					t.Fatalf("SetMetadata %s: %v", ns, err)
				}
				ev := nextEvent(t, c, func(ev Event) bool { return ev.UUID == d.UUID && ev.Kind == EventMetadataChanged })
				if ev.Detail != ns {
					t.Errorf("metadata event detail %q, want %q", ev.Detail, ns)
				}
			}
			for ns, v := range values {
				if got, err := c.Metadata(ctx, d.UUID, ns); err != nil || got != v {
					t.Fatalf("Metadata %s = %q, %v; want %q", ns, got, err, v)
				}
			}
			if tt.running {
				// The value must be in the persistent definition too, or it
				// would be lost when the domain stops.
				if err := c.Destroy(ctx, d.UUID); err != nil {
					t.Fatal(err)
				}
				for ns, v := range values {
					if got, err := c.Metadata(ctx, d.UUID, ns); err != nil || got != v {
						t.Fatalf("after stop, Metadata %s = %q, %v; want %q", ns, got, err, v)
					}
				}
			}
			if err := c.SetMetadata(ctx, d.UUID, BindingNamespace, ""); err != nil {
				t.Fatalf("remove: %v", err)
			}
			if err := c.SetMetadata(ctx, d.UUID, BindingNamespace, ""); err != nil {
				t.Fatalf("remove again: %v", err)
			}
			if _, err := c.Metadata(ctx, d.UUID, BindingNamespace); !errors.Is(err, ErrNoMetadata) {
				t.Fatalf("removed binding: %v, want ErrNoMetadata", err)
			}
			if got, err := c.Metadata(ctx, d.UUID, StateNamespace); err != nil || got != values[StateNamespace] {
				t.Fatalf("removing the binding touched the state: %q, %v", got, err)
			}
		})
	}
}

func TestListLookupAndXML(t *testing.T) {
	ctx := context.Background()
	c := connectTest(t, Options{})
	d := defineTest(t, c, "list")
	if err := c.Start(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	doms, err := c.ListDomains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Domain{}
	for _, dom := range doms {
		byName[dom.Name] = dom
	}
	pre, ok := byName["preloaded"]
	if !ok || pre.UUID != "0b6a3f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b" || !pre.Persistent {
		t.Fatalf("preloaded domain = %+v (found %v)", pre, ok)
	}
	got, ok := byName[d.Name]
	if !ok || got.State != StateRunning || !got.Persistent || got.ID == 0 || got.UUID != d.UUID {
		t.Fatalf("started domain = %+v (found %v)", got, ok)
	}
	if d.State != StateShutoff || d.ID != 0 {
		t.Fatalf("Define returned %+v, want shut off with id 0", d)
	}
	if binding, err := c.Metadata(ctx, pre.UUID, BindingNamespace); err != nil || binding != `<binding policy="web"/>` {
		t.Fatalf("preloaded binding = %q, %v", binding, err)
	}

	x, err := c.DomainXML(ctx, d.UUID, false)
	if err != nil {
		t.Fatal(err)
	}
	if x.Name != d.Name || x.UUID != d.UUID || x.Memory == nil || x.Memory.Value != 65536 || x.ID == nil {
		t.Fatalf("live XML: name %q uuid %q memory %+v id %v", x.Name, x.UUID, x.Memory, x.ID)
	}
	inactive, err := c.DomainXML(ctx, d.UUID, true)
	if err != nil {
		t.Fatal(err)
	}
	if inactive.ID != nil {
		t.Fatalf("inactive XML has id %d", *inactive.ID)
	}
}

func TestScalingAndStats(t *testing.T) {
	ctx := context.Background()
	c := connectTest(t, Options{})
	d := defineTest(t, c, "scale")
	if err := c.Start(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	if err := c.SetVCPUs(ctx, d.UUID, 2); err != nil {
		t.Fatalf("SetVCPUs: %v", err)
	}
	if err := c.SetMemory(ctx, d.UUID, 32768); err != nil {
		t.Fatalf("SetMemory: %v", err)
	}
	used, vcpus, err := c.CPUTime(ctx, d.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if vcpus != 2 || used <= 0 {
		t.Fatalf("CPUTime = %v, %d vcpus; want >0 and 2", used, vcpus)
	}
	for _, inactive := range []bool{false, true} {
		x, err := c.DomainXML(ctx, d.UUID, inactive)
		if err != nil {
			t.Fatal(err)
		}
		if x.VCPU == nil || x.VCPU.Current != 2 && x.VCPU.Value != 2 {
			t.Errorf("inactive=%v: vcpu %+v, want 2 current", inactive, x.VCPU)
		}
		if x.CurrentMemory == nil || x.CurrentMemory.Value != 32768 {
			t.Errorf("inactive=%v: current memory %+v, want 32768", inactive, x.CurrentMemory)
		}
	}
	if err := c.Destroy(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	if err := c.SetVCPUs(ctx, d.UUID, 1); err != nil {
		t.Fatalf("SetVCPUs on an inactive domain: %v", err)
	}
}

func TestHostFacts(t *testing.T) {
	ctx := context.Background()
	c := connectTest(t, Options{})
	ni, err := c.NodeInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := NodeInfo{Model: "x86_64", CPUs: 4, MHz: 2400, MemoryKiB: 16777216, Sockets: 1, Cores: 4, Threads: 1}
	if diff := cmp.Diff(want, ni); diff != "" {
		t.Fatalf("NodeInfo (-want +got):\n%s", diff)
	}
	if h, err := c.Hostname(ctx); err != nil || h == "" {
		t.Fatalf("Hostname = %q, %v", h, err)
	}
	// The test driver has no host UUID; one derived from the URI stands in,
	// the same on every connection to the same node file.
	first, err := c.HostUUID(ctx)
	if err != nil || !canonicalUUID.MatchString(first) {
		t.Fatalf("HostUUID on the test driver = %q, %v", first, err)
	}
	again := connectTest(t, Options{})
	if second, err := again.HostUUID(ctx); err != nil || second != first {
		t.Fatalf("HostUUID on a second connection = %q, %v; want %q", second, err, first)
	}
	other, err := Connect(ctx, "test:///default", Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if u, err := other.HostUUID(ctx); err != nil || u == first {
		t.Fatalf("HostUUID of another test host = %q, %v; want one different from %q", u, err, first)
	}
}

func TestUUIDFromName(t *testing.T) {
	// Python's uuid.uuid5(uuid.NAMESPACE_URL, "test:///default").
	if got, want := uuidFromName("test:///default"), "9498de1b-b15d-5982-b648-277c3b0b64fa"; got != want {
		t.Fatalf("uuidFromName = %s, want %s", got, want)
	}
}

// A consumer that stops reading must not stall libvirt's event loop: events
// are dropped, counted, and a resync is owed and delivered once there is
// room, after which events flow again.
func TestFullEventBufferOwesResync(t *testing.T) {
	ctx := context.Background()
	c, err := Connect(ctx, testURI(t), Options{EventBuffer: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// The buffer holds the connect resync; every define event overflows it.
	const defines = 3
	for i := 0; i < defines; i++ {
		defineTest(t, c, "flood")
	}
	deadline := time.Now().Add(eventWait)
	for c.DroppedEvents() < defines {
		if time.Now().After(deadline) {
			t.Fatalf("dropped %d events, want %d", c.DroppedEvents(), defines)
		}
		time.Sleep(10 * time.Millisecond)
	}
	first := nextEvent(t, c, func(Event) bool { return true })
	second := nextEvent(t, c, func(Event) bool { return true })
	got := []kindDetail{{first.Kind, first.Detail}, {second.Kind, second.Detail}}
	want := []kindDetail{{EventResync, "connected"}, {EventResync, "events dropped"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("events after overflow (-want +got):\n%s", diff)
	}
	// Events flow again once the consumer keeps up. A drop racing with the
	// delivery above may owe one more resync, which can in turn cost the
	// next event, so allow a few rounds.
	for round := 0; round < 5; round++ {
		d := defineTest(t, c, "after")
		ev := nextEvent(t, c, func(ev Event) bool { return ev.UUID == d.UUID || ev.Kind == EventResync })
		if ev.UUID == d.UUID {
			if ev.Kind != EventDefined {
				t.Fatalf("event %+v, want defined", ev)
			}
			return
		}
	}
	t.Fatal("events never flowed again after the overflow")
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	c, err := Connect(ctx, testURI(t), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Connected() || c.Raw() == nil {
		t.Fatal("not connected after Connect")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	drained := 0
	for range c.Events() {
		drained++
	}
	if drained != 1 {
		t.Errorf("drained %d events after Close, want the connect resync only", drained)
	}
	if c.Connected() || c.Raw() != nil {
		t.Error("still connected after Close")
	}
	if _, err := c.ListDomains(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("ListDomains after Close: %v, want ErrClosed", err)
	}
}

func TestConnectFailsFast(t *testing.T) {
	tests := []struct {
		name string
		ctx  func() context.Context
		uri  string
	}{
		{"missing node file", context.Background, "test:///nonexistent/vsagent/node.xml"},
		{"unknown driver", context.Background, "nosuchdriver:///system"},
		{"cancelled", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, "test:///default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Connect(tt.ctx(), tt.uri, Options{Logger: testLogger(t)})
			if err == nil {
				c.Close()
				t.Fatal("Connect succeeded")
			}
			if !strings.Contains(err.Error(), tt.uri) {
				t.Errorf("error %q does not name the URI", err)
			}
		})
	}
}

func TestOperationsHonourContext(t *testing.T) {
	c := connectTest(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.ListDomains(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("ListDomains with a cancelled context: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	const lo, hi = 250 * time.Millisecond, 30 * time.Second
	tests := []struct {
		attempt  int
		u        float64
		min, max time.Duration
	}{
		{0, 0, lo / 2, lo / 2},
		{0, 0.999, lo / 2, lo},
		{1, 0, lo, lo},
		{3, 0.5, 6 * lo, 6 * lo},
		{20, 0, hi / 2, hi / 2},
		{1000, 0.999, hi / 2, hi},
	}
	for _, tt := range tests {
		got := backoff(tt.attempt, lo, hi, tt.u)
		if got < tt.min || got > tt.max {
			t.Errorf("backoff(%d, u=%v) = %v, want in [%v, %v]", tt.attempt, tt.u, got, tt.min, tt.max)
		}
	}
}
