package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/internal/netnstest"
)

// recordingBackend notes which interfaces reach it.
type recordingBackend struct {
	name     string
	calls    []string
	stale    []Iface
	staleErr error
}

func (r *recordingBackend) Name() string { return r.name }
func (r *recordingBackend) note(op string, ifc Iface) {
	r.calls = append(r.calls, fmt.Sprintf("%s %s %s", op, ifc.Type, ifc))
}
func (r *recordingBackend) Apply(_ context.Context, ifc Iface, _ string) error {
	r.note("apply", ifc)
	return nil
}
func (r *recordingBackend) Revert(_ context.Context, ifc Iface) error {
	r.note("revert", ifc)
	return nil
}
func (r *recordingBackend) Applied(_ context.Context, ifc Iface, _ string) (bool, error) {
	r.note("applied", ifc)
	return true, nil
}
func (r *recordingBackend) Stale(context.Context, []Iface) ([]Iface, error) {
	return r.stale, r.staleErr
}

func TestByTypeRoutesEachInterface(t *testing.T) {
	ctx := context.Background()
	tap := Iface{Type: TypeBridge, Target: "vnet0"}
	eth := Iface{Type: TypeEthernet, Target: "vnet1"}
	netw := Iface{Type: TypeNetwork, Target: "vnet2"}
	uplink := Iface{Target: "eth0"}
	direct := Iface{Type: TypeDirect, GuestName: "g", MAC: mac("52:54:00:00:00:01")}
	hostdev := Iface{Type: TypeHostdev, GuestName: "g", MAC: mac("52:54:00:00:00:02")}

	taps, mv := &recordingBackend{name: "taps"}, &recordingBackend{name: "mv"}
	d := &byType{name: BackendTCRedirect, taps: taps, direct: mv}
	for _, ifc := range []Iface{tap, eth, netw, uplink, direct} {
		if err := d.Apply(ctx, ifc, "dm"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Applied(ctx, ifc, "dm"); err != nil {
			t.Fatal(err)
		}
		if err := d.Revert(ctx, ifc); err != nil {
			t.Fatal(err)
		}
	}
	var wantTaps []string
	for _, ifc := range []Iface{tap, eth, netw, uplink} {
		wantTaps = append(wantTaps, "apply "+ifc.Type+" "+ifc.Target, "applied "+ifc.Type+" "+ifc.Target, "revert "+ifc.Type+" "+ifc.Target)
	}
	if diff := cmp.Diff(wantTaps, taps.calls); diff != "" {
		t.Errorf("tc-redirect's calls (-want +got):\n%s", diff)
	}
	wantDirect := []string{"apply direct g/52:54:00:00:00:01", "applied direct g/52:54:00:00:00:01", "revert direct g/52:54:00:00:00:01"}
	if diff := cmp.Diff(wantDirect, mv.calls); diff != "" {
		t.Errorf("macvtap's calls (-want +got):\n%s", diff)
	}

	if err := d.Apply(ctx, hostdev, "dm"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Apply of a hostdev interface: %v, want ErrUnsupported", err)
	}
	noLibvirt := &byType{name: BackendTCRedirect, taps: taps}
	if err := noLibvirt.Apply(ctx, direct, "dm"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Apply of a direct interface without libvirt: %v, want ErrUnsupported", err)
	}

	// Delivery: a tap is reached through itself (tc-redirect is no
	// Deliverer), the rest is the routed backend's business.
	if got, err := d.Delivery(ctx, tap, "dm"); err != nil || got != (Delivery{Port: "vnet0"}) {
		t.Errorf("Delivery of a tap = %+v, %v", got, err)
	}
	if got, err := d.Delivery(ctx, hostdev, "dm"); err != nil || got != (Delivery{}) {
		t.Errorf("Delivery of a hostdev interface = %+v, %v; want none, without an error", got, err)
	}
}

func TestByTypeStaleMergesBoth(t *testing.T) {
	tapStale := Iface{Target: "vnet9"}
	directStale := Iface{Type: TypeDirect, GuestUUID: "u", MAC: mac("52:54:00:00:00:09")}
	broken := errors.New("libvirt went away")
	taps := &recordingBackend{name: "taps", stale: []Iface{tapStale}}
	mv := &recordingBackend{name: "mv", stale: []Iface{directStale}, staleErr: broken}
	d := &byType{name: BackendMacvtap, taps: taps, direct: mv}
	got, err := d.Stale(context.Background(), nil)
	if !errors.Is(err, broken) {
		t.Errorf("Stale error %v, want the macvtap backend's", err)
	}
	if diff := cmp.Diff([]Iface{tapStale, directStale}, got); diff != "" {
		t.Errorf("Stale (-want +got):\n%s", diff)
	}
	// What Stale returns goes back to the backend that found it.
	for _, ifc := range got {
		if err := d.Revert(context.Background(), ifc); err != nil {
			t.Fatal(err)
		}
	}
	if len(taps.calls) != 1 || len(mv.calls) != 1 {
		t.Errorf("reverts of stale diversions: tc-redirect %q, macvtap %q", taps.calls, mv.calls)
	}
}

func TestForHost(t *testing.T) {
	f := newFakeDomains(t, directIface)
	tests := []struct {
		name       string
		deps       Deps
		wantDirect bool
		wantErr    error
	}{
		{BackendTCRedirect, Deps{Domains: f}, true, nil},
		{BackendTCRedirect, Deps{}, false, nil},
		{BackendMacvtap, Deps{Domains: f}, true, nil},
		{BackendMacvtap, Deps{}, false, errors.New("needs a libvirt connection")},
		{"no-such", Deps{}, false, ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s libvirt=%v", tt.name, tt.deps.Domains != nil), func(t *testing.T) {
			b, err := ForHost(tt.name, tt.deps)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("ForHost = %v, want an error", b.Name())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d, ok := b.(*byType)
			if !ok || d.Name() != tt.name {
				t.Fatalf("ForHost(%q) = %T %q, want the dispatcher under the configured name", tt.name, b, b.Name())
			}
			if _, ok := d.taps.(*tcRedirect); !ok {
				t.Errorf("taps go to %T", d.taps)
			}
			if got := d.direct != nil; got != tt.wantDirect {
				t.Errorf("direct interfaces handled: %v, want %v", got, tt.wantDirect)
			}
		})
	}
}

// TestInterfacesKeepTheirNetworkWhenMoved: a direct interface moved onto the
// DM's port still belongs to its original parent's segment, read from the
// record, so the DM's flow zone and flooding do not change with the
// diversion.
func TestInterfacesKeepTheirNetworkWhenMoved(t *testing.T) {
	ctx := context.Background()
	f := newFakeDomains(t, directIface, secondIface)
	b := newMacvtap(t, f)
	if err := b.Apply(ctx, ifaceOf(t, f, directMAC), "vsa-dm0"); err != nil {
		t.Fatal(err)
	}
	d, err := f.DomainXML(ctx, f.uuid, false)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2]string{}
	for _, ifc := range InterfacesOf(d) {
		got[ifc.MAC.String()] = [2]string{ifc.Source, ifc.Network}
	}
	want := map[string][2]string{
		directMAC: {"vsa-dm0", "eth0"},
		secondMAC: {"eth1", "eth1"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("source and network by MAC (-want +got):\n%s", diff)
	}
}

// TestMacvtapDelivery: a macvtap moved onto one end of a veth is reached
// through the other end, shared with other guests; anything else the
// backend cannot tell and refuses.
func TestMacvtapDelivery(t *testing.T) {
	ns := netnstest.New(t)
	other := netnstest.New(t)
	netnstest.Veth(t, netnstest.End{NS: ns, Name: "dm0"}, netnstest.End{NS: ns, Name: "dm0-in"})
	netnstest.Veth(t, netnstest.End{NS: ns, Name: "half"}, netnstest.End{NS: other, Name: "away"})
	if _, err := ns.Exec(context.Background(), "ip", "link", "add", "nicbr0", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	b := &macvtap{dom: newFakeDomains(t, directIface), netNS: nsPath(ns), log: testLogger(t)}
	ifc := Iface{Type: TypeDirect, GuestName: "g", MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}, Source: "eth0"}
	ctx := context.Background()
	got, err := DeliveryOf(ctx, b, ifc, "dm0")
	if err != nil || got != (Delivery{Port: "dm0-in"}) {
		t.Errorf("Delivery through dm0 = %+v, %v; want the shared port dm0-in", got, err)
	}
	for _, tt := range []struct {
		port string
		want error
	}{
		{"", ErrUnsupported},        // VEPA on its own parent: out of reach
		{"nicbr0", ErrUnsupported},  // not a veth (a NIC, a VF)
		{"half", ErrUnsupported},    // the other end is elsewhere
		{"missing", ErrNoInterface}, // no such link
	} {
		if got, err := DeliveryOf(ctx, b, ifc, tt.port); !errors.Is(err, tt.want) {
			t.Errorf("Delivery through %q = %+v, %v; want %v", tt.port, got, err, tt.want)
		}
	}
}
