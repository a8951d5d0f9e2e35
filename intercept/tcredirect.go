package intercept

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The tc-redirect backend's filter is recognisable by kind, priority and
// handle alone, so that an agent that restarted (or a resync looking for
// leftovers) finds it in the kernel without any state of its own: a u32
// filter at FilterPriority, protocol all, on the ingress block, whose node
// id is one of the two below. The node id also records whether the ingress
// qdisc was there before, which is what Revert needs to restore it exactly.
const (
	// FilterPriority is the priority of the diversion filter ('V','S').
	// Filters with a lower number run before it.
	FilterPriority uint16 = 0x5653
	// FilterNodeQdiscFound marks a filter added to an ingress (or clsact)
	// qdisc that existed before.
	FilterNodeQdiscFound uint32 = 0x56a
	// FilterNodeQdiscAdded marks a filter whose ingress qdisc vsagent added
	// and removes again with the last filter on it.
	FilterNodeQdiscAdded uint32 = 0x56b
)

// tcRedirect diverts what a guest sends on a tap: the guest's transmit is the
// tap's receive, so an ingress filter on the tap sees every frame the guest
// sends before the bridge (or routing) does, and a mirred egress redirect
// hands it to the DM's port instead. Frames the DM writes to the tap leave on
// its egress, towards the guest, and never pass that filter.
type tcRedirect struct {
	netNS string
	log   *slog.Logger
}

func (b *tcRedirect) Name() string { return BackendTCRedirect }

// ingressState is what the kernel holds on a link's ingress side.
type ingressState struct {
	// qdisc is the kind of the qdisc in the ingress slot: "ingress",
	// "clsact" or "" for none.
	qdisc string
	// ours are vsagent's filters; others counts the other filters at
	// FilterPriority.
	ours   []*netlink.U32
	others int
}

func isOurs(f netlink.Filter) (*netlink.U32, bool) {
	u, ok := f.(*netlink.U32)
	if !ok || u.Priority != FilterPriority || u.Protocol != unix.ETH_P_ALL {
		return nil, false
	}
	node := u.Handle & 0xfff
	if node != FilterNodeQdiscFound && node != FilterNodeQdiscAdded {
		return nil, false
	}
	return u, true
}

func (r *rtnl) ingress(link netlink.Link) (ingressState, error) {
	var st ingressState
	qdiscs, err := r.qdiscs(link.Attrs().Index)
	if err != nil {
		return st, err
	}
	for _, q := range qdiscs {
		if q.parent == netlink.HANDLE_INGRESS {
			st.qdisc = q.kind
		}
	}
	if st.qdisc == "" {
		return st, nil
	}
	filters, err := r.h.FilterList(link, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return st, fmt.Errorf("list ingress filters: %w", err)
	}
	for _, f := range filters {
		if u, ok := isOurs(f); ok {
			st.ours = append(st.ours, u)
		} else if f.Attrs().Priority == FilterPriority {
			st.others++
		}
	}
	return st, nil
}

// redirectsTo reports whether f matches every frame and steals it for the
// egress of the link with index port.
func redirectsTo(f *netlink.U32, port int) bool {
	if f.Sel == nil || len(f.Sel.Keys) != 1 || f.Sel.Keys[0].Mask != 0 || f.Sel.Flags&nl.TC_U32_TERMINAL == 0 || len(f.Actions) != 1 {
		return false
	}
	m, ok := f.Actions[0].(*netlink.MirredAction)
	return ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && m.Ifindex == port && m.Attrs().Action == netlink.TC_ACT_STOLEN
}

func ingressQdisc(link netlink.Link) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_INGRESS,
	}}
}

func divertFilter(link, port int, node uint32) *netlink.U32 {
	redirect := netlink.NewMirredAction(port)
	redirect.MirredAction = netlink.TCA_EGRESS_REDIR
	redirect.Action = netlink.TC_ACT_STOLEN
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: link,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Priority:  FilterPriority,
			Protocol:  unix.ETH_P_ALL,
			// No hash table in the handle: the kernel puts the node into the
			// priority's own root table, whatever number that got.
			Handle: node,
		},
		// One key with mask 0 matches every frame.
		Sel:     &nl.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Keys: []nl.TcU32Key{{}}},
		Actions: []netlink.Action{redirect},
	}
}

// tapLink checks that ifc names a link whose ingress carries what the guest
// sends: a tap (or a veth). A macvtap's guest traffic leaves through its
// egress and needs the macvtap backend.
func (b *tcRedirect) tapLink(r *rtnl, ifc Iface) (netlink.Link, error) {
	switch ifc.Type {
	case "", TypeEthernet, TypeBridge, TypeNetwork:
	default:
		return nil, fmt.Errorf("%s is a %s interface: %w", ifc, ifc.Type, ErrUnsupported)
	}
	if ifc.Target == "" {
		return nil, fmt.Errorf("%s has no target device (is the guest running?): %w", ifc, ErrNoInterface)
	}
	link, err := r.linkByName(ifc.Target)
	if err != nil {
		return nil, err
	}
	switch link.Type() {
	case "macvtap", "macvlan", "ipvtap", "ipvlan":
		return nil, fmt.Errorf("%s is a %s: %w", ifc.Target, link.Type(), ErrUnsupported)
	}
	return link, nil
}

func (b *tcRedirect) Apply(ctx context.Context, ifc Iface, port string) error {
	err := withRTNL(ctx, b.netNS, func(r *rtnl) error { return b.apply(ctx, r, ifc, port) })
	if err != nil {
		return fmt.Errorf("intercept: apply %s to %s: %w", ifc, port, err)
	}
	return nil
}

func (b *tcRedirect) apply(ctx context.Context, r *rtnl, ifc Iface, port string) error {
	link, err := b.tapLink(r, ifc)
	if err != nil {
		return err
	}
	dm, err := r.linkByName(port)
	if err != nil {
		return fmt.Errorf("DM port: %w", err)
	}
	if dm.Attrs().Index == link.Attrs().Index {
		return fmt.Errorf("%s cannot be diverted to itself", port)
	}
	st, err := r.ingress(link)
	if err != nil {
		return err
	}
	if len(st.ours) == 1 && redirectsTo(st.ours[0], dm.Attrs().Index) {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	node := FilterNodeQdiscFound
	switch {
	case len(st.ours) > 0:
		node = st.ours[0].Handle & 0xfff
		// Duplicates cannot arise from Apply; drop all but the one to reuse.
		for _, extra := range st.ours[1:] {
			if err := r.h.FilterDel(extra); err != nil {
				return fmt.Errorf("delete duplicate filter: %w", err)
			}
		}
	case st.qdisc == "":
		if err := r.h.QdiscAdd(ingressQdisc(link)); err != nil {
			return fmt.Errorf("add ingress qdisc: %w", err)
		}
		node = FilterNodeQdiscAdded
	}
	f := divertFilter(link.Attrs().Index, dm.Attrs().Index, node)
	if len(st.ours) > 0 {
		// A replacement must name the node with its hash table, or the
		// kernel takes it for a new node with a handle already in use.
		f.Handle = st.ours[0].Handle
		err = r.h.FilterReplace(f)
	} else {
		err = r.h.FilterAdd(f)
	}
	if err != nil {
		return fmt.Errorf("add redirect filter: %w", err)
	}
	b.log.Info("diverted interface", "iface", ifc.String(), "target", ifc.Target, "port", port,
		"qdisc_added", node == FilterNodeQdiscAdded, "retargeted", len(st.ours) > 0)
	return nil
}

func (b *tcRedirect) Revert(ctx context.Context, ifc Iface) error {
	if err := withRTNL(ctx, b.netNS, func(r *rtnl) error { return b.revert(r, ifc) }); err != nil {
		return fmt.Errorf("intercept: revert %s: %w", ifc, err)
	}
	return nil
}

func (b *tcRedirect) revert(r *rtnl, ifc Iface) error {
	link, err := b.tapLink(r, ifc)
	if errors.Is(err, ErrNoInterface) {
		// The tap went away with its guest, and its filters with it.
		return nil
	}
	if err != nil {
		return err
	}
	st, err := r.ingress(link)
	if err != nil || len(st.ours) == 0 {
		return err
	}
	addedQdisc := false
	for _, f := range st.ours {
		addedQdisc = addedQdisc || f.Handle&0xfff == FilterNodeQdiscAdded
	}
	if st.others == 0 {
		// Deleting by priority removes the filter's hash table with it;
		// deleting only the node would leave an empty table behind whenever
		// another u32 filter shares the qdisc.
		whole := &netlink.U32{FilterAttrs: netlink.FilterAttrs{
			LinkIndex: link.Attrs().Index,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Priority:  FilterPriority,
			Protocol:  unix.ETH_P_ALL,
		}}
		if err := r.h.FilterDel(whole); err != nil {
			return fmt.Errorf("delete redirect filters: %w", err)
		}
	} else {
		for _, f := range st.ours {
			if err := r.h.FilterDel(f); err != nil {
				return fmt.Errorf("delete redirect filter: %w", err)
			}
		}
	}
	removedQdisc := false
	if addedQdisc && st.qdisc == "ingress" {
		left, err := r.filters(link.Attrs().Index, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return err
		}
		// Someone else's filters on the qdisc vsagent added keep it alive.
		if len(left) == 0 {
			if err := r.h.QdiscDel(ingressQdisc(link)); err != nil {
				return fmt.Errorf("delete ingress qdisc: %w", err)
			}
			removedQdisc = true
		} else {
			b.log.Warn("keeping the ingress qdisc vsagent added: other filters use it now", "target", ifc.Target, "tc_entries", len(left))
		}
	}
	b.log.Info("reverted interface", "iface", ifc.String(), "target", ifc.Target, "qdisc_removed", removedQdisc)
	return nil
}

func (b *tcRedirect) Applied(ctx context.Context, ifc Iface, port string) (bool, error) {
	var ok bool
	err := withRTNL(ctx, b.netNS, func(r *rtnl) error {
		var err error
		ok, err = b.applied(r, ifc, port)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("intercept: check %s: %w", ifc, err)
	}
	return ok, nil
}

// applied is false without an error when the tap or the port is missing:
// nothing can be diverted then.
func (b *tcRedirect) applied(r *rtnl, ifc Iface, port string) (bool, error) {
	link, err := b.tapLink(r, ifc)
	if errors.Is(err, ErrNoInterface) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	dm, err := r.linkByName(port)
	if errors.Is(err, ErrNoInterface) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	st, err := r.ingress(link)
	if err != nil {
		return false, err
	}
	return len(st.ours) == 1 && redirectsTo(st.ours[0], dm.Attrs().Index), nil
}

// Stale returns, for every link in the namespace that carries a diversion
// filter and is not the target of an interface in keep, an Iface with only
// Target set, which Revert accepts.
func (b *tcRedirect) Stale(ctx context.Context, keep []Iface) ([]Iface, error) {
	var stale []Iface
	err := withRTNL(ctx, b.netNS, func(r *rtnl) error {
		var err error
		stale, err = b.stale(r, keep)
		return err
	})
	if err != nil {
		return stale, fmt.Errorf("intercept: stale diversions: %w", err)
	}
	return stale, nil
}

func (b *tcRedirect) stale(r *rtnl, keep []Iface) ([]Iface, error) {
	links, err := r.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var stale []Iface
	var errs []error
	for _, link := range links {
		name := link.Attrs().Name
		if slices.ContainsFunc(keep, func(k Iface) bool { return k.Target == name }) {
			continue
		}
		filters, err := r.h.FilterList(link, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			// A link that vanished in between has nothing left to revert.
			if _, gone := r.h.LinkByIndex(link.Attrs().Index); gone != nil {
				continue
			}
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		if slices.ContainsFunc(filters, func(f netlink.Filter) bool { _, ok := isOurs(f); return ok }) {
			stale = append(stale, Iface{Target: name})
		}
	}
	return stale, errors.Join(errs...)
}
