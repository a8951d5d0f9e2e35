package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/vsagent/vsagent/sriov"
)

// sriovHost is the host view the SR-IOV backends work with: the one in
// deps, else the running system's, acting in deps.NetNS.
func sriovHost(deps Deps) *sriov.Host {
	if deps.SRIOV != nil {
		return deps.SRIOV
	}
	h := sriov.NewHost(deps.NetNS)
	h.Logger = deps.Logger
	return h
}

// VFOf finds the SR-IOV VF behind a guest interface, from its domain XML:
// the PCI address of a hostdev interface (<interface type='hostdev'>, the
// VF passed through to the guest), or the parent netdev of a direct
// interface (a macvtap on the VF's host netdev). Anything else, including a
// direct interface on a PF or on a netdev that is no VF, matches
// ErrUnsupported (and the sriov error saying why).
func VFOf(h *sriov.Host, ifc Iface) (sriov.VF, error) {
	var (
		vf  sriov.VF
		err error
	)
	switch ifc.Type {
	case TypeHostdev:
		if ifc.Source == "" {
			return sriov.VF{}, fmt.Errorf("%s: hostdev interface without a PCI address: %w", ifc, ErrUnsupported)
		}
		vf, err = h.VFByAddress(ifc.Source)
	case TypeDirect:
		vf, err = h.VFByNetdev(ifc.Source)
	default:
		return sriov.VF{}, fmt.Errorf("%s is a %q interface, not one on a VF: %w", ifc, ifc.Type, ErrUnsupported)
	}
	if err != nil {
		return sriov.VF{}, fmt.Errorf("%s on %s: %w: %w", ifc, ifc.Source, ErrUnsupported, err)
	}
	return vf, nil
}

// VFParent picks the VF netdev that a macvtap on the PF netdev pf moves
// onto, for the macvtap backend's Apply, so that the guest's frames enter
// the NIC's switch (and, in switchdev mode, reach the VF's representor and
// the DM): the lowest-index VF of pf that has a host netdev in the network
// namespace netNS ("" for the caller's own) and carries no macvtap or
// macvlan with another MAC than mac. A VF that already carries mac's
// macvtap comes first, so the answer stays the same after Apply, for
// Applied and for a restarted agent; given a VF netdev (the live source of
// an interface moved earlier), VFParent returns it.
func VFParent(ctx context.Context, h *sriov.Host, netNS, pf string, mac net.HardwareAddr) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if _, err := h.VFByNetdev(pf); err == nil {
		return pf, nil
	}
	p, err := h.PFByNetdev(pf)
	if err != nil {
		return "", fmt.Errorf("intercept: VF parent for %s: %w: %w", pf, ErrUnsupported, err)
	}
	r, err := openRTNL(netNS)
	if err != nil {
		return "", fmt.Errorf("intercept: VF parent for %s: %w", pf, err)
	}
	defer r.Close()
	links, err := r.h.LinkList()
	if err != nil {
		return "", fmt.Errorf("intercept: VF parent for %s: list links: %w", pf, err)
	}
	// uppers maps a parent's index to the MACs of the macvtaps on it.
	uppers := map[int][]string{}
	for _, l := range links {
		switch l.(type) {
		case *netlink.Macvtap, *netlink.Macvlan:
			a := l.Attrs()
			uppers[a.ParentIndex] = append(uppers[a.ParentIndex], a.HardwareAddr.String())
		}
	}
	free := ""
	for _, vf := range p.VFs {
		if vf.Netdev == "" {
			continue
		}
		link, err := r.linkByName(vf.Netdev)
		if errors.Is(err, ErrNoInterface) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("intercept: VF parent for %s: %w", pf, err)
		}
		macs := uppers[link.Attrs().Index]
		for _, m := range macs {
			if m == mac.String() {
				return vf.Netdev, nil
			}
		}
		if len(macs) == 0 && free == "" {
			free = vf.Netdev
		}
	}
	if free == "" {
		return "", fmt.Errorf("intercept: PF %s has no VF with a free netdev here: %w", pf, ErrNoInterface)
	}
	return free, nil
}

// PFNetwork names the network of the VFs of pf for the DM: they share its
// NIC's switch, so they are one L2 domain (one flow zone, one broadcast
// domain) whatever their PCI addresses.
func PFNetwork(pf sriov.PF) string { return "sriov:" + pf.Address }
