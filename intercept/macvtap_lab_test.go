package intercept_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/libvirtlab"
)

// The agent hands the macvtap backend its libvirt connection.
var _ intercept.Domains = (*hypervisor.Conn)(nil)

// hotplugInit is the lab guest's init with its idle loop replaced by one that
// configures eth0 again whenever it appears without an address, as a guest
// OS does for a NIC that is unplugged and plugged in again.
func hotplugInit(t *testing.T) string {
	t.Helper()
	const idle = "while :; do sleep 3600; done"
	if !strings.Contains(libvirtlab.GuestInit, idle) {
		t.Fatalf("the lab guest's init no longer ends with %q", idle)
	}
	return strings.Replace(libvirtlab.GuestInit, idle, `while :; do
	if [ -e /sys/class/net/eth0 ] && ! ip -o -4 addr show dev eth0 | grep -q inet; then
		ip link set eth0 up
		while read n addr; do [ "$n" = 0 ] && ip addr add "$addr" dev eth0; done < /tmp/addrs
		echo "hotplug: eth0 configured"
	fi
	sleep 0.2
done`, 1)
}

// hotplugImage is the lab guest image with hotplugInit as /init: a second
// archive appended to the initramfs, whose files the kernel unpacks over
// the first one's.
func hotplugImage(ctx context.Context, t *testing.T) libvirtlab.Image {
	t.Helper()
	img, err := libvirtlab.GuestImage(ctx, "")
	if err != nil {
		t.Fatalf("guest image: %v", err)
	}
	overlay := filepath.Join(t.TempDir(), "overlay.cpio.gz")
	if err := libvirtlab.BuildInitramfs(ctx, overlay, nil, hotplugInit(t)); err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	extra, err := os.ReadFile(overlay)
	if err != nil {
		t.Fatal(err)
	}
	img.Initrd = filepath.Join(t.TempDir(), "guest-hotplug.cpio.gz")
	if err := os.WriteFile(img.Initrd, append(base, extra...), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// startLabGuest defines and starts the lab guest "g" with the given
// interfaces, its console logged in the lab's directory.
func startLabGuest(ctx context.Context, t *testing.T, lab *libvirtlab.Lab, conn *hypervisor.Conn, img libvirtlab.Image, ifaces ...libvirtlab.GuestInterface) hypervisor.Domain {
	t.Helper()
	return startLabGuestWith(ctx, t, lab, conn, img, libvirtlab.GuestOptions{Interfaces: ifaces})
}

// startLabGuestWith is startLabGuest with more options (its console is
// always the lab's).
func startLabGuestWith(ctx context.Context, t *testing.T, lab *libvirtlab.Lab, conn *hypervisor.Conn, img libvirtlab.Image, opts libvirtlab.GuestOptions) hypervisor.Domain {
	t.Helper()
	opts.ConsoleLog = filepath.Join(lab.Dir, "g.console")
	def, err := libvirtlab.GuestDomain("g", img, opts)
	if err != nil {
		t.Fatal(err)
	}
	dom, err := conn.Define(ctx, def)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Start(ctx, dom.UUID); err != nil {
		t.Fatal(err)
	}
	return dom
}

// labConsole is the end of the lab guest's console.
func labConsole(lab *libvirtlab.Lab) string {
	b, _ := os.ReadFile(filepath.Join(lab.Dir, "g.console"))
	return string(b[max(0, len(b)-8192):])
}

// pingLabGuest pings ip from the lab's namespace until it answers (at most
// 150 tries 200 ms apart, bounded by the boot of a TCG guest) and fails the
// test with the guest's console if it never does.
func pingLabGuest(ctx context.Context, t *testing.T, lab *libvirtlab.Lab, ip, when string) {
	t.Helper()
	var err error
	for range 150 {
		if _, err = lab.Exec(ctx, "busybox", "ping", "-c", "1", "-W", "1", ip); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: guest does not answer: %v\nconsole:\n%s", when, err, labConsole(lab))
}

func ifaceXML(t *testing.T, x *libvirtxml.DomainInterface) string {
	t.Helper()
	doc, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// assigned is an interface element without what libvirt numbers itself on
// every hot-plug and never hands out twice: the device alias ("netN", not a
// user alias) and a generated macvtap name ("macvtapN"). Nobody can ask
// libvirt for those, so they are the one part a revert cannot restore.
func assigned(t *testing.T, x *libvirtxml.DomainInterface) string {
	t.Helper()
	var c libvirtxml.DomainInterface
	if err := c.Unmarshal(ifaceXML(t, x)); err != nil {
		t.Fatal(err)
	}
	if c.Alias != nil && !strings.HasPrefix(c.Alias.Name, "ua-") {
		if !strings.HasPrefix(c.Alias.Name, "net") {
			t.Errorf("unexpected alias %q", c.Alias.Name)
		}
		c.Alias.Name = "net?"
	}
	if c.Target != nil && strings.HasPrefix(c.Target.Dev, "macvtap") {
		c.Target.Dev = "macvtap?"
	}
	return ifaceXML(t, &c)
}

// TestMacvtapOnRealGuest diverts the direct interfaces of a real QEMU guest
// on a private libvirtd: macvtaps in bridge mode on veth parents go to VEPA
// mode and come back exactly but for what libvirt numbers itself (see
// assigned), while the guest stays reachable. The first interface has a
// chosen macvtap name, the second one a generated name.
func TestMacvtapOnRealGuest(t *testing.T) {
	lab := libvirtlab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img := hotplugImage(ctx, t)
	log := intercept.LoggerFor(t)

	const guestIP, hostIP = "10.79.0.2", "10.79.0.1"
	for _, cmd := range [][]string{
		{"ip", "link", "add", "vp0", "type", "veth", "peer", "name", "vp1"},
		{"ip", "link", "add", "vp2", "type", "veth", "peer", "name", "vp3"},
		{"ip", "link", "set", "vp0", "up"},
		{"ip", "link", "set", "vp1", "up"},
		{"ip", "link", "set", "vp2", "up"},
		{"ip", "link", "set", "vp3", "up"},
		{"ip", "addr", "add", hostIP + "/24", "dev", "vp1"},
	} {
		if _, err := lab.Exec(ctx, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	nsh, err := netns.GetFromName(lab.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsh.Close() })
	nlh, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nlh.Close)
	labNS := filepath.Join("/run/netns", lab.NetNS)

	conn, err := hypervisor.Connect(ctx, lab.URI(), hypervisor.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	const namedMAC, generatedMAC = "52:54:00:79:00:02", "52:54:00:79:00:03"
	dom := startLabGuest(ctx, t, lab, conn, img,
		libvirtlab.GuestInterface{Type: "direct", Source: "vp0", Mode: "bridge", MAC: namedMAC, Target: "vsgmv0", Address: guestIP + "/24"},
		libvirtlab.GuestInterface{Type: "direct", Source: "vp2", Mode: "bridge", MAC: generatedMAC},
	)
	ping := func(when string) { pingLabGuest(ctx, t, lab, guestIP, when) }
	ping("after boot")

	liveIface := func(mac string) intercept.Iface {
		t.Helper()
		x, err := conn.DomainXML(ctx, dom.UUID, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, ifc := range intercept.InterfacesOf(x) {
			if ifc.MAC.String() == mac {
				return ifc
			}
		}
		t.Fatalf("guest has no interface %s", mac)
		return intercept.Iface{}
	}
	macvtapMode := func(name string) (netlink.MacvlanMode, string) {
		t.Helper()
		l, err := nlh.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		m, ok := l.(*netlink.Macvtap)
		if !ok {
			t.Fatalf("%s is a %s, want a macvtap", name, l.Type())
		}
		parent, err := nlh.LinkByIndex(m.ParentIndex)
		if err != nil {
			t.Fatal(err)
		}
		return m.Mode, parent.Attrs().Name
	}

	named, generated := liveIface(namedMAC), liveIface(generatedMAC)
	if !strings.HasPrefix(generated.Target, "macvtap") {
		t.Fatalf("the second interface's macvtap is %q, want a generated name", generated.Target)
	}
	before := map[string]string{namedMAC: assigned(t, named.XML), generatedMAC: assigned(t, generated.XML)}
	beforeDump, err := intercept.DumpLink(ctx, labNS, named.Target)
	if err != nil {
		t.Fatal(err)
	}
	backend, err := intercept.New(intercept.BackendMacvtap, intercept.Deps{Domains: conn, Logger: log})
	if err != nil {
		t.Fatal(err)
	}

	// A paused guest cannot acknowledge the unplug: Apply leaves the
	// interface down and says why; once the guest runs it finishes.
	if err := conn.Suspend(ctx, dom.UUID); err != nil {
		t.Fatal(err)
	}
	if err := backend.Apply(ctx, named, ""); !errors.Is(err, hypervisor.ErrPaused) {
		t.Fatalf("Apply on the paused guest = %v, want ErrPaused", err)
	}
	if x := liveIface(namedMAC).XML; x.Link == nil || x.Link.State != "down" {
		t.Fatalf("after Apply on the paused guest the link is %+v, want down", x.Link)
	}
	if err := conn.Resume(ctx, dom.UUID); err != nil {
		t.Fatal(err)
	}
	for _, ifc := range []intercept.Iface{named, generated} {
		if err := backend.Apply(ctx, ifc, ""); err != nil {
			t.Fatal(err)
		}
		diverted := liveIface(ifc.MAC.String())
		if diverted.Mode != "vepa" || diverted.Source != ifc.Source {
			t.Fatalf("after Apply: %+v", diverted)
		}
		if diff := cmp.Diff(ifc.XML.Address, diverted.XML.Address); diff != "" {
			t.Errorf("%s: the PCI address changed (-before +after):\n%s", ifc, diff)
		}
		if diverted.XML.Link != nil {
			t.Errorf("%s: the diverted interface's link is %+v, want as before", ifc, diverted.XML.Link)
		}
		if mode, parent := macvtapMode(diverted.Target); mode != netlink.MACVLAN_MODE_VEPA || parent != ifc.Source {
			t.Errorf("macvtap %s: mode %d on %s, want vepa on %s", diverted.Target, mode, parent, ifc.Source)
		}
		if ok, err := backend.Applied(ctx, ifc, ""); !ok || err != nil {
			t.Errorf("%s: Applied = %v, %v", ifc, ok, err)
		}
	}
	divertedXML := ifaceXML(t, liveIface(namedMAC).XML)
	if err := backend.Apply(ctx, named, ""); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(divertedXML, ifaceXML(t, liveIface(namedMAC).XML)); diff != "" {
		t.Errorf("a second Apply changed the interface:\n%s", diff)
	}
	ping("diverted")

	if stale, err := backend.Stale(ctx, nil); err != nil || len(stale) != 2 {
		t.Errorf("Stale(nothing kept) = %+v, %v; want both interfaces", stale, err)
	}
	if stale, err := backend.Stale(ctx, []intercept.Iface{named}); err != nil || len(stale) != 1 || stale[0].MAC.String() != generatedMAC {
		t.Errorf("Stale(first kept) = %+v, %v; want the second interface", stale, err)
	}

	// A restarted agent reverts from the records in the guest's metadata.
	restarted, err := intercept.New(intercept.BackendMacvtap, intercept.Deps{Domains: conn, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range []intercept.Iface{named, generated} {
		if err := restarted.Revert(ctx, ifc); err != nil {
			t.Fatal(err)
		}
	}
	reverted := liveIface(namedMAC)
	if diff := cmp.Diff(before[namedMAC], assigned(t, reverted.XML)); diff != "" {
		t.Errorf("<interface> after Revert differs (-before +after):\n%s", diff)
	}
	afterDump, err := intercept.DumpLink(ctx, labNS, reverted.Target)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(beforeDump, afterDump); diff != "" {
		t.Errorf("macvtap after Revert differs (-before +after):\n%s", diff)
	}
	if mode, parent := macvtapMode(reverted.Target); mode != netlink.MACVLAN_MODE_BRIDGE || parent != "vp0" {
		t.Errorf("macvtap %s: mode %d on %s, want bridge on vp0", reverted.Target, mode, parent)
	}
	second := liveIface(generatedMAC)
	if !strings.HasPrefix(second.Target, "macvtap") {
		t.Errorf("second interface's macvtap after Revert: %q", second.Target)
	}
	if diff := cmp.Diff(before[generatedMAC], assigned(t, second.XML)); diff != "" {
		t.Errorf("second <interface> after Revert differs (-before +after):\n%s", diff)
	}
	x, err := conn.DomainXML(ctx, dom.UUID, false)
	if err != nil {
		t.Fatal(err)
	}
	if x.Metadata != nil && strings.Contains(x.Metadata.XML, intercept.Namespace) {
		t.Errorf("records left in the metadata: %s", x.Metadata.XML)
	}
	if err := restarted.Revert(ctx, named); err != nil {
		t.Fatalf("second Revert: %v", err)
	}
	if ok, err := backend.Applied(ctx, named, ""); ok || err != nil {
		t.Errorf("Applied after Revert = %v, %v", ok, err)
	}
	ping("reverted")
	if t.Failed() {
		t.Logf("console:\n%s", labConsole(lab))
	}
}
