package intercept

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// Domains is what the macvtap backend needs from libvirt; the hypervisor
// package's Conn provides it. Device changes apply to the running domain
// only: its persistent definition stays the operator's, so a guest that
// restarts comes back with its own wiring and is diverted again like a new
// one.
type Domains interface {
	// DomainXML returns the live definition of a running domain (inactive
	// false) or the persistent one of a stopped domain.
	DomainXML(ctx context.Context, uuid string, inactive bool) (*libvirtxml.Domain, error)
	// SetMetadata stores one element under namespace, "" removes it.
	SetMetadata(ctx context.Context, uuid, namespace, xml string) error
	// AttachInterface hot-plugs iface into the running domain.
	AttachInterface(ctx context.Context, uuid string, iface *libvirtxml.DomainInterface) error
	// DetachInterface hot-unplugs the interface with iface's MAC and returns
	// once it is gone. The guest's vCPUs must run to acknowledge the unplug,
	// so it fails on a paused guest.
	DetachInterface(ctx context.Context, uuid string, iface *libvirtxml.DomainInterface) error
	// UpdateInterface changes what can change live (the link state).
	UpdateInterface(ctx context.Context, uuid string, iface *libvirtxml.DomainInterface) error
	// DomainUUIDs lists every domain, running or not.
	DomainUUIDs(ctx context.Context) ([]string, error)
}

// macvtap diverts a direct interface by putting it in VEPA mode, where the
// macvtap sends every frame out through its parent (never switching between
// guests on the same parent), optionally on another parent such as a VF.
// libvirt refuses to change a direct interface live, so the interface is
// hot-unplugged and a copy with the new source is plugged in with the same
// MAC, PCI address and model: the guest sees the same NIC come back.
//
// While it swaps, the old interface's link is set down first: from then on
// the guest can neither send nor receive on it, paused or not. Unplugging
// needs the guest's cooperation (ACPI), so on a paused guest Apply stops
// there with the detach error: the interface stays down (fail closed) and a
// later Apply, once the guest runs, finishes the swap.
type macvtap struct {
	dom   Domains
	netNS string // where the parents' links are, for Delivery
	log   *slog.Logger
}

func (m *macvtap) Name() string { return BackendMacvtap }

// guestState is what one call reads before it acts.
type guestState struct {
	dom     *libvirtxml.Domain
	running bool
	recs    records
	live    *libvirtxml.DomainInterface // nil when the guest has no interface with the MAC
	rec     *diverted
}

func (m *macvtap) read(ctx context.Context, ifc Iface) (guestState, error) {
	if ifc.GuestUUID == "" || ifc.MAC == nil {
		return guestState{}, fmt.Errorf("%s: the macvtap backend needs the guest's UUID and the interface's MAC", ifc)
	}
	dom, err := m.dom.DomainXML(ctx, ifc.GuestUUID, false)
	if err != nil {
		return guestState{}, err
	}
	st := guestState{dom: dom, running: dom.ID != nil}
	if st.recs, err = recordsOf(dom); err != nil {
		return guestState{}, err
	}
	if live, ok := findByMAC(dom, ifc.MAC); ok {
		st.live = live.XML
	}
	if rec, ok := st.recs.find(ifc.MAC); ok {
		st.rec = &rec
	}
	return st, nil
}

// divertedCopy is Diverted(original, parent) made ready to plug in.
func divertedCopy(original *libvirtxml.DomainInterface, parent string) (*libvirtxml.DomainInterface, error) {
	x, err := Diverted(original, parent)
	if err != nil {
		return nil, err
	}
	return pluggable(x)
}

// pluggable is a deep copy of a direct interface without what libvirt
// assigns itself when it plugs one in: an alias that is not a user alias
// ("ua-…") and a generated macvtap name.
func pluggable(x *libvirtxml.DomainInterface) (*libvirtxml.DomainInterface, error) {
	if x.Source == nil || x.Source.Direct == nil {
		return nil, fmt.Errorf("not a direct interface: %w", ErrUnsupported)
	}
	c, err := copyInterface(x)
	if err != nil {
		return nil, err
	}
	if c.Alias != nil && !strings.HasPrefix(c.Alias.Name, "ua-") {
		c.Alias = nil
	}
	if c.Target != nil && (strings.HasPrefix(c.Target.Dev, "macvtap") || strings.HasPrefix(c.Target.Dev, "vnet")) {
		c.Target = nil
	}
	return c, nil
}

// copyInterface is a deep copy of x; libvirtxml has no other.
func copyInterface(x *libvirtxml.DomainInterface) (*libvirtxml.DomainInterface, error) {
	doc, err := x.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode interface: %w", err)
	}
	var c libvirtxml.DomainInterface
	if err := c.Unmarshal(doc); err != nil {
		return nil, fmt.Errorf("decode interface: %w", err)
	}
	return &c, nil
}

func sameSource(a, b *libvirtxml.DomainInterface) bool {
	if a == nil || b == nil || a.Source == nil || b.Source == nil || a.Source.Direct == nil || b.Source.Direct == nil {
		return false
	}
	return a.Source.Direct.Dev == b.Source.Direct.Dev && modeOf(a) == modeOf(b)
}

// modeOf is the macvtap mode; libvirt's default is vepa.
func modeOf(x *libvirtxml.DomainInterface) string {
	if x.Source.Direct.Mode == "" {
		return "vepa"
	}
	return x.Source.Direct.Mode
}

func linkState(x *libvirtxml.DomainInterface) string {
	if x == nil || x.Link == nil || x.Link.State == "" {
		return "up"
	}
	return x.Link.State
}

// withLink is a copy of x with the given <link> element (nil for none,
// which libvirt takes as up).
func withLink(x *libvirtxml.DomainInterface, link *libvirtxml.DomainInterfaceLink) (*libvirtxml.DomainInterface, error) {
	c, err := copyInterface(x)
	if err != nil {
		return nil, err
	}
	c.Link = nil
	if link != nil {
		c.Link = &libvirtxml.DomainInterfaceLink{State: link.State}
	}
	return c, nil
}

func (m *macvtap) Apply(ctx context.Context, ifc Iface, port string) error {
	if err := m.apply(ctx, ifc, port); err != nil {
		return fmt.Errorf("intercept: apply %s: %w", ifc, err)
	}
	return nil
}

func (m *macvtap) apply(ctx context.Context, ifc Iface, port string) error {
	st, err := m.read(ctx, ifc)
	if err != nil {
		return err
	}
	if !st.running {
		return ErrGuestNotRunning
	}
	want, recs, record, err := divertPlan(st.live, st.recs, ifc.MAC, port)
	if err != nil || want == nil {
		return err
	}
	if record {
		// The record goes first: whatever happens next, Revert knows what
		// to go back to.
		if err := m.store(ctx, ifc.GuestUUID, recs); err != nil {
			return err
		}
	}
	if want, err = pluggable(want); err != nil {
		return err
	}
	if err := m.swap(ctx, ifc.GuestUUID, st.live, want); err != nil {
		return err
	}
	m.log.Info("diverted interface", "guest", ifc.GuestUUID, "mac", ifc.MAC.String(),
		"parent", want.Source.Direct.Dev, "mode", want.Source.Direct.Mode)
	return nil
}

// swap replaces the live interface (nil if there is none) by next and checks
// that libvirt shows next afterwards.
func (m *macvtap) swap(ctx context.Context, uuid string, live, next *libvirtxml.DomainInterface) error {
	if live != nil {
		if linkState(live) != "down" {
			down, err := withLink(live, &libvirtxml.DomainInterfaceLink{State: "down"})
			if err != nil {
				return err
			}
			if err := m.dom.UpdateInterface(ctx, uuid, down); err != nil {
				return fmt.Errorf("set link down before unplugging: %w", err)
			}
		}
		if err := m.dom.DetachInterface(ctx, uuid, live); err != nil {
			return fmt.Errorf("unplug (the interface stays down): %w", err)
		}
	}
	if err := m.dom.AttachInterface(ctx, uuid, next); err != nil {
		return fmt.Errorf("plug in: %w", err)
	}
	dom, err := m.dom.DomainXML(ctx, uuid, false)
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	mac, _ := net.ParseMAC(next.MAC.Address)
	got, ok := findByMAC(dom, mac)
	if !ok || !sameSource(got.XML, next) {
		return fmt.Errorf("libvirt does not show the plugged-in interface as requested")
	}
	return nil
}

func (m *macvtap) store(ctx context.Context, uuid string, recs records) error {
	doc, err := recs.marshal()
	if err != nil {
		return err
	}
	if err := m.dom.SetMetadata(ctx, uuid, Namespace, doc); err != nil {
		return fmt.Errorf("store intercept record: %w", err)
	}
	return nil
}

func (m *macvtap) Revert(ctx context.Context, ifc Iface) error {
	if err := m.revert(ctx, ifc); err != nil {
		return fmt.Errorf("intercept: revert %s: %w", ifc, err)
	}
	return nil
}

func (m *macvtap) revert(ctx context.Context, ifc Iface) error {
	st, err := m.read(ctx, ifc)
	if err != nil || st.rec == nil {
		return err
	}
	original, err := st.rec.original()
	if err != nil {
		return err
	}
	// A stopped guest lost its live wiring with its QEMU process, and its
	// persistent definition was never changed: only the record is left.
	if st.running {
		switch {
		case st.live != nil && sameSource(st.live, original) && linkState(st.live) == linkState(original):
		case st.live != nil && sameSource(st.live, original):
			// An Apply that stopped after setting the link down.
			restored, err := withLink(st.live, original.Link)
			if err != nil {
				return err
			}
			if err := m.dom.UpdateInterface(ctx, ifc.GuestUUID, restored); err != nil {
				return fmt.Errorf("restore link state: %w", err)
			}
		default:
			next, err := pluggable(original)
			if err != nil {
				return err
			}
			if err := m.swap(ctx, ifc.GuestUUID, st.live, next); err != nil {
				return err
			}
		}
	}
	if err := m.store(ctx, ifc.GuestUUID, st.recs.without(ifc.MAC)); err != nil {
		return err
	}
	m.log.Info("reverted interface", "guest", ifc.GuestUUID, "mac", ifc.MAC.String(), "running", st.running)
	return nil
}

func (m *macvtap) Applied(ctx context.Context, ifc Iface, port string) (bool, error) {
	st, err := m.read(ctx, ifc)
	if err != nil {
		return false, fmt.Errorf("intercept: check %s: %w", ifc, err)
	}
	if !st.running || st.live == nil {
		return false, nil
	}
	want, _, _, err := divertPlan(st.live, st.recs, ifc.MAC, port)
	if err != nil {
		return false, fmt.Errorf("intercept: check %s: %w", ifc, err)
	}
	return want == nil, nil
}

// Stale returns the recorded diversions of every domain that are not in
// keep (matched by guest UUID and MAC), with GuestUUID, GuestName, Type, MAC
// and the original element as XML.
func (m *macvtap) Stale(ctx context.Context, keep []Iface) ([]Iface, error) {
	uuids, err := m.dom.DomainUUIDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("intercept: stale diversions: %w", err)
	}
	var stale []Iface
	var errs []error
	for _, uuid := range uuids {
		dom, err := m.dom.DomainXML(ctx, uuid, false)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", uuid, err))
			continue
		}
		recs, err := recordsOf(dom)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", uuid, err))
			continue
		}
		for _, d := range recs.Diverted {
			mac, _ := net.ParseMAC(d.MAC) // validated when parsed
			if kept(keep, uuid, mac) {
				continue
			}
			ifc := Iface{GuestUUID: uuid, GuestName: dom.Name, Type: TypeDirect, MAC: mac}
			if x, err := d.original(); err == nil {
				ifc.XML = x
			}
			stale = append(stale, ifc)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return stale, fmt.Errorf("intercept: stale diversions: %w", err)
	}
	return stale, nil
}

func kept(keep []Iface, uuid string, mac net.HardwareAddr) bool {
	for _, k := range keep {
		if k.GuestUUID == uuid && k.MAC.String() == mac.String() {
			return true
		}
	}
	return false
}

// Delivery: a macvtap in VEPA mode sends every frame out through its parent
// and takes, from what its parent receives, the frames addressed to its MAC.
// When the parent is the DM's redirect port (one end of a veth pair), the
// guest's frames arrive on the other end, the intercept port, like frames
// tc-redirect diverts; and a frame the DM writes into that other end is
// received on the parent, where the macvlan layer hands it to the macvtap
// by destination MAC. So the DM delivers to the intercept port, which the
// macvtaps of every guest share; their frames are told apart by source MAC,
// as for taps. (Writing to the macvtap's own netdev would not work: that
// sends the frame out through the parent, back to the DM.)
//
// Only a parent that is the port given, and a veth, is understood: with
// port "" the macvtap stays on its own parent, whose frames go to a switch
// outside the DM's reach, and a VF parent needs the NIC to hand its frames
// to the DM (the switchdev backend's representors), which this backend does
// not arrange. Both are ErrUnsupported, so that the interface is left out
// of the DM's rules (fail closed) rather than reached the wrong way.
func (m *macvtap) Delivery(ctx context.Context, ifc Iface, port string) (Delivery, error) {
	if port == "" {
		return Delivery{}, fmt.Errorf("intercept: delivery to %s: a macvtap left on its own parent in VEPA mode sends its frames out of the DM's reach: %w", ifc, ErrUnsupported)
	}
	peer, err := m.vethPeer(ctx, port)
	if err != nil {
		return Delivery{}, fmt.Errorf("intercept: delivery to %s through parent %s: %w", ifc, port, err)
	}
	return Delivery{Port: peer}, nil
}

func (m *macvtap) vethPeer(ctx context.Context, name string) (peer string, err error) {
	err = withRTNL(ctx, m.netNS, func(r *rtnl) error {
		peer, err = r.vethPeer(name)
		return err
	})
	return peer, err
}
