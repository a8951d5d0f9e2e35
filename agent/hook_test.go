package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
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
	"libvirt.org/go/libvirtxml"

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
// MAC sends: group-addressed ones (ARP, RARP announcements, IPv6 ND and MLD,
// which the DM floods to the guest's network without a chain once the guest
// is ready, by design: see distribution-manager.md), and of the unicast
// ones ICMP echo requests, TCP segments to denyPort and the rest.
type frameCounter struct {
	flooded, echo, denied, other atomic.Uint64
}

// all counts every frame; chained, those that must have crossed the chain.
func (c *frameCounter) all() uint64 { return c.chained() + c.flooded.Load() }

func (c *frameCounter) chained() uint64 { return c.echo.Load() + c.denied.Load() + c.other.Load() }

func (c *frameCounter) String() string {
	return fmt.Sprintf("flooded=%d echo=%d tcp-denied=%d other-unicast=%d", c.flooded.Load(), c.echo.Load(), c.denied.Load(), c.other.Load())
}

func countFrames(t *testing.T, ns *netnstest.NS, iface string, from net.HardwareAddr, denyPort uint16) *frameCounter {
	c := &frameCounter{}
	readFrames(t, ns, iface, func(f []byte) {
		n := len(f)
		if n < 14 || !bytes.Equal(f[6:12], from) {
			return
		}
		switch {
		case f[0]&1 == 1:
			c.flooded.Add(1)
		case n >= 34+4 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 6 &&
			binary.BigEndian.Uint16(f[14+int(f[14]&0xf)*4+2:]) == denyPort:
			c.denied.Add(1)
		case n >= 35 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 1 && f[14+int(f[14]&0xf)*4] == 8:
			c.echo.Add(1)
		default:
			c.other.Add(1)
		}
	})
	return c
}

// readFrames hands every frame seen on iface in ns, both directions, to
// each, from one goroutine, until the test ends.
func readFrames(t *testing.T, ns *netnstest.NS, iface string, each func(frame []byte)) {
	readFramesIn(t, ns.Do, iface, each)
}

// readFramesIn is readFrames in the namespace that do enters.
func readFramesIn(t *testing.T, do func(func() error) error, iface string, each func(frame []byte)) {
	var conn *packet.Conn
	if err := do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Raw, 0x0003, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
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
			each(buf[:n])
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		wg.Wait()
	})
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

// hookHost is a simulated hypervisor host for the hook tests: a private
// libvirtd (with vsagent-hook installed when asked), a bridge br0 with a
// peer namespace that counts the test guest's frames, a namespace for the
// fw appliance's filter, and the agent with its DM and hook socket.
type hookHost struct {
	lab    *libvirtlab.Lab
	conn   *hypervisor.Conn
	hv     *withheldEvents
	ag     *Agent
	dm     *DistributionManager
	peer   *netnstest.NS
	atPeer *frameCounter
	// apps are the namespaces where vsafilter plays each appliance of the
	// chain, by appliance name.
	apps map[string]*hookAppliance
	dir  string
	// stopAgent stops the agent, its DM and its hook socket, as a crashed
	// or stopped vsagent would; libvirtd and its guests keep running.
	stopAgent func()
}

// hookAppliance is where one appliance's dataplane runs: its link in the
// host's namespace, the namespace at the other end, and the filter once
// started.
type hookAppliance struct {
	ns     *netnstest.NS
	link   string
	filter *vsafiltertest.Run
	mac    string
}

// hookHostOptions shape a host; the zero value is the one-appliance host
// of the start-window tests.
type hookHostOptions struct {
	// chain is policy web's chain, one appliance per name (default "fw").
	chain []string
	// listenTCP lets another host's libvirtd reach this one (peer-to-peer
	// migration).
	listenTCP bool
	// backend, if set, is the host's [intercept] backend, built as
	// intercept.ForHost builds it with the host's libvirt connection.
	backend string
	// applianceTemplate edits the appliances' domain template (default:
	// the lab guest image, which boots a kernel).
	applianceTemplate func(*libvirtxml.Domain)
}

var (
	peerMAC  = net.HardwareAddr{0x52, 0x54, 0, 0x77, 0x09, 0x09}
	guestMAC = net.HardwareAddr{0x52, 0x54, 0, 0x77, 0x01, 0x01}
)

const denyPort = 7002

// buildHook compiles the hook client for the test's libvirtds.
func buildHook(t *testing.T, ctx context.Context) string {
	netnstest.RequireRoot(t)
	if err := libvirtlab.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "vsagent-hook")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cmd/vsagent-hook").CombinedOutput(); err != nil {
		t.Fatalf("build the hook client: %v\n%s", err, out)
	}
	return bin
}

// newHookHost starts a host; hookBin "" leaves libvirtd without the hook.
// The agent sees libvirt's events only once h.hv.release is closed.
func newHookHost(t *testing.T, ctx context.Context, hookBin string) *hookHost {
	return newHookHostWith(t, ctx, hookBin, hookHostOptions{})
}

func newHookHostWith(t *testing.T, ctx context.Context, hookBin string, opts hookHostOptions) *hookHost {
	if len(opts.chain) == 0 {
		opts.chain = []string{"fw"}
	}
	h := &hookHost{dir: t.TempDir(), apps: make(map[string]*hookAppliance)}
	cfgPath := filepath.Join(h.dir, "vsagent.toml")
	var hooks map[string]string
	if hookBin != "" {
		hooks = map[string]string{"qemu": "#!/bin/sh\nVSAGENT_CONFIG=" + cfgPath + " exec " + hookBin + " \"$@\"\n"}
	}
	h.lab = libvirtlab.NewWith(t, libvirtlab.Options{Hooks: hooks, ListenTCP: opts.listenTCP})
	labPath := filepath.Join("/var/run/netns", h.lab.NetNS)
	writeLabTemplate(ctx, t, h.dir, opts.applianceTemplate)

	if _, err := h.lab.Exec(ctx, "sh", "-c", "ip link add br0 type bridge && ip link set br0 up"); err != nil {
		t.Fatal(err)
	}
	h.peer = netnstest.New(t)
	h.peer.QuietIPv6(t)
	peerLink := netnstest.UniqueName("p")
	hostIP(t, "-n", h.lab.NetNS, "link", "add", peerLink, "type", "veth", "peer", "name", "eth0", "address", peerMAC.String(), "netns", h.peer.Name())
	hostIP(t, "-n", h.lab.NetNS, "link", "set", peerLink, "master", "br0", "up")
	hostIP(t, "-n", h.peer.Name(), "addr", "add", "10.77.0.9/24", "dev", "eth0")
	hostIP(t, "-n", h.peer.Name(), "link", "set", "eth0", "up")
	var appliances strings.Builder
	for _, name := range opts.chain {
		app := &hookAppliance{ns: netnstest.New(t), link: netnstest.UniqueName("a")}
		app.ns.QuietIPv6(t)
		hostIP(t, "-n", h.lab.NetNS, "link", "add", app.link, "mtu", "1600", "type", "veth", "peer", "name", "eth0", "mtu", "1600", "netns", app.ns.Name())
		hostIP(t, "-n", h.lab.NetNS, "link", "set", app.link, "up")
		hostIP(t, "-n", app.ns.Name(), "link", "set", "eth0", "up")
		h.apps[name] = app
		fmt.Fprintf(&appliances, "\n[[appliance]]\nname = %q\ntemplate = \"appliance.xml\"\nmemory = \"128MiB\"\n", name)
	}
	h.atPeer = countFrames(t, h.peer, "eth0", guestMAC, denyPort)
	chain, err := json.Marshal(opts.chain)
	if err != nil {
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
%s
[[policy]]
name = "web"
chain = %s
[policy.match]
domains = ["web-*"]
`, filepath.Join(h.dir, "vsagent.sock"), peerLink, appliances.String(), chain)
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}

	h.conn, err = hypervisor.Connect(ctx, h.lab.URI(), hypervisor.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.conn.Close() })
	runCtx, stopRun := context.WithCancel(ctx)
	var wg sync.WaitGroup
	h.stopAgent = func() {
		stopRun()
		wg.Wait()
	}
	t.Cleanup(h.stopAgent)
	h.hv = withholdEvents(runCtx, h.conn)

	redirectTo, readOn, err := EnsureDMPort(labPath, "vsa-dm0")
	if err != nil {
		t.Fatal(err)
	}
	backend, err := intercept.New(intercept.BackendTCRedirect, intercept.Deps{NetNS: labPath, Logger: quietLogger()})
	if opts.backend != "" {
		backend, err = intercept.ForHost(opts.backend, intercept.Deps{NetNS: labPath, Logger: quietLogger(), Domains: h.conn})
	}
	if err != nil {
		t.Fatal(err)
	}
	open, openTx := PacketPorts(labPath)
	h.dm, err = NewDistributionManager(DMConfig{
		Config: cfg, HostID: h.lab.HostUUID, Backend: backend, Domains: h.conn,
		ApplianceLinks: func(_ context.Context, inst Instance) ([]string, error) {
			app, ok := h.apps[inst.Appliance]
			if !ok {
				return nil, fmt.Errorf("no link for appliance %q", inst.Appliance)
			}
			return []string{app.link}, nil
		},
		RedirectPort: redirectTo, InterceptPort: readOn, Open: open, OpenTx: openTx, Logger: quietLogger(),
		OnEvent: func(e sourceroute.Event) { h.ag.RecordDataplaneEvent(e) },
	})
	if err != nil {
		t.Fatal(err)
	}
	h.ag = New(h.hv, cfg, Options{Logger: quietLogger(), Dataplane: h.dm, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
	ln, err := net.Listen("unix", cfg.Agent.HookSocket())
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range []func() error{
		func() error { return h.dm.Run(runCtx) },
		func() error { return h.ag.Run(runCtx) },
		func() error { return hookapi.Serve(runCtx, ln, hookapi.NewHandler(h.ag), quietLogger()) },
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(); err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("agent component stopped: %v", err)
			}
		}()
	}
	<-h.ag.Ready()
	return h
}

// startTalkingGuest defines and starts web-1, whose init pings the peer
// and opens TCP connections to denyPort five times a second as soon as its
// interface has an address; sent(n) reports whether round n was reached.
func (h *hookHost) startTalkingGuest(t *testing.T, ctx context.Context) (uuid string, sent func(n int) func() bool) {
	uuid, console := h.startGuest(t, ctx, talkingScript())
	return uuid, func(n int) func() bool {
		return func() bool {
			b, _ := os.ReadFile(console)
			// The serial console ends lines with CR LF.
			return bytes.Contains(b, fmt.Appendf(nil, "hooktest-sent %d\r", n))
		}
	}
}

// talkingScript pings the peer and opens a TCP connection to denyPort five
// times a second, and counts the rounds on the console.
func talkingScript() string {
	return fmt.Sprintf(`ip neigh replace 10.77.0.9 lladdr %s dev eth0
i=0
while [ $i -lt 2000 ]; do
	i=$((i+1))
	ping -c 1 -W 1 10.77.0.9 >/dev/null 2>&1 &
	nc -w 1 10.77.0.9 %d </dev/null >/dev/null 2>&1 &
	echo "hooktest-sent $i"
	sleep 0.2
done
`, peerMAC, denyPort)
}

// startGuest defines and starts web-1 on br0 at 10.77.0.2 with script run
// by its init once its interface has its address; it returns the domain's
// UUID and the file its serial console goes to.
func (h *hookHost) startGuest(t *testing.T, ctx context.Context, script string) (uuid, console string) {
	return h.startGuestOn(t, ctx, libvirtlab.GuestInterface{Type: "bridge", Source: "br0", Target: netnstest.UniqueName("t")}, script)
}

// startGuestOn is startGuest with the interface nic (its MAC and address
// are web-1's).
func (h *hookHost) startGuestOn(t *testing.T, ctx context.Context, nic libvirtlab.GuestInterface, script string) (uuid, console string) {
	nic.MAC, nic.Address = guestMAC.String(), "10.77.0.2/24"
	img, err := libvirtlab.GuestImage(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	console = filepath.Join(h.dir, "web-1.console")
	guest, err := libvirtlab.GuestDomain("web-1", img, libvirtlab.GuestOptions{
		ConsoleLog: console,
		Interfaces: []libvirtlab.GuestInterface{nic},
		Cmdline:    libvirtlab.GuestRun(script),
	})
	if err != nil {
		t.Fatal(err)
	}
	// A migrated guest's console is reopened by the destination's QEMU,
	// which would truncate it: appended to, it keeps what the guest said
	// on every host (a failed migration test prints it).
	guest.Devices.Serials[0].Source.File.Append = "on"
	dom, err := h.conn.Define(ctx, guest)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.conn.Start(ctx, dom.UUID); err != nil {
		t.Fatalf("start web-1 (the hook must allow it): %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("console of web-1 (last 4 KiB):\n%s", b[max(0, len(b)-4096):])
		}
	})
	return dom.UUID, console
}

// startFilter waits for the agent's fw instance and runs vsafilter with its
// MAC in the appliance namespace, denying TCP to denyPort.
func (h *hookHost) startFilter(t *testing.T, ctx context.Context, bin string) *vsafiltertest.Run {
	waitFor(t, ctx, "the fw appliance", func() bool { return h.applianceMAC("fw") != "" })
	return h.startFilterFor(t, ctx, bin, "fw", h.applianceMAC("fw"), fmt.Sprintf(
		"[[rule]]\nname = \"no-%d\"\naction = \"deny\"\nproto = \"tcp\"\ndport = %d\n", denyPort, denyPort))
}

// applianceMAC is the MAC of the agent's instance of appliance, or "".
func (h *hookHost) applianceMAC(appliance string) string {
	for _, a := range h.ag.Appliances() {
		if a.Appliance == appliance && len(a.MACs) > 0 {
			return a.MACs[0]
		}
	}
	return ""
}

// startFilterFor runs vsafilter as appliance, with mac, in its namespace,
// with rules (TOML) after a counters-on-demand output section.
func (h *hookHost) startFilterFor(t *testing.T, ctx context.Context, bin, appliance, mac, rules string) *vsafiltertest.Run {
	app := h.apps[appliance]
	hostIP(t, "-n", app.ns.Name(), "link", "set", "dev", "eth0", "address", mac)
	app.mac = mac
	app.filter = vsafiltertest.Start(t, ctx, app.ns, bin, appliance, "eth0", "[output]\nstats_interval = \"0s\"\n"+rules)
	return app.filter
}

func (h *hookHost) guestState(name string) GuestState {
	for _, g := range h.ag.Guests() {
		if g.Name == name {
			return g.State
		}
	}
	return ""
}

// checkChained waits for pings through the chain and for the chain to deny
// SYNs, then checks that nothing the chain denies reached the peer and
// nothing more of the guest arrived than the appliance forwarded.
func (h *hookHost) checkChained(t *testing.T, ctx context.Context, fw *vsafiltertest.Run) {
	waitFor(t, ctx, "pings through the chain at the peer", func() bool { return h.atPeer.echo.Load() >= 5 })
	waitFor(t, ctx, "SYNs denied by the chain", func() bool { return fw.Counters(t).Appliance.Dropped >= 5 })
	c := fw.Counters(t).Appliance
	t.Logf("%s: at the peer %s; fw received %d forwarded %d dropped %d", h.lab.Name, h.atPeer, c.Received, c.Forwarded, c.Dropped)
	if d := h.atPeer.denied.Load(); d != 0 {
		t.Errorf("%s: %d TCP segments to port %d reached the peer: they bypassed the chain that denies them", h.lab.Name, d, denyPort)
	}
	if n := h.atPeer.chained(); n > c.Forwarded {
		t.Errorf("%s: %d unicast frames of web-1 reached the peer, but the chain forwarded only %d", h.lab.Name, n, c.Forwarded)
	}
}

func startWindow(t *testing.T, withHook bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	hookBin := buildHook(t, ctx)
	if !withHook {
		hookBin = ""
	}
	h := newHookHost(t, ctx, hookBin)
	uuid, sent := h.startTalkingGuest(t, ctx)
	bootCtx, bootCancel := context.WithTimeout(ctx, 2*time.Minute)
	defer bootCancel()
	waitFor(t, bootCtx, "the guest to boot and send", sent(15))

	// Phase 1: the agent has not reacted to STARTED; only the hook's hold
	// stands between the running guest and the peer.
	if st, err := h.conn.Lookup(ctx, uuid); err != nil || st.State != hypervisor.StateRunning {
		t.Fatalf("web-1 is %v (%v), want running: the agent must not have gated it yet", st.State, err)
	}
	if !withHook {
		if h.atPeer.denied.Load() == 0 {
			t.Fatalf("without the hook nothing of web-1 reached the peer (%s): the test cannot see the window", h.atPeer)
		}
		t.Logf("without the hook, at the peer before the agent reacted: %s", h.atPeer)
		return
	}
	if !hasEventFor(h.ag, EventHookHeld, "web-1") {
		t.Fatal("no hook-held event for web-1")
	}
	if n := h.atPeer.all(); n != 0 {
		t.Fatalf("%d frames of web-1 reached the peer before its chain existed (%s)", n, h.atPeer)
	}
	drops := h.dm.Engine().Counters().Drops
	t.Logf("DM drops while held: %v", drops)
	if drops["chain_not_ready"] == 0 {
		t.Fatalf("the DM dropped nothing of the held guest; counters %+v", h.dm.Engine().Counters())
	}

	// Phase 2: the appliance the prepare hook provisioned gets its filter,
	// and the agent sees the events and attaches the chain.
	fw := h.startFilter(t, ctx, vsafiltertest.Build(t, ".."))
	close(h.hv.release)
	waitFor(t, ctx, "web-1 inspected", func() bool { return h.guestState("web-1") == GuestInspected })
	h.checkChained(t, ctx, fw)
}

// TestHookMigration live-migrates an inspected guest between two hosts,
// each with its agent and the hook: on the destination the guest is held
// from start begin, its appliance is provisioned from prepare begin and its
// chain attached; on the source, where the domain simply disappears
// (--undefinesource), its wiring and the appliance no one needs any more
// are removed. Nothing the chain denies reaches either peer.
func TestHookMigration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	hookBin := buildHook(t, ctx)
	src, dst := newHookHost(t, ctx, hookBin), newHookHost(t, ctx, hookBin)
	close(src.hv.release)
	close(dst.hv.release)
	filterBin := vsafiltertest.Build(t, "..")

	src.startTalkingGuest(t, ctx)
	srcFW := src.startFilter(t, ctx, filterBin)
	waitFor(t, ctx, "web-1 inspected on the source", func() bool { return src.guestState("web-1") == GuestInspected })
	src.checkChained(t, ctx, srcFW)

	mig := filepath.Join(t.TempDir(), "mig.sock")
	out, err := exec.CommandContext(ctx, "virsh", "-c", src.lab.URI(), "migrate", "--live", "--persistent", "--undefinesource",
		"web-1", dst.lab.URI(), "--migrateuri", "unix://"+mig).CombinedOutput()
	if err != nil {
		t.Fatalf("migrate: %v: %s", err, out)
	}
	if !hasEventFor(dst.ag, EventHookHeld, "web-1") {
		t.Error("the destination's start hook did not hold web-1")
	}
	dstFW := dst.startFilter(t, ctx, filterBin)
	waitFor(t, ctx, "web-1 inspected on the destination", func() bool { return dst.guestState("web-1") == GuestInspected })
	dst.checkChained(t, ctx, dstFW)

	waitFor(t, ctx, "the source to forget web-1 and delete its appliance", func() bool {
		return src.guestState("web-1") == "" && len(src.ag.Appliances()) == 0
	})
	if f := src.dm.Engine().Flows("web-1"); len(f) != 0 {
		t.Errorf("the source DM still has flows of web-1: %+v", f)
	}
	doms, err := src.conn.ListDomains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range doms {
		t.Errorf("domain %s left on the source", d.Name)
	}
	if d := src.atPeer.denied.Load(); d != 0 {
		t.Errorf("source peer: %d denied segments arrived", d)
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
