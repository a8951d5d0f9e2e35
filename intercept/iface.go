package intercept

import (
	"fmt"
	"net"

	"libvirt.org/go/libvirtxml"
)

// Interface types, as libvirt names them in <interface type='...'>.
const (
	TypeEthernet = "ethernet"
	TypeBridge   = "bridge"
	TypeNetwork  = "network"
	TypeDirect   = "direct"
	TypeHostdev  = "hostdev"
)

// Iface is one network interface of a guest, as the live domain XML
// describes it. A guest's interface is identified by its MAC address: the
// index and the target device name change when an interface is detached and
// attached again.
type Iface struct {
	GuestUUID string
	GuestName string
	// Index is the position of the <interface> element in the domain XML.
	Index int
	// Type is ethernet, bridge, network, direct, hostdev or another of
	// libvirt's interface types.
	Type string
	// Target is the host netdev of the interface (the tap, or the macvtap of
	// a direct interface). Only a running guest has one.
	Target string
	MAC    net.HardwareAddr
	// Source is the bridge of a bridge interface (or of a network interface
	// whose live XML names it, else the network's name), the parent netdev
	// of a direct interface, the PCI address of a hostdev interface.
	Source string
	// Mode is the macvtap mode of a direct interface (bridge, vepa,
	// private, passthrough).
	Mode string
	// Network is the L2 domain the interface belongs to: its Source, except
	// for a direct interface the macvtap backend moved onto another parent
	// (the DM's port), which still belongs to its original parent's
	// segment, as recorded in the guest's metadata. It does not change when
	// the interface is diverted.
	Network string
	// XML is the element the rest was read from.
	XML *libvirtxml.DomainInterface
}

func (i Iface) String() string {
	name := i.GuestName
	if name == "" {
		name = i.GuestUUID
	}
	switch {
	case name != "" && i.MAC != nil:
		return fmt.Sprintf("%s/%s", name, i.MAC)
	case i.Target != "":
		return i.Target
	}
	return fmt.Sprintf("%s interface %d", name, i.Index)
}

// InterfacesOf lists the interfaces of dom. Pass the live XML of a running
// domain: target devices exist only there.
func InterfacesOf(dom *libvirtxml.Domain) []Iface {
	if dom == nil || dom.Devices == nil {
		return nil
	}
	// An unreadable record only costs the original network: the macvtap
	// backend reports it when it acts on the interface.
	recs, _ := recordsOf(dom)
	out := make([]Iface, 0, len(dom.Devices.Interfaces))
	for i := range dom.Devices.Interfaces {
		x := &dom.Devices.Interfaces[i]
		ifc := Iface{GuestUUID: dom.UUID, GuestName: dom.Name, Index: i, XML: x}
		if x.MAC != nil {
			// A malformed address stays nil rather than hiding the interface.
			ifc.MAC, _ = net.ParseMAC(x.MAC.Address)
		}
		if x.Target != nil {
			ifc.Target = x.Target.Dev
		}
		ifc.Type, ifc.Source, ifc.Mode = describeSource(x.Source)
		ifc.Network = ifc.Source
		if rec, ok := recs.find(ifc.MAC); ok && ifc.MAC != nil {
			if orig, err := rec.original(); err == nil && orig.Source != nil && orig.Source.Direct != nil {
				ifc.Network = orig.Source.Direct.Dev
			}
		}
		out = append(out, ifc)
	}
	return out
}

func describeSource(s *libvirtxml.DomainInterfaceSource) (typ, source, mode string) {
	if s == nil {
		return "", "", ""
	}
	switch {
	case s.Ethernet != nil:
		return TypeEthernet, "", ""
	case s.Bridge != nil:
		return TypeBridge, s.Bridge.Bridge, ""
	case s.Network != nil:
		if s.Network.Bridge != "" {
			return TypeNetwork, s.Network.Bridge, ""
		}
		return TypeNetwork, s.Network.Network, ""
	case s.Direct != nil:
		return TypeDirect, s.Direct.Dev, s.Direct.Mode
	case s.Hostdev != nil:
		return TypeHostdev, hostdevAddress(s.Hostdev), ""
	case s.User != nil:
		return "user", "", ""
	case s.VHostUser != nil:
		return "vhostuser", "", ""
	case s.Server != nil:
		return "server", "", ""
	case s.Client != nil:
		return "client", "", ""
	case s.MCast != nil:
		return "mcast", "", ""
	case s.UDP != nil:
		return "udp", "", ""
	case s.Internal != nil:
		return "internal", "", ""
	case s.VDPA != nil:
		return "vdpa", s.VDPA.Device, ""
	case s.Null != nil:
		return "null", "", ""
	case s.VDS != nil:
		return "vds", "", ""
	}
	return "", "", ""
}

func hostdevAddress(h *libvirtxml.DomainInterfaceSourceHostdev) string {
	if h.PCI == nil || h.PCI.Address == nil {
		return ""
	}
	a := h.PCI.Address
	return fmt.Sprintf("%04x:%02x:%02x.%x", deref(a.Domain), deref(a.Bus), deref(a.Slot), deref(a.Function))
}

func deref(p *uint) uint {
	if p == nil {
		return 0
	}
	return *p
}

// findByMAC returns the interface of dom with the given MAC address.
func findByMAC(dom *libvirtxml.Domain, mac net.HardwareAddr) (Iface, bool) {
	for _, ifc := range InterfacesOf(dom) {
		if ifc.MAC != nil && ifc.MAC.String() == mac.String() {
			return ifc, true
		}
	}
	return Iface{}, false
}
