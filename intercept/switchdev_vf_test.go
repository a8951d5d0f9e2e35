package intercept

import (
	"context"
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/sriov"
	"github.com/vsagent/vsagent/sriov/sriovtest"
)

// vfDomain is a live domain XML with every kind of interface a VF can
// hide behind, and some it cannot.
const vfDomain = `<domain type='kvm' id='3'>
  <name>vf-guest</name>
  <uuid>2c7a0e4e-6a1d-4c55-9a40-5f0b0c0d0e0f</uuid>
  <devices>
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:e8:00:01'/>
      <driver name='vfio'/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x01' function='0x2'/></source>
      <vlan><tag id='42'/></vlan>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='direct'>
      <mac address='52:54:00:e8:00:02'/>
      <source dev='ens1f0v1' mode='passthrough'/>
      <target dev='macvtap4'/>
    </interface>
    <interface type='direct'>
      <mac address='52:54:00:e8:00:03'/>
      <source dev='ens1f0' mode='bridge'/>
      <target dev='macvtap5'/>
    </interface>
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:e8:00:04'/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x07' function='0x0'/></source>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:e8:00:05'/>
      <source bridge='br0'/>
      <target dev='vnet9'/>
    </interface>
  </devices>
</domain>`

func TestVFOf(t *testing.T) {
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(vfDomain); err != nil {
		t.Fatal(err)
	}
	ifaces := InterfacesOf(&dom)
	h := &sriov.Host{SysRoot: sriovtest.Build(t, "e810-legacy", nil)}
	tests := []struct {
		name     string
		ifc      Iface
		wantVF   int
		wantPF   string
		wantErrs []error
	}{
		{"hostdev VF (PCI address)", ifaces[0], 2, "0000:3b:00.0", nil},
		{"macvtap on a VF netdev", ifaces[1], 1, "0000:3b:00.0", nil},
		{"macvtap on the PF", ifaces[2], 0, "", []error{ErrUnsupported, sriov.ErrNotVF}},
		{"hostdev of a missing device", ifaces[3], 0, "", []error{ErrUnsupported, sriov.ErrNotFound}},
		{"bridge", ifaces[4], 0, "", []error{ErrUnsupported}},
		{"hostdev without an address", Iface{Type: TypeHostdev}, 0, "", []error{ErrUnsupported}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vf, err := VFOf(h, tt.ifc)
			for _, want := range tt.wantErrs {
				if !errors.Is(err, want) {
					t.Errorf("error %v does not match %v", err, want)
				}
			}
			if tt.wantErrs == nil && (err != nil || vf.Index != tt.wantVF || vf.PF != tt.wantPF) {
				t.Errorf("VFOf = %+v, %v; want VF %d of %s", vf, err, tt.wantVF, tt.wantPF)
			}
		})
	}
}

// TestVFParent: the E810's PF and VF netdevs are veths in a throwaway
// namespace. A VF with another guest's macvtap on it is taken; one with
// this guest's macvtap is chosen before a free one; a VF netdev is its
// own answer.
func TestVFParent(t *testing.T) {
	ctx := context.Background()
	ns, peer := netnstest.New(t), netnstest.New(t)
	names := map[string]string{"PF": "nicpf", "VF0": "nicvf0", "VF1": "nicvf1"}
	for _, n := range names {
		netnstest.Veth(t, netnstest.End{NS: ns, Name: n}, netnstest.End{NS: peer, Name: n})
	}
	h := &sriov.Host{SysRoot: sriovtest.Build(t, "e810-legacy", names)}
	mine, theirs := mustMAC("52:54:00:e8:00:01"), mustMAC("52:54:00:e8:00:99")
	addMacvtap := func(name, parent string, mac []byte) {
		t.Helper()
		p, err := ns.Netlink().LinkByName(parent)
		if err != nil {
			t.Fatal(err)
		}
		m := &netlink.Macvtap{Macvlan: netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: p.Attrs().Index, HardwareAddr: mac}, Mode: netlink.MACVLAN_MODE_VEPA}}
		if err := ns.Netlink().LinkAdd(m); err != nil {
			t.Fatal(err)
		}
	}
	parent := func() string {
		t.Helper()
		got, err := VFParent(ctx, h, nsPath(ns), "nicpf", mine)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	if got := parent(); got != "nicvf0" {
		t.Errorf("all free: %s, want nicvf0", got)
	}
	addMacvtap("mvt-theirs", "nicvf0", theirs)
	if got := parent(); got != "nicvf1" {
		t.Errorf("VF 0 taken: %s, want nicvf1", got)
	}
	addMacvtap("mvt-mine", "nicvf1", mine)
	if got := parent(); got != "nicvf1" {
		t.Errorf("mine on VF 1: %s, want nicvf1", got)
	}
	if got, err := VFParent(ctx, h, nsPath(ns), "nicvf1", mine); got != "nicvf1" || err != nil {
		t.Errorf("given a VF: %q, %v", got, err)
	}
	if _, err := VFParent(ctx, h, nsPath(ns), "nicpf", mustMAC("52:54:00:e8:00:77")); !errors.Is(err, ErrNoInterface) {
		t.Errorf("no VF left: %v, want ErrNoInterface", err)
	}
	if _, err := VFParent(ctx, h, nsPath(ns), "lo", mine); !errors.Is(err, ErrUnsupported) {
		t.Errorf("not a PF: %v, want ErrUnsupported", err)
	}
}
