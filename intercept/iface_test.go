package intercept

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"libvirt.org/go/libvirtxml"
)

func loadDomain(t *testing.T, name string) *libvirtxml.Domain {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(string(doc)); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &d
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestInterfacesOf(t *testing.T) {
	const uuid = "1b6f0f5e-8a53-4c37-9b2a-0c9e2d4f7a0"
	tests := []struct {
		file string
		want []Iface
	}{
		{"domain-ethernet.xml", []Iface{
			{GuestUUID: uuid + "1", GuestName: "web-1", Type: TypeEthernet, Target: "vnet3", MAC: mac("52:54:00:0e:00:01")},
		}},
		{"domain-bridge.xml", []Iface{
			{GuestUUID: uuid + "2", GuestName: "web-2", Type: TypeBridge, Target: "vnet4", MAC: mac("52:54:00:0b:00:01"), Source: "br-guests"},
		}},
		{"domain-bridge-inactive.xml", []Iface{
			{GuestUUID: uuid + "2", GuestName: "web-2", Type: TypeBridge, MAC: mac("52:54:00:0b:00:01"), Source: "br-guests"},
		}},
		{"domain-network.xml", []Iface{
			{GuestUUID: uuid + "3", GuestName: "web-3", Type: TypeNetwork, Target: "vnet5", MAC: mac("52:54:00:4e:00:01"), Source: "virbr0"},
			{GuestUUID: uuid + "3", GuestName: "web-3", Index: 1, Type: TypeNetwork, MAC: mac("52:54:00:4e:00:02"), Source: "isolated"},
		}},
		{"domain-direct.xml", []Iface{
			{GuestUUID: uuid + "4", GuestName: "db-1", Type: TypeDirect, Target: "macvtap0", MAC: mac("52:54:00:d1:00:01"), Source: "enp3s0f0", Mode: "bridge"},
			{GuestUUID: uuid + "4", GuestName: "db-1", Index: 1, Type: TypeDirect, Target: "macvtap1", MAC: mac("52:54:00:d1:00:02"), Source: "enp3s0f1", Mode: "vepa"},
		}},
		{"domain-hostdev.xml", []Iface{
			{GuestUUID: uuid + "5", GuestName: "db-2", Type: TypeHostdev, MAC: mac("52:54:00:5f:00:01"), Source: "0000:03:10.2"},
		}},
		{"domain-mixed.xml", []Iface{
			{GuestUUID: uuid + "6", GuestName: "app-1", Type: TypeBridge, Target: "vnet10", MAC: mac("52:54:00:aa:00:01"), Source: "br0"},
			{GuestUUID: uuid + "6", GuestName: "app-1", Index: 1, Type: TypeDirect, Target: "macvtap7", MAC: mac("52:54:00:aa:00:02"), Source: "eth1", Mode: "private"},
			{GuestUUID: uuid + "6", GuestName: "app-1", Index: 2, Type: "user", MAC: mac("52:54:00:aa:00:03")},
			// A MAC that does not parse leaves MAC nil, not the interface out.
			{GuestUUID: uuid + "6", GuestName: "app-1", Index: 3, Type: TypeEthernet, Target: "tap-odd"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			dom := loadDomain(t, tt.file)
			for i := range tt.want {
				tt.want[i].Network = tt.want[i].Source // nothing here was moved
			}
			got := InterfacesOf(dom)
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(Iface{}, "XML")); diff != "" {
				t.Errorf("InterfacesOf (-want +got):\n%s", diff)
			}
			for i, ifc := range got {
				if ifc.XML != &dom.Devices.Interfaces[i] {
					t.Errorf("interface %d: XML does not point at its element", i)
				}
			}
		})
	}
	if got := InterfacesOf(&libvirtxml.Domain{Name: "empty"}); len(got) != 0 {
		t.Errorf("a domain without devices has interfaces: %+v", got)
	}
	if got := InterfacesOf(nil); got != nil {
		t.Errorf("InterfacesOf(nil) = %+v", got)
	}
}

func TestFindByMAC(t *testing.T) {
	dom := loadDomain(t, "domain-direct.xml")
	got, ok := findByMAC(dom, mac("52:54:00:D1:00:02"))
	if !ok || got.Target != "macvtap1" {
		t.Errorf("findByMAC = %+v, %v", got, ok)
	}
	if _, ok := findByMAC(dom, mac("52:54:00:d1:00:09")); ok {
		t.Error("found an interface that is not there")
	}
}
