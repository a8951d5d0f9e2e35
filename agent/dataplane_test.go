package agent

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
	"github.com/vsagent/vsagent/sourceroute"
)

const dataplaneConfig = `
[dataplane]
return_timeout = "300ms"

[[appliance]]
name = "ips"
template = "appliance.xml"

[[appliance]]
name = "fw"
template = "appliance.xml"

[[policy]]
name = "protected"
chain = ["ips", "fw"]
[policy.match]
domains = ["web-*"]
`

// dpLab is a host in a namespace of its own: a bridge with guests (each a
// namespace on a veth whose host end stands for its tap), appliance links
// (veths to namespaces running vsafilter), and the agent with its
// distribution manager working on that host through the libvirt test
// driver, whose domains carry the taps' names and the guests' MACs.
type dpLab struct {
	*harness
	host     *netnstest.NS
	hostPath string
	guests   map[string]*dpGuest
	links    map[string]string        // appliance or instance → host-side link
	applNS   map[string]*netnstest.NS // appliance or instance → its namespace
	dm       *DistributionManager
	bin      string
	// devices is the libvirt connection the intercept backend works
	// through: the test driver, plus hot-plug (see liveDevices).
	devices *liveDevices
}

type dpGuest struct {
	ns   *netnstest.NS
	tap  string // for a macvtap guest, its interface's target name
	mac  net.HardwareAddr
	ip   string
	uuid string
	// direct: the guest is on a macvtap (see addMacvtapGuest).
	direct bool
}

func newDPLab(t *testing.T) *dpLab {
	netnstest.RequireRoot(t)
	l := &dpLab{
		harness: newHarness(t),
		host:    netnstest.New(t),
		guests:  map[string]*dpGuest{},
		links:   map[string]string{},
		applNS:  map[string]*netnstest.NS{},
	}
	l.hostPath = filepath.Join("/var/run/netns", l.host.Name())
	l.devices = &liveDevices{Conn: l.conn, plug: l.mirrorMacvtap}
	l.host.QuietIPv6(t)
	l.bin = vsafiltertest.Build(t, "..")
	for _, app := range []string{"ips", "fw"} {
		l.addApplianceNS(t, app)
	}
	return l
}

// addApplianceNS makes a namespace for an appliance (or one instance of
// it), linked to the host by a veth whose host end is its link.
func (l *dpLab) addApplianceNS(t *testing.T, key string) {
	ns := netnstest.New(t)
	ns.QuietIPv6(t)
	link := netnstest.UniqueName("a")
	netnstest.Veth(t, netnstest.End{NS: ns, Name: "eth0", MTU: 1600}, netnstest.End{NS: l.host, Name: link, MTU: 1600})
	l.links[key], l.applNS[key] = link, ns
}

// addGuest makes a guest namespace on bridge br of the host.
func (l *dpLab) addGuest(t *testing.T, name, br, ip string, n byte) *dpGuest {
	ns := netnstest.New(t)
	ns.QuietIPv6(t)
	g := &dpGuest{ns: ns, tap: netnstest.UniqueName("t"), mac: net.HardwareAddr{0x52, 0x54, 0, 0x77, 0, n}, ip: ip}
	netnstest.Veth(t, netnstest.End{NS: ns, Name: "eth0", MAC: g.mac}, netnstest.End{NS: l.host, Name: g.tap, Master: br})
	if _, err := ns.Exec(context.Background(), "ip", "addr", "add", ip+"/24", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	l.guests[name] = g
	return g
}

// start runs the agent and its distribution manager; the returned function
// stops both (as a daemon's exit would: diversions stay in place).
func (l *dpLab) start(t *testing.T, cfgText string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	cfg := l.config(cfgText)
	redirectTo, readOn, err := EnsureDMPort(l.hostPath, "vsa-dm0")
	if err != nil {
		t.Fatal(err)
	}
	// As a host builds it: taps by tc-redirect, direct interfaces by macvtap.
	backend, err := intercept.ForHost(intercept.BackendTCRedirect, intercept.Deps{NetNS: l.hostPath, Logger: quietLogger(), Domains: l.devices})
	if err != nil {
		t.Fatal(err)
	}
	open, openTx := PacketPorts(l.hostPath)
	var ag *Agent
	l.dm, err = NewDistributionManager(DMConfig{
		Config: cfg, HostID: "test-host", Backend: backend, Domains: l.conn,
		ApplianceLinks: func(_ context.Context, inst Instance) ([]string, error) {
			if link, ok := l.links[inst.Name]; ok { // a lab with a link per instance
				return []string{link}, nil
			}
			return []string{l.links[inst.Appliance]}, nil
		},
		RedirectPort: redirectTo, InterceptPort: readOn, Open: open, OpenTx: openTx, Logger: quietLogger(),
		OnEvent:  func(e sourceroute.Event) { ag.RecordDataplaneEvent(e) },
		FastPath: NewFastPath(cfg, l.hostPath, quietLogger()),
	})
	if err != nil {
		t.Fatal(err)
	}
	dmDone := make(chan error, 1)
	go func() { dmDone <- l.dm.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		l.stop()
		cancel()
		if err := <-dmDone; err != nil {
			t.Errorf("distribution manager: %v", err)
		}
	}
	t.Cleanup(stop)
	l.agent = New(l.hv, cfg, Options{Logger: quietLogger(), Dataplane: l.dm, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ag = l.agent
	runCtx, stop := context.WithCancel(ctx)
	l.cancel, l.done = stop, make(chan error, 1)
	go func() { l.done <- l.agent.Run(runCtx) }()
	<-l.agent.Ready()
	return stop
}

// defineGuest defines and starts the test-driver domain of a lab guest on
// a tap of bridge br.
func (l *dpLab) defineGuest(t *testing.T, name, br string) {
	g := l.guests[name]
	l.defineDomain(t, name, libvirtxml.DomainInterface{
		MAC:    &libvirtxml.DomainInterfaceMAC{Address: g.mac.String()},
		Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: br}},
		Target: &libvirtxml.DomainInterfaceTarget{Dev: g.tap},
	})
}

// defineDomain defines and starts the test-driver domain of a lab guest
// with one interface.
func (l *dpLab) defineDomain(t *testing.T, name string, ifc libvirtxml.DomainInterface) {
	g := l.guests[name]
	d, err := l.conn.Define(context.Background(), &libvirtxml.Domain{
		Type:    "test",
		Name:    name,
		Memory:  &libvirtxml.DomainMemory{Value: 65536, Unit: "KiB"},
		VCPU:    &libvirtxml.DomainVCPU{Value: 1},
		OS:      &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"}},
		Devices: &libvirtxml.DomainDeviceList{Interfaces: []libvirtxml.DomainInterface{ifc}},
	})
	if err != nil {
		t.Fatal(err)
	}
	g.uuid = d.UUID
	if err := l.conn.Start(context.Background(), d.UUID); err != nil {
		t.Fatal(err)
	}
}

// startAppliances gives each appliance namespace the MAC the agent chose
// for the instance and starts vsafilter there with its rules.
func (l *dpLab) startAppliances(t *testing.T, rules map[string]string) map[string]*vsafiltertest.Run {
	runs := map[string]*vsafiltertest.Run{}
	for _, a := range l.agent.Appliances() {
		ns := l.applNS[a.Appliance]
		if _, err := ns.Exec(context.Background(), "ip", "link", "set", "dev", "eth0", "address", a.MACs[0]); err != nil {
			t.Fatal(err)
		}
		runs[a.Appliance] = vsafiltertest.Start(t, context.Background(), ns, l.bin, a.Appliance, "eth0",
			"[output]\nstats_interval = \"0s\"\n"+rules[a.Appliance])
	}
	return runs
}

// udpListen opens a UDP socket inside g's namespace.
func udpListen(t *testing.T, g *dpGuest, port int) *net.UDPConn {
	var c *net.UDPConn
	if err := g.ns.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(g.ip), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func udpDial(t *testing.T, from, to *dpGuest, port int) *net.UDPConn {
	var c *net.UDPConn
	if err := from.ns.Do(func() error {
		var err error
		c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(to.ip), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// receiveAll reads datagrams until want arrived or the deadline passed.
func receiveAll(c *net.UDPConn, n int, wait time.Duration) []string {
	var got []string
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	for len(got) < n {
		k, _, err := c.ReadFromUDP(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:k]))
	}
	return got
}

func (l *dpLab) hasEvent(kind EventKind, appliance string) bool {
	evs, _ := l.agent.Events(0)
	return slices.ContainsFunc(evs, func(e Event) bool {
		return e.Kind == kind && (appliance == "" || e.Appliance == appliance)
	})
}

// TestDataplaneChainInNamespaces runs with the kernel fast path off and
// on: chained flows take the userspace path either way, and the fast path
// must change nothing they see.
func TestDataplaneChainInNamespaces(t *testing.T) {
	for _, fast := range []bool{false, true} {
		t.Run(fmt.Sprintf("fast_path=%v", fast), func(t *testing.T) { testDataplaneChain(t, fast) })
	}
}

func testDataplaneChain(t *testing.T, fast bool) {
	l := newDPLab(t)
	l.host.AddBridge(t, "br0")
	l.host.AddBridge(t, "br1")
	web1 := l.addGuest(t, "web-1", "br0", "10.9.0.1", 1)
	web2 := l.addGuest(t, "web-2", "br0", "10.9.0.2", 2)
	db1 := l.addGuest(t, "db-1", "br1", "10.9.1.1", 3)
	db2 := l.addGuest(t, "db-2", "br1", "10.9.1.2", 4)

	ctx := context.Background()
	before := map[string]intercept.LinkDump{}
	for name, g := range l.guests {
		d, err := intercept.DumpLink(ctx, l.hostPath, g.tap)
		if err != nil {
			t.Fatal(err)
		}
		before[name] = d
	}

	l.start(t, strings.Replace(dataplaneConfig, "[dataplane]\n", fmt.Sprintf("[dataplane]\nfast_path = %v\n", fast), 1))
	for _, name := range []string{"web-1", "web-2"} {
		l.defineGuest(t, name, "br0")
	}
	for _, name := range []string{"db-1", "db-2"} {
		l.defineGuest(t, name, "br1")
	}
	l.eventually("web guests inspected", func() bool {
		return l.guestState("web-1") == GuestInspected && l.guestState("web-2") == GuestInspected
	})
	l.eventually("db guests seen", func() bool {
		return l.guestState("db-1") == GuestUnmanaged && l.guestState("db-2") == GuestUnmanaged
	})
	vsa := l.startAppliances(t, map[string]string{
		"ips": "[[rule]]\nname = \"no-6666\"\naction = \"deny\"\nproto = \"udp\"\ndport = 6666\n",
		"fw":  "[[signature]]\nname = \"evil\"\npattern = \"EVILPAYLOAD\"\naction = \"drop\"\n",
	})

	// UDP between the protected guests passes ips then fw, byte for byte.
	udpExactly(t, l, web1, web2, 7000, 20)
	if flows := l.dm.Engine().Flows("web-1"); len(flows) == 0 || !slices.Equal(flows[0].Forward, []string{"vsa-ips-1", "vsa-fw-1"}) {
		t.Errorf("web-1's flows in the DM: %+v, want the first through vsa-ips-1 then vsa-fw-1", flows)
	}
	ipsFwd, fwFwd := vsa["ips"].Counters(t).Appliance.Forwarded, vsa["fw"].Counters(t).Appliance.Forwarded
	if ipsFwd < 20 || fwFwd < 20 {
		t.Errorf("appliances forwarded ips=%d fw=%d, want at least the 20 datagrams each", ipsFwd, fwFwd)
	}

	// TCP both ways: the replies take the chain in reverse.
	reply := tcpEcho(t, web2, web1, 7001, "hello over tcp")
	if reply != "HELLO OVER TCP" {
		t.Errorf("tcp reply %q", reply)
	}
	if got := vsa["fw"].Counters(t).Appliance.Forwarded; got <= fwFwd+2 {
		t.Errorf("fw forwarded %d after TCP, had %d: the TCP flow did not pass it both ways", got, fwFwd)
	}

	// ICMP.
	if out, err := web1.ns.Exec(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "5", web2.ip); err != nil {
		t.Errorf("ping through the chain: %v\n%s", err, out)
	}

	// A rule of ips denies: nothing arrives, ips says why, fw never sees it.
	deny := udpListen(t, web2, 6666)
	// The DM's count, not fw's own: fw also receives the DM's health probes.
	fwBefore := l.dm.Engine().Counters().Instances["vsa-fw-1"].Sent
	if fwBefore == 0 {
		t.Fatal("the DM counts no frame sent to vsa-fw-1, which the flows above passed")
	}
	if _, err := udpDial(t, web1, web2, 6666).Write([]byte("to a denied port")); err != nil {
		t.Fatal(err)
	}
	if got := receiveAll(deny, 1, time.Second); len(got) != 0 {
		t.Errorf("denied datagram arrived: %q", got)
	}
	l.eventually("ips's drop notice as an event", func() bool { return l.hasEvent(EventDropNotice, "vsa-ips-1") })
	if got := l.dm.Engine().Counters().Instances["vsa-fw-1"].Sent; got != fwBefore {
		t.Errorf("the DM sent fw %d frames after ips denied one (had %d): ips is not first", got, fwBefore)
	}

	// A signature in fw drops a payload.
	rx, tx := udpListen(t, web2, 7003), udpDial(t, web1, web2, 7003)
	if _, err := tx.Write([]byte("carrying EVILPAYLOAD inside")); err != nil {
		t.Fatal(err)
	}
	if got := receiveAll(rx, 1, time.Second); len(got) != 0 {
		t.Errorf("signature-matching datagram arrived: %q", got)
	}
	l.eventually("fw's drop notice as an event", func() bool { return l.hasEvent(EventDropNotice, "vsa-fw-1") })

	// Guests without policy, on a network without protected guests, talk
	// directly: their taps carry no diversion.
	if out, err := db1.ns.Exec(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "5", db2.ip); err != nil {
		t.Errorf("unmanaged guests cannot talk: %v\n%s", err, out)
	}
	for _, name := range []string{"db-1", "db-2"} {
		d, err := intercept.DumpLink(ctx, l.hostPath, l.guests[name].tap)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(before[name], d); diff != "" {
			t.Errorf("unmanaged %s's tap changed (-before +now):\n%s", name, diff)
		}
	}

	// A silent appliance: frames stop coming back, the timeout is reported,
	// and with on_timeout = block the sender may start no new flow.
	l.agent.SetConfig(l.config(strings.Replace(dataplaneConfig, `chain = ["ips", "fw"]`, "chain = [\"ips\", \"fw\"]\non_timeout = \"block\"\nblock_for = \"30s\"", 1)))
	l.eventually("reload applied", l.agent.Settled)
	if err := vsa["fw"].Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	silent := udpDial(t, web1, web2, 7002)
	for range 3 {
		if _, err := silent.Write([]byte("into the void")); err != nil {
			t.Fatal(err)
		}
	}
	l.eventually("return timeout blamed on fw", func() bool { return l.hasEvent(EventReturnTimeout, "vsa-fw-1") })
	l.eventually("web-1 blocked", func() bool { return l.hasEvent(EventGuestBlocked, "") })
	if err := vsa["fw"].Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	// Everything goes: interfaces are exactly as they were.
	for _, name := range []string{"web-1", "web-2", "db-1", "db-2"} {
		g := l.guests[name]
		if err := l.conn.Destroy(ctx, g.uuid); err != nil {
			t.Fatal(err)
		}
		if err := l.conn.Undefine(ctx, g.uuid); err != nil {
			t.Fatal(err)
		}
	}
	l.eventually("appliances deleted", func() bool { return len(l.domainNames()) == 0 && l.agent.Settled() })
	for name, g := range l.guests {
		d, err := intercept.DumpLink(ctx, l.hostPath, g.tap)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(before[name], d); diff != "" {
			t.Errorf("%s's tap after everything was removed (-before +after):\n%s", name, diff)
		}
	}
}

func TestDataplaneHoldsGuestWhoseChainIsNotReady(t *testing.T) {
	l := newDPLab(t)
	l.host.AddBridge(t, "br0")
	web1 := l.addGuest(t, "web-1", "br0", "10.9.0.1", 1)
	web2 := l.addGuest(t, "web-2", "br0", "10.9.0.2", 2)
	l.start(t, dataplaneConfig)
	// Appliances cannot be defined: both guests stay gated. A paused
	// namespace does not stop sending, which is exactly what the dataplane's
	// hold must catch.
	l.hv.mu.Lock()
	l.hv.failDefine = fmt.Errorf("injected: no room for appliances")
	l.hv.mu.Unlock()
	l.defineGuest(t, "web-1", "br0")
	l.defineGuest(t, "web-2", "br0")
	l.eventually("both gated", func() bool {
		return l.guestState("web-1") == GuestGated && l.guestState("web-2") == GuestGated &&
			l.state(web1.uuid) == hypervisor.StatePaused
	})
	rx := udpListen(t, web2, 7000)
	tx := udpDial(t, web1, web2, 7000)
	for range 10 {
		if _, err := tx.Write([]byte("before the chain is ready")); err != nil {
			t.Fatal(err)
		}
	}
	if got := receiveAll(rx, 1, 2*time.Second); len(got) != 0 {
		t.Fatalf("%d frames delivered while the chain was not ready", len(got))
	}
	c := l.dm.Engine().Counters()
	if c.Drops["chain_not_ready"] == 0 {
		t.Errorf("no chain_not_ready drops counted: %v", c.Drops)
	}
}

func TestDataplaneRestartAdoptsAndCleansDiversions(t *testing.T) {
	l := newDPLab(t)
	l.host.AddBridge(t, "br0")
	l.addGuest(t, "web-1", "br0", "10.9.0.1", 1)
	l.addGuest(t, "web-2", "br0", "10.9.0.2", 2)
	web3 := l.addMacvtapGuest(t, "web-3", "br0", "10.9.0.3", 3)
	names := []string{"web-1", "web-2", "web-3"}
	// wiring is every guest's link, and the macvtap guest's <interface>.
	wiring := func() map[string]string {
		w := map[string]string{}
		for _, name := range names {
			w[name] = fmt.Sprintf("%+v", l.wiring(t, name))
		}
		if l.guests["web-3"].uuid != "" {
			doc, err := l.liveInterface(t, "web-3").Marshal()
			if err != nil {
				t.Fatal(err)
			}
			w["web-3 element"] = doc
		}
		return w
	}
	before := wiring()
	stop := l.start(t, dataplaneConfig)
	l.defineGuest(t, "web-1", "br0")
	l.defineGuest(t, "web-2", "br0")
	l.defineDomain(t, "web-3", *directInterface(web3, "br0", "bridge"))
	doc, err := l.liveInterface(t, "web-3").Marshal()
	if err != nil {
		t.Fatal(err)
	}
	before["web-3 element"] = doc
	l.eventually("all inspected", func() bool {
		return l.guestState("web-1") == GuestInspected && l.guestState("web-2") == GuestInspected && l.guestState("web-3") == GuestInspected
	})
	diverted := wiring()
	for _, name := range []string{"web-1", "web-3", "web-3 element"} {
		if diverted[name] == before[name] {
			t.Fatalf("%s shows no diversion while inspected", name)
		}
	}

	// A restart with the same configuration adopts the diversions as they are.
	stop()
	stop = l.start(t, dataplaneConfig)
	l.eventually("resynced", func() bool {
		return l.guestState("web-1") == GuestInspected && l.guestState("web-3") == GuestInspected && l.agent.Settled()
	})
	if diff := cmp.Diff(diverted, wiring()); diff != "" {
		t.Errorf("the diversions changed across a restart (-before +after):\n%s", diff)
	}

	// While the agent was down, the policy went: the next start finds the
	// diversions of the previous run and reverts them.
	stop()
	l.start(t, strings.Replace(dataplaneConfig, `domains = ["web-*"]`, `domains = ["db-*"]`, 1))
	l.eventually("resynced", func() bool {
		return l.guestState("web-1") == GuestUnmanaged && l.guestState("web-2") == GuestUnmanaged &&
			l.guestState("web-3") == GuestUnmanaged && l.agent.Settled()
	})
	if diff := cmp.Diff(before, wiring()); diff != "" {
		t.Errorf("stale diversions survived (-original +now):\n%s", diff)
	}
}
