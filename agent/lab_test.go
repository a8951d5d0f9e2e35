package agent

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/libvirtlab"
)

// TestRealLibvirtdGateAndReconnect runs the agent against a private libvirtd
// with real QEMU (TCG) guests: a started guest is paused, its appliance
// domain is defined from a template and boots, and the guest is resumed;
// then libvirtd is killed and restarted under the running agent, which must
// reconnect by itself and still gate the next guest.
func TestRealLibvirtdGateAndReconnect(t *testing.T) {
	lab := libvirtlab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// One template serves both appliances: the tiny lab image, one NIC.
	dir := t.TempDir()
	img := writeLabTemplate(ctx, t, dir, nil)
	cfg, err := config.Parse("vsagent.toml", []byte(`
[[appliance]]
name = "fw"
template = "appliance.xml"
memory = "128MiB"

[[appliance]]
name = "ips"
template = "appliance.xml"
memory = "128MiB"

[[policy]]
name = "web"
chain = ["fw"]
[policy.match]
domains = ["web-*"]

[[policy]]
name = "db"
chain = ["ips"]
[policy.match]
domains = ["db-*"]
`), dir)
	if err != nil {
		t.Fatal(err)
	}

	conn, err := hypervisor.Connect(ctx, lab.URI(), hypervisor.Options{Logger: quietLogger(), MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h := &harness{t: t, conn: conn, hv: &recordingHV{Conn: conn}, dir: dir}
	h.start(cfg)
	h.hv.takeCalls()

	boot := func(name string) string {
		t.Helper()
		dom, err := libvirtlab.GuestDomain(name, img, libvirtlab.GuestOptions{
			Interfaces: []libvirtlab.GuestInterface{{Type: "ethernet"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		d, err := conn.Define(ctx, dom)
		if err != nil {
			t.Fatalf("define %s: %v", name, err)
		}
		if err := conn.Start(ctx, d.UUID); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		return d.UUID
	}

	web := boot("web-1")
	h.eventually("web-1 inspected and running", func() bool {
		return h.guestState("web-1") == GuestInspected && h.state(web) == hypervisor.StateRunning
	})
	want := []string{"gate web-1", "suspend web-1", "define vsa-fw-1", "start vsa-fw-1", "resume web-1", "ungate web-1"}
	if got := h.hv.takeCalls(); !slices.Equal(got, want) {
		t.Errorf("calls for web-1 = %v, want %v", got, want)
	}
	if got := h.byName("vsa-fw-1").State; got != hypervisor.StateRunning {
		t.Errorf("vsa-fw-1 is %s, want running", got)
	}

	// libvirtd dies and comes back; the agent must notice on its own.
	before := conn.Reconnects()
	if err := lab.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := lab.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	h.eventually("the connection is back", func() bool { return conn.Reconnects() > before && conn.Connected() })

	db := boot("db-1")
	h.eventually("db-1 inspected and running", func() bool {
		return h.guestState("db-1") == GuestInspected && h.state(db) == hypervisor.StateRunning
	})
	calls := h.hv.takeCalls()
	for _, c := range []string{"gate db-1", "suspend db-1", "define vsa-ips-1", "start vsa-ips-1", "resume db-1", "ungate db-1"} {
		if !slices.Contains(calls, c) {
			t.Errorf("after the libvirtd restart, %q missing from %v", c, calls)
		}
	}
	if slices.Contains(calls, "suspend web-1") {
		t.Errorf("the resync after reconnect paused web-1 although its appliance runs: %v", calls)
	}
	if got := h.state(web); got != hypervisor.StateRunning {
		t.Errorf("web-1 is %s after the reconnect, want running", got)
	}
}
