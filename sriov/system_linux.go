package sriov

import (
	"errors"
	"fmt"
	"net"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// systemNetlink opens a handle per call: VFs change rarely, and nothing
// then outlives the call or pins a namespace.
type systemNetlink struct{ netNS string }

// SystemNetlink is Netlink through the kernel, acting on links in the
// network namespace whose file is at netNS ("" for the caller's own).
func SystemNetlink(netNS string) Netlink { return systemNetlink{netNS: netNS} }

func openHandle(netNS string, families ...int) (*netlink.Handle, error) {
	ns := netns.None()
	if netNS != "" {
		h, err := netns.GetFromPath(netNS)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", netNS, err)
		}
		defer h.Close()
		ns = h
	}
	h, err := netlink.NewHandleAt(ns, families...)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	return h, nil
}

// onLink runs fn with the link called name.
func (s systemNetlink) onLink(name string, fn func(*netlink.Handle, netlink.Link) error) error {
	h, err := openHandle(s.netNS, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		var missing netlink.LinkNotFoundError
		if errors.As(err, &missing) {
			return fmt.Errorf("link %s: %w", name, ErrNotFound)
		}
		return fmt.Errorf("link %s: %w", name, err)
	}
	return fn(h, link)
}

// unsupported is how the kernel reports a setting the driver has no
// callback for (IFLA_VF_TRUST and IFLA_VF_SPOOFCHK stay at -1).
const unsupported = ^uint32(0)

func (s systemNetlink) VFs(pf string) ([]VFSettings, error) {
	var out []VFSettings
	err := s.onLink(pf, func(_ *netlink.Handle, l netlink.Link) error {
		for _, v := range l.Attrs().Vfs {
			vs := VFSettings{
				Index:      v.ID,
				MAC:        v.Mac,
				VLAN:       VLAN{ID: v.Vlan, QoS: v.Qos},
				Rate:       Rate{MinMbps: int(v.MinTxRate), MaxMbps: int(v.MaxTxRate)},
				SpoofCheck: ToggleOf(v.Spoofchk),
				LinkState:  LinkState(v.LinkState + 1),
			}
			if v.Trust != unsupported {
				vs.Trust = ToggleOf(v.Trust != 0)
			}
			if v.LinkState > netlink.VF_LINK_STATE_DISABLE {
				vs.LinkState = LinkStateUnset
			}
			out = append(out, vs)
		}
		return nil
	})
	return out, err
}

func (s systemNetlink) SetVFVLAN(pf string, vf int, vlan VLAN) error {
	return s.onLink(pf, func(h *netlink.Handle, l netlink.Link) error {
		return h.LinkSetVfVlanQosProto(l, vf, vlan.ID, vlan.QoS, unix.ETH_P_8021Q)
	})
}

func (s systemNetlink) SetVFMAC(pf string, vf int, mac net.HardwareAddr) error {
	return s.onLink(pf, func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetVfHardwareAddr(l, vf, mac) })
}

func (s systemNetlink) SetVFRate(pf string, vf int, rate Rate) error {
	return s.onLink(pf, func(h *netlink.Handle, l netlink.Link) error {
		return h.LinkSetVfRate(l, vf, rate.MinMbps, rate.MaxMbps)
	})
}

func (s systemNetlink) SetVFSpoofCheck(pf string, vf int, on bool) error {
	return s.onLink(pf, func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetVfSpoofchk(l, vf, on) })
}

func (s systemNetlink) SetVFTrust(pf string, vf int, on bool) error {
	return s.onLink(pf, func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetVfTrust(l, vf, on) })
}

func (s systemNetlink) SetVFLinkState(pf string, vf int, state LinkState) error {
	if state == LinkStateUnset {
		return fmt.Errorf("%w: no link state", ErrInvalid)
	}
	return s.onLink(pf, func(h *netlink.Handle, l netlink.Link) error {
		return h.LinkSetVfState(l, vf, uint32(state-1))
	})
}

func (s systemNetlink) Promisc(netdev string) (bool, error) {
	var on bool
	err := s.onLink(netdev, func(_ *netlink.Handle, l netlink.Link) error {
		on = l.Attrs().RawFlags&unix.IFF_PROMISC != 0
		return nil
	})
	return on, err
}

func (s systemNetlink) SetPromisc(netdev string, on bool) error {
	return s.onLink(netdev, func(h *netlink.Handle, l netlink.Link) error {
		if on {
			return h.SetPromiscOn(l)
		}
		return h.SetPromiscOff(l)
	})
}

type systemDevlink struct{ netNS string }

// SystemDevlink is Devlink through generic netlink in the network namespace
// whose file is at netNS ("" for the caller's own).
func SystemDevlink(netNS string) Devlink { return systemDevlink{netNS: netNS} }

func (s systemDevlink) EswitchMode(pciAddr string) (string, error) {
	h, err := openHandle(s.netNS, unix.NETLINK_GENERIC)
	if err != nil {
		return "", err
	}
	defer h.Close()
	dev, err := h.DevLinkGetDeviceByName("pci", pciAddr)
	if err != nil {
		return "", err
	}
	return dev.Attrs.Eswitch.Mode, nil
}

func (s systemDevlink) SetEswitchMode(pciAddr, mode string) error {
	h, err := openHandle(s.netNS, unix.NETLINK_GENERIC)
	if err != nil {
		return err
	}
	defer h.Close()
	dev, err := h.DevLinkGetDeviceByName("pci", pciAddr)
	if err != nil {
		return err
	}
	return h.DevLinkSetEswitchMode(dev, mode)
}

type systemEthtool struct{}

// SystemEthtool is Ethtool through the SIOCETHTOOL ioctl, in the caller's
// network namespace (where PFs live).
func SystemEthtool() Ethtool { return systemEthtool{} }

func (systemEthtool) DriverInfo(netdev string) (DriverInfo, error) {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return DriverInfo{}, err
	}
	defer e.Close()
	info, err := e.DriverInfo(netdev)
	if err != nil {
		return DriverInfo{}, err
	}
	return DriverInfo{Driver: info.Driver, Version: info.Version, Firmware: info.FwVersion, BusInfo: info.BusInfo}, nil
}
