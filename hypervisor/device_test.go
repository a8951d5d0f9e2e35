package hypervisor

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"

	"libvirt.org/go/libvirtxml"
)

// The device operations themselves need a real QEMU guest (the test driver
// does not implement them); intercept's macvtap test drives them against a
// private libvirtd. These tests cover what happens before libvirt is asked.
func TestDetachInterfaceGuards(t *testing.T) {
	ctx := context.Background()
	c := connectTest(t, Options{})
	d := defineTest(t, c, "dev")
	nic := &libvirtxml.DomainInterface{MAC: &libvirtxml.DomainInterfaceMAC{Address: "52:54:00:00:00:01"}}

	if err := c.DetachInterface(ctx, d.UUID, nic); !errors.Is(err, ErrNotRunning) {
		t.Errorf("detach from a stopped domain = %v, want ErrNotRunning", err)
	}
	if err := c.AttachInterface(ctx, d.UUID, nic); !errors.Is(err, ErrNotRunning) {
		t.Errorf("attach to a stopped domain = %v, want ErrNotRunning", err)
	}
	if err := c.UpdateInterface(ctx, d.UUID, nic); !errors.Is(err, ErrNotRunning) {
		t.Errorf("update on a stopped domain = %v, want ErrNotRunning", err)
	}
	if err := c.Start(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	if err := c.DetachInterface(ctx, d.UUID, nic); err != nil {
		t.Errorf("detach of an interface the domain does not have = %v, want nil", err)
	}
	if err := c.Suspend(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	if err := c.DetachInterface(ctx, d.UUID, nic); !errors.Is(err, ErrPaused) {
		t.Errorf("detach from a paused domain = %v, want ErrPaused", err)
	}
	for name, op := range map[string]func(context.Context, string, *libvirtxml.DomainInterface) error{
		"attach": c.AttachInterface, "detach": c.DetachInterface, "update": c.UpdateInterface,
	} {
		if err := op(ctx, d.UUID, &libvirtxml.DomainInterface{}); err == nil {
			t.Errorf("%s without a MAC was accepted", name)
		}
	}
	if err := c.DetachInterface(ctx, "00000000-0000-4000-8000-000000000099", nic); !errors.Is(err, ErrNotFound) {
		t.Errorf("detach from a missing domain = %v, want ErrNotFound", err)
	}
}

func TestDomainUUIDs(t *testing.T) {
	ctx := context.Background()
	c := connectTest(t, Options{})
	a, b := defineTest(t, c, "uuids"), defineTest(t, c, "uuids")
	if err := c.Start(ctx, b.UUID); err != nil {
		t.Fatal(err)
	}
	got, err := c.DomainUUIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{a.UUID, b.UUID} {
		if !slices.Contains(got, want) {
			t.Errorf("DomainUUIDs = %v, missing %s", got, want)
		}
	}
}

func TestInterfacePresent(t *testing.T) {
	dom := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{Interfaces: []libvirtxml.DomainInterface{
		{},
		{MAC: &libvirtxml.DomainInterfaceMAC{Address: "bogus"}},
		{MAC: &libvirtxml.DomainInterfaceMAC{Address: "52:54:00:AB:CD:EF"}},
	}}}
	tests := []struct {
		mac  string
		want bool
	}{
		{"52:54:00:ab:cd:ef", true},
		{"52:54:00:ab:cd:ee", false},
	}
	for _, tt := range tests {
		m, _ := net.ParseMAC(tt.mac)
		if got := interfacePresent(dom, m); got != tt.want {
			t.Errorf("interfacePresent(%s) = %v, want %v", tt.mac, got, tt.want)
		}
	}
	m, _ := net.ParseMAC("52:54:00:ab:cd:ef")
	if interfacePresent(&libvirtxml.Domain{}, m) {
		t.Error("a domain without devices has an interface")
	}
}
