package hypervisor

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vsagent/vsagent/internal/libvirtlab"
)

// TestRealDaemonReconnect drives a real libvirtd with real TCG guests:
// events from QEMU, metadata in live and persistent config, and above all a
// libvirtd killed and restarted under an open Conn, after which the Conn must
// be back by itself and events must flow again, for old and new domains.
func TestRealDaemonReconnect(t *testing.T) {
	lab := libvirtlab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img, err := libvirtlab.GuestImage(ctx, "")
	if err != nil {
		t.Fatalf("guest image: %v", err)
	}
	c, err := Connect(ctx, lab.URI(), Options{
		Logger:     testLogger(t),
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if ev := nextEvent(t, c, func(Event) bool { return true }); ev.Kind != EventResync {
		t.Fatalf("first event %+v, want resync", ev)
	}

	if got, err := c.HostUUID(ctx); err != nil || got != lab.HostUUID {
		t.Fatalf("HostUUID = %q, %v; want the lab's %q", got, err, lab.HostUUID)
	}
	if got, err := c.Hostname(ctx); err != nil || got != lab.Name {
		t.Fatalf("Hostname = %q, %v; want %q", got, err, lab.Name)
	}

	const guestIP, hostIP = "10.77.0.2", "10.77.0.1"
	a := defineGuest(t, c, lab, img, "guest-a", libvirtlab.GuestInterface{Target: "vsgtap0", Address: guestIP + "/24"})
	if err := c.Start(ctx, a.UUID); err != nil {
		t.Fatalf("start: %v", err)
	}
	// QEMU runs the vCPUs before libvirt reports STARTED (see LAB.md).
	expectLifecycle(t, c, a.UUID, kindDetail{EventResumed, "unpaused"}, kindDetail{EventStarted, "booted"})

	const binding = `<binding policy="web"/>`
	if err := c.SetMetadata(ctx, a.UUID, BindingNamespace, binding); err != nil {
		t.Fatalf("SetMetadata on a running guest: %v", err)
	}
	persistent, err := c.DomainXML(ctx, a.UUID, true)
	if err != nil {
		t.Fatal(err)
	}
	if persistent.Metadata == nil || !strings.Contains(persistent.Metadata.XML, `policy="web"`) {
		t.Fatalf("binding missing from the persistent definition: %+v", persistent.Metadata)
	}

	if err := c.Suspend(ctx, a.UUID); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx, a.UUID); err != nil {
		t.Fatal(err)
	}
	expectLifecycle(t, c, a.UUID, kindDetail{EventSuspended, "paused"}, kindDetail{EventResumed, "unpaused"})

	if _, err := lab.Exec(ctx, "ip", "addr", "add", hostIP+"/24", "dev", "vsgtap0"); err != nil {
		t.Fatal(err)
	}
	pingGuest(ctx, t, lab, guestIP)

	if err := lab.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListDomains(ctx); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("ListDomains with libvirtd dead: %v, want ErrDisconnected", err)
	}
	if err := lab.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	resync := nextEvent(t, c, func(ev Event) bool { return ev.Kind == EventResync })
	if resync.Detail != "reconnected" || c.Reconnects() < 1 || !c.Connected() {
		t.Fatalf("after restart: event %+v, %d reconnects, connected %v", resync, c.Reconnects(), c.Connected())
	}

	// The guest kept running through the outage and keeps its binding.
	got, err := c.Lookup(ctx, a.UUID)
	if err != nil || got.State != StateRunning {
		t.Fatalf("guest after restart: %+v, %v", got, err)
	}
	if m, err := c.Metadata(ctx, a.UUID, BindingNamespace); err != nil || m != binding {
		t.Fatalf("binding after restart = %q, %v", m, err)
	}
	// Events flow again on the new connection, for a domain that existed
	// before and for one defined after the restart.
	if err := c.Suspend(ctx, a.UUID); err != nil {
		t.Fatal(err)
	}
	expectLifecycle(t, c, a.UUID, kindDetail{EventSuspended, "paused"})
	b := defineGuest(t, c, lab, img, "guest-b")
	if err := c.Start(ctx, b.UUID); err != nil {
		t.Fatal(err)
	}
	expectLifecycle(t, c, b.UUID, kindDetail{EventResumed, "unpaused"}, kindDetail{EventStarted, "booted"})
	if err := c.Destroy(ctx, b.UUID); err != nil {
		t.Fatal(err)
	}
	if err := c.Undefine(ctx, b.UUID); err != nil {
		t.Fatal(err)
	}
	expectLifecycle(t, c, b.UUID, kindDetail{EventStopped, "destroyed"}, kindDetail{EventUndefined, "removed"})
}

func defineGuest(t *testing.T, c *Conn, lab *libvirtlab.Lab, img libvirtlab.Image, name string, nics ...libvirtlab.GuestInterface) Domain {
	t.Helper()
	x, err := libvirtlab.GuestDomain(name, img, libvirtlab.GuestOptions{
		ConsoleLog: filepath.Join(lab.Dir, name+".console"),
		Interfaces: nics,
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.Define(context.Background(), x)
	if err != nil {
		t.Fatalf("define %s: %v", name, err)
	}
	expectLifecycle(t, c, d.UUID, kindDetail{EventDefined, "added"})
	return d
}

// pingGuest waits for the booting guest to answer; the loop is bounded.
func pingGuest(ctx context.Context, t *testing.T, lab *libvirtlab.Lab, ip string) {
	t.Helper()
	var err error
	for attempt := 0; attempt < 90; attempt++ {
		if _, err = lab.Exec(ctx, "busybox", "ping", "-c", "1", "-W", "1", ip); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("guest %s never answered: %v", ip, err)
}

// A daemon that hangs without closing its socket is only noticed through
// keepalive, which works only with the event loop running.
func TestKeepaliveDetectsHungDaemon(t *testing.T) {
	lab := libvirtlab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Connect(ctx, lab.URI(), Options{
		Logger:            testLogger(t),
		MinBackoff:        20 * time.Millisecond,
		MaxBackoff:        200 * time.Millisecond,
		KeepaliveInterval: 1,
		KeepaliveCount:    2,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	nextEvent(t, c, func(ev Event) bool { return ev.Kind == EventResync })

	if err := lab.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Signal(syscall.SIGCONT) })
	// The call hangs until keepalive gives up on the daemon.
	if _, err := c.ListDomains(ctx); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("ListDomains on a hung daemon: %v, want ErrDisconnected", err)
	}
	if err := lab.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resync := nextEvent(t, c, func(ev Event) bool { return ev.Kind == EventResync })
	if resync.Detail != "reconnected" || c.Reconnects() != 1 {
		t.Fatalf("after the daemon recovered: %+v, %d reconnects", resync, c.Reconnects())
	}
	if _, err := c.ListDomains(ctx); err != nil {
		t.Fatalf("ListDomains after reconnect: %v", err)
	}
}
