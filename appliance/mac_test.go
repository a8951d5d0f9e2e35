package appliance

import (
	"bytes"
	"errors"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestDeriveMACVector pins the derivation: a change of scheme renames every
// appliance NIC on upgrade, so it must be deliberate (and bump macHashLabel).
func TestDeriveMACVector(t *testing.T) {
	got := deriveMAC(testHostID, "fw", 1, 0, 0).String()
	if want := "02:5a:9b:c8:ac:1a"; got != want {
		t.Errorf("deriveMAC = %s, want %s", got, want)
	}
}

func TestDeriveMACInputsMatter(t *testing.T) {
	type input struct {
		host, appliance string
		index, nic      int
		attempt         uint32
	}
	base := input{testHostID, "fw", 1, 0, 0}
	variants := map[string]input{
		"base":               base,
		"host":               {"0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9", "fw", 1, 0, 0},
		"appliance":          {testHostID, "ips", 1, 0, 0},
		"index":              {testHostID, "fw", 2, 0, 0},
		"nic":                {testHostID, "fw", 1, 1, 0},
		"attempt":            {testHostID, "fw", 1, 0, 1},
		"field boundary (a)": {testHostID + "f", "w", 1, 0, 0},
	}
	seen := map[string]string{}
	for name, in := range variants {
		mac := deriveMAC(in.host, in.appliance, in.index, in.nic, in.attempt)
		if again := deriveMAC(in.host, in.appliance, in.index, in.nic, in.attempt); !bytes.Equal(mac, again) {
			t.Errorf("%s: not deterministic: %s then %s", name, mac, again)
		}
		if other, dup := seen[mac.String()]; dup {
			t.Errorf("%s and %s both derive %s", name, other, mac)
		}
		seen[mac.String()] = name
	}
}

func TestDerivedMACsAreLocalUnicast(t *testing.T) {
	broadcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	zero := make(net.HardwareAddr, 6)
	for index := 1; index <= 64; index++ {
		for nic := range 4 {
			mac := deriveMAC(testHostID, "fw", index, nic, 0)
			if len(mac) != 6 || mac[0]&0x02 == 0 || mac[0]&0x01 != 0 {
				t.Fatalf("%s is not a locally administered unicast address", mac)
			}
			if bytes.Equal(mac, broadcast) || bytes.Equal(mac, zero) || !IsApplianceMAC(mac) {
				t.Fatalf("%s: broadcast, zero or without the appliance prefix", mac)
			}
		}
	}
}

func TestAllocateMACsAvoidsUsed(t *testing.T) {
	first := func(nic int, attempt uint32) net.HardwareAddr {
		return deriveMAC(testHostID, "fw", 1, nic, attempt)
	}
	tests := []struct {
		name string
		used MACSet
		want []net.HardwareAddr
	}{
		{"nil set", nil, []net.HardwareAddr{first(0, 0), first(1, 0), first(2, 0)}},
		{"empty set", NewMACMap(), []net.HardwareAddr{first(0, 0), first(1, 0), first(2, 0)}},
		{"unrelated set", NewMACMap(net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}), []net.HardwareAddr{first(0, 0), first(1, 0), first(2, 0)}},
		{"nic 1 taken", NewMACMap(first(1, 0)), []net.HardwareAddr{first(0, 0), first(1, 1), first(2, 0)}},
		{"nic 0 taken twice", NewMACMap(first(0, 0), first(0, 1)), []net.HardwareAddr{first(0, 2), first(1, 0), first(2, 0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := allocateMACs(testHostID, "fw", 1, 3, tt.used)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("MACs (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAllocateMACsPrefilledHost fills a host with the addresses of many
// existing instances and checks that a new one gets none of them.
func TestAllocateMACsPrefilledHost(t *testing.T) {
	used := NewMACMap()
	for index := 1; index <= 200; index++ {
		macs, err := allocateMACs(testHostID, "fw", index, 2, used)
		if err != nil {
			t.Fatal(err)
		}
		for _, mac := range macs {
			if used.Contains(mac) {
				t.Fatalf("instance %d got used MAC %s", index, mac)
			}
			used.Add(mac)
		}
	}
	// The same instance again, on a host that already has its addresses (for
	// example a leftover domain): it must move to fresh ones.
	again, err := allocateMACs(testHostID, "fw", 1, 2, used)
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range again {
		if used.Contains(mac) {
			t.Errorf("re-created instance got used MAC %s", mac)
		}
	}
	if len(used) != 400 {
		t.Errorf("%d distinct MACs for 400 NICs", len(used))
	}
}

func TestAllocateMACAvoidsOwnNICs(t *testing.T) {
	taken := NewMACMap(deriveMAC(testHostID, "fw", 1, 1, 0))
	got, err := allocateMAC(testHostID, "fw", 1, 1, nil, taken)
	if err != nil {
		t.Fatal(err)
	}
	if want := deriveMAC(testHostID, "fw", 1, 1, 1); !bytes.Equal(got, want) {
		t.Errorf("got %s, want the attempt-1 address %s", got, want)
	}
}

func TestAllocateMACsExhausted(t *testing.T) {
	everything := macSetFunc(func(net.HardwareAddr) bool { return true })
	_, err := allocateMACs(testHostID, "fw", 1, 1, everything)
	if !errors.Is(err, ErrMACSpaceExhausted) {
		t.Fatalf("error %v, want ErrMACSpaceExhausted", err)
	}
}

func TestMACMap(t *testing.T) {
	lower, _ := net.ParseMAC("02:5a:aa:bb:cc:dd")
	upper, _ := net.ParseMAC("02:5A:AA:BB:CC:DD")
	eui64, _ := net.ParseMAC("02:5a:aa:bb:cc:dd:ee:ff")
	m := NewMACMap(lower, eui64)
	if !m.Contains(upper) {
		t.Error("lookup must not depend on the case the address was written in")
	}
	if m.Contains(eui64) || len(m) != 1 {
		t.Errorf("non-48-bit address was stored: %v", m)
	}
	if m.Contains(net.HardwareAddr{0x02, 0x5a, 0, 0, 0, 0}) || m.Contains(nil) {
		t.Error("Contains reports an address that was never added")
	}
	m.Add(net.HardwareAddr{0x02, 0x5a, 0, 0, 0, 0})
	if !m.Contains(net.HardwareAddr{0x02, 0x5a, 0, 0, 0, 0}) {
		t.Error("Add did not record the address")
	}
}

func TestIsApplianceMAC(t *testing.T) {
	tests := []struct {
		mac  net.HardwareAddr
		want bool
	}{
		{net.HardwareAddr{0x02, 0x5a, 1, 2, 3, 4}, true},
		{net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}, false},
		{net.HardwareAddr{0x02, 0x5b, 1, 2, 3, 4}, false},
		{net.HardwareAddr{0x02, 0x5a, 1, 2, 3, 4, 5, 6}, false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := IsApplianceMAC(tt.mac); got != tt.want {
			t.Errorf("IsApplianceMAC(%s) = %v, want %v", tt.mac, got, tt.want)
		}
	}
}
