package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/libvirtlab"
)

// TestRealLibvirtdScaleUpOutAndIn runs the autoscaler against a private
// libvirtd with real QEMU (TCG) appliance VMs: the default sampler gets CPU
// figures from a running VM; then, under a load the test sets, vsa-ips-1
// gets more memory live, a second appliance VM is defined and boots, and
// when the load stops that one is drained and deleted; an instance that
// may have two vCPUs gets its second live, and the host budget (from the
// real node info) then refuses another VM. (A vCPU unplug needs the
// guest's cooperation, which the tiny lab image does not give, so
// shrinking is left to the test-driver tests.)
func TestRealLibvirtdScaleUpOutAndIn(t *testing.T) {
	lab := libvirtlab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const text = `
[scaling]
hold = "0s"
cooldown = "0s"
host_cpu_percent = 100
host_memory_percent = 100

[[appliance]]
name = "ips"
template = "appliance.xml"
vcpus = 1
max_vcpus = 1
memory = "128MiB"
max_memory = "192MiB"
max_instances = 2

[[policy]]
name = "web"
chain = ["ips"]
[policy.match]
domains = ["web-*"]
`
	h, conn, dir, d := startScaleLab(ctx, t, lab, text)
	ips := h.byName("vsa-ips-1")

	// The default sampler on a real VM: two readings make a figure.
	sampler := newLoadSampler(conn, time.Now)
	inst := []Instance{{Appliance: "ips", Index: 1, UUID: ips.UUID, Name: ips.Name}}
	sampler.SampleLoad(ctx, inst)
	time.Sleep(500 * time.Millisecond)
	real := sampler.SampleLoad(ctx, inst)["vsa-ips-1"]
	if !real.Sampled || real.CPU < 0 || real.CPU > 100 {
		t.Errorf("CPU of a running VM: %+v, want a sampled figure within 0..100", real)
	}
	t.Logf("vsa-ips-1 while booting: %.1f%% CPU", real.CPU)

	load := &scriptedLoad{}
	scaler := NewAutoscaler(h.agent, AutoscalerOptions{Hypervisor: conn, Sampler: load})
	poll := func(cpu float64) {
		t.Helper()
		load.set(cpu, nil)
		if err := scaler.Step(ctx); err != nil {
			t.Fatalf("poll at %v%%: %v", cpu, err)
		}
	}
	size := func(name string) (uint, uint) {
		x, err := conn.DomainXML(ctx, h.byName(name).UUID, false)
		if err != nil {
			t.Fatal(err)
		}
		v := x.VCPU.Value
		if x.VCPU.Current > 0 {
			v = x.VCPU.Current
		}
		return v, x.CurrentMemory.Value
	}

	// The lab host has 2 CPUs, so the budget (100 %) holds two vCPUs of
	// appliances: first memory grows, then a second one-vCPU VM comes.
	poll(95)
	if v, m := size("vsa-ips-1"); v != 1 || m != 192<<10 {
		t.Fatalf("after scale-up vsa-ips-1 has %d vCPUs, %d KiB live; want 1, %d", v, m, 192<<10)
	}
	poll(95)
	h.eventually("vsa-ips-2 running", func() bool { return h.state(h.byName("vsa-ips-2").UUID) == hypervisor.StateRunning })
	second := h.byName("vsa-ips-2").UUID

	poll(5)  // drain the duplicate
	poll(50) // no flows: delete it
	if _, err := conn.Lookup(ctx, second); err == nil {
		t.Fatalf("vsa-ips-2 still defined after the drain: %s", h.describe())
	}
	if got := h.state(ips.UUID); got != hypervisor.StateRunning {
		t.Errorf("vsa-ips-1 is %s after the scale-in, want running", got)
	}

	// A vCPU hot-plug: the guest goes (and vsa-ips-1 with it), the
	// configuration allows two vCPUs, the guest comes back with a new
	// vsa-ips-1 defined for up to two, which gets its second vCPU live.
	// After that the budget is full, and a second VM is refused.
	if err := conn.Destroy(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	h.eventually("vsa-ips-1 deleted with its last guest", func() bool { _, err := conn.Lookup(ctx, ips.UUID); return err != nil })
	cfg2, err := config.Parse("vsagent.toml", []byte(strings.Replace(text, "max_vcpus = 1", "max_vcpus = 2", 1)), dir)
	if err != nil {
		t.Fatal(err)
	}
	h.agent.SetConfig(cfg2)
	if err := conn.Start(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	h.eventually("web-1 inspected again", func() bool { return h.guestState("web-1") == GuestInspected && h.agent.Settled() })
	poll(95)
	if v, m := size("vsa-ips-1"); v != 2 || m != 192<<10 {
		t.Fatalf("after scale-up the new vsa-ips-1 has %d vCPUs, %d KiB live; want 2, %d", v, m, 192<<10)
	}
	poll(95)
	if !h.hasScaleEvent(EventBudgetExceeded) {
		t.Errorf("no budget-exceeded event with the host's 2 CPUs in use; domains %s", h.describe())
	}
	if got := h.domainNames(); !slices.Equal(got, []string{"vsa-ips-1", "web-1"}) {
		t.Errorf("domains %v: a VM was added past the budget", got)
	}
}

// writeLabTemplate writes dir/appliance.xml: the tiny lab image with one
// NIC, as edit leaves it. It returns the image for guests.
func writeLabTemplate(ctx context.Context, t *testing.T, dir string, edit func(*libvirtxml.Domain)) libvirtlab.Image {
	t.Helper()
	img, err := libvirtlab.GuestImage(ctx, "")
	if err != nil {
		t.Fatalf("guest image: %v", err)
	}
	tmpl, err := libvirtlab.GuestDomain("template", img, libvirtlab.GuestOptions{
		Interfaces: []libvirtlab.GuestInterface{{Type: "ethernet"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(tmpl)
	}
	tmplXML, err := tmpl.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "appliance.xml"), []byte(tmplXML), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

func (h *harness) hasScaleEvent(kind EventKind) bool {
	evs, _ := h.agent.Events(0)
	return slices.ContainsFunc(evs, func(e Event) bool { return e.Kind == kind })
}

// startScaleLab starts the agent on the lab's libvirtd with the
// configuration text, whose appliances use the tiny lab image with a
// balloon (live memory changes go through it), and starts web-1, which
// the configuration's policy must cover; it returns once web-1 is
// inspected.
func startScaleLab(ctx context.Context, t *testing.T, lab *libvirtlab.Lab, text string) (*harness, *hypervisor.Conn, string, hypervisor.Domain) {
	t.Helper()
	dir := t.TempDir()
	img := writeLabTemplate(ctx, t, dir, func(tmpl *libvirtxml.Domain) {
		tmpl.Devices.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "virtio"}
	})
	cfg, err := config.Parse("vsagent.toml", []byte(text), dir)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := hypervisor.Connect(ctx, lab.URI(), hypervisor.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h := &harness{t: t, conn: conn, hv: &recordingHV{Conn: conn}, dir: dir}
	h.start(cfg)
	guest, err := libvirtlab.GuestDomain("web-1", img, libvirtlab.GuestOptions{Interfaces: []libvirtlab.GuestInterface{{Type: "ethernet"}}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := conn.Define(ctx, guest)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Start(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	h.eventually("web-1 inspected", func() bool { return h.guestState("web-1") == GuestInspected })
	return h, conn, dir, d
}
