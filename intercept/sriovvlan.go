package intercept

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"

	"github.com/vsagent/vsagent/sriov"
)

// SRIOVVLANBase is the first intercept VLAN: while diverted, the guest's VF
// with index N carries port VLAN SRIOVVLANBase+N. The range is local to the
// host's NICs and must not be in use on the wire the PF is cabled to.
const SRIOVVLANBase = 3800

// InterceptVLAN is the port VLAN the sriov-vlan backend gives the VF with
// the given index while it is diverted; the DM maps a tag back to its guest
// the same way.
func InterceptVLAN(vfIndex int) (int, error) {
	v := SRIOVVLANBase + vfIndex
	if vfIndex < 0 || v > 4094 {
		return 0, fmt.Errorf("VF index %d has no intercept VLAN (%d + index must stay below 4095): %w", vfIndex, SRIOVVLANBase, ErrUnsupported)
	}
	return v, nil
}

// sriovVLAN diverts a guest on an SR-IOV VF of a NIC in legacy (VEB) mode,
// where nothing but VLANs and MACs steer the NIC's switch: the guest's VF
// gets its own port VLAN, so that the NIC tags everything the guest sends
// and delivers it to no VF but the DM's, which is trusted, promiscuous, has
// no port VLAN and does not check source MACs (it sends on the guests'
// behalf). The DM strips the tag of what it receives and tags what it
// delivers to a guest (Delivery.VLAN, sourceroute.GuestInterface.VLAN).
// Both VFs must belong to the same PF.
//
// The settings it changes are recorded in the guest's metadata
// (SRIOVNamespace) before it changes them; the DM VF's original settings
// are copied from record to record and restored with the last one.
type sriovVLAN struct {
	host *sriov.Host
	dom  Domains
	log  *slog.Logger
	// mu serialises changes: all guests share the DM's VF.
	mu sync.Mutex
}

func newSRIOVVLAN(deps Deps, log *slog.Logger) (Backend, error) {
	b := &sriovVLAN{host: sriovHost(deps), dom: deps.Domains, log: log}
	pfs, err := b.host.PFs()
	if err != nil {
		return nil, fmt.Errorf("intercept: %s: %w: %w", BackendSRIOVVLAN, ErrUnavailable, err)
	}
	if !slices.ContainsFunc(pfs, func(pf sriov.PF) bool { return pf.NumVFs >= 2 && pf.Netdev != "" }) {
		return nil, fmt.Errorf("intercept: %s: no SR-IOV PF with at least two VFs (one for the DM): %w", BackendSRIOVVLAN, ErrUnavailable)
	}
	if deps.Domains == nil {
		return nil, fmt.Errorf("intercept: %s needs a libvirt connection", BackendSRIOVVLAN)
	}
	return b, nil
}

func (b *sriovVLAN) Name() string { return BackendSRIOVVLAN }

// dmWants is what the DM's VF needs: no port VLAN, so it sees the tags;
// trusted, so that it may go promiscuous; no spoof check, since it sends
// with the guests' source MACs.
var dmWants = sriov.VFConfig{VLAN: &sriov.VLAN{}, SpoofCheck: sriov.ToggleOff, Trust: sriov.ToggleOn}

// guestWants is what a diverted guest's VF needs: the intercept VLAN, spoof
// checking (the DM tells guests apart by VLAN and MAC) and no trust (a
// trusted VF could go promiscuous itself). Toggles the driver does not
// report are left alone.
func guestWants(vlan int, have sriov.VFSettings) sriov.VFConfig {
	c := sriov.VFConfig{VLAN: &sriov.VLAN{ID: vlan}}
	if have.SpoofCheck != sriov.ToggleUnset {
		c.SpoofCheck = sriov.ToggleOn
	}
	if have.Trust != sriov.ToggleUnset {
		c.Trust = sriov.ToggleOff
	}
	return c
}

// vlanTarget is what one call works on.
type vlanTarget struct {
	running bool
	recs    vlanRecords
	rec     *vlanDiverted
	pf      sriov.PF
}

func (b *sriovVLAN) read(ctx context.Context, ifc Iface) (vlanTarget, error) {
	if ifc.GuestUUID == "" || ifc.MAC == nil {
		return vlanTarget{}, fmt.Errorf("the %s backend needs the guest's UUID and the interface's MAC", BackendSRIOVVLAN)
	}
	dom, err := b.dom.DomainXML(ctx, ifc.GuestUUID, false)
	if err != nil {
		return vlanTarget{}, err
	}
	t := vlanTarget{running: dom.ID != nil}
	if t.recs, err = vlanRecordsOf(dom); err != nil {
		return vlanTarget{}, err
	}
	if rec, ok := t.recs.find(ifc.MAC); ok {
		t.rec = &rec
	}
	return t, nil
}

// resolve finds the guest's VF and the DM's VF (port is its netdev) and
// checks that they can work together.
func (b *sriovVLAN) resolve(ifc Iface, port string) (sriov.PF, sriov.VF, sriov.VF, error) {
	vf, err := VFOf(b.host, ifc)
	if err != nil {
		return sriov.PF{}, sriov.VF{}, sriov.VF{}, err
	}
	if port == "" {
		return sriov.PF{}, sriov.VF{}, sriov.VF{}, fmt.Errorf("the %s backend diverts to the DM's VF: name its netdev: %w", BackendSRIOVVLAN, ErrNoInterface)
	}
	dm, err := b.host.VFByNetdev(port)
	if err != nil {
		return sriov.PF{}, sriov.VF{}, sriov.VF{}, fmt.Errorf("DM port %s: %w", port, err)
	}
	if dm.PF != vf.PF {
		return sriov.PF{}, sriov.VF{}, sriov.VF{}, fmt.Errorf("the DM's VF %s is on PF %s and the guest's on PF %s: a NIC's switch only hands frames between VFs of one PF: %w",
			port, dm.PF, vf.PF, ErrUnsupported)
	}
	if dm.Index == vf.Index {
		return sriov.PF{}, sriov.VF{}, sriov.VF{}, fmt.Errorf("the guest's VF is the DM's VF %s: %w", port, ErrUnsupported)
	}
	pf, err := b.host.PF(vf.PF)
	return pf, vf, dm, err
}

// Delivery says that the DM reaches a diverted guest through its own VF
// (port), with the guest VF's intercept VLAN on every frame both ways: the
// NIC tags what the guest sends and strips the tag of what it delivers to
// the guest's VF. The DM's VF carries every diverted guest, so it is no
// dedicated port. The VLAN follows from the VF index alone, so the answer
// holds before Apply and for a guest that is not running.
func (b *sriovVLAN) Delivery(_ context.Context, ifc Iface, port string) (Delivery, error) {
	pf, vf, _, err := b.resolve(ifc, port)
	if err == nil {
		var vlan int
		if vlan, err = InterceptVLAN(vf.Index); err == nil {
			return Delivery{Port: port, VLAN: uint16(vlan), Network: PFNetwork(pf)}, nil
		}
	}
	return Delivery{}, fmt.Errorf("intercept: delivery to %s: %w", ifc, err)
}

func (b *sriovVLAN) Apply(ctx context.Context, ifc Iface, port string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.apply(ctx, ifc, port); err != nil {
		return fmt.Errorf("intercept: apply %s: %w", ifc, err)
	}
	return nil
}

func (b *sriovVLAN) apply(ctx context.Context, ifc Iface, port string) error {
	t, err := b.read(ctx, ifc)
	if err != nil {
		return err
	}
	if !t.running {
		// libvirt sets a hostdev VF's VLAN and MAC when the guest starts:
		// anything set before would be overwritten.
		return ErrGuestNotRunning
	}
	pf, vf, dm, err := b.resolve(ifc, port)
	if err != nil {
		return err
	}
	vlan, err := InterceptVLAN(vf.Index)
	if err != nil {
		return err
	}
	if t.rec != nil && (t.rec.PF != vf.PF || t.rec.VF != vf.Index || t.rec.DMVF != dm.Index) {
		return fmt.Errorf("already diverted from VF %s/%d to DM VF %d: revert that first", t.rec.PF, t.rec.VF, t.rec.DMVF)
	}
	gs, err := b.host.VFSettings(pf, vf.Index)
	if err != nil {
		return err
	}
	ds, err := b.host.VFSettings(pf, dm.Index)
	if err != nil {
		return err
	}
	promisc, err := b.host.Netlink.Promisc(dm.Netdev)
	if err != nil {
		return fmt.Errorf("read flags of the DM's VF %s: %w", dm.Netdev, err)
	}
	if t.rec == nil {
		rec := vlanDiverted{MAC: ifc.MAC.String(), PF: vf.PF, VF: vf.Index, VLAN: vlan, DMVF: dm.Index, Guest: priorOf(gs), DM: priorOf(ds)}
		rec.DM.Promisc = sriov.ToggleOf(promisc).String()
		if shared, ok := b.sharedDMPrior(ctx, rec, ifc.GuestUUID); ok {
			rec.DM = shared
		}
		if gs.VLAN.ID == vlan {
			b.log.Warn("guest VF already carries its intercept VLAN without a record: its original VLAN is unknown",
				"iface", ifc.String(), "vlan", vlan)
		}
		// The record goes first: whatever happens next, Revert knows what
		// to go back to.
		if err := b.store(ctx, ifc.GuestUUID, t.recs.with(rec)); err != nil {
			return err
		}
	}
	// The DM's VF first: the guest's frames go nowhere until it takes them.
	if err := b.configure(ctx, pf, dm.Index, dmWants.Changes(ds)); err != nil {
		return fmt.Errorf("DM VF: %w", err)
	}
	if !promisc {
		if err := b.host.Netlink.SetPromisc(dm.Netdev, true); err != nil {
			return fmt.Errorf("DM VF %s promiscuous: %w", dm.Netdev, err)
		}
	}
	changes := guestWants(vlan, gs).Changes(gs)
	if err := b.configure(ctx, pf, vf.Index, changes); err != nil {
		return fmt.Errorf("guest VF: %w", err)
	}
	if !changes.Empty() {
		b.log.Info("diverted interface", "iface", ifc.String(), "pf", pf.Netdev, "vf", vf.Index, "vlan", vlan, "dm_vf", dm.Index)
	}
	return nil
}

func (b *sriovVLAN) configure(ctx context.Context, pf sriov.PF, index int, c sriov.VFConfig) error {
	if c.Empty() {
		return nil
	}
	return b.host.ConfigureVF(ctx, pf, index, c)
}

func (b *sriovVLAN) store(ctx context.Context, uuid string, recs vlanRecords) error {
	doc, err := recs.marshal()
	if err != nil {
		return err
	}
	if err := b.dom.SetMetadata(ctx, uuid, SRIOVNamespace, doc); err != nil {
		return fmt.Errorf("store sriov-vlan record: %w", err)
	}
	return nil
}

// othersOnDM walks every domain's records and returns those, other than
// rec itself, that use rec's DM VF. An unreadable domain or record is an
// error: nobody can tell whether it uses the DM VF.
func (b *sriovVLAN) othersOnDM(ctx context.Context, rec vlanDiverted, uuid string) ([]vlanDiverted, error) {
	uuids, err := b.dom.DomainUUIDs(ctx)
	if err != nil {
		return nil, err
	}
	var out []vlanDiverted
	var errs []error
	for _, u := range uuids {
		dom, err := b.dom.DomainXML(ctx, u, false)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u, err))
			continue
		}
		recs, err := vlanRecordsOf(dom)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u, err))
			continue
		}
		for _, d := range recs.VFs {
			if d.PF == rec.PF && d.DMVF == rec.DMVF && (u != uuid || d.MAC != rec.MAC) {
				out = append(out, d)
			}
		}
	}
	return out, errors.Join(errs...)
}

// sharedDMPrior is the DM VF's original state as another diverted guest's
// record holds it: once one guest is diverted, the DM VF's current state is
// vsagent's, not the operator's.
func (b *sriovVLAN) sharedDMPrior(ctx context.Context, rec vlanDiverted, uuid string) (vfPrior, bool) {
	others, err := b.othersOnDM(ctx, rec, uuid)
	if err != nil {
		b.log.Warn("cannot read every record of the DM's VF; recording its current state", "error", err)
	}
	if len(others) == 0 {
		return vfPrior{}, false
	}
	return others[0].DM, true
}

func (b *sriovVLAN) Revert(ctx context.Context, ifc Iface) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.revert(ctx, ifc); err != nil {
		return fmt.Errorf("intercept: revert %s: %w", ifc, err)
	}
	return nil
}

func (b *sriovVLAN) revert(ctx context.Context, ifc Iface) error {
	t, err := b.read(ctx, ifc)
	if err != nil || t.rec == nil {
		return err
	}
	rec := *t.rec
	pf, err := b.host.PF(rec.PF)
	if err != nil {
		return err
	}
	gs, err := b.host.VFSettings(pf, rec.VF)
	if err != nil {
		return err
	}
	if gs.VLAN.ID == rec.VLAN {
		if err := b.configure(ctx, pf, rec.VF, rec.Guest.config().Changes(gs)); err != nil {
			return fmt.Errorf("guest VF: %w", err)
		}
	} else {
		// libvirt restores a hostdev VF's settings when its guest stops.
		b.log.Info("guest VF no longer carries the intercept VLAN; left as it is", "iface", ifc.String(), "vf", rec.VF, "vlan", gs.VLAN.ID)
	}
	others, err := b.othersOnDM(ctx, rec, ifc.GuestUUID)
	if err != nil {
		return fmt.Errorf("records of the DM's VF (kept, retry): %w", err)
	}
	if len(others) == 0 {
		if err := b.restoreDM(ctx, pf, rec); err != nil {
			return err
		}
	}
	if err := b.store(ctx, ifc.GuestUUID, t.recs.without(ifc.MAC)); err != nil {
		return err
	}
	b.log.Info("reverted interface", "iface", ifc.String(), "vf", rec.VF, "dm_restored", len(others) == 0)
	return nil
}

// restoreDM puts the DM's VF back as the record holds it.
func (b *sriovVLAN) restoreDM(ctx context.Context, pf sriov.PF, rec vlanDiverted) error {
	ds, err := b.host.VFSettings(pf, rec.DMVF)
	if err != nil {
		return err
	}
	if err := b.configure(ctx, pf, rec.DMVF, rec.DM.config().Changes(ds)); err != nil {
		return fmt.Errorf("DM VF: %w", err)
	}
	if rec.DMVF >= len(pf.VFs) || pf.VFs[rec.DMVF].Netdev == "" || rec.DM.Promisc == "" {
		return nil
	}
	netdev := pf.VFs[rec.DMVF].Netdev
	promisc, err := b.host.Netlink.Promisc(netdev)
	if err != nil {
		return fmt.Errorf("read flags of the DM's VF %s: %w", netdev, err)
	}
	if want := rec.DM.Promisc == "on"; promisc != want {
		if err := b.host.Netlink.SetPromisc(netdev, want); err != nil {
			return fmt.Errorf("restore promiscuity of the DM's VF %s: %w", netdev, err)
		}
	}
	return nil
}

func (b *sriovVLAN) Applied(ctx context.Context, ifc Iface, port string) (bool, error) {
	ok, err := b.applied(ctx, ifc, port)
	if err != nil {
		return false, fmt.Errorf("intercept: check %s: %w", ifc, err)
	}
	return ok, nil
}

func (b *sriovVLAN) applied(ctx context.Context, ifc Iface, port string) (bool, error) {
	t, err := b.read(ctx, ifc)
	if err != nil || !t.running || t.rec == nil {
		return false, err
	}
	pf, vf, dm, err := b.resolve(ifc, port)
	if err != nil {
		return false, err
	}
	if t.rec.VF != vf.Index || t.rec.DMVF != dm.Index {
		return false, nil
	}
	gs, err := b.host.VFSettings(pf, vf.Index)
	if err != nil {
		return false, err
	}
	ds, err := b.host.VFSettings(pf, dm.Index)
	if err != nil {
		return false, err
	}
	promisc, err := b.host.Netlink.Promisc(dm.Netdev)
	if err != nil {
		return false, err
	}
	return guestWants(t.rec.VLAN, gs).Satisfied(gs) && dmWants.Satisfied(ds) && promisc, nil
}

// Stale returns the recorded diversions of every domain that are not in
// keep (matched by guest UUID and MAC), with GuestUUID, GuestName and MAC,
// which is all Revert needs.
func (b *sriovVLAN) Stale(ctx context.Context, keep []Iface) ([]Iface, error) {
	uuids, err := b.dom.DomainUUIDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("intercept: stale diversions: %w", err)
	}
	var stale []Iface
	var errs []error
	for _, uuid := range uuids {
		dom, err := b.dom.DomainXML(ctx, uuid, false)
		if err == nil {
			var recs vlanRecords
			if recs, err = vlanRecordsOf(dom); err == nil {
				for _, d := range recs.VFs {
					mac, _ := net.ParseMAC(d.MAC) // validated when parsed
					if !kept(keep, uuid, mac) {
						stale = append(stale, Iface{GuestUUID: uuid, GuestName: dom.Name, MAC: mac})
					}
				}
				continue
			}
		}
		errs = append(errs, fmt.Errorf("%s: %w", uuid, err))
	}
	if err := errors.Join(errs...); err != nil {
		return stale, fmt.Errorf("intercept: stale diversions: %w", err)
	}
	return stale, nil
}
