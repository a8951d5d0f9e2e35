package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdlayher/packet"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/hookapi"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
	"github.com/vsagent/vsagent/sourceroute"
)

// withheldEvents hands the agent libvirt's events only once release is
// closed: an agent too busy to react to STARTED, which is exactly when the
// window at start would be open without the hook.
type withheldEvents struct {
	*hypervisor.Conn
	out     chan hypervisor.Event
	release chan struct{}
}

func withholdEvents(ctx context.Context, c *hypervisor.Conn) *withheldEvents {
	w := &withheldEvents{Conn: c, out: make(chan hypervisor.Event), release: make(chan struct{})}
	go func() {
		var held []hypervisor.Event
		in := c.Events()
		for {
			select {
			case e, ok := <-in:
				if !ok {
					return
				}
				held = append(held, e)
			case <-w.release:
				for _, e := range held {
					select {
					case w.out <- e:
					case <-ctx.Done():
						return
					}
				}
				for {
					select {
					case e, ok := <-in:
						if !ok {
							return
						}
						select {
						case w.out <- e:
						case <-ctx.Done():
							return
						}
					case <-ctx.Done():
						return
					}
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return w
}

func (w *withheldEvents) Events() <-chan hypervisor.Event { return w.out }

// frameCounter counts, on a link of the destination, the frames a guest's
// MAC sends: ICMP echo requests, TCP segments to denyPort, and the rest.
type frameCounter struct {
	echo, denied, other atomic.Uint64
}

func (c *frameCounter) all() uint64 { return c.echo.Load() + c.denied.Load() + c.other.Load() }

func (c *frameCounter) String() string {
	return fmt.Sprintf("echo=%d tcp-denied=%d other=%d", c.echo.Load(), c.denied.Load(), c.other.Load())
}

func countFrames(t *testing.T, ns *netnstest.NS, iface string, from net.HardwareAddr, denyPort uint16) *frameCounter {
	var conn *packet.Conn
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Raw, 0x0003, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c := &frameCounter{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			f := buf[:n]
			if n < 14 || !bytes.Equal(f[6:12], from) {
				continue
			}
			switch {
			case n >= 34+4 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 6 &&
				binary.BigEndian.Uint16(f[14+int(f[14]&0xf)*4+2:]) == denyPort:
				c.denied.Add(1)
			case n >= 35 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 1 && f[14+int(f[14]&0xf)*4] == 8:
				c.echo.Add(1)
			default:
				c.other.Add(1)
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		wg.Wait()
	})
	return c
}

// hostIP runs ip(8) in the test's own namespaces.
func hostIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestHookHoldsGuestBeforeItsVCPUsRun starts a real QEMU guest on a private
// libvirtd whose qemu hook is vsagent-hook, while the agent is kept from
// seeing libvirt's events. The guest boots and sends pings and TCP SYNs to a
// peer on its bridge from its init; the start hook's hold must drop every
// one of them. Once the agent sees the events it attaches the chain, whose
// appliance allows the pings and denies the SYNs: at the peer, pings
// arrive, no SYN ever does, and nothing from the guest arrives that the
// appliance did not forward.
func TestHookHoldsGuestBeforeItsVCPUsRun(t *testing.T) {
	startWindow(t, true)
}

// TestStartWindowWithoutHook is the control: the same guest on a libvirtd
// without the hook reaches the peer, uninspected, while the agent has not
// reacted to STARTED. It shows that the window is real and that the test
// above would see a frame that slipped through.
func TestStartWindowWithoutHook(t *testing.T) {
	startWindow(t, false)
}

func startWindow(t *testing.T, withHook bool) {
	netnstest.RequireRoot(t)
	if err := libvirtlab.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()

	hookBin := filepath.Join(dir, "vsagent-hook")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", hookBin, "../cmd/vsagent-hook").CombinedOutput(); err != nil {
		t.Fatalf("build the hook client: %v\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "vsagent.toml")
	var hooks map[string]string
	if withHook {
		hooks = map[string]string{"qemu": "#!/bin/sh\nVSAGENT_CONFIG=" + cfgPath + " exec " + hookBin + " \"$@\"\n"}
	}
	lab := libvirtlab.NewWith(t, libvirtlab.Options{Hooks: hooks})
	labPath := filepath.Join("/var/run/netns", lab.NetNS)
	img, err := libvirtlab.GuestImage(ctx, "")
	if err != nil {
		t.Fatal(err)
	}

	// The lab host: a bridge with the guest's tap and the peer, and a link
	// to the namespace where the appliance's filter runs.
	if _, err := lab.Exec(ctx, "sh", "-c", "ip link add br0 type bridge && ip link set br0 up"); err != nil {
		t.Fatal(err)
	}
	peer, fwNS := netnstest.New(t), netnstest.New(t)
	peer.QuietIPv6(t)
	fwNS.QuietIPv6(t)
	peerMAC := net.HardwareAddr{0x52, 0x54, 0, 0x77, 0x09, 0x09}
	guestMAC := net.HardwareAddr{0x52, 0x54, 0, 0x77, 0x01, 0x01}
	peerLink, fwLink := netnstest.UniqueName("p"), netnstest.UniqueName("a")
	hostIP(t, "-n", lab.NetNS, "link", "add", peerLink, "type", "veth", "peer", "name", "eth0", "address", peerMAC.String(), "netns", peer.Name())
	hostIP(t, "-n", lab.NetNS, "link", "set", peerLink, "master", "br0", "up")
	hostIP(t, "-n", peer.Name(), "addr", "add", "10.77.0.9/24", "dev", "eth0")
	hostIP(t, "-n", peer.Name(), "link", "set", "eth0", "up")
	hostIP(t, "-n", lab.NetNS, "link", "add", fwLink, "mtu", "1600", "type", "veth", "peer", "name", "eth0", "mtu", "1600", "netns", fwNS.Name())
	hostIP(t, "-n", lab.NetNS, "link", "set", fwLink, "up")
	hostIP(t, "-n", fwNS.Name(), "link", "set", "eth0", "up")
	const denyPort = 7002
	atPeer := countFrames(t, peer, "eth0", guestMAC, denyPort)

	tmpl, err := libvirtlab.GuestDomain("template", img, libvirtlab.GuestOptions{Interfaces: []libvirtlab.GuestInterface{{Type: "ethernet"}}})
	if err != nil {
		t.Fatal(err)
	}
	tmplXML, err := tmpl.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "appliance.xml"), []byte(tmplXML), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgText := fmt.Sprintf(`
[agent]
socket = %q
hook_failure = "closed"

[intercept]
uplink = %q

[dataplane]
return_timeout = "300ms"

[[appliance]]
name = "fw"
template = "appliance.xml"
memory = "128MiB"

[[policy]]
name = "web"
chain = ["fw"]
[policy.match]
domains = ["web-*"]
`, filepath.Join(dir, "vsagent.sock"), peerLink)
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}

	conn, err := hypervisor.Connect(ctx, lab.URI(), hypervisor.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	runCtx, stopRun := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		stopRun()
		wg.Wait()
	})
	hv := withholdEvents(runCtx, conn)

	redirectTo, readOn, err := EnsureDMPort(labPath, "vsa-dm0")
	if err != nil {
		t.Fatal(err)
	}
	backend, err := intercept.New(intercept.BackendTCRedirect, intercept.Deps{NetNS: labPath, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	open, openTx := PacketPorts(labPath)
	var ag *Agent
	dm, err := NewDistributionManager(DMConfig{
		Config: cfg, HostID: lab.HostUUID, Backend: backend, Domains: conn,
		ApplianceLinks: func(context.Context, Instance) ([]string, error) { return []string{fwLink}, nil },
		RedirectPort:   redirectTo, InterceptPort: readOn, Open: open, OpenTx: openTx, Logger: quietLogger(),
		OnEvent: func(e sourceroute.Event) { ag.RecordDataplaneEvent(e) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ag = New(hv, cfg, Options{Logger: quietLogger(), Dataplane: dm, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
	ln, err := net.Listen("unix", cfg.Agent.HookSocket())
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range []func() error{
		func() error { return dm.Run(runCtx) },
		func() error { return ag.Run(runCtx) },
		func() error { return hookapi.Serve(runCtx, ln, hookapi.NewHandler(ag), quietLogger()) },
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(); err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("agent component stopped: %v", err)
			}
		}()
	}
	<-ag.Ready()

	// The guest pings the peer and opens TCP connections to denyPort from
	// its init, as soon as its interface has an address.
	console := filepath.Join(dir, "web-1.console")
	guest, err := libvirtlab.GuestDomain("web-1", img, libvirtlab.GuestOptions{
		ConsoleLog: console,
		Interfaces: []libvirtlab.GuestInterface{{Type: "bridge", Source: "br0", Target: netnstest.UniqueName("t"), MAC: guestMAC.String(), Address: "10.77.0.2/24"}},
		Cmdline: libvirtlab.GuestRun(fmt.Sprintf(`ip neigh replace 10.77.0.9 lladdr %s dev eth0
i=0
while [ $i -lt 2000 ]; do
	i=$((i+1))
	ping -c 1 -W 1 10.77.0.9 >/dev/null 2>&1 &
	nc -w 1 10.77.0.9 %d </dev/null >/dev/null 2>&1 &
	echo "hooktest-sent $i"
	sleep 0.2
done
`, peerMAC, denyPort)),
	})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := conn.Define(ctx, guest)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Start(ctx, dom.UUID); err != nil {
		t.Fatalf("start web-1 (the hook must allow it): %v", err)
	}
	sent := func(n int) func() bool {
		return func() bool {
			b, _ := os.ReadFile(console)
			// The serial console ends lines with CR LF.
			return bytes.Contains(b, fmt.Appendf(nil, "hooktest-sent %d\r", n))
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("console of web-1 (last 4 KiB):\n%s", b[max(0, len(b)-4096):])
		}
	})
	bootCtx, bootCancel := context.WithTimeout(ctx, 2*time.Minute)
	defer bootCancel()
	waitFor(t, bootCtx, "the guest to boot and send", sent(15))

	// Phase 1: the agent has not reacted to STARTED; only the hook's hold
	// stands between the running guest and the peer.
	if st, err := conn.Lookup(ctx, dom.UUID); err != nil || st.State != hypervisor.StateRunning {
		t.Fatalf("web-1 is %v (%v), want running: the agent must not have gated it yet", st.State, err)
	}
	if !withHook {
		if atPeer.denied.Load() == 0 {
			t.Fatalf("without the hook nothing of web-1 reached the peer (%s): the test cannot see the window", atPeer)
		}
		t.Logf("without the hook, at the peer before the agent reacted: %s", atPeer)
		return
	}
	if !hasEventFor(ag, EventHookHeld, "web-1") {
		t.Fatal("no hook-held event for web-1")
	}
	if n := atPeer.all(); n != 0 {
		t.Fatalf("%d frames of web-1 reached the peer before its chain existed (%s)", n, atPeer)
	}
	drops := dm.Engine().Counters().Drops
	heldDrops := drops["chain_not_ready"]
	t.Logf("DM drops while held: %v", drops)
	if heldDrops == 0 {
		t.Fatalf("the DM dropped nothing of the held guest; counters %+v", dm.Engine().Counters())
	}

	// Phase 2: the appliance the prepare hook provisioned gets its filter,
	// and the agent sees the events and attaches the chain.
	var fwMAC string
	waitFor(t, ctx, "the fw appliance provisioned at prepare", func() bool {
		for _, a := range ag.Appliances() {
			if a.Appliance == "fw" && len(a.MACs) > 0 {
				fwMAC = a.MACs[0]
				return true
			}
		}
		return false
	})
	hostIP(t, "-n", fwNS.Name(), "link", "set", "dev", "eth0", "address", fwMAC)
	bin := vsafiltertest.Build(t, "..")
	fw := vsafiltertest.Start(t, ctx, fwNS, bin, "fw", "eth0", fmt.Sprintf(
		"[output]\nstats_interval = \"0s\"\n[[rule]]\nname = \"no-%d\"\naction = \"deny\"\nproto = \"tcp\"\ndport = %d\n", denyPort, denyPort))
	close(hv.release)
	waitFor(t, ctx, "web-1 inspected", func() bool {
		for _, g := range ag.Guests() {
			if g.Name == "web-1" {
				return g.State == GuestInspected
			}
		}
		return false
	})
	waitFor(t, ctx, "pings through the chain at the peer", func() bool { return atPeer.echo.Load() >= 5 })
	n := 0
	waitFor(t, ctx, "more SYNs sent through the chain", func() bool {
		n++
		return fw.Counters(t).Appliance.Dropped >= 5
	})
	c := fw.Counters(t).Appliance
	t.Logf("held drops %d; at the peer %s; fw received %d forwarded %d dropped %d", heldDrops, atPeer, c.Received, c.Forwarded, c.Dropped)
	if d := atPeer.denied.Load(); d != 0 {
		t.Errorf("%d TCP segments to port %d reached the peer: they bypassed the chain that denies them", d, denyPort)
	}
	if all := atPeer.all(); all > c.Forwarded {
		t.Errorf("%d frames of web-1 reached the peer, but the chain forwarded only %d", all, c.Forwarded)
	}
}

func hasEventFor(ag *Agent, kind EventKind, guest string) bool {
	evs, _ := ag.Events(0)
	for _, e := range evs {
		if e.Kind == kind && e.Guest == guest {
			return true
		}
	}
	return false
}
