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
	"libvirt.org/go/libvirtxml"
)

var errFakePaused = errors.New("fake: domain is paused")

// fakeDomains is a libvirt that keeps one domain in memory and behaves like
// the QEMU driver where the macvtap backend cares: it refuses to change a
// direct interface's source live, cannot unplug from a paused guest,
// assigns aliases and macvtap names itself, and returns metadata with a
// namespace prefix.
type fakeDomains struct {
	mu      sync.Mutex
	uuid    string
	live    libvirtxml.Domain
	running bool
	paused  bool
	meta    string
	calls   []string
}

const fakeUUID = "6f1a3c52-5b0e-4d7a-9c41-2f8e7d9b0a11"

func newFakeDomains(t *testing.T, ifaces ...string) *fakeDomains {
	t.Helper()
	f := &fakeDomains{uuid: fakeUUID, running: true}
	f.live = libvirtxml.Domain{Name: "guest", UUID: fakeUUID, Devices: &libvirtxml.DomainDeviceList{}}
	for _, doc := range ifaces {
		var x libvirtxml.DomainInterface
		if err := x.Unmarshal(doc); err != nil {
			t.Fatal(err)
		}
		f.live.Devices.Interfaces = append(f.live.Devices.Interfaces, x)
	}
	return f
}

func copyDomain(d libvirtxml.Domain) *libvirtxml.Domain {
	doc, err := d.Marshal()
	if err != nil {
		panic(err)
	}
	var out libvirtxml.Domain
	if err := out.Unmarshal(doc); err != nil {
		panic(err)
	}
	return &out
}

func (f *fakeDomains) DomainXML(_ context.Context, uuid string, inactive bool) (*libvirtxml.Domain, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if uuid != f.uuid {
		return nil, fmt.Errorf("fake: no domain %s", uuid)
	}
	d := copyDomain(f.live)
	if f.running && !inactive {
		id := 1
		d.ID = &id
	}
	if f.meta != "" {
		// libvirt prefixes the element and declares the namespace on it.
		body := strings.TrimSuffix(strings.TrimPrefix(f.meta, "<intercept>"), "</intercept>")
		d.Metadata = &libvirtxml.DomainMetadata{XML: `<vsagent:binding xmlns:vsagent="https://vsagent.dev/xmlns/binding/1" policy="web"/>` +
			`<vsagent:intercept xmlns:vsagent="` + Namespace + `">` + body + `</vsagent:intercept>`}
	}
	return d, nil
}

func (f *fakeDomains) SetMetadata(_ context.Context, uuid, namespace, xml string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "metadata")
	if namespace != Namespace {
		return fmt.Errorf("fake: unexpected namespace %s", namespace)
	}
	f.meta = xml
	return nil
}

func (f *fakeDomains) index(x *libvirtxml.DomainInterface) int {
	for i, y := range f.live.Devices.Interfaces {
		if strings.EqualFold(y.MAC.Address, x.MAC.Address) {
			return i
		}
	}
	return -1
}

func (f *fakeDomains) AttachInterface(_ context.Context, uuid string, x *libvirtxml.DomainInterface) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "attach "+x.Source.Direct.Dev+" "+x.Source.Direct.Mode)
	if !f.running {
		return errors.New("fake: not running")
	}
	if f.index(x) >= 0 {
		return errors.New("fake: MAC in use")
	}
	c := *x
	if c.Alias == nil {
		c.Alias = &libvirtxml.DomainAlias{Name: f.freeName("net", func(y libvirtxml.DomainInterface) string { return aliasOf(y) })}
	}
	if c.Target == nil {
		c.Target = &libvirtxml.DomainInterfaceTarget{Dev: f.freeName("macvtap", func(y libvirtxml.DomainInterface) string { return y.Target.Dev })}
	}
	f.live.Devices.Interfaces = append(f.live.Devices.Interfaces, c)
	return nil
}

func aliasOf(y libvirtxml.DomainInterface) string {
	if y.Alias == nil {
		return ""
	}
	return y.Alias.Name
}

func (f *fakeDomains) freeName(prefix string, of func(libvirtxml.DomainInterface) string) string {
	for n := 0; ; n++ {
		name := fmt.Sprintf("%s%d", prefix, n)
		if !slices.ContainsFunc(f.live.Devices.Interfaces, func(y libvirtxml.DomainInterface) bool { return of(y) == name }) {
			return name
		}
	}
}

func (f *fakeDomains) DetachInterface(_ context.Context, uuid string, x *libvirtxml.DomainInterface) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "detach")
	switch {
	case !f.running:
		return errors.New("fake: not running")
	case f.paused:
		return errFakePaused
	}
	if i := f.index(x); i >= 0 {
		f.live.Devices.Interfaces = slices.Delete(f.live.Devices.Interfaces, i, i+1)
	}
	return nil
}

func (f *fakeDomains) UpdateInterface(_ context.Context, uuid string, x *libvirtxml.DomainInterface) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "update link "+linkState(x))
	i := f.index(x)
	if i < 0 {
		return errors.New("fake: no such interface")
	}
	cur := &f.live.Devices.Interfaces[i]
	if !sameSource(cur, x) {
		return errors.New("fake: unable to change config on 'direct' network type")
	}
	cur.Link = nil
	if x.Link != nil {
		cur.Link = &libvirtxml.DomainInterfaceLink{State: x.Link.State}
	}
	return nil
}

func (f *fakeDomains) DomainUUIDs(context.Context) ([]string, error) { return []string{f.uuid}, nil }

func (f *fakeDomains) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fakeDomains) iface(t *testing.T, mac string) *libvirtxml.DomainInterface {
	t.Helper()
	d, _ := f.DomainXML(context.Background(), f.uuid, false)
	m, _ := net.ParseMAC(mac)
	got, ok := findByMAC(d, m)
	if !ok {
		return nil
	}
	return got.XML
}

const (
	directMAC   = "52:54:00:12:34:56"
	directIface = `<interface type='direct'>
  <mac address='52:54:00:12:34:56'/>
  <source dev='eth0' mode='bridge'/>
  <target dev='macvtap0'/>
  <model type='virtio'/>
  <alias name='net0'/>
  <rom enabled='no'/>
  <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
</interface>`
	secondMAC   = "52:54:00:12:34:57"
	secondIface = `<interface type='direct'>
  <mac address='52:54:00:12:34:57'/>
  <source dev='eth1' mode='private'/>
  <target dev='mytap1'/>
  <model type='e1000'/>
  <alias name='ua-second'/>
  <link state='down'/>
  <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
</interface>`
)

func newMacvtap(t *testing.T, f *fakeDomains) Backend {
	t.Helper()
	b, err := New(BackendMacvtap, Deps{Domains: f, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ifaceOf(t *testing.T, f *fakeDomains, mac string) Iface {
	t.Helper()
	d, _ := f.DomainXML(context.Background(), f.uuid, false)
	m, _ := net.ParseMAC(mac)
	ifc, ok := findByMAC(d, m)
	if !ok {
		t.Fatalf("no interface %s", mac)
	}
	return ifc
}

// revertExactly reverts ifc and checks that the interface is as original
// and the record gone.
func revertExactly(t *testing.T, b Backend, f *fakeDomains, ifc Iface, original *libvirtxml.DomainInterface) {
	t.Helper()
	if err := b.Revert(context.Background(), ifc); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(original, f.iface(t, ifc.MAC.String())); diff != "" {
		t.Errorf("Revert did not restore the interface (-before +after):\n%s", diff)
	}
	if f.meta != "" {
		t.Errorf("record left after Revert: %s", f.meta)
	}
}

func diffCalls(t *testing.T, step string, f *fakeDomains, want ...string) {
	t.Helper()
	if diff := cmp.Diff(want, f.takeCalls()); diff != "" {
		t.Errorf("%s: libvirt calls (-want +got):\n%s", step, diff)
	}
}

func TestMacvtapApplyRevert(t *testing.T) {
	tests := []struct {
		name, doc, mac, port string
		wantAttach           string
		wantLinkDownFirst    bool
	}{
		{"vepa on the same parent", directIface, directMAC, "", "attach eth0 vepa", true},
		{"moved onto a VF", directIface, directMAC, "vf3", "attach vf3 vepa", true},
		{"link already down, user alias and name", secondIface, secondMAC, "", "attach eth1 vepa", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFakeDomains(t, tt.doc)
			b := newMacvtap(t, f)
			ifc := ifaceOf(t, f, tt.mac)
			original := f.iface(t, tt.mac)

			if err := b.Apply(ctx, ifc, tt.port); err != nil {
				t.Fatal(err)
			}
			want := []string{"metadata"}
			if tt.wantLinkDownFirst {
				want = append(want, "update link down")
			}
			diffCalls(t, "Apply", f, append(want, "detach", tt.wantAttach)...)
			got := f.iface(t, tt.mac)
			if got == nil || got.Source.Direct.Mode != "vepa" {
				t.Fatalf("after Apply: %+v", got)
			}
			if diff := cmp.Diff(original.Address, got.Address); diff != "" {
				t.Errorf("PCI address changed (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(original.Model, got.Model); diff != "" {
				t.Errorf("model changed:\n%s", diff)
			}
			if diff := cmp.Diff(original.Link, got.Link); diff != "" {
				t.Errorf("link state of the diverted interface differs from the original:\n%s", diff)
			}
			if ok, err := b.Applied(ctx, ifc, tt.port); !ok || err != nil {
				t.Errorf("Applied = %v, %v", ok, err)
			}
			if ok, _ := b.Applied(ctx, ifc, "elsewhere"); ok {
				t.Error("Applied to a parent it is not on")
			}
			if err := b.Apply(ctx, ifc, tt.port); err != nil {
				t.Fatal(err)
			}
			diffCalls(t, "second Apply", f)

			// A restarted agent reverts from the record alone.
			revertExactly(t, newMacvtap(t, f), f, ifc, original)
			f.takeCalls()
			if err := b.Revert(ctx, ifc); err != nil {
				t.Fatal(err)
			}
			diffCalls(t, "second Revert", f)
		})
	}
}

// On a paused guest the interface goes down and stays down until a later
// Apply, on the running guest, completes the swap.
func TestMacvtapPausedGuest(t *testing.T) {
	ctx := context.Background()
	f := newFakeDomains(t, directIface, secondIface)
	b := newMacvtap(t, f)
	ifc := ifaceOf(t, f, directMAC)
	original := f.iface(t, directMAC)
	f.paused = true

	err := b.Apply(ctx, ifc, "")
	if !errors.Is(err, errFakePaused) {
		t.Fatalf("Apply on a paused guest = %v, want the detach error", err)
	}
	diffCalls(t, "Apply on the paused guest", f, "metadata", "update link down", "detach")
	if got := f.iface(t, directMAC); linkState(got) != "down" || got.Source.Direct.Mode != "bridge" {
		t.Fatalf("after a paused Apply the interface is %+v, want it down and not yet swapped", got)
	}
	if ok, _ := b.Applied(ctx, ifc, ""); ok {
		t.Error("Applied while the swap is unfinished")
	}

	// Revert while still paused needs no unplug.
	revertExactly(t, b, f, ifc, original)
	diffCalls(t, "Revert on the paused guest", f, "update link up", "metadata")

	if err := b.Apply(ctx, ifc, ""); !errors.Is(err, errFakePaused) {
		t.Fatalf("Apply = %v", err)
	}
	f.paused = false
	f.takeCalls()
	if err := b.Apply(ctx, ifc, ""); err != nil {
		t.Fatal(err)
	}
	diffCalls(t, "Apply once running", f, "detach", "attach eth0 vepa")
	if got := f.iface(t, directMAC); got.Link != nil {
		t.Errorf("the diverted interface kept the link down: %+v", got.Link)
	}
	revertExactly(t, b, f, ifc, original)
}

// A crash between unplug and plug leaves the guest without the interface;
// both directions recover from the record.
func TestMacvtapRecoversMissingInterface(t *testing.T) {
	ctx := context.Background()
	f := newFakeDomains(t, directIface)
	b := newMacvtap(t, f)
	ifc := ifaceOf(t, f, directMAC)
	original := f.iface(t, directMAC)
	if err := b.Apply(ctx, ifc, ""); err != nil {
		t.Fatal(err)
	}
	f.live.Devices.Interfaces = nil
	if ok, _ := b.Applied(ctx, ifc, ""); ok {
		t.Error("Applied without the interface")
	}
	f.takeCalls()
	if err := b.Apply(ctx, ifc, ""); err != nil {
		t.Fatal(err)
	}
	diffCalls(t, "Apply", f, "attach eth0 vepa")

	f.live.Devices.Interfaces = nil
	revertExactly(t, b, f, ifc, original)
}

func TestMacvtapRefusesAndKeepsRecords(t *testing.T) {
	ctx := context.Background()
	t.Run("unreadable record", func(t *testing.T) {
		f := newFakeDomains(t, directIface)
		const bad = `<intercept><diverted mac="not-a-mac">x</diverted></intercept>`
		f.meta = bad
		b := newMacvtap(t, f)
		ifc := ifaceOf(t, f, directMAC)
		for name, op := range map[string]func() error{
			"Apply":  func() error { return b.Apply(ctx, ifc, "") },
			"Revert": func() error { return b.Revert(ctx, ifc) },
		} {
			if err := op(); !errors.Is(err, ErrRecord) {
				t.Errorf("%s = %v, want ErrRecord", name, err)
			}
		}
		diffCalls(t, "with an unreadable record", f)
		if f.meta != bad {
			t.Errorf("record rewritten: %s", f.meta)
		}
	})
	t.Run("not a direct interface", func(t *testing.T) {
		f := newFakeDomains(t, `<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><target dev='vnet0'/></interface>`)
		b := newMacvtap(t, f)
		if err := b.Apply(ctx, ifaceOf(t, f, "52:54:00:00:00:01"), ""); !errors.Is(err, ErrUnsupported) {
			t.Errorf("Apply = %v, want ErrUnsupported", err)
		}
		diffCalls(t, "bridge interface", f)
	})
	t.Run("stopped guest", func(t *testing.T) {
		f := newFakeDomains(t, directIface)
		b := newMacvtap(t, f)
		ifc := ifaceOf(t, f, directMAC)
		if err := b.Apply(ctx, ifc, ""); err != nil {
			t.Fatal(err)
		}
		f.running = false
		f.takeCalls()
		if err := b.Apply(ctx, ifc, ""); !errors.Is(err, ErrGuestNotRunning) {
			t.Errorf("Apply = %v, want ErrGuestNotRunning", err)
		}
		if err := b.Revert(ctx, ifc); err != nil {
			t.Fatal(err)
		}
		diffCalls(t, "Revert on a stopped guest", f, "metadata")
		if f.meta != "" {
			t.Errorf("record left: %s", f.meta)
		}
	})
	t.Run("unknown interface", func(t *testing.T) {
		f := newFakeDomains(t, directIface)
		b := newMacvtap(t, f)
		mac, _ := net.ParseMAC("52:54:00:99:99:99")
		if err := b.Apply(ctx, Iface{GuestUUID: fakeUUID, MAC: mac}, ""); !errors.Is(err, ErrNoInterface) {
			t.Errorf("Apply = %v, want ErrNoInterface", err)
		}
		if err := b.Apply(ctx, Iface{Target: "macvtap0"}, ""); err == nil {
			t.Error("Apply without guest and MAC was accepted")
		}
	})
}

// An interface the operator put in VEPA mode is already where Apply would
// take it: nothing is recorded and Revert leaves it alone.
func TestMacvtapOperatorVEPA(t *testing.T) {
	ctx := context.Background()
	f := newFakeDomains(t, strings.Replace(directIface, "mode='bridge'", "mode='vepa'", 1))
	b := newMacvtap(t, f)
	ifc := ifaceOf(t, f, directMAC)
	if err := b.Apply(ctx, ifc, ""); err != nil {
		t.Fatal(err)
	}
	if err := b.Revert(ctx, ifc); err != nil {
		t.Fatal(err)
	}
	diffCalls(t, "operator's VEPA interface", f)
	if got := f.iface(t, directMAC); got.Source.Direct.Mode != "vepa" {
		t.Errorf("mode = %s", got.Source.Direct.Mode)
	}
}

func TestMacvtapStale(t *testing.T) {
	ctx := context.Background()
	f := newFakeDomains(t, directIface, secondIface)
	b := newMacvtap(t, f)
	first, second := ifaceOf(t, f, directMAC), ifaceOf(t, f, secondMAC)
	for _, ifc := range []Iface{first, second} {
		if err := b.Apply(ctx, ifc, ""); err != nil {
			t.Fatal(err)
		}
	}
	stale, err := b.Stale(ctx, []Iface{first})
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) != 1 || stale[0].MAC.String() != secondMAC || stale[0].GuestUUID != fakeUUID || stale[0].XML == nil {
		t.Fatalf("Stale = %+v, want the second interface", stale)
	}
	if err := b.Revert(ctx, stale[0]); err != nil {
		t.Fatal(err)
	}
	if stale, err := b.Stale(ctx, []Iface{first}); err != nil || len(stale) != 0 {
		t.Errorf("Stale after reverting = %+v, %v", stale, err)
	}
	if ok, _ := b.Applied(ctx, first, ""); !ok {
		t.Error("reverting the stale interface touched the kept one")
	}
}
