package intercept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/sriov"
	"github.com/vsagent/vsagent/sriov/sriovtest"
)

// vlanDomains is a libvirt with several domains that keeps metadata per
// namespace and returns it the way libvirt does: each element with a
// prefix bound to its namespace. Device changes are not needed by the
// sriov-vlan backend and fail.
type vlanDomains struct {
	mu    sync.Mutex
	doms  map[string]*vlanDomain
	order []string
	calls []string
}

type vlanDomain struct {
	name    string
	running bool
	ifaces  []libvirtxml.DomainInterface
	meta    map[string]string
}

func newVLANDomains() *vlanDomains { return &vlanDomains{doms: map[string]*vlanDomain{}} }

func (f *vlanDomains) add(t *testing.T, uuid, name string, ifaces ...string) {
	t.Helper()
	d := &vlanDomain{name: name, running: true, meta: map[string]string{}}
	for _, doc := range ifaces {
		var x libvirtxml.DomainInterface
		if err := x.Unmarshal(doc); err != nil {
			t.Fatal(err)
		}
		d.ifaces = append(d.ifaces, x)
	}
	f.doms[uuid] = d
	f.order = append(f.order, uuid)
}

func (f *vlanDomains) DomainXML(_ context.Context, uuid string, _ bool) (*libvirtxml.Domain, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.doms[uuid]
	if !ok {
		return nil, fmt.Errorf("fake: no domain %s", uuid)
	}
	dom := &libvirtxml.Domain{Name: d.name, UUID: uuid, Devices: &libvirtxml.DomainDeviceList{Interfaces: slices.Clone(d.ifaces)}}
	if d.running {
		id := 7
		dom.ID = &id
	}
	var meta strings.Builder
	meta.WriteString(`<other:thing xmlns:other="https://example.com/other"><vf mac="00:00:00:00:00:01"/></other:thing>`)
	for ns, doc := range d.meta {
		local := doc[1:strings.IndexAny(doc, " />")]
		doc = strings.Replace(doc, "<"+local, "<vsagent:"+local+` xmlns:vsagent="`+ns+`"`, 1)
		doc = strings.TrimSuffix(doc, "</"+local+">") + "</vsagent:" + local + ">"
		meta.WriteString(doc)
	}
	dom.Metadata = &libvirtxml.DomainMetadata{XML: meta.String()}
	return dom, nil
}

func (f *vlanDomains) SetMetadata(_ context.Context, uuid, namespace, doc string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "metadata "+f.doms[uuid].name)
	if doc == "" {
		delete(f.doms[uuid].meta, namespace)
	} else {
		f.doms[uuid].meta[namespace] = doc
	}
	return nil
}

func (f *vlanDomains) AttachInterface(context.Context, string, *libvirtxml.DomainInterface) error {
	return errors.New("fake: not used")
}

func (f *vlanDomains) DetachInterface(context.Context, string, *libvirtxml.DomainInterface) error {
	return errors.New("fake: not used")
}

func (f *vlanDomains) UpdateInterface(context.Context, string, *libvirtxml.DomainInterface) error {
	return errors.New("fake: not used")
}

func (f *vlanDomains) DomainUUIDs(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.order), nil
}

func (f *vlanDomains) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *vlanDomains) setRunning(uuid string, running bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.doms[uuid].running = running
}

func (f *vlanDomains) iface(t *testing.T, uuid string) Iface {
	t.Helper()
	dom, err := f.DomainXML(context.Background(), uuid, false)
	if err != nil {
		t.Fatal(err)
	}
	return InterfacesOf(dom)[0]
}

const (
	uuidA, uuidB = "0b6a1c3e-0000-4000-8000-00000000000a", "0b6a1c3e-0000-4000-8000-00000000000b"
	// Guest a has VF 2 of the E810 passed through; guest b a macvtap on
	// VF 1's host netdev; the DM reads VF 0's netdev.
	hostdevVF2 = `<interface type='hostdev' managed='yes'>
  <mac address='52:54:00:5f:00:02'/>
  <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x01' function='0x2'/></source>
  <vlan><tag id='10'/></vlan>
</interface>`
	directVF1 = `<interface type='direct'>
  <mac address='52:54:00:5f:00:01'/>
  <source dev='ens1f0v1' mode='passthrough'/>
  <target dev='macvtap3'/>
</interface>`
	dmVFPort = "ens1f0v0"
)

// The calls that divert the DM's VF and guest a's VF, and that restore the
// DM's VF as newVLANFixture leaves it.
var (
	divertDM = []string{
		"ip link set ens1f0 vf 0 vlan 0 qos 0",
		"ip link set ens1f0 vf 0 spoofchk off",
		"ip link set ens1f0 vf 0 trust on",
		"ip link set dev ens1f0v0 promisc on",
	}
	divertA = []string{
		"ip link set ens1f0 vf 2 vlan 3802 qos 0",
		"ip link set ens1f0 vf 2 spoofchk on",
		"ip link set ens1f0 vf 2 trust off",
	}
	restoreDM = []string{
		"ip link set ens1f0 vf 0 vlan 7 qos 0",
		"ip link set ens1f0 vf 0 spoofchk on",
		"ip link set ens1f0 vf 0 trust off",
		"ip link set dev ens1f0v0 promisc off",
	}
)

type vlanFixture struct {
	host *sriov.Host
	nl   *sriovtest.Netlink
	dom  *vlanDomains
	b    Backend
	// priors are the VFs' settings before anything was diverted.
	priors []sriov.VFSettings
}

func newVLANFixture(t *testing.T) *vlanFixture {
	t.Helper()
	f := &vlanFixture{nl: sriovtest.NewNetlink(), dom: newVLANDomains()}
	f.host = &sriov.Host{SysRoot: sriovtest.Build(t, "e810-legacy", nil), Netlink: f.nl, Logger: testLogger(t)}
	f.nl.AddPF("ens1f0", 3)
	f.nl.AddNetdev("ens1f0v0")
	f.nl.AddNetdev("ens1f0v1")
	// What the operator and libvirt left: the DM's VF on a VLAN of its
	// own; guest a's VF with libvirt's VLAN 10, QoS, a rate, trust and a
	// forced link, spoof checking off.
	f.nl.SetVF("ens1f0", sriov.VFSettings{Index: 0, MAC: mustMAC("6a:3e:2c:00:00:10"), VLAN: sriov.VLAN{ID: 7},
		SpoofCheck: sriov.ToggleOn, Trust: sriov.ToggleOff, LinkState: sriov.LinkStateAuto})
	f.nl.SetVF("ens1f0", sriov.VFSettings{Index: 2, MAC: mustMAC("52:54:00:5f:00:02"), VLAN: sriov.VLAN{ID: 10, QoS: 2},
		Rate: sriov.Rate{MaxMbps: 1000}, SpoofCheck: sriov.ToggleOff, Trust: sriov.ToggleOn, LinkState: sriov.LinkStateEnable})
	for i := range 3 {
		f.priors = append(f.priors, f.nl.VF("ens1f0", i))
	}
	f.dom.add(t, uuidA, "a", hostdevVF2)
	f.dom.add(t, uuidB, "b", directVF1)
	f.b = f.newBackend(t)
	return f
}

// newBackend is a backend as an agent that (re)started would make one.
func (f *vlanFixture) newBackend(t *testing.T) Backend {
	t.Helper()
	b, err := New(BackendSRIOVVLAN, Deps{Domains: f.dom, SRIOV: f.host, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func (f *vlanFixture) checkCalls(t *testing.T, step string, wantDomains []string, wantNetlink ...string) {
	t.Helper()
	if diff := cmp.Diff(wantDomains, f.dom.takeCalls()); diff != "" {
		t.Errorf("%s: libvirt calls (-want +got):\n%s", step, diff)
	}
	if diff := cmp.Diff(wantNetlink, f.nl.Calls()); diff != "" {
		t.Errorf("%s: netlink calls (-want +got):\n%s", step, diff)
	}
}

// checkRestored compares every setting of every VF and the DM netdev's
// promiscuity with what was there before the first Apply.
func (f *vlanFixture) checkRestored(t *testing.T) {
	t.Helper()
	for i, want := range f.priors {
		if diff := cmp.Diff(want, f.nl.VF("ens1f0", i)); diff != "" {
			t.Errorf("VF %d not restored (-before +after):\n%s", i, diff)
		}
	}
	if f.nl.IsPromisc(dmVFPort) {
		t.Error("the DM's VF is still promiscuous")
	}
}

func TestSRIOVVLANApplyRevertExactSequence(t *testing.T) {
	ctx := context.Background()
	f := newVLANFixture(t)
	a := f.dom.iface(t, uuidA)
	if a.Type != TypeHostdev || a.Source != "0000:3b:01.2" {
		t.Fatalf("guest a's interface: %+v", a)
	}

	if err := f.b.Apply(ctx, a, dmVFPort); err != nil {
		t.Fatal(err)
	}
	f.checkCalls(t, "Apply", []string{"metadata a"}, slices.Concat(divertDM, divertA)...)
	if ok, err := f.b.Applied(ctx, a, dmVFPort); !ok || err != nil {
		t.Errorf("Applied = %v, %v", ok, err)
	}
	if err := f.b.Apply(ctx, a, dmVFPort); err != nil {
		t.Fatal(err)
	}
	f.checkCalls(t, "second Apply", nil)
	if err := f.b.Apply(ctx, a, "ens1f0v1"); err == nil {
		t.Error("Apply to another DM VF while diverted succeeded")
	}
	f.checkCalls(t, "Apply elsewhere", nil)

	// A restarted agent reverts from the record alone.
	if err := f.newBackend(t).Revert(ctx, a); err != nil {
		t.Fatal(err)
	}
	f.checkCalls(t, "Revert", []string{"metadata a"}, slices.Concat([]string{
		"ip link set ens1f0 vf 2 vlan 10 qos 2",
		"ip link set ens1f0 vf 2 spoofchk off",
		"ip link set ens1f0 vf 2 trust on",
	}, restoreDM)...)
	f.checkRestored(t)
	if ok, err := f.b.Applied(ctx, a, dmVFPort); ok || err != nil {
		t.Errorf("Applied after Revert = %v, %v", ok, err)
	}
	if err := f.b.Revert(ctx, a); err != nil {
		t.Fatal(err)
	}
	f.checkCalls(t, "second Revert", nil)
}

// TestSRIOVVLANSharedDM: two guests share the DM's VF. Its original
// settings come back only with the last revert, in either order, and are
// the operator's, not what the first diversion left.
func TestSRIOVVLANSharedDM(t *testing.T) {
	for _, order := range [][]string{{uuidA, uuidB}, {uuidB, uuidA}} {
		t.Run("first reverted "+order[0][len(order[0])-1:], func(t *testing.T) {
			ctx := context.Background()
			f := newVLANFixture(t)
			a, b := f.dom.iface(t, uuidA), f.dom.iface(t, uuidB)
			if b.Type != TypeDirect || b.Source != "ens1f0v1" {
				t.Fatalf("guest b's interface: %+v", b)
			}
			for _, ifc := range []Iface{a, b} {
				if err := f.b.Apply(ctx, ifc, dmVFPort); err != nil {
					t.Fatal(err)
				}
			}
			f.checkCalls(t, "Apply b after a", []string{"metadata a", "metadata b"},
				slices.Concat(divertDM, divertA, []string{"ip link set ens1f0 vf 1 vlan 3801 qos 0"})...)
			first := map[string]Iface{uuidA: a, uuidB: b}
			if err := f.b.Revert(ctx, first[order[0]]); err != nil {
				t.Fatal(err)
			}
			if ds := f.nl.VF("ens1f0", 0); !dmWants.Satisfied(ds) || !f.nl.IsPromisc(dmVFPort) {
				t.Errorf("the DM's VF was restored while a guest still needs it: %+v", ds)
			}
			if ok, err := f.b.Applied(ctx, first[order[1]], dmVFPort); !ok || err != nil {
				t.Errorf("the other guest's Applied = %v, %v", ok, err)
			}
			if err := f.b.Revert(ctx, first[order[1]]); err != nil {
				t.Fatal(err)
			}
			f.dom.takeCalls()
			f.nl.Calls()
			f.checkRestored(t)
		})
	}
}

func TestSRIOVVLANGuestLifecycle(t *testing.T) {
	ctx := context.Background()
	f := newVLANFixture(t)
	a := f.dom.iface(t, uuidA)
	f.dom.setRunning(uuidA, false)
	if err := f.b.Apply(ctx, a, dmVFPort); !errors.Is(err, ErrGuestNotRunning) {
		t.Fatalf("Apply on a stopped guest: %v", err)
	}
	f.checkCalls(t, "Apply on a stopped guest", nil)
	f.dom.setRunning(uuidA, true)
	if err := f.b.Apply(ctx, a, dmVFPort); err != nil {
		t.Fatal(err)
	}
	f.dom.takeCalls()
	f.nl.Calls()

	// The guest stops: libvirt puts the VF back as it was when the guest
	// started. Revert leaves the guest VF alone and restores the DM's.
	f.dom.setRunning(uuidA, false)
	f.nl.SetVF("ens1f0", f.priors[2])
	if ok, err := f.b.Applied(ctx, a, dmVFPort); ok || err != nil {
		t.Errorf("Applied on a stopped guest = %v, %v", ok, err)
	}
	if stale, err := f.b.Stale(ctx, nil); err != nil || len(stale) != 1 || stale[0].GuestUUID != uuidA || stale[0].MAC.String() != a.MAC.String() {
		t.Errorf("Stale = %+v, %v", stale, err)
	}
	if stale, err := f.b.Stale(ctx, []Iface{a}); err != nil || len(stale) != 0 {
		t.Errorf("Stale(a kept) = %+v, %v", stale, err)
	}
	if err := f.b.Revert(ctx, Iface{GuestUUID: uuidA, MAC: a.MAC}); err != nil {
		t.Fatal(err)
	}
	f.checkCalls(t, "Revert on a stopped guest", []string{"metadata a"}, restoreDM...)
	f.checkRestored(t)
}

// TestSRIOVVLANPartialApply: a driver without trust stops Apply at the
// DM's VF; the record was stored first, so Revert undoes what was done.
func TestSRIOVVLANPartialApply(t *testing.T) {
	ctx := context.Background()
	f := newVLANFixture(t)
	f.nl.FailOn["ip link set ens1f0 vf 0 trust"] = unix.EOPNOTSUPP
	a := f.dom.iface(t, uuidA)
	if err := f.b.Apply(ctx, a, dmVFPort); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("Apply: %v, want EOPNOTSUPP", err)
	}
	f.checkCalls(t, "failed Apply", []string{"metadata a"}, divertDM[:3]...)
	if err := f.b.Revert(ctx, a); err != nil {
		t.Fatal(err)
	}
	f.checkCalls(t, "Revert", []string{"metadata a"}, restoreDM[:2]...)
	f.checkRestored(t)
}

func TestSRIOVVLANRefuses(t *testing.T) {
	ctx := context.Background()
	f := newVLANFixture(t)
	a := f.dom.iface(t, uuidA)
	bridged := Iface{GuestUUID: uuidA, Type: TypeBridge, Source: "br0", MAC: a.MAC}
	onPF := Iface{GuestUUID: uuidA, Type: TypeDirect, Source: "ens1f0", MAC: a.MAC}
	onDM := Iface{GuestUUID: uuidA, Type: TypeDirect, Source: dmVFPort, MAC: a.MAC}
	for _, tt := range []struct {
		name string
		ifc  Iface
		port string
		want error
	}{
		{"a bridge interface", bridged, dmVFPort, ErrUnsupported},
		{"a direct interface on the PF", onPF, dmVFPort, sriov.ErrNotVF},
		{"the guest on the DM's VF", onDM, dmVFPort, ErrUnsupported},
		{"no DM port", a, "", ErrNoInterface},
		{"a DM port that is no VF", a, "ens1f0", sriov.ErrNotVF},
		{"no MAC", Iface{GuestUUID: uuidA}, dmVFPort, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := f.b.Apply(ctx, tt.ifc, tt.port)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Errorf("Apply: %v, want %v", err, tt.want)
			}
			f.checkCalls(t, "refused Apply", nil)
		})
	}
	if _, err := New(BackendSRIOVVLAN, Deps{SRIOV: f.host}); err == nil {
		t.Error("New without libvirt succeeded")
	}
	empty := &sriov.Host{SysRoot: t.TempDir(), Netlink: f.nl}
	if _, err := New(BackendSRIOVVLAN, Deps{SRIOV: empty, Domains: f.dom}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("New on a host without SR-IOV: %v, want ErrUnavailable", err)
	}
}

func TestSRIOVVLANUnreadableRecord(t *testing.T) {
	ctx := context.Background()
	f := newVLANFixture(t)
	a := f.dom.iface(t, uuidA)
	f.dom.doms[uuidA].meta[SRIOVNamespace] = `<sriov-vlan><vf mac="52:54:00:5f:00:02" pf="0000:3b:00.0" index="2" intercept-vlan="9999" dm-index="0"/></sriov-vlan>`
	for name, call := range map[string]func() error{
		"Apply":  func() error { return f.b.Apply(ctx, a, dmVFPort) },
		"Revert": func() error { return f.b.Revert(ctx, a) },
		"Stale":  func() error { _, err := f.b.Stale(ctx, nil); return err },
	} {
		if err := call(); !errors.Is(err, ErrRecord) {
			t.Errorf("%s: %v, want ErrRecord", name, err)
		}
	}
	f.checkCalls(t, "with an unreadable record", nil)
}

func TestInterceptVLAN(t *testing.T) {
	if v, err := InterceptVLAN(0); v != SRIOVVLANBase || err != nil {
		t.Errorf("InterceptVLAN(0) = %d, %v", v, err)
	}
	if v, err := InterceptVLAN(4094 - SRIOVVLANBase); v != 4094 || err != nil {
		t.Errorf("highest = %d, %v", v, err)
	}
	for _, i := range []int{-1, 4095 - SRIOVVLANBase} {
		if _, err := InterceptVLAN(i); !errors.Is(err, ErrUnsupported) {
			t.Errorf("InterceptVLAN(%d): %v", i, err)
		}
	}
}

// FuzzParseVLANRecords: any metadata parses or fails with ErrRecord, and
// what parses survives a marshal and parse again unchanged.
func FuzzParseVLANRecords(f *testing.F) {
	ns := `xmlns:v="` + SRIOVNamespace + `"`
	for _, seed := range []string{
		"",
		`<v:sriov-vlan ` + ns + `><vf mac="52:54:00:5f:00:02" pf="0000:3b:00.0" index="2" intercept-vlan="3802" dm-index="0"><guest vlan="10" qos="2" spoofchk="off" trust="on"/><dm vlan="7" qos="0" spoofchk="on" trust="off" promisc="off"/></vf></v:sriov-vlan>`,
		`<other/><v:sriov-vlan ` + ns + `/>`,
		`<v:sriov-vlan ` + ns + `><vf mac="x"/></v:sriov-vlan>`,
		`<v:sriov-vlan ` + ns + `><vf mac="52:54:00:5f:00:02" index="-1"/></v:sriov-vlan>`,
		`<a><v:sriov-vlan ` + ns + `/></a>`,
		`<v:sriov-vlan ` + ns + `><vf`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, metadata string) {
		rs, err := parseVLANRecords(metadata)
		if err != nil {
			if !errors.Is(err, ErrRecord) {
				t.Fatalf("error %v does not match ErrRecord", err)
			}
			return
		}
		doc, err := rs.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if doc == "" {
			return
		}
		doc = strings.Replace(doc, "<sriov-vlan", "<v:sriov-vlan "+ns, 1)
		doc = strings.TrimSuffix(doc, "</sriov-vlan>") + "</v:sriov-vlan>"
		again, err := parseVLANRecords(doc)
		if err != nil {
			t.Fatalf("re-parsing %s: %v", doc, err)
		}
		if diff := cmp.Diff(rs.VFs, again.VFs); diff != "" {
			t.Errorf("round trip (-first +second):\n%s", diff)
		}
	})
}

// TestSRIOVVLANDelivery: the DM reaches every diverted guest through its own
// VF, tagged with the guest VF's intercept VLAN; the answer needs no Apply,
// no running guest and no VF call.
func TestSRIOVVLANDelivery(t *testing.T) {
	ctx := context.Background()
	f := newVLANFixture(t)
	a, b := f.dom.iface(t, uuidA), f.dom.iface(t, uuidB)
	f.dom.setRunning(uuidB, false)
	for _, tt := range []struct {
		name string
		ifc  Iface
		port string
		want Delivery
		err  error
	}{
		{"hostdev VF 2", a, dmVFPort, Delivery{Port: dmVFPort, VLAN: 3802, Network: "sriov:0000:3b:00.0"}, nil},
		{"direct on VF 1, guest stopped", b, dmVFPort, Delivery{Port: dmVFPort, VLAN: 3801, Network: "sriov:0000:3b:00.0"}, nil},
		{"no DM port", a, "", Delivery{}, ErrNoInterface},
		{"a bridge interface", Iface{GuestUUID: uuidA, Type: TypeBridge, Source: "br0", MAC: a.MAC}, dmVFPort, Delivery{}, ErrUnsupported},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DeliveryOf(ctx, f.b, tt.ifc, tt.port)
			if !errors.Is(err, tt.err) || (tt.err != nil) != (err != nil) {
				t.Fatalf("DeliveryOf: %v, want %v", err, tt.err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("DeliveryOf (-want +got):\n%s", diff)
			}
		})
	}
	f.checkCalls(t, "Delivery", nil)
}
