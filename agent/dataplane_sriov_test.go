package agent

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/sourceroute"
	"github.com/vsagent/vsagent/sriov"
	"github.com/vsagent/vsagent/sriov/sriovtest"
)

// vfGuestDomain is a running guest holding the VF at PCI address
// 0000:3b:01.<fn> of the E810 table.
func vfGuestDomain(t *testing.T, name string, fn int, mac string) *libvirtxml.Domain {
	t.Helper()
	var dom libvirtxml.Domain
	doc := fmt.Sprintf(`<domain type="kvm" id="3"><name>%s</name><uuid>00000000-0000-4000-8000-00000000000%d</uuid><devices>
  <interface type="hostdev" managed="yes"><mac address="%s"/><driver name="vfio"/>
    <source><address type="pci" domain="0x0000" bus="0x3b" slot="0x01" function="0x%x"/></source>
  </interface></devices></domain>`, name, fn, mac, fn)
	if err := dom.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	return &dom
}

// TestDataplaneSRIOVDeliveries checks what the DM glue tells the engine
// about guests on SR-IOV VFs: with sriov-vlan, the DM's VF tagged with each
// guest VF's intercept VLAN; both guests in the network of their physical
// function, not one network per PCI address, so that they reach each other
// and an unmanaged neighbour is diverted with a managed one. The SR-IOV
// side is the E810 sysfs table and the recording netlink fake: no call may
// reach the NIC while the snapshot is built.
func TestDataplaneSRIOVDeliveries(t *testing.T) {
	ctx := context.Background()
	const dmVF = "dmvf"
	nl := sriovtest.NewNetlink()
	host := &sriov.Host{SysRoot: sriovtest.Build(t, "e810-legacy", map[string]string{"VF0": dmVF}), Netlink: nl, Logger: quietLogger()}
	backend, err := intercept.New(intercept.BackendSRIOVVLAN, intercept.Deps{SRIOV: host, Domains: noDomains{}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Intercept.Backend = intercept.BackendSRIOVVLAN
	d := &DistributionManager{cfg: DMConfig{Config: cfg, Backend: backend, RedirectPort: dmVF}, log: quietLogger(), guests: map[string]*dmGuest{}}
	pol := &config.Policy{Name: "web"}
	d.guests["a"] = &dmGuest{name: "db-a", policy: pol, ifaces: d.interfacesOf(ctx, vfGuestDomain(t, "db-a", 2, "52:54:00:c5:00:0a"))}
	d.guests["b"] = &dmGuest{name: "db-b", ifaces: d.interfacesOf(ctx, vfGuestDomain(t, "db-b", 1, "52:54:00:c5:00:0b"))}

	snap, errs := d.snapshotLocked(ctx)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	const pfNet = "sriov:0000:3b:00.0"
	want := []sourceroute.GuestRule{
		{Name: "db-a", Ready: true, Policy: policyRule(pol), Interfaces: []sourceroute.GuestInterface{
			{MAC: sourceroute.MAC{0x52, 0x54, 0, 0xc5, 0, 0x0a}, Port: dmVF, VLAN: 3802, Network: pfNet}}},
		{Name: "db-b", Ready: true, Interfaces: []sourceroute.GuestInterface{
			{MAC: sourceroute.MAC{0x52, 0x54, 0, 0xc5, 0, 0x0b}, Port: dmVF, VLAN: 3801, Network: pfNet}}},
	}
	if diff := cmp.Diff(want, snap.Guests); diff != "" {
		t.Errorf("guest rules (-want +got):\n%s", diff)
	}
	if calls := nl.Calls(); len(calls) != 0 {
		t.Errorf("building the snapshot changed the NIC: %v", calls)
	}
}

// noDomains is a libvirt connection that must not be used.
type noDomains struct{ intercept.Domains }
