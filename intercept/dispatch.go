package intercept

import (
	"context"
	"errors"
	"fmt"
)

// ForHost returns the backend a host runs with [intercept] backend = name.
//
// A host usually has guests on taps (bridge, network, ethernet interfaces)
// and guests on macvtaps (direct interfaces) at the same time, and no one
// backend diverts both. For tc-redirect and macvtap, the backend returned
// therefore routes each interface by its type: taps to tc-redirect, direct
// interfaces to macvtap, whichever of the two name chose. Without a libvirt
// connection (deps.Domains nil) direct interfaces are refused with
// ErrUnsupported, as tc-redirect alone always did. The SR-IOV backends are
// returned as New makes them: they decide per VF, not per type.
func ForHost(name string, deps Deps) (Backend, error) {
	if name != BackendTCRedirect && name != BackendMacvtap {
		return New(name, deps)
	}
	taps, err := New(BackendTCRedirect, deps)
	if err != nil {
		return nil, err
	}
	d := &byType{name: name, taps: taps}
	if deps.Domains != nil {
		if d.direct, err = New(BackendMacvtap, deps); err != nil {
			return nil, err
		}
	} else if name == BackendMacvtap {
		return nil, fmt.Errorf("intercept: %s needs a libvirt connection", name)
	}
	return d, nil
}

// byType sends each interface to the backend that handles its type.
type byType struct {
	name   string
	taps   Backend // tc-redirect
	direct Backend // macvtap; nil when there is no libvirt connection
}

func (d *byType) Name() string { return d.name }

// backendFor picks the backend for ifc, nil if neither handles it. An Iface
// without a type is a bare link (an uplink given by name), which only
// tc-redirect diverts.
func (d *byType) backendFor(ifc Iface) Backend {
	switch ifc.Type {
	case "", TypeEthernet, TypeBridge, TypeNetwork:
		return d.taps
	case TypeDirect:
		if d.direct != nil {
			return d.direct
		}
	}
	return nil
}

func (d *byType) route(ifc Iface) (Backend, error) {
	if b := d.backendFor(ifc); b != nil {
		return b, nil
	}
	if ifc.Type == TypeDirect {
		return nil, fmt.Errorf("intercept: %s is a direct interface, and without a libvirt connection no backend diverts it: %w", ifc, ErrUnsupported)
	}
	return nil, fmt.Errorf("intercept: %s is a %q interface, which neither tc-redirect nor macvtap diverts: %w", ifc, ifc.Type, ErrUnsupported)
}

func (d *byType) Apply(ctx context.Context, ifc Iface, port string) error {
	b, err := d.route(ifc)
	if err != nil {
		return err
	}
	return b.Apply(ctx, ifc, port)
}

func (d *byType) Revert(ctx context.Context, ifc Iface) error {
	b, err := d.route(ifc)
	if err != nil {
		return err
	}
	return b.Revert(ctx, ifc)
}

func (d *byType) Applied(ctx context.Context, ifc Iface, port string) (bool, error) {
	b, err := d.route(ifc)
	if err != nil {
		return false, err
	}
	return b.Applied(ctx, ifc, port)
}

// Delivery is the routed backend's: a tap is reached through itself, a
// macvtap through its parent. An interface no backend here diverts (a
// hostdev, a user-mode NIC) has no port the DM could deliver to, and says
// so with an empty Delivery rather than an error: such interfaces belong
// to unmanaged guests too, whose wiring must not fail because of them
// (Apply refuses them for a guest that must be diverted).
func (d *byType) Delivery(ctx context.Context, ifc Iface, port string) (Delivery, error) {
	b := d.backendFor(ifc)
	if b == nil {
		return Delivery{}, nil
	}
	return DeliveryOf(ctx, b, ifc, port)
}

// Stale asks both backends with the whole keep list (each matches it its
// own way: tc-redirect by target device, macvtap by guest and MAC). The
// Ifaces returned carry their type, so Revert routes them back to the
// backend that found them. What one backend found is returned even when
// the other failed.
func (d *byType) Stale(ctx context.Context, keep []Iface) ([]Iface, error) {
	stale, err := d.taps.Stale(ctx, keep)
	if d.direct == nil {
		return stale, err
	}
	more, derr := d.direct.Stale(ctx, keep)
	return append(stale, more...), errors.Join(err, derr)
}
