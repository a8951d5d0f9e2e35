package intercept

import (
	"context"
	"fmt"

	"github.com/vishvananda/netlink"
)

// FilterNodeHold marks the two filters of a start hold on a macvtap (see
// HoldAtStart): the kind and priority of tc-redirect's diversion filter,
// with a node id of its own, so that neither is taken for the other.
const FilterNodeHold uint32 = 0x56c

// HoldAtStart keeps a guest's direct interface from carrying any frame
// while libvirt starts the guest, with kernel means only: libvirt holds
// the guest's job during its start hook, so the live rewiring Apply does
// is impossible there (it would wait for the hook that waits for it).
//
// At "start begin" libvirt has created the macvtap, down, and QEMU does not
// run yet; libvirt sets the macvtap up just before the vCPUs start. A
// clsact qdisc on the macvtap with a filter on each side redirects every
// frame to port (the DM's redirect port, where the DM drops what it does
// not know): its egress carries what the guest sends, which so never
// reaches the parent, and its ingress what the parent's segment delivers
// to the guest, which so never reaches it. The hold ends with the macvtap:
// Apply replaces it by a new one on the DM's port once the guest runs.
//
// An interface that is already diverted (on port in VEPA mode, as a
// rewritten incoming XML wires it) needs no hold and gets none: a filter
// on its ingress would send the DM's own deliveries back to the DM.
func (m *macvtap) HoldAtStart(ctx context.Context, ifc Iface, port string) error {
	if err := m.holdAtStart(ctx, ifc, port); err != nil {
		return fmt.Errorf("intercept: hold %s at start: %w", ifc, err)
	}
	return nil
}

func (m *macvtap) holdAtStart(ctx context.Context, ifc Iface, port string) error {
	switch {
	case ifc.Type != TypeDirect:
		return fmt.Errorf("a %s interface is not a macvtap: %w", ifc.Type, ErrUnsupported)
	case ifc.Source == port && ifc.Mode == "vepa":
		return nil
	case ifc.Target == "":
		return fmt.Errorf("the guest's XML names no macvtap: %w", ErrNoInterface)
	}
	return withRTNL(ctx, m.netNS, func(r *rtnl) error { return m.hold(r, ifc, port) })
}

// hold puts the match-all redirects to port on both sides of the guest's
// macvtap, once.
func (m *macvtap) hold(r *rtnl, ifc Iface, port string) error {
	link, err := r.linkByName(ifc.Target)
	if err != nil {
		return err
	}
	if link.Type() != "macvtap" {
		return fmt.Errorf("%s is a %s: %w", ifc.Target, link.Type(), ErrUnsupported)
	}
	dm, err := r.linkByName(port)
	if err != nil {
		return fmt.Errorf("DM port: %w", err)
	}
	qdiscs, err := r.qdiscs(link.Attrs().Index)
	if err != nil {
		return err
	}
	clsact := false
	for _, q := range qdiscs {
		if q.parent == netlink.HANDLE_CLSACT {
			if q.kind != "clsact" {
				return fmt.Errorf("%s has an %s qdisc where the hold needs clsact: %w", ifc.Target, q.kind, ErrUnsupported)
			}
			clsact = true
		}
	}
	if !clsact {
		q := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
		if err := r.h.QdiscAdd(q); err != nil {
			return fmt.Errorf("add clsact qdisc: %w", err)
		}
	}
	for _, side := range []uint32{netlink.HANDLE_MIN_EGRESS, netlink.HANDLE_MIN_INGRESS} {
		held, err := holdsTo(r, link, side, dm.Attrs().Index)
		if err != nil {
			return err
		}
		if held {
			continue
		}
		f := divertFilter(link.Attrs().Index, dm.Attrs().Index, FilterNodeHold)
		f.Parent = side
		if err := r.h.FilterAdd(f); err != nil {
			return fmt.Errorf("add hold filter: %w", err)
		}
	}
	m.log.Info("held interface at start", "guest", ifc.GuestName, "mac", ifc.MAC.String(), "macvtap", ifc.Target, "port", port)
	return nil
}

// holdsTo reports whether side of link already has the hold's filter to
// the link with index port.
func holdsTo(r *rtnl, link netlink.Link, side uint32, port int) (bool, error) {
	filters, err := r.h.FilterList(link, side)
	if err != nil {
		return false, fmt.Errorf("list filters: %w", err)
	}
	for _, f := range filters {
		if u, ok := f.(*netlink.U32); ok && u.Priority == FilterPriority && u.Handle&0xfff == FilterNodeHold && redirectsTo(u, port) {
			return true, nil
		}
	}
	return false, nil
}

// HoldAtStart holds a direct interface when this host diverts them by
// macvtap; taps are held by diverting them (tc-redirect's Apply needs no
// libvirt).
func (d *byType) HoldAtStart(ctx context.Context, ifc Iface, port string) error {
	if m, ok := d.direct.(*macvtap); ok && ifc.Type == TypeDirect {
		return m.HoldAtStart(ctx, ifc, port)
	}
	return fmt.Errorf("intercept: hold %s at start: %w", ifc, ErrUnsupported)
}
