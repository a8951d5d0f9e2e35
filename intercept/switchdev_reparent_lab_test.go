package intercept_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/sriov"
	"github.com/vsagent/vsagent/sriov/sriovtest"
)

// TestMacvtapReparentOntoVF moves a real QEMU guest's macvtap from a PF
// onto one of its VFs and back. The E810 table describes the NIC; veths
// stand for its netdevs (nicpf for the PF, nicvf0 and nicvf1 for VFs),
// their peers are ports of a bridge with the host's address, standing for
// the wire. VFParent picks the VF, the macvtap backend moves the interface
// (link down, unplug, plug in on the VF in VEPA mode), and the guest's
// pings then leave through the VF and not the PF; Revert moves it back.
func TestMacvtapReparentOntoVF(t *testing.T) {
	lab := libvirtlab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img := hotplugImage(ctx, t)
	log := intercept.LoggerFor(t)
	labNS := filepath.Join("/run/netns", lab.NetNS)

	const guestIP, hostIP = "10.81.0.2", "10.81.0.1"
	// No IPv6, and no ARP on the PF and VF veths (Linux would answer the
	// guest's ARP for the host's address on any of them): they then send
	// nothing of their own, and their transmit counters count the guest's
	// frames only.
	cmds := [][]string{
		{"sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"},
		{"ip", "link", "add", "nicsw", "type", "bridge"},
		{"ip", "link", "set", "nicsw", "up"},
		{"ip", "addr", "add", hostIP + "/24", "dev", "nicsw"},
	}
	for _, n := range []string{"nicpf", "nicvf0", "nicvf1"} {
		cmds = append(cmds,
			[]string{"ip", "link", "add", n, "type", "veth", "peer", "name", n + "w"},
			[]string{"ip", "link", "set", n + "w", "master", "nicsw"},
			[]string{"ip", "link", "set", n + "w", "up"},
			[]string{"ip", "link", "set", n, "arp", "off", "up"})
	}
	for _, cmd := range cmds {
		if _, err := lab.Exec(ctx, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	host := &sriov.Host{SysRoot: sriovtest.Build(t, "e810-legacy", map[string]string{"PF": "nicpf", "VF0": "nicvf0", "VF1": "nicvf1"})}
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

	conn, err := hypervisor.Connect(ctx, lab.URI(), hypervisor.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	const mac = "52:54:00:81:00:02"
	dom := startLabGuest(ctx, t, lab, conn, img,
		libvirtlab.GuestInterface{Type: "direct", Source: "nicpf", Mode: "bridge", MAC: mac, Address: guestIP + "/24"})
	ping := func(when string, count string) {
		t.Helper()
		pingLabGuest(ctx, t, lab, guestIP, when)
		if count == "" {
			return
		}
		if _, err := lab.Exec(ctx, "busybox", "ping", "-c", count, "-W", "2", guestIP); err != nil {
			t.Fatalf("%s: guest does not answer: %v\nconsole:\n%s", when, err, labConsole(lab))
		}
	}
	liveIface := func() intercept.Iface {
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
	txPackets := func() map[string]uint64 {
		t.Helper()
		out := map[string]uint64{}
		for _, n := range []string{"nicpf", "nicvf0"} {
			l, err := nlh.LinkByName(n)
			if err != nil {
				t.Fatal(err)
			}
			out[n] = l.Attrs().Statistics.TxPackets
		}
		return out
	}
	// pingsLeaveThrough pings the guest 5 times and checks which of the
	// PF and VF carried its replies out.
	pingsLeaveThrough := func(when, via, notVia string) {
		t.Helper()
		before := txPackets()
		ping(when, "5")
		after := txPackets()
		if d := after[via] - before[via]; d < 5 {
			t.Errorf("%s: %s sent %d frames for 5 pings, want at least 5", when, via, d)
		}
		if d := after[notVia] - before[notVia]; d != 0 {
			t.Errorf("%s: %s sent %d frames, want none", when, notVia, d)
		}
	}
	// wiredTo checks, in the live XML and in the kernel, that the
	// interface's macvtap is on parent in mode.
	wiredTo := func(when, parent, mode string, kernelMode netlink.MacvlanMode) {
		t.Helper()
		x := liveIface()
		if x.Source != parent || x.Mode != mode {
			t.Fatalf("%s: the interface is on %s in %s mode, want %s %s", when, x.Source, x.Mode, parent, mode)
		}
		l, err := nlh.LinkByName(x.Target)
		if err != nil {
			t.Fatal(err)
		}
		m, ok := l.(*netlink.Macvtap)
		if !ok {
			t.Fatalf("%s is a %s, want a macvtap", x.Target, l.Type())
		}
		p, err := nlh.LinkByIndex(m.ParentIndex)
		if err != nil {
			t.Fatal(err)
		}
		if m.Mode != kernelMode || p.Attrs().Name != parent {
			t.Errorf("%s: macvtap %s in mode %d on %s, want %d on %s", when, x.Target, m.Mode, p.Attrs().Name, kernelMode, parent)
		}
	}

	ping("after boot", "")
	pingsLeaveThrough("on the PF", "nicpf", "nicvf0")
	ifc := liveIface()
	vf, err := intercept.VFParent(ctx, host, labNS, ifc.Source, ifc.MAC)
	if err != nil || vf != "nicvf0" {
		t.Fatalf("VFParent(%s) = %q, %v; want nicvf0", ifc.Source, vf, err)
	}
	backend, err := intercept.New(intercept.BackendMacvtap, intercept.Deps{Domains: conn, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := backend.Apply(ctx, ifc, vf); err != nil {
		t.Fatal(err)
	}
	wiredTo("after Apply", "nicvf0", "vepa", netlink.MACVLAN_MODE_VEPA)
	// The agent asks again with the live interface, or after a restart:
	// the same VF, and the diversion is in place.
	if again, err := intercept.VFParent(ctx, host, labNS, "nicvf0", ifc.MAC); again != vf || err != nil {
		t.Errorf("VFParent after Apply = %q, %v", again, err)
	}
	if again, err := intercept.VFParent(ctx, host, labNS, "nicpf", ifc.MAC); again != vf || err != nil {
		t.Errorf("VFParent(PF) after Apply = %q, %v", again, err)
	}
	if ok, err := backend.Applied(ctx, ifc, vf); !ok || err != nil {
		t.Errorf("Applied = %v, %v", ok, err)
	}
	pingsLeaveThrough("on the VF", "nicvf0", "nicpf")

	if err := backend.Revert(ctx, ifc); err != nil {
		t.Fatal(err)
	}
	wiredTo("after Revert", "nicpf", "bridge", netlink.MACVLAN_MODE_BRIDGE)
	pingsLeaveThrough("back on the PF", "nicpf", "nicvf0")
}
