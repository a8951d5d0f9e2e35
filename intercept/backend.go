package intercept

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/vsagent/vsagent/sriov"
)

// Backend names, as the [intercept] backend setting spells them.
const (
	BackendTCRedirect = "tc-redirect"
	BackendMacvtap    = "macvtap"
	BackendSwitchdev  = "switchdev"
	BackendSRIOVVLAN  = "sriov-vlan"
)

var (
	// ErrUnavailable reports a backend that does not exist or cannot work on
	// this host.
	ErrUnavailable = errors.New("intercept backend not available on this host")
	// ErrUnsupported reports an interface the backend cannot divert (a
	// direct interface given to tc-redirect, a tap given to macvtap).
	ErrUnsupported = errors.New("interface not supported by this backend")
	// ErrNoInterface reports that the interface to divert, or the port to
	// divert it to, does not exist.
	ErrNoInterface = errors.New("interface not found")
	// ErrGuestNotRunning reports a change that needs a running guest.
	ErrGuestNotRunning = errors.New("guest is not running")
	// ErrRecord reports a diversion record in a guest's metadata that cannot
	// be read; it is left as it is.
	ErrRecord = errors.New("unreadable intercept record")
)

// Backend diverts a guest interface's frames and reverts the diversion.
// Every method is idempotent and safe to call again after a crash at any
// point: what a backend needs to revert exactly is kept in the kernel or in
// the guest's metadata, never only in memory.
type Backend interface {
	// Name is the backend's configuration name.
	Name() string
	// Apply diverts ifc's frames to port: the DM's port for tc-redirect;
	// for macvtap the parent to move the macvtap onto, or "" to keep the
	// parent and only switch the macvtap to VEPA mode.
	Apply(ctx context.Context, ifc Iface, port string) error
	// Revert restores ifc's wiring as it was before the first Apply.
	Revert(ctx context.Context, ifc Iface) error
	// Applied reports whether ifc is diverted to port right now.
	Applied(ctx context.Context, ifc Iface, port string) (bool, error)
	// Stale lists the diversions of this backend that exist on the host but
	// are not among keep, for a resync to revert. It may return what it
	// found together with an error about what it could not inspect.
	Stale(ctx context.Context, keep []Iface) ([]Iface, error)
}

// Delivery is how the distribution manager reaches an interface that a
// backend diverted, and how it tells that interface's frames apart from
// other guests' on a shared port.
type Delivery struct {
	// Port is the DM's link for frames to the interface: the guest's tap for
	// tc-redirect, a VF representor for switchdev, the DM's own end of the
	// parent for a macvtap in VEPA mode, the DM's VF for sriov-vlan.
	Port string
	// Dedicated means the interface's frames arrive on Port itself, not on
	// the DM's intercept port.
	Dedicated bool
	// VLAN is the 802.1Q tag the interface's frames carry on Port, in both
	// directions; 0 means untagged.
	VLAN uint16
	// Network, if not empty, is the L2 domain the interface belongs to as
	// the DM sees it, in place of Iface.Network: the VFs of one physical
	// function share its NIC's switch, whatever their PCI addresses.
	Network string
}

// Deliverer is implemented by backends whose diverted interfaces the DM
// does not reach through the interface's own host netdev (Iface.Target).
type Deliverer interface {
	// Delivery says how the DM reaches ifc once it is diverted to port
	// (the port Apply is given). It may be called before Apply, and must
	// then say what Apply will set up.
	Delivery(ctx context.Context, ifc Iface, port string) (Delivery, error)
}

// DeliveryOf asks b how the DM reaches ifc; backends that are not a
// Deliverer deliver to the interface's own netdev.
func DeliveryOf(ctx context.Context, b Backend, ifc Iface, port string) (Delivery, error) {
	if d, ok := b.(Deliverer); ok {
		return d.Delivery(ctx, ifc, port)
	}
	return Delivery{Port: ifc.Target}, nil
}

// Deps are what the backends need from the outside world.
type Deps struct {
	Logger *slog.Logger
	// NetNS is the path of the network namespace file whose links
	// tc-redirect and switchdev change (taps, representors) and where
	// macvtap finds the DM's end of a macvtap's parent; "" means the
	// agent's own namespace, which is where libvirt creates taps and
	// macvtaps.
	NetNS string
	// Domains is the libvirt connection macvtap and sriov-vlan work through.
	Domains Domains
	// SRIOV is the host's SR-IOV view for switchdev and sriov-vlan; nil
	// means the running system's, acting in NetNS.
	SRIOV *sriov.Host
}

// New returns the backend called name.
func New(name string, deps Deps) (Backend, error) {
	log := deps.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("backend", name)
	switch name {
	case BackendTCRedirect:
		return &tcRedirect{netNS: deps.NetNS, log: log}, nil
	case BackendMacvtap:
		if deps.Domains == nil {
			return nil, fmt.Errorf("intercept: %s needs a libvirt connection", name)
		}
		return &macvtap{dom: deps.Domains, netNS: deps.NetNS, log: log}, nil
	case BackendSwitchdev:
		return newSwitchdev(deps, log)
	case BackendSRIOVVLAN:
		return newSRIOVVLAN(deps, log)
	}
	return nil, fmt.Errorf("intercept: unknown backend %q: %w", name, ErrUnavailable)
}
