package sriov

import (
	"fmt"
	"net"
)

// Toggle is an on/off VF setting that a driver may not report. In
// VFSettings ToggleUnset means "not reported"; in VFConfig it means "leave
// as it is".
type Toggle uint8

const (
	ToggleUnset Toggle = iota
	ToggleOff
	ToggleOn
)

// ToggleOf is ToggleOn for true, ToggleOff for false.
func ToggleOf(on bool) Toggle {
	if on {
		return ToggleOn
	}
	return ToggleOff
}

// String is the word `ip link` uses.
func (t Toggle) String() string {
	switch t {
	case ToggleOff:
		return "off"
	case ToggleOn:
		return "on"
	}
	return "unset"
}

// LinkState is a VF's administrative link state as the PF forces it.
type LinkState uint8

const (
	LinkStateUnset LinkState = iota
	// LinkStateAuto follows the PF's physical link.
	LinkStateAuto
	// LinkStateEnable is always up, whatever the cable says.
	LinkStateEnable
	// LinkStateDisable is always down.
	LinkStateDisable
)

// String is the word `ip link ... vf N state` takes.
func (s LinkState) String() string {
	switch s {
	case LinkStateAuto:
		return "auto"
	case LinkStateEnable:
		return "enable"
	case LinkStateDisable:
		return "disable"
	}
	return "unset"
}

// VLAN is a VF's port VLAN: the NIC tags what the VF sends and only
// delivers frames of that VLAN to it, untagged. ID 0 means none.
type VLAN struct {
	ID  int
	QoS int
}

// Rate limits a VF's transmit rate in Mbit/s; 0 means unlimited.
type Rate struct {
	MinMbps int
	MaxMbps int
}

// VFSettings is what the PF's driver reports about one VF (the "vf N"
// lines of `ip link show PF`).
type VFSettings struct {
	Index      int
	MAC        net.HardwareAddr
	VLAN       VLAN
	Rate       Rate
	SpoofCheck Toggle
	Trust      Toggle
	LinkState  LinkState
}

// Netlink is the part of rtnetlink that configures VFs. Every VF setting is
// made on the PF's netdev; each method names the `ip` command it equals.
// SystemNetlink is the real one.
type Netlink interface {
	// VFs reads every VF's settings: `ip link show PF`.
	VFs(pf string) ([]VFSettings, error)
	// SetVFVLAN sets the port VLAN (802.1Q): `ip link set PF vf N vlan V qos Q`.
	SetVFVLAN(pf string, vf int, vlan VLAN) error
	// SetVFMAC sets the VF's MAC address: `ip link set PF vf N mac M`.
	SetVFMAC(pf string, vf int, mac net.HardwareAddr) error
	// SetVFRate sets the transmit rate limits:
	// `ip link set PF vf N min_tx_rate A max_tx_rate B`.
	SetVFRate(pf string, vf int, rate Rate) error
	// SetVFSpoofCheck turns source MAC (and VLAN) anti-spoofing on or off:
	// `ip link set PF vf N spoofchk on|off`.
	SetVFSpoofCheck(pf string, vf int, on bool) error
	// SetVFTrust lets the VF change its MAC and go promiscuous, or not:
	// `ip link set PF vf N trust on|off`.
	SetVFTrust(pf string, vf int, on bool) error
	// SetVFLinkState forces the VF's link: `ip link set PF vf N state auto|enable|disable`.
	SetVFLinkState(pf string, vf int, state LinkState) error
	// Promisc reports the IFF_PROMISC flag of a netdev: `ip link show DEV`.
	Promisc(netdev string) (bool, error)
	// SetPromisc sets or clears it: `ip link set dev DEV promisc on|off`.
	SetPromisc(netdev string, on bool) error
}

// Eswitch modes, as devlink names them.
const (
	EswitchLegacy    = "legacy"
	EswitchSwitchdev = "switchdev"
)

// Devlink reads and sets a NIC's eswitch mode. SystemDevlink is the real
// one.
type Devlink interface {
	// EswitchMode is `devlink dev eswitch show pci/ADDR`: "legacy" or
	// "switchdev".
	EswitchMode(pciAddr string) (string, error)
	// SetEswitchMode is `devlink dev eswitch set pci/ADDR mode MODE`.
	SetEswitchMode(pciAddr, mode string) error
}

// DriverInfo is what `ethtool -i` prints about a netdev.
type DriverInfo struct {
	Driver   string
	Version  string
	Firmware string
	// BusInfo is the PCI address for a PCI NIC.
	BusInfo string
}

// Ethtool reads NIC facts. SystemEthtool is the real one.
type Ethtool interface {
	// DriverInfo is `ethtool -i NETDEV`.
	DriverInfo(netdev string) (DriverInfo, error)
}

// EswitchMode reads the eswitch mode of pf's NIC.
func (h *Host) EswitchMode(pf PF) (string, error) {
	mode, err := h.Devlink.EswitchMode(pf.Address)
	if err != nil {
		return "", fmt.Errorf("sriov: eswitch mode of %s: %w", pf.Address, err)
	}
	return mode, nil
}

// SetEswitchMode switches pf's NIC to mode (EswitchLegacy or
// EswitchSwitchdev). Drivers refuse while VFs are bound to their own VF
// driver; the error says so.
func (h *Host) SetEswitchMode(pf PF, mode string) error {
	if mode != EswitchLegacy && mode != EswitchSwitchdev {
		return fmt.Errorf("%w: eswitch mode %q", ErrInvalid, mode)
	}
	if err := h.Devlink.SetEswitchMode(pf.Address, mode); err != nil {
		return fmt.Errorf("sriov: set eswitch mode of %s to %s: %w", pf.Address, mode, err)
	}
	h.log().Info("eswitch mode set", "pf", pf.Address, "mode", mode)
	return nil
}

// NICInfo reads the driver, its version, the firmware version and the bus
// address of pf's uplink.
func (h *Host) NICInfo(pf PF) (DriverInfo, error) {
	if pf.Netdev == "" {
		return DriverInfo{}, fmt.Errorf("sriov: PF %s has no netdev: %w", pf.Address, ErrNotFound)
	}
	info, err := h.Ethtool.DriverInfo(pf.Netdev)
	if err != nil {
		return DriverInfo{}, fmt.Errorf("sriov: ethtool -i %s: %w", pf.Netdev, err)
	}
	return info, nil
}
