package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/sourceroute"
)

// liveDevices is the test driver plus the device hot-plug it does not
// implement (it refuses Attach/Detach/UpdateDeviceFlags). It keeps, per
// running domain, the live <interface> elements the macvtap backend plugged
// in or out, shows them in DomainXML in place of the defined ones, and
// mirrors every change into the kernel through plug, as libvirt creates and
// deletes a guest's macvtap. Like libvirt it refuses to unplug from a paused
// guest (ErrPaused). The agent itself reads the test driver directly, so it
// keeps seeing the defined element: that is why the interface keeps its
// network (and stays diverted) in the test without the diversion record,
// which a unit test of package intercept covers.
type liveDevices struct {
	*hypervisor.Conn
	// plug makes the kernel match x, the element now plugged in for mac;
	// nil means unplugged.
	plug func(mac string, x *libvirtxml.DomainInterface) error

	mu   sync.Mutex
	live map[string]map[string]*libvirtxml.DomainInterface // UUID → MAC → element (nil: unplugged)
}

func (d *liveDevices) DomainXML(ctx context.Context, uuid string, inactive bool) (*libvirtxml.Domain, error) {
	dom, err := d.Conn.DomainXML(ctx, uuid, inactive)
	if err != nil || inactive || dom.ID == nil || dom.Devices == nil {
		return dom, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	plugged := d.live[uuid]
	ifaces := slices.DeleteFunc(dom.Devices.Interfaces, func(x libvirtxml.DomainInterface) bool {
		_, changed := plugged[macKey(x.MAC.Address)]
		return changed
	})
	// libvirt appends a hot-plugged interface to the end of <devices>.
	for _, mac := range slices.Sorted(mapKeys(plugged)) {
		if x := plugged[mac]; x != nil {
			ifaces = append(ifaces, *x)
		}
	}
	dom.Devices.Interfaces = ifaces
	return dom, nil
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func macKey(s string) string { return strings.ToLower(s) }

// current is the live element with x's MAC.
func (d *liveDevices) current(ctx context.Context, uuid string, x *libvirtxml.DomainInterface) (*libvirtxml.DomainInterface, error) {
	dom, err := d.DomainXML(ctx, uuid, false)
	if err != nil {
		return nil, err
	}
	for i := range dom.Devices.Interfaces {
		if y := &dom.Devices.Interfaces[i]; macKey(y.MAC.Address) == macKey(x.MAC.Address) {
			return y, nil
		}
	}
	return nil, fmt.Errorf("no interface %s", x.MAC.Address)
}

func (d *liveDevices) running(ctx context.Context, uuid string, paused bool) error {
	dom, err := d.Lookup(ctx, uuid)
	switch {
	case err != nil:
		return err
	case !dom.State.Active():
		return hypervisor.ErrNotRunning
	case dom.State == hypervisor.StatePaused && !paused:
		return hypervisor.ErrPaused
	}
	return nil
}

// set mirrors x into the kernel, then shows it as the live element.
func (d *liveDevices) set(uuid, mac string, x *libvirtxml.DomainInterface) error {
	if err := d.plug(mac, x); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.live == nil {
		d.live = map[string]map[string]*libvirtxml.DomainInterface{}
	}
	if d.live[uuid] == nil {
		d.live[uuid] = map[string]*libvirtxml.DomainInterface{}
	}
	d.live[uuid][mac] = x
	return nil
}

func (d *liveDevices) AttachInterface(ctx context.Context, uuid string, x *libvirtxml.DomainInterface) error {
	if err := d.running(ctx, uuid, true); err != nil {
		return err
	}
	c, err := cloneInterface(x)
	if err != nil {
		return err
	}
	return d.set(uuid, macKey(x.MAC.Address), c)
}

func (d *liveDevices) DetachInterface(ctx context.Context, uuid string, x *libvirtxml.DomainInterface) error {
	if err := d.running(ctx, uuid, false); err != nil {
		return err
	}
	return d.set(uuid, macKey(x.MAC.Address), nil)
}

func (d *liveDevices) UpdateInterface(ctx context.Context, uuid string, x *libvirtxml.DomainInterface) error {
	if err := d.running(ctx, uuid, true); err != nil {
		return err
	}
	cur, err := d.current(ctx, uuid, x)
	if err != nil {
		return err
	}
	c, err := cloneInterface(cur)
	if err != nil {
		return err
	}
	c.Link = x.Link
	return d.set(uuid, macKey(x.MAC.Address), c)
}

func cloneInterface(x *libvirtxml.DomainInterface) (*libvirtxml.DomainInterface, error) {
	doc, err := x.Marshal()
	if err != nil {
		return nil, err
	}
	var c libvirtxml.DomainInterface
	return &c, c.Unmarshal(doc)
}

// addMacvtapGuest makes a guest namespace whose eth0 is a macvlan on parent
// in bridge mode: a direct interface as libvirt wires it, with the guest's
// kernel in the namespace. A macvlan and not a macvtap because a macvtap's
// guest end is a character device that a test would have to drive with an
// IP stack of its own; macvtap is the macvlan driver plus that device, so
// the frames' path through the parent (out of it in VEPA mode, demultiplexed
// by destination MAC into it) is the same.
func (l *dpLab) addMacvtapGuest(t *testing.T, name, parent, ip string, n byte) *dpGuest {
	ns := netnstest.New(t)
	ns.QuietIPv6(t)
	g := &dpGuest{ns: ns, tap: netnstest.UniqueName("mv"), mac: net.HardwareAddr{0x52, 0x54, 0, 0x77, 0, n}, ip: ip, direct: true}
	l.guests[name] = g
	if err := l.mirrorMacvtap(g.mac.String(), directInterface(g, parent, "bridge")); err != nil {
		t.Fatal(err)
	}
	return g
}

// wiring dumps a guest's link on the host's side: its tap, or for a
// macvtap guest its macvlan (in the guest's namespace).
func (l *dpLab) wiring(t *testing.T, name string) intercept.LinkDump {
	t.Helper()
	g := l.guests[name]
	netNS, link := l.hostPath, g.tap
	if g.direct {
		netNS, link = filepath.Join("/var/run/netns", g.ns.Name()), "eth0"
	}
	d, err := intercept.DumpLink(context.Background(), netNS, link)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// liveInterface is the guest's <interface> as the intercept backend sees
// it.
func (l *dpLab) liveInterface(t *testing.T, name string) *libvirtxml.DomainInterface {
	t.Helper()
	dom, err := l.devices.DomainXML(context.Background(), l.guests[name].uuid, false)
	if err != nil {
		t.Fatal(err)
	}
	return &dom.Devices.Interfaces[0]
}

func directInterface(g *dpGuest, parent, mode string) *libvirtxml.DomainInterface {
	return &libvirtxml.DomainInterface{
		MAC:    &libvirtxml.DomainInterfaceMAC{Address: g.mac.String()},
		Source: &libvirtxml.DomainInterfaceSource{Direct: &libvirtxml.DomainInterfaceSourceDirect{Dev: parent, Mode: mode}},
		Target: &libvirtxml.DomainInterfaceTarget{Dev: g.tap},
		Alias:  &libvirtxml.DomainAlias{Name: "ua-" + g.tap},
	}
}

var macvlanModes = map[string]netlink.MacvlanMode{
	"": netlink.MACVLAN_MODE_VEPA, "vepa": netlink.MACVLAN_MODE_VEPA, "bridge": netlink.MACVLAN_MODE_BRIDGE,
	"private": netlink.MACVLAN_MODE_PRIVATE, "passthrough": netlink.MACVLAN_MODE_PASSTHRU,
}

// guestLink is the guest's eth0, or nil.
func guestLink(g *dpGuest) (netlink.Link, error) {
	var link netlink.Link
	err := g.ns.Do(func() error {
		var err error
		link, err = netlink.LinkByName("eth0")
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			link, err = nil, nil
		}
		return err
	})
	return link, err
}

func (l *dpLab) hostIndex(name string) (int, error) {
	var index int
	err := l.host.Do(func() error {
		link, err := netlink.LinkByName(name)
		if err == nil {
			index = link.Attrs().Index
		}
		return err
	})
	return index, err
}

// mirrorMacvtap does to the kernel what libvirt does when it plugs the
// guest's direct interface in (x) or out (nil): its macvlan is created on
// x's parent in x's mode, or deleted. A change of the link state alone sets
// the link up or down.
func (l *dpLab) mirrorMacvtap(mac string, x *libvirtxml.DomainInterface) error {
	var g *dpGuest
	for _, c := range l.guests {
		if c.mac.String() == mac {
			g = c
		}
	}
	if g == nil {
		return fmt.Errorf("no lab guest has MAC %s", mac)
	}
	ctx := context.Background()
	cur, err := guestLink(g)
	if err != nil {
		return err
	}
	if x == nil {
		if cur != nil {
			_, err = g.ns.Exec(ctx, "ip", "link", "del", "eth0")
		}
		return err
	}
	parent, mode := x.Source.Direct.Dev, x.Source.Direct.Mode
	state := "up"
	if x.Link != nil && x.Link.State == "down" {
		state = "down"
	}
	parentIndex, err := l.hostIndex(parent)
	if err != nil {
		return err
	}
	if mv, ok := cur.(*netlink.Macvlan); ok && mv.ParentIndex == parentIndex && mv.Mode == macvlanModes[mode] {
		_, err := g.ns.Exec(ctx, "ip", "link", "set", "eth0", state)
		return err
	}
	if cur != nil {
		if _, err := g.ns.Exec(ctx, "ip", "link", "del", "eth0"); err != nil {
			return err
		}
	}
	if mode == "" {
		mode = "vepa"
	}
	tmp := netnstest.UniqueName("m")
	for _, step := range []struct {
		ns   *netnstest.NS
		args []string
	}{
		{l.host, []string{"link", "add", "link", parent, "name", tmp, "address", mac, "mtu", "1500", "txqueuelen", "1000", "type", "macvlan", "mode", mode}},
		{l.host, []string{"link", "set", tmp, "netns", g.ns.Name()}},
		{g.ns, []string{"link", "set", tmp, "name", "eth0"}},
		{g.ns, []string{"addr", "add", g.ip + "/24", "dev", "eth0"}},
		{g.ns, []string{"link", "set", "eth0", state}},
	} {
		if _, err := step.ns.Exec(ctx, "ip", step.args...); err != nil {
			return err
		}
	}
	return nil
}

// udpExactly sends n datagrams of growing size and fails unless all arrive
// byte for byte and in order.
func udpExactly(t *testing.T, l *dpLab, from, to *dpGuest, port, n int) {
	t.Helper()
	rx := udpListen(t, to, port)
	tx := udpDial(t, from, to, port)
	var want []string
	for i := range n {
		msg := fmt.Sprintf("%s to %s, datagram %02d %s", from.ip, to.ip, i, strings.Repeat("x", i*61))
		want = append(want, msg)
		if _, err := tx.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			// The first datagram waits for ARP, which the DM floods.
			time.Sleep(200 * time.Millisecond)
		}
	}
	if diff := cmp.Diff(want, receiveAll(rx, n, 10*time.Second)); diff != "" {
		t.Fatalf("datagrams from %s at %s (-sent +received):\n%s\nDM counters: %+v", from.ip, to.ip, diff, l.dm.Engine().Counters())
	}
}

// tcpEcho connects from client to server, sends msg and half-closes; the
// server answers with all it read, in upper case, and closes. It returns
// the answer.
func tcpEcho(t *testing.T, server, client *dpGuest, port int, msg string) string {
	t.Helper()
	var ln net.Listener
	if err := server.ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", server.ip, port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		got, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(got))
	}()
	var reply []byte
	if err := client.ns.Do(func() error {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", server.ip, port), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		reply, err = io.ReadAll(c)
		return err
	}); err != nil {
		t.Fatalf("tcp from %s to %s: %v", client.ip, server.ip, err)
	}
	return string(reply)
}

// TestDataplaneMacvtapGuestInNamespaces: guests on macvtaps (web-3 and
// web-4, direct interfaces on the bridge br0) and a guest on a tap of br0
// (web-1), all protected, on one host whose backend is the one a host
// builds from [intercept] backend = "tc-redirect": the tap is diverted by
// tc-redirect, the macvtaps by the macvtap backend, which moves them onto
// the DM's redirect port in VEPA mode. Traffic between the macvtap guest
// and the tap guest passes both appliances in order, both ways, and so
// does unicast between the two macvtap guests; revert restores every
// interface exactly.
func TestDataplaneMacvtapGuestInNamespaces(t *testing.T) {
	l := newDPLab(t)
	l.host.AddBridge(t, "br0")
	ctx := context.Background()
	web1 := l.addGuest(t, "web-1", "br0", "10.9.0.1", 1)
	web3 := l.addMacvtapGuest(t, "web-3", "br0", "10.9.0.3", 3)
	web4 := l.addMacvtapGuest(t, "web-4", "br0", "10.9.0.4", 4)
	if out, err := web3.ns.Exec(ctx, "ping", "-c", "1", "-W", "5", web1.ip); err != nil {
		t.Fatalf("the macvtap guest cannot reach the bridged one before anything is diverted: %v\n%s", err, out)
	}
	wiring := func() map[string]intercept.LinkDump {
		return map[string]intercept.LinkDump{"web-1": l.wiring(t, "web-1"), "web-3": l.wiring(t, "web-3"), "web-4": l.wiring(t, "web-4")}
	}
	elements := func() map[string]*libvirtxml.DomainInterface {
		return map[string]*libvirtxml.DomainInterface{"web-3": l.liveInterface(t, "web-3"), "web-4": l.liveInterface(t, "web-4")}
	}
	element := func() *libvirtxml.DomainInterface { return l.liveInterface(t, "web-3") }
	before := wiring()

	l.start(t, dataplaneConfig)
	l.defineGuest(t, "web-1", "br0")
	l.defineDomain(t, "web-3", *directInterface(web3, "br0", "bridge"))
	l.defineDomain(t, "web-4", *directInterface(web4, "br0", "bridge"))
	elementsBefore := elements()
	l.eventually("all guests inspected", func() bool {
		return l.guestState("web-1") == GuestInspected && l.guestState("web-3") == GuestInspected && l.guestState("web-4") == GuestInspected
	})

	// The macvtap backend moved web-3 onto the DM's redirect port in VEPA
	// mode (in libvirt's live XML, and so in the kernel).
	if got := element().Source.Direct; got.Dev != "vsa-dm0" || got.Mode != "vepa" {
		t.Errorf("web-3's live interface source %+v, want vsa-dm0 in vepa mode", got)
	}
	dmIndex, err := l.hostIndex("vsa-dm0")
	if err != nil {
		t.Fatal(err)
	}
	if link, err := guestLink(web3); err != nil {
		t.Fatal(err)
	} else if mv, ok := link.(*netlink.Macvlan); !ok || mv.ParentIndex != dmIndex || mv.Mode != netlink.MACVLAN_MODE_VEPA {
		t.Errorf("web-3's link is %+v, want a VEPA macvlan on vsa-dm0 (index %d)", link, dmIndex)
	}

	vsa := l.startAppliances(t, map[string]string{
		"ips": "[[rule]]\nname = \"no-6666\"\naction = \"deny\"\nproto = \"udp\"\ndport = 6666\n",
		"fw":  "[[signature]]\nname = \"evil\"\npattern = \"EVILPAYLOAD\"\naction = \"drop\"\n",
	})

	// UDP both ways, byte for byte, through ips then fw.
	udpExactly(t, l, web3, web1, 7000, 20)
	udpExactly(t, l, web1, web3, 7100, 20)
	for _, g := range []string{"web-3", "web-1"} {
		if flows := l.dm.Engine().Flows(g); len(flows) == 0 || !slices.Equal(flows[0].Forward, []string{"vsa-ips-1", "vsa-fw-1"}) {
			t.Errorf("%s's flows in the DM: %+v, want the first through vsa-ips-1 then vsa-fw-1", g, flows)
		}
	}
	// What the appliances forwarded, less the DM's health probes they
	// answered.
	forwarded := func(app string) uint64 {
		return vsa[app].Counters(t).Appliance.Forwarded - l.dm.Engine().Counters().Instances["vsa-"+app+"-1"].ProbesAnswered
	}
	ipsFwd, fwFwd := forwarded("ips"), forwarded("fw")
	if ipsFwd < 40 || fwFwd < 40 {
		t.Errorf("appliances forwarded ips=%d fw=%d, want at least the 40 datagrams each", ipsFwd, fwFwd)
	}

	// TCP with each as the server: the replies take the chain in reverse.
	long := strings.Repeat("0123456789abcdef", 1000) // several segments
	if got := tcpEcho(t, web1, web3, 7001, "from the macvtap guest "+long); got != strings.ToUpper("from the macvtap guest "+long) {
		t.Errorf("tcp reply to web-3: %q", got)
	}
	if got := tcpEcho(t, web3, web1, 7002, "to the macvtap guest "+long); got != strings.ToUpper("to the macvtap guest "+long) {
		t.Errorf("tcp reply to web-1: %q", got)
	}
	if got := forwarded("fw"); got <= fwFwd+4 {
		t.Errorf("fw forwarded %d after TCP, had %d: the TCP flows did not pass it both ways", got, fwFwd)
	}

	// ICMP both ways.
	for _, p := range [][2]*dpGuest{{web3, web1}, {web1, web3}} {
		if out, err := p[0].ns.Exec(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "5", p[1].ip); err != nil {
			t.Errorf("ping from %s to %s through the chain: %v\n%s", p[0].ip, p[1].ip, err, out)
		}
	}

	// Two macvtap guests: both are reached through the intercept port.
	// Their ARP broadcasts reach each other through it (the DM floods a
	// broadcast back into the shared port it came from, and the macvlan
	// layer hands it to every macvtap but the sender's), and unicast
	// between them passes the chain.
	udpExactly(t, l, web3, web4, 7200, 10)
	udpExactly(t, l, web4, web3, 7300, 10)
	if flows := l.dm.Engine().Flows("web-4"); !slices.ContainsFunc(flows, func(f sourceroute.FlowInfo) bool {
		return slices.Equal(f.Forward, []string{"vsa-ips-1", "vsa-fw-1"})
	}) {
		t.Errorf("web-4's flows in the DM: %+v, want them through vsa-ips-1 then vsa-fw-1", flows)
	}

	// A rule of ips denies, in both directions: nothing arrives, ips says
	// why, and fw (second) never sees it.
	for _, p := range [][2]*dpGuest{{web3, web1}, {web1, web3}} {
		deny := udpListen(t, p[1], 6666)
		// The DM's count, not fw's own: fw also receives the DM's health probes.
		fwBefore := l.dm.Engine().Counters().Instances["vsa-fw-1"].Sent
		notices := l.dm.Engine().Counters().Drops["notice"]
		if _, err := udpDial(t, p[0], p[1], 6666).Write([]byte("to a denied port")); err != nil {
			t.Fatal(err)
		}
		if got := receiveAll(deny, 1, time.Second); len(got) != 0 {
			t.Errorf("denied datagram from %s arrived at %s: %q", p[0].ip, p[1].ip, got)
		}
		l.eventually("ips's drop notice counted", func() bool { return l.dm.Engine().Counters().Drops["notice"] > notices })
		if got := l.dm.Engine().Counters().Instances["vsa-fw-1"].Sent; got != fwBefore {
			t.Errorf("the DM sent fw %d frames after ips denied one from %s (had %d): ips is not first", got, p[0].ip, fwBefore)
		}
	}
	if !l.hasEvent(EventDropNotice, "vsa-ips-1") {
		t.Error("no drop notice event from vsa-ips-1")
	}

	// No guest is protected any more: both are reverted while they run,
	// exactly.
	l.agent.SetConfig(l.config(strings.Replace(dataplaneConfig, `domains = ["web-*"]`, `domains = ["nobody-*"]`, 1)))
	l.eventually("both unmanaged and reverted", func() bool {
		return l.guestState("web-1") == GuestUnmanaged && l.guestState("web-3") == GuestUnmanaged &&
			l.guestState("web-4") == GuestUnmanaged && l.agent.Settled()
	})
	if diff := cmp.Diff(before, wiring()); diff != "" {
		t.Errorf("links after revert (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(elementsBefore, elements()); diff != "" {
		t.Errorf("<interface> elements after revert (-before +after):\n%s", diff)
	}
	if out, err := web3.ns.Exec(ctx, "ping", "-c", "1", "-W", "5", web1.ip); err != nil {
		t.Errorf("the guests cannot talk directly after revert: %v\n%s", err, out)
	}
}
