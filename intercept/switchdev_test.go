package intercept

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/sriov"
	"github.com/vsagent/vsagent/sriov/sriovtest"
)

// The ConnectX-5 table's representors and the PCI addresses of the VFs
// they stand for.
const (
	rep0, rep1 = "enp3s0f0_0", "enp3s0f0_1"
	vf0Address = "0000:03:00.2"
	vf1Address = "0000:03:00.3"
	cx5PF      = "0000:03:00.0"
)

// simulatedNIC is a NIC in switchdev mode made of veth pairs: the VF ends
// (what a guest holding the VF sees) wherever the test puts them, the
// representor ends in host, named as the ConnectX-5 table names them,
// which describes the NIC to package sriov.
type simulatedNIC struct {
	host    *netnstest.NS
	sriov   *sriov.Host
	devlink *sriovtest.Devlink
}

func newSimulatedNIC(t *testing.T, host *netnstest.NS, vfEnds ...netnstest.End) *simulatedNIC {
	t.Helper()
	reps := []string{rep0, rep1}
	for i, end := range vfEnds {
		netnstest.Veth(t, end, netnstest.End{NS: host, Name: reps[i]})
	}
	dl := sriovtest.NewDevlink(map[string]string{cx5PF: sriov.EswitchSwitchdev, "0000:03:00.1": sriov.EswitchLegacy})
	return &simulatedNIC{host: host, devlink: dl, sriov: &sriov.Host{
		SysRoot: sriovtest.Build(t, "connectx5-switchdev", nil), Devlink: dl, Logger: testLogger(t)}}
}

func (s *simulatedNIC) backend(t *testing.T) Backend {
	t.Helper()
	b, err := New(BackendSwitchdev, Deps{NetNS: nsPath(s.host), SRIOV: s.sriov, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func vfGuest(name, address, mac string) Iface {
	return Iface{GuestUUID: "uuid-" + name, GuestName: name, Type: TypeHostdev, Source: address, MAC: mustMAC(mac)}
}

// repSnapshot is everything about a representor a diversion may change:
// the canonical dump (flags, master, qdiscs, filters), its alias and, on a
// bridge, its port flags.
type repSnapshot struct {
	Dump   string
	Alias  string
	BrPort string
}

func snapshotRep(t *testing.T, ns *netnstest.NS, name string) repSnapshot {
	t.Helper()
	d, err := DumpLink(context.Background(), nsPath(ns), name)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ns.Netlink().LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	s := repSnapshot{Dump: d.String(), Alias: l.Attrs().Alias}
	if l.Attrs().MasterIndex != 0 {
		p, err := ns.Netlink().LinkGetProtinfo(l)
		if err != nil {
			t.Fatal(err)
		}
		s.BrPort = p.String()
	}
	return s
}

// TestSwitchdevDivertsAndRevertsExactly: representor 0 is a bridge port
// with non-default port flags and an alias of its own; representor 1 is
// down and alone. Apply takes 0 out of the bridge and brings 1 up, a
// restarted agent finds both through Stale and reverts them, and both end
// as they began.
func TestSwitchdevDivertsAndRevertsExactly(t *testing.T) {
	ctx := context.Background()
	host, nic := netnstest.New(t), netnstest.New(t)
	s := newSimulatedNIC(t, host, netnstest.End{NS: nic, Name: "vf0"}, netnstest.End{NS: nic, Name: "vf1"})
	host.AddBridge(t, "br-nic")
	for _, cmd := range [][]string{
		{"ip", "link", "set", rep0, "master", "br-nic"},
		{"ip", "link", "set", rep0, "alias", "tenant-42 uplink"},
		{"ip", "link", "set", rep0, "type", "bridge_slave", "hairpin", "on", "learning", "off", "isolated", "on"},
		{"ip", "link", "set", rep1, "down"},
	} {
		if _, err := host.Exec(ctx, cmd[0], cmd[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string]repSnapshot{rep0: snapshotRep(t, host, rep0), rep1: snapshotRep(t, host, rep1)}
	if !strings.Contains(before[rep0].BrPort, "Hairpin") || strings.Contains(before[rep0].BrPort, "Learning") {
		t.Fatalf("setup: bridge port flags %s", before[rep0].BrPort)
	}
	b := s.backend(t)
	a, c := vfGuest("a", vf0Address, "52:54:00:c5:00:01"), vfGuest("c", vf1Address, "52:54:00:c5:00:02")

	dl, err := DeliveryOf(ctx, b, a, "")
	if want := (Delivery{Port: rep0, Dedicated: true, Network: "sriov:" + cx5PF}); err != nil || dl != want {
		t.Fatalf("DeliveryOf(a) = %+v, %v; want %+v", dl, err, want)
	}
	if dc, err := DeliveryOf(ctx, b, c, ""); err != nil || dc.Port != rep1 || dc.Network != dl.Network {
		t.Fatalf("DeliveryOf(c) = %+v, %v: want %s in a's network %s", dc, err, rep1, dl.Network)
	}
	port := dl.Port
	if err := b.Apply(ctx, a, port); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, c, ""); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		ifc Iface
		rep string
	}{{a, rep0}, {c, rep1}} {
		l, err := host.Netlink().LinkByName(tt.rep)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().MasterIndex != 0 || l.Attrs().Flags&1 == 0 || !strings.HasPrefix(l.Attrs().Alias, RepresentorMarker) {
			t.Errorf("%s after Apply: master %d flags %v alias %q", tt.rep, l.Attrs().MasterIndex, l.Attrs().Flags, l.Attrs().Alias)
		}
		if ok, err := b.Applied(ctx, tt.ifc, tt.rep); !ok || err != nil {
			t.Errorf("Applied(%s) = %v, %v", tt.rep, ok, err)
		}
	}
	diverted := snapshotRep(t, host, rep0)
	if err := b.Apply(ctx, a, rep0); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(diverted, snapshotRep(t, host, rep0)); diff != "" {
		t.Errorf("a second Apply changed the representor:\n%s", diff)
	}

	restarted := s.backend(t)
	stale, err := restarted.Stale(ctx, []Iface{a})
	if err != nil || len(stale) != 1 || stale[0].Target != rep1 {
		t.Fatalf("Stale(a kept) = %+v, %v; want representor 1", stale, err)
	}
	if stale, err := restarted.Stale(ctx, nil); err != nil || len(stale) != 2 {
		t.Errorf("Stale(nothing kept) = %+v, %v; want both", stale, err)
	}
	for _, ifc := range []Iface{a, stale[0]} {
		if err := restarted.Revert(ctx, ifc); err != nil {
			t.Fatal(err)
		}
	}
	for _, rep := range []string{rep0, rep1} {
		if diff := cmp.Diff(before[rep], snapshotRep(t, host, rep)); diff != "" {
			t.Errorf("%s after Revert (-before +after):\n%s", rep, diff)
		}
	}
	if ok, err := restarted.Applied(ctx, a, rep0); ok || err != nil {
		t.Errorf("Applied after Revert = %v, %v", ok, err)
	}
	if err := restarted.Revert(ctx, a); err != nil {
		t.Errorf("second Revert: %v", err)
	}
	if stale, err := restarted.Stale(ctx, nil); err != nil || len(stale) != 0 {
		t.Errorf("Stale after Revert = %+v, %v", stale, err)
	}
}

func TestSwitchdevRefuses(t *testing.T) {
	ctx := context.Background()
	host, nic := netnstest.New(t), netnstest.New(t)
	s := newSimulatedNIC(t, host, netnstest.End{NS: nic, Name: "vf0"}, netnstest.End{NS: nic, Name: "vf1"})
	b := s.backend(t)
	a, c := vfGuest("a", vf0Address, "52:54:00:c5:00:01"), vfGuest("c", vf1Address, "52:54:00:c5:00:02")
	if _, err := host.Exec(ctx, "tc", "qdisc", "add", "dev", rep1, "ingress"); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Exec(ctx, "tc", "filter", "add", "dev", rep1, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0", "flowid", "1:1"); err != nil {
		t.Fatal(err)
	}
	beforeRep1 := snapshotRep(t, host, rep1)
	for _, tt := range []struct {
		name string
		ifc  Iface
		port string
		want error
	}{
		{"tc filters on the representor", c, "", ErrUnsupported},
		{"another DM port", a, rep1, ErrUnsupported},
		{"a bridge interface", Iface{Type: TypeBridge, Source: "br0", Target: "vnet0"}, "", ErrUnsupported},
		{"a hostdev that is no VF", vfGuest("x", cx5PF, "52:54:00:c5:00:09"), "", sriov.ErrNotVF},
		{"a direct interface on the PF", Iface{Type: TypeDirect, Source: "enp3s0f0", MAC: mustMAC("52:54:00:c5:00:09")}, "", sriov.ErrNotVF},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := b.Apply(ctx, tt.ifc, tt.port); !errors.Is(err, tt.want) {
				t.Errorf("Apply: %v, want %v", err, tt.want)
			}
		})
	}
	if diff := cmp.Diff(beforeRep1, snapshotRep(t, host, rep1)); diff != "" {
		t.Errorf("a refused Apply changed the representor:\n%s", diff)
	}
	if ok, err := b.Applied(ctx, c, ""); ok || err != nil {
		t.Errorf("Applied with filters = %v, %v", ok, err)
	}

	long := strings.Repeat("x", 240)
	if _, err := host.Exec(ctx, "ip", "link", "set", rep0, "alias", long); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, a, ""); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Apply with a long alias: %v, want ErrUnsupported", err)
	}
	if l, _ := host.Netlink().LinkByName(rep0); l.Attrs().Alias != long {
		t.Errorf("the alias changed to %q", l.Attrs().Alias)
	}

	if err := s.devlink.SetEswitchMode(cx5PF, sriov.EswitchLegacy); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, a, ""); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Apply in legacy mode: %v, want ErrUnavailable", err)
	}
	if _, err := New(BackendSwitchdev, Deps{NetNS: nsPath(host), SRIOV: s.sriov}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("New without a NIC in switchdev mode: %v, want ErrUnavailable", err)
	}
	if _, err := b.Stale(ctx, []Iface{a}); err == nil {
		t.Error("Stale succeeded though a kept interface has no representor")
	}
}

// FuzzParseRepresentorAlias: any alias parses or is not ours, and a
// record survives an encode and parse unchanged.
func FuzzParseRepresentorAlias(f *testing.F) {
	for _, seed := range []string{
		"", "tenant uplink", RepresentorMarker, RepresentorMarker + "up=1", RepresentorMarker + "up=0&master=br0&brport=hairpin%2Clearning&alias=a%20b",
		RepresentorMarker + "%zz", RepresentorMarker + "alias=" + strings.Repeat("%41", 100), "vsagent-switchdev/1",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, alias string) {
		rec, ok := parseRepresentorAlias(alias)
		if !ok {
			return
		}
		st := repState{up: rec.Get("up") == "1", rawAlias: rec.Get("alias"), link: &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "rep"}}}
		enc, err := representorAlias(st)
		if err != nil {
			return
		}
		again, ok := parseRepresentorAlias(enc)
		if !ok || again.Get("alias") != st.rawAlias || (again.Get("up") == "1") != st.up {
			t.Fatalf("round trip of %q: %q → %v", alias, enc, again)
		}
	})
}
