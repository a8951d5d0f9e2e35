package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// ErrPaused reports a device change that needs the guest's vCPUs running: a
// PCI unplug completes only when the guest acknowledges it, so on a paused
// domain libvirt would report success after a timeout and remove the device
// at some later resume.
var ErrPaused = errors.New("domain is paused")

// detachPoll paces the wait for an unplug to complete; the guest usually
// acknowledges within a fraction of a second.
const detachPoll = 50 * time.Millisecond

// AttachInterface hot-plugs iface into the running domain. Its persistent
// definition is left alone.
func (c *Conn) AttachInterface(ctx context.Context, uuid string, iface *libvirtxml.DomainInterface) error {
	return c.changeLive(ctx, "attach interface", uuid, iface, func(d *libvirt.Domain, doc string) error {
		return d.AttachDeviceFlags(doc, libvirt.DOMAIN_DEVICE_MODIFY_LIVE)
	})
}

// UpdateInterface changes the live settings of the running domain's
// interface with iface's MAC that can change without unplugging it, such as
// the link state.
func (c *Conn) UpdateInterface(ctx context.Context, uuid string, iface *libvirtxml.DomainInterface) error {
	return c.changeLive(ctx, "update interface", uuid, iface, func(d *libvirt.Domain, doc string) error {
		return d.UpdateDeviceFlags(doc, libvirt.DOMAIN_DEVICE_MODIFY_LIVE)
	})
}

// changeLive runs change with iface's XML on the domain, which must be
// running (paused is fine).
func (c *Conn) changeLive(ctx context.Context, op, uuid string, iface *libvirtxml.DomainInterface, change func(*libvirt.Domain, string) error) error {
	doc, err := encodeInterface(iface)
	if err != nil {
		return fmt.Errorf("hypervisor: %s %s: %w", op, uuid, err)
	}
	return c.withDomain(ctx, op, uuid, func(d *libvirt.Domain) error {
		if err := requireActive(d); err != nil {
			return err
		}
		return change(d, doc)
	})
}

// DetachInterface hot-unplugs the running domain's interface with iface's
// MAC and returns once libvirt no longer lists it; ctx bounds that wait. An
// interface that is not there is fine. A paused domain yields ErrPaused
// without a request being sent.
func (c *Conn) DetachInterface(ctx context.Context, uuid string, iface *libvirtxml.DomainInterface) error {
	doc, err := encodeInterface(iface)
	if err != nil {
		return fmt.Errorf("hypervisor: detach interface %s: %w", uuid, err)
	}
	mac, err := net.ParseMAC(iface.MAC.Address)
	if err != nil {
		return fmt.Errorf("hypervisor: detach interface %s: %w", uuid, err)
	}
	err = c.withDomain(ctx, "detach interface", uuid, func(d *libvirt.Domain) error {
		st, err := currentState(d)
		if err != nil {
			return err
		}
		switch {
		case !st.Active():
			return ErrNotRunning
		case st == StatePaused:
			return ErrPaused
		}
		present, err := hasInterface(d, mac)
		if err != nil || !present {
			return err
		}
		return d.DetachDeviceFlags(doc, libvirt.DOMAIN_DEVICE_MODIFY_LIVE)
	})
	if err != nil {
		return err
	}
	for {
		var present bool
		err := c.withDomain(ctx, "wait for interface removal", uuid, func(d *libvirt.Domain) error {
			var err error
			present, err = hasInterface(d, mac)
			return err
		})
		if err != nil || !present {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hypervisor: detach interface %s %s: guest has not released it: %w", uuid, mac, ctx.Err())
		case <-time.After(detachPoll):
		}
	}
}

// DomainUUIDs lists the UUIDs of every domain, active and inactive.
func (c *Conn) DomainUUIDs(ctx context.Context) ([]string, error) {
	doms, err := c.ListDomains(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(doms))
	for i, d := range doms {
		out[i] = d.UUID
	}
	return out, nil
}

func encodeInterface(iface *libvirtxml.DomainInterface) (string, error) {
	if iface == nil || iface.MAC == nil || iface.MAC.Address == "" {
		return "", errors.New("interface without a MAC address")
	}
	doc, err := iface.Marshal()
	if err != nil {
		return "", fmt.Errorf("encode interface: %w", err)
	}
	return doc, nil
}

// hasInterface reports whether the live definition of d lists an interface
// with the given MAC.
func hasInterface(d *libvirt.Domain, mac net.HardwareAddr) (bool, error) {
	doc, err := d.GetXMLDesc(0)
	if err != nil {
		return false, err
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(doc); err != nil {
		return false, fmt.Errorf("decode domain xml: %w", err)
	}
	return interfacePresent(&dom, mac), nil
}

func interfacePresent(dom *libvirtxml.Domain, mac net.HardwareAddr) bool {
	if dom.Devices == nil {
		return false
	}
	for _, x := range dom.Devices.Interfaces {
		if x.MAC == nil {
			continue
		}
		if m, err := net.ParseMAC(x.MAC.Address); err == nil && m.String() == mac.String() {
			return true
		}
	}
	return false
}
