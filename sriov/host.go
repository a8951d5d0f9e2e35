package sriov

import (
	"errors"
	"log/slog"
	"time"
)

// Errors of discovery and configuration, checkable with errors.Is.
var (
	// ErrNotFound reports a PCI device, netdev, VF or representor that the
	// host does not have.
	ErrNotFound = errors.New("sriov: not found")
	// ErrNotPF reports a device that is not an SR-IOV physical function.
	ErrNotPF = errors.New("sriov: not an SR-IOV physical function")
	// ErrNotVF reports a device that is not an SR-IOV virtual function.
	ErrNotVF = errors.New("sriov: not an SR-IOV virtual function")
	// ErrInvalid reports a request the device cannot take (more VFs than it
	// has, a VF index out of range, a VLAN outside 0..4095).
	ErrInvalid = errors.New("sriov: invalid request")
	// ErrMACNotApplied reports a VF MAC address that did not read back as
	// set after every retry.
	ErrMACNotApplied = errors.New("sriov: VF MAC address did not stick")
)

// Defaults of Host's tunables.
const (
	// DefaultNumVFsTimeout bounds a write to sriov_numvfs. Creating or
	// destroying VFs resets functions and probes drivers; NICs with many
	// VFs take tens of seconds, and the write blocks all that time.
	DefaultNumVFsTimeout = 3 * time.Minute
	// DefaultMACAttempts is how often a VF MAC address is written before
	// ConfigureVF gives up: some drivers (i40e is the known case) apply it
	// only after the VF's reset completes, and silently drop a write made
	// during one.
	DefaultMACAttempts = 5
	// DefaultMACRetryDelay is the wait before the second attempt; it
	// doubles after every further one.
	DefaultMACRetryDelay = 100 * time.Millisecond
)

// Host is one machine's SR-IOV view: its sysfs tree and the three system
// libraries, each behind a thin interface so that tests use recording fakes
// and a fake sysfs tree.
type Host struct {
	// SysRoot is where sysfs is mounted: "/sys" in production, a temporary
	// tree in tests.
	SysRoot string
	// Netlink sets and reads VF settings on PFs and link flags.
	Netlink Netlink
	// Devlink reads and sets the eswitch mode.
	Devlink Devlink
	// Ethtool reads driver and firmware facts.
	Ethtool Ethtool
	// Logger receives one line per change; nil means slog.Default().
	Logger *slog.Logger

	// NumVFsTimeout bounds SetNumVFs; 0 means DefaultNumVFsTimeout.
	NumVFsTimeout time.Duration
	// MACAttempts and MACRetryDelay pace the MAC read-back loop; 0 means
	// the defaults.
	MACAttempts   int
	MACRetryDelay time.Duration
}

// NewHost returns the running system's host: sysfs at /sys and the system
// libraries acting in the network namespace whose file is at netNS ("" for
// the caller's own). Netlink sockets are opened per call, so the Host holds
// nothing open and needs no Close.
func NewHost(netNS string) *Host {
	return &Host{
		SysRoot: "/sys",
		Netlink: SystemNetlink(netNS),
		Devlink: SystemDevlink(netNS),
		Ethtool: SystemEthtool(),
	}
}

func (h *Host) log() *slog.Logger {
	if h.Logger == nil {
		return slog.Default()
	}
	return h.Logger
}

func (h *Host) numVFsTimeout() time.Duration {
	if h.NumVFsTimeout > 0 {
		return h.NumVFsTimeout
	}
	return DefaultNumVFsTimeout
}

func (h *Host) macAttempts() int {
	if h.MACAttempts > 0 {
		return h.MACAttempts
	}
	return DefaultMACAttempts
}

func (h *Host) macRetryDelay() time.Duration {
	if h.MACRetryDelay > 0 {
		return h.MACRetryDelay
	}
	return DefaultMACRetryDelay
}
