package intercept

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/sriov"
)

// RepresentorMarker starts the alias (IFLA_IFALIAS, `ip link set REP alias
// …`) that the switchdev backend gives a representor it diverted. The rest
// of the alias, URL-query encoded, is what Revert restores: whether the
// link was up, its bridge, its bridge port flags and its own alias. The
// kernel keeps it for as long as the representor exists, so an agent that
// restarted, or a resync looking for leftovers, finds every diversion
// without any state of its own.
const RepresentorMarker = "vsagent-switchdev/1 "

// maxAlias is IFALIASZ - 1: the kernel refuses longer aliases.
const maxAlias = 255

// switchdev diverts a guest on an SR-IOV VF of a NIC whose eswitch is in
// switchdev mode. There every frame the VF sends that no offload rule
// matches goes to the VF's representor netdev, and every frame written to
// the representor goes to the VF: the DM reads and writes the representor.
// Apply makes sure nothing else does: it takes the representor out of its
// bridge, brings it up, and refuses one with tc filters (rules the NIC
// could offload, taking frames past the DM).
type switchdev struct {
	host  *sriov.Host
	netNS string
	log   *slog.Logger
}

func newSwitchdev(deps Deps, log *slog.Logger) (Backend, error) {
	b := &switchdev{host: sriovHost(deps), netNS: deps.NetNS, log: log}
	pfs, err := b.host.PFs()
	if err != nil {
		return nil, fmt.Errorf("intercept: %s: %w: %w", BackendSwitchdev, ErrUnavailable, err)
	}
	for _, pf := range pfs {
		if mode, err := b.host.EswitchMode(pf); err == nil && mode == sriov.EswitchSwitchdev {
			return b, nil
		}
	}
	return nil, fmt.Errorf("intercept: %s: no SR-IOV NIC in switchdev mode (devlink dev eswitch set pci/ADDR mode switchdev): %w",
		BackendSwitchdev, ErrUnavailable)
}

func (b *switchdev) Name() string { return BackendSwitchdev }

// Delivery is the representor of ifc's VF, a port of its own: what the VF
// sends arrives there, what is written there reaches the VF. The VFs of one
// physical function share its network. The port Apply is given must be the
// representor or empty.
func (b *switchdev) Delivery(ctx context.Context, ifc Iface, _ string) (Delivery, error) {
	if err := ctx.Err(); err != nil {
		return Delivery{}, err
	}
	rep, pf, err := b.representorOf(ifc)
	if err != nil {
		return Delivery{}, fmt.Errorf("intercept: representor of %s: %w", ifc, err)
	}
	return Delivery{Port: rep, Dedicated: true, Network: PFNetwork(pf)}, nil
}

// representor resolves ifc's VF to its representor, after checking that
// the NIC is in switchdev mode. An Iface with only Target set (from Stale)
// names the representor itself.
func (b *switchdev) representor(ifc Iface) (string, error) {
	if ifc.Type == "" && ifc.Target != "" {
		return ifc.Target, nil
	}
	rep, _, err := b.representorOf(ifc)
	return rep, err
}

// representorOf resolves a guest interface's VF to its representor and
// physical function.
func (b *switchdev) representorOf(ifc Iface) (string, sriov.PF, error) {
	vf, err := VFOf(b.host, ifc)
	if err != nil {
		return "", sriov.PF{}, err
	}
	pf, err := b.host.PF(vf.PF)
	if err != nil {
		return "", sriov.PF{}, err
	}
	mode, err := b.host.EswitchMode(pf)
	if err != nil {
		return "", sriov.PF{}, err
	}
	if mode != sriov.EswitchSwitchdev {
		return "", sriov.PF{}, fmt.Errorf("the eswitch of %s is in %s mode, frames of its VFs never reach a representor: %w", pf.Address, mode, ErrUnavailable)
	}
	rep, err := b.host.Representor(vf)
	return rep, pf, err
}

// repState is what the kernel holds about a representor.
type repState struct {
	link     netlink.Link
	up       bool
	master   netlink.Link // nil if none
	brport   netlink.Protinfo
	filters  int
	record   url.Values // parsed marker alias, nil if none
	rawAlias string
}

func (r *rtnl) representorState(name string) (repState, error) {
	link, err := r.linkByName(name)
	if err != nil {
		return repState{}, err
	}
	a := link.Attrs()
	st := repState{link: link, up: a.RawFlags&unix.IFF_UP != 0, rawAlias: a.Alias}
	if rec, ok := parseRepresentorAlias(a.Alias); ok {
		st.record = rec
	}
	if a.MasterIndex != 0 {
		if st.master, err = r.h.LinkByIndex(a.MasterIndex); err != nil {
			return repState{}, fmt.Errorf("master of %s: %w", name, err)
		}
		if st.master.Type() == "bridge" {
			if st.brport, err = r.h.LinkGetProtinfo(link); err != nil {
				return repState{}, fmt.Errorf("bridge port flags of %s: %w", name, err)
			}
		}
	}
	if st.filters, err = r.ingressFilters(a.Index); err != nil {
		return repState{}, err
	}
	return st, nil
}

// ingressFilters counts the filters on a link's ingress block, if it has
// an ingress (or clsact) qdisc.
func (r *rtnl) ingressFilters(ifindex int) (int, error) {
	qdiscs, err := r.qdiscs(ifindex)
	if err != nil {
		return 0, err
	}
	for _, q := range qdiscs {
		if q.parent == netlink.HANDLE_INGRESS {
			filters, err := r.filters(ifindex, netlink.HANDLE_MIN_INGRESS)
			return len(filters), err
		}
	}
	return 0, nil
}

// parseRepresentorAlias reads a marker alias; ok is false for any other.
func parseRepresentorAlias(alias string) (url.Values, bool) {
	rest, ok := strings.CutPrefix(alias, RepresentorMarker)
	if !ok {
		return nil, false
	}
	v, err := url.ParseQuery(rest)
	if err != nil {
		return nil, false
	}
	return v, true
}

// Bridge port flags Revert restores, with their setters.
var brportFlags = []struct {
	name string
	get  func(netlink.Protinfo) bool
	set  func(*netlink.Handle, netlink.Link, bool) error
}{
	{"hairpin", func(p netlink.Protinfo) bool { return p.Hairpin }, (*netlink.Handle).LinkSetHairpin},
	{"guard", func(p netlink.Protinfo) bool { return p.Guard }, (*netlink.Handle).LinkSetGuard},
	{"fastleave", func(p netlink.Protinfo) bool { return p.FastLeave }, (*netlink.Handle).LinkSetFastLeave},
	{"rootblock", func(p netlink.Protinfo) bool { return p.RootBlock }, (*netlink.Handle).LinkSetRootBlock},
	{"learning", func(p netlink.Protinfo) bool { return p.Learning }, (*netlink.Handle).LinkSetLearning},
	{"flood", func(p netlink.Protinfo) bool { return p.Flood }, (*netlink.Handle).LinkSetFlood},
	{"isolated", func(p netlink.Protinfo) bool { return p.Isolated }, (*netlink.Handle).LinkSetIsolated},
	{"proxyarp", func(p netlink.Protinfo) bool { return p.ProxyArp }, (*netlink.Handle).LinkSetBrProxyArp},
	{"neighsuppress", func(p netlink.Protinfo) bool { return p.NeighSuppress }, (*netlink.Handle).LinkSetBrNeighSuppress},
}

// representorAlias is the marker alias recording st.
func representorAlias(st repState) (string, error) {
	v := url.Values{}
	v.Set("up", map[bool]string{true: "1", false: "0"}[st.up])
	if st.rawAlias != "" {
		v.Set("alias", st.rawAlias)
	}
	if st.master != nil {
		v.Set("master", st.master.Attrs().Name)
		var on []string
		for _, f := range brportFlags {
			if f.get(st.brport) {
				on = append(on, f.name)
			}
		}
		v.Set("brport", strings.Join(on, ","))
	}
	alias := RepresentorMarker + v.Encode()
	if len(alias) > maxAlias {
		return "", fmt.Errorf("%s: its alias is too long to keep in the marker (%d bytes, at most %d): %w",
			st.link.Attrs().Name, len(alias), maxAlias, ErrUnsupported)
	}
	return alias, nil
}

func (b *switchdev) Apply(ctx context.Context, ifc Iface, port string) error {
	err := withRTNL(ctx, b.netNS, func(r *rtnl) error { return b.apply(r, ifc, port) })
	if err != nil {
		return fmt.Errorf("intercept: apply %s: %w", ifc, err)
	}
	return nil
}

// checkPort resolves ifc's representor and checks that port names it.
func (b *switchdev) checkPort(ifc Iface, port string) (string, error) {
	rep, err := b.representor(ifc)
	if err != nil {
		return "", err
	}
	if port != "" && port != rep {
		return "", fmt.Errorf("the DM port must be the VF's representor %s, not %s: %w", rep, port, ErrUnsupported)
	}
	return rep, nil
}

func (b *switchdev) apply(r *rtnl, ifc Iface, port string) error {
	rep, err := b.checkPort(ifc, port)
	if err != nil {
		return err
	}
	st, err := r.representorState(rep)
	if err != nil {
		return err
	}
	if st.filters > 0 {
		return fmt.Errorf("representor %s has %d ingress tc filters: rules the NIC offloads take frames past the DM; remove them: %w",
			rep, st.filters, ErrUnsupported)
	}
	if st.record == nil {
		if st.master != nil && st.master.Type() != "bridge" {
			return fmt.Errorf("representor %s is a port of %s %s, which vsagent cannot restore; take it out first: %w",
				rep, st.master.Type(), st.master.Attrs().Name, ErrUnsupported)
		}
		// The record goes first: whatever happens next, Revert knows what
		// to go back to.
		alias, err := representorAlias(st)
		if err != nil {
			return err
		}
		if err := r.h.LinkSetAlias(st.link, alias); err != nil {
			return fmt.Errorf("record in the alias of %s: %w", rep, err)
		}
	}
	if st.master != nil {
		if err := r.h.LinkSetNoMaster(st.link); err != nil {
			return fmt.Errorf("take %s out of %s: %w", rep, st.master.Attrs().Name, err)
		}
	}
	if !st.up {
		if err := r.h.LinkSetUp(st.link); err != nil {
			return fmt.Errorf("set %s up: %w", rep, err)
		}
	}
	if st.record == nil || st.master != nil || !st.up {
		b.log.Info("diverted interface", "iface", ifc.String(), "representor", rep, "was_bridged", st.master != nil, "was_up", st.up)
	}
	return nil
}

func (b *switchdev) Revert(ctx context.Context, ifc Iface) error {
	err := withRTNL(ctx, b.netNS, func(r *rtnl) error { return b.revert(r, ifc) })
	if err != nil {
		return fmt.Errorf("intercept: revert %s: %w", ifc, err)
	}
	return nil
}

func (b *switchdev) revert(r *rtnl, ifc Iface) error {
	rep, err := b.representor(ifc)
	if err != nil {
		return err
	}
	st, err := r.representorState(rep)
	if errors.Is(err, ErrNoInterface) {
		// The representor went with its VF, and the diversion with it.
		return nil
	}
	if err != nil || st.record == nil {
		return err
	}
	if name := st.record.Get("master"); name != "" && st.master == nil {
		master, err := r.linkByName(name)
		if err != nil {
			return fmt.Errorf("bridge to put %s back into: %w", rep, err)
		}
		if err := r.h.LinkSetMaster(st.link, master); err != nil {
			return fmt.Errorf("put %s back into %s: %w", rep, name, err)
		}
		// A new bridge port starts with the kernel's default flags.
		now, err := r.h.LinkGetProtinfo(st.link)
		if err != nil {
			return fmt.Errorf("bridge port flags of %s: %w", rep, err)
		}
		want := strings.Split(st.record.Get("brport"), ",")
		for _, f := range brportFlags {
			on := slices.Contains(want, f.name)
			if f.get(now) == on {
				continue
			}
			if err := f.set(r.h, st.link, on); err != nil {
				return fmt.Errorf("restore bridge port flag %s of %s: %w", f.name, rep, err)
			}
		}
	}
	if st.record.Get("up") == "0" && st.up {
		if err := r.h.LinkSetDown(st.link); err != nil {
			return fmt.Errorf("set %s down: %w", rep, err)
		}
	}
	// The record goes last, so that a revert cut short can be repeated.
	if err := r.h.LinkSetAlias(st.link, st.record.Get("alias")); err != nil {
		return fmt.Errorf("restore the alias of %s: %w", rep, err)
	}
	b.log.Info("reverted interface", "iface", ifc.String(), "representor", rep, "master", st.record.Get("master"))
	return nil
}

func (b *switchdev) Applied(ctx context.Context, ifc Iface, port string) (bool, error) {
	var ok bool
	err := withRTNL(ctx, b.netNS, func(r *rtnl) error {
		rep, err := b.checkPort(ifc, port)
		if err != nil {
			return err
		}
		st, err := r.representorState(rep)
		if errors.Is(err, ErrNoInterface) {
			return nil
		}
		ok = err == nil && st.record != nil && st.master == nil && st.up && st.filters == 0
		return err
	})
	if err != nil {
		return false, fmt.Errorf("intercept: check %s: %w", ifc, err)
	}
	return ok, nil
}

// Stale returns, for every representor in the namespace that carries the
// marker and is not the representor of an interface in keep, an Iface with
// only Target set, which Revert accepts. If an interface in keep cannot be
// resolved to its representor, it returns nothing but the error: reverting
// a representor someone still wants would put its guest back on the bridge,
// uninspected.
func (b *switchdev) Stale(ctx context.Context, keep []Iface) ([]Iface, error) {
	var kept []string
	for _, k := range keep {
		rep, err := b.representor(k)
		if err != nil {
			return nil, fmt.Errorf("intercept: stale diversions: kept %s: %w", k, err)
		}
		kept = append(kept, rep)
	}
	var stale []Iface
	err := withRTNL(ctx, b.netNS, func(r *rtnl) error {
		links, err := r.h.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			name := l.Attrs().Name
			if _, ok := parseRepresentorAlias(l.Attrs().Alias); ok && !slices.Contains(kept, name) {
				stale = append(stale, Iface{Target: name})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("intercept: stale diversions: %w", err)
	}
	return stale, nil
}
