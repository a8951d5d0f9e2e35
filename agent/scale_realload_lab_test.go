package agent

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/afpacket"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/netnsutil"
)

// TestRealLibvirtdScaleUnderRealLoad scales an appliance VM on a real
// libvirtd with nothing scripted: the autoscaler's default sampler reads
// the VM's CPU time from libvirt while the test floods the VM's tap with
// broadcast frames, which its software-emulated virtio-net and kernel must
// all take in. The sustained load starts a second appliance VM; when the
// flood stops, the load falls, the duplicate is drained and deleted, and
// the first one keeps running. Then, allowed a second vCPU, the same load
// hot-plugs one into the instance.
func TestRealLibvirtdScaleUnderRealLoad(t *testing.T) {
	lab := libvirtlab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const text = `
[scaling]
hold = "0s"
cooldown = "0s"
upper_cpu = 60
lower_cpu = 25
host_cpu_percent = 100
host_memory_percent = 100

[[appliance]]
name = "ips"
template = "appliance.xml"
vcpus = 1
max_vcpus = 1
memory = "128MiB"
max_memory = "160MiB"
max_instances = 2

[[policy]]
name = "web"
chain = ["ips"]
[policy.match]
domains = ["web-*"]
`
	h, conn, dir, d := startScaleLab(ctx, t, lab, text)
	ips := h.byName("vsa-ips-1")
	tap := tapOf(ctx, t, conn, ips.UUID)
	waitIdle(ctx, t, conn, ips)
	scaler := NewAutoscaler(h.agent, AutoscalerOptions{Hypervisor: conn})
	cpuOf := func(name string) string {
		for _, l := range scaler.Loads() {
			if l.Name == name && l.Sampled {
				return fmt.Sprintf("%.0f%%", l.CPU)
			}
		}
		return "-"
	}
	// pollUntil runs the autoscaler once a second, as its loop would with
	// poll_interval = "1s", until cond holds.
	pollUntil := func(what string, limit time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > limit {
				t.Fatalf("%s: not within %v; loads %+v; domains %s", what, limit, scaler.Loads(), h.describe())
			}
			if err := scaler.Step(ctx); err != nil {
				t.Fatalf("poll: %v", err)
			}
			t.Logf("poll: vsa-ips-1 CPU %s, vsa-ips-2 CPU %s", cpuOf("vsa-ips-1"), cpuOf("vsa-ips-2"))
			time.Sleep(time.Second)
		}
		return time.Since(start)
	}
	memory := func() uint {
		x, err := conn.DomainXML(ctx, ips.UUID, false)
		if err != nil {
			t.Fatal(err)
		}
		return x.CurrentMemory.Value
	}
	exists := func(name string) bool {
		for _, n := range h.domainNames() {
			if n == name {
				return true
			}
		}
		return false
	}

	// Idle first: the VM has booted and is judged below the upper
	// threshold, so nothing grows.
	pollUntil("vsa-ips-1 sampled", 30*time.Second, func() bool { return cpuOf("vsa-ips-1") != "-" })
	if h.hasScaleEvent(EventScaleUp) || exists("vsa-ips-2") {
		t.Fatalf("scaled while idle: %s", h.describe())
	}
	before := memory()

	stop := flood(t, filepath.Join("/var/run/netns", lab.NetNS), tap, 90*time.Second)
	took := pollUntil("a second appliance VM under load", 90*time.Second, func() bool {
		return exists("vsa-ips-2") && h.state(h.byName("vsa-ips-2").UUID) == hypervisor.StateRunning
	})
	sent := stop()
	t.Logf("under a flood of %d frames: a second VM running in %v", sent, took.Round(time.Second))
	// The lab image has no balloon driver, so the live figure may not move
	// with the request; the scale-up event is what the agent did.
	t.Logf("vsa-ips-1 live memory %d KiB before the load, %d KiB after", before, memory())
	if !h.hasScaleEvent(EventScaleOut) {
		t.Errorf("no %s event", EventScaleOut)
	}

	took = pollUntil("the duplicate drained and deleted once the load stopped", 120*time.Second, func() bool { return !exists("vsa-ips-2") })
	t.Logf("load gone: vsa-ips-2 drained and deleted in %v", took.Round(time.Second))
	if got := h.state(ips.UUID); got != hypervisor.StateRunning {
		t.Errorf("vsa-ips-1 is %s after the scale-in, want running", got)
	}
	for _, kind := range []EventKind{EventScaleDrain, EventScaleIn} {
		if !h.hasScaleEvent(kind) {
			t.Errorf("no %s event", kind)
		}
	}

	// Growing in place: with room for a second vCPU (and no second
	// instance, which the two-CPU host's budget could not hold next to
	// it), the same load hot-plugs a vCPU. A domain keeps the maxima it
	// was defined with, so the guest goes and comes back with a new
	// vsa-ips-1 defined for two.
	if err := conn.Destroy(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	h.eventually("vsa-ips-1 deleted with its last guest", func() bool { _, err := conn.Lookup(ctx, ips.UUID); return err != nil })
	cfg2, err := config.Parse("vsagent.toml", []byte(strings.NewReplacer("max_vcpus = 1", "max_vcpus = 2", "max_instances = 2", "max_instances = 1").Replace(text)), dir)
	if err != nil {
		t.Fatal(err)
	}
	h.agent.SetConfig(cfg2)
	if err := conn.Start(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	h.eventually("web-1 inspected again", func() bool { return h.guestState("web-1") == GuestInspected && h.agent.Settled() })
	ips = h.byName("vsa-ips-1")
	tap = tapOf(ctx, t, conn, ips.UUID)
	waitIdle(ctx, t, conn, ips)
	scaler = NewAutoscaler(h.agent, AutoscalerOptions{Hypervisor: conn})
	pollUntil("vsa-ips-1 sampled again", 30*time.Second, func() bool { return cpuOf("vsa-ips-1") != "-" })
	stop = flood(t, filepath.Join("/var/run/netns", lab.NetNS), tap, 90*time.Second)
	took = pollUntil("a second vCPU under load", 90*time.Second, func() bool {
		x, err := conn.DomainXML(ctx, ips.UUID, false)
		if err != nil || x.VCPU == nil {
			return false
		}
		v := x.VCPU.Value
		if x.VCPU.Current > 0 {
			v = x.VCPU.Current
		}
		return v == 2
	})
	t.Logf("under a flood of %d frames: vsa-ips-1 got its second vCPU in %v", stop(), took.Round(time.Second))
	if !h.hasScaleEvent(EventScaleUp) {
		t.Errorf("no %s event", EventScaleUp)
	}
}

// tapOf is the host netdev of a running domain's first interface.
func tapOf(ctx context.Context, t *testing.T, conn *hypervisor.Conn, uuid string) string {
	t.Helper()
	x, err := conn.DomainXML(ctx, uuid, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Devices.Interfaces) == 0 || x.Devices.Interfaces[0].Target == nil {
		t.Fatalf("domain %s has no tap: %+v", uuid, x.Devices.Interfaces)
	}
	return x.Devices.Interfaces[0].Target.Dev
}

// waitIdle waits, with a sampler of the test's own, until an appliance VM
// idles: it takes all the CPU it gets while it boots under emulation.
func waitIdle(ctx context.Context, t *testing.T, conn *hypervisor.Conn, d hypervisor.Domain) {
	t.Helper()
	idle := newLoadSampler(conn, time.Now)
	inst := []Instance{{Appliance: "ips", Index: 1, UUID: d.UUID, Name: d.Name}}
	idle.SampleLoad(ctx, inst)
	for start := time.Now(); ; {
		time.Sleep(time.Second)
		l := idle.SampleLoad(ctx, inst)[d.Name]
		if l.Sampled && l.CPU < 20 {
			t.Logf("%s idle after %v: %.0f%% CPU", d.Name, time.Since(start).Round(time.Second), l.CPU)
			return
		}
		if time.Since(start) > 90*time.Second {
			t.Fatalf("%s never idled: %.0f%% CPU", d.Name, l.CPU)
		}
	}
}

// flood writes broadcast UDP frames into tap, in the network namespace at
// netnsPath, to the VM behind it, until the returned stop is called or
// limit passes; stop returns how many it sent.
func flood(t *testing.T, netnsPath, tap string, limit time.Duration) (stop func() uint64) {
	t.Helper()
	var s *afpacket.Socket
	err := netnsutil.Do(netnsPath, func() error {
		var err error
		s, err = afpacket.Open(afpacket.Config{Iface: tap, TxOnly: true})
		return err
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", tap, err)
	}
	frame := make([]byte, 60)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0x10, 0xad, 1, 0x08, 0x00})
	ip := frame[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17 // IPv4, TTL, UDP
	binary.BigEndian.PutUint16(ip[2:], 46)
	copy(ip[12:], []byte{10, 77, 0, 1, 255, 255, 255, 255})
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum+sum>>16))
	binary.BigEndian.PutUint16(ip[20:], 4000)
	binary.BigEndian.PutUint16(ip[22:], 9) // discard
	binary.BigEndian.PutUint16(ip[24:], 26)
	bodies := make([][]byte, 32)
	for i := range bodies {
		bodies[i] = frame
	}
	heads := make([][]byte, len(bodies))
	done := make(chan struct{})
	var wg sync.WaitGroup
	var sent uint64
	wg.Add(1)
	go func() {
		defer wg.Done()
		deadline := time.Now().Add(limit)
		for time.Now().Before(deadline) {
			select {
			case <-done:
				return
			default:
			}
			n, _ := s.WriteBatch(heads, bodies) // a full queue only slows the flood
			sent += uint64(n)
		}
	}()
	var once sync.Once
	stop = func() uint64 {
		once.Do(func() { close(done); wg.Wait(); s.Close() })
		return sent
	}
	t.Cleanup(func() { stop() })
	return stop
}
