package intercept

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/netnstest"
)

// tcHost is a simulated hypervisor host: in its namespace a bridge with a
// guest's tap and a port to a peer (another namespace), and the DM's port,
// a veth whose other end is in the DM's namespace.
type tcHost struct {
	host, peer, dm *netnstest.NS
	tap            *tap
	guestMAC       net.HardwareAddr
	peerMAC        net.HardwareAddr
	ifc            Iface
	backend        Backend
}

const (
	bridgeName = "br0"
	tapName    = "vnet0"
	peerPort   = "pv0" // bridge port towards the peer
	dmPort     = "dm0" // the DM's port on the host
)

func newTCHost(t *testing.T) *tcHost {
	t.Helper()
	h := &tcHost{host: netnstest.New(t), peer: netnstest.New(t), dm: netnstest.New(t)}
	for _, ns := range []*netnstest.NS{h.host, h.peer, h.dm} {
		ns.QuietIPv6(t)
	}
	h.guestMAC = net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0, 1}
	h.peerMAC = net.HardwareAddr{0x52, 0x54, 0, 0xbb, 0, 1}
	h.host.AddBridge(t, bridgeName)
	h.tap = newTap(t, h.host, tapName, bridgeName)
	netnstest.Veth(t, netnstest.End{NS: h.host, Name: peerPort, Master: bridgeName}, netnstest.End{NS: h.peer, Name: "pv1", MAC: h.peerMAC})
	netnstest.Veth(t, netnstest.End{NS: h.host, Name: dmPort}, netnstest.End{NS: h.dm, Name: "dm1"})
	h.ifc = Iface{GuestName: "guest", Type: TypeBridge, Target: tapName, MAC: h.guestMAC, Source: bridgeName}
	h.backend = h.newBackend(t)
	return h
}

// newBackend is what a restarted agent gets: no memory of earlier calls.
func (h *tcHost) newBackend(t *testing.T) Backend {
	t.Helper()
	b, err := New(BackendTCRedirect, Deps{NetNS: nsPath(h.host), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (h *tcHost) applied(t *testing.T, port string) bool {
	t.Helper()
	ok, err := h.backend.Applied(context.Background(), h.ifc, port)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestTCRedirectDivertsAndRevertsExactly(t *testing.T) {
	h := newTCHost(t)
	ctx := context.Background()
	label := labelled(t)
	peer := newSock(t, h.peer, "pv1")
	dm := newSock(t, h.dm, "dm1")
	dmOnTap := newSock(t, h.host, tapName)     // the DM delivering to the guest
	hostOnPeer := newSock(t, h.host, peerPort) // markers towards the peer
	hostOnDM := newSock(t, h.host, dmPort)     // markers towards the DM

	before := dump(t, h.host, tapName)
	toPeer := label("to the peer, before")
	h.tap.send(t, frame(h.peerMAC, h.guestMAC, toPeer))
	peer.receive(t, toPeer)
	if h.applied(t, dmPort) {
		t.Fatal("Applied before Apply")
	}

	if err := h.backend.Apply(ctx, h.ifc, dmPort); err != nil {
		t.Fatal(err)
	}
	divertedDump := dump(t, h.host, tapName)
	if err := h.backend.Apply(ctx, h.ifc, dmPort); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if diff := cmp.Diff(divertedDump, dump(t, h.host, tapName)); diff != "" {
		t.Errorf("a second Apply changed the tap (-first +second):\n%s", diff)
	}
	if !h.applied(t, dmPort) {
		t.Error("not Applied after Apply")
	}
	if h.applied(t, peerPort) {
		t.Error("Applied reports a diversion to a port it does not go to")
	}

	// A guest frame reaches the DM and no longer the peer it is addressed to.
	h.guestSends(t, label("diverted"), dm, peer, hostOnPeer, label("marker to the peer"))

	// What the DM writes to the tap reaches the guest and is not diverted
	// back to the DM.
	delivered := label("from the DM")
	dmOnTap.send(t, frame(h.guestMAC, h.peerMAC, delivered))
	h.tap.receive(t, delivered)
	after := label("guest after delivery")
	h.tap.send(t, frame(h.peerMAC, h.guestMAC, after))
	mustNotContain(t, "the DM", dm.receive(t, after), delivered)

	// Re-targeting replaces the filter and still reverts exactly.
	if err := h.backend.Apply(ctx, h.ifc, peerPort); err != nil {
		t.Fatal(err)
	}
	if !h.applied(t, peerPort) || h.applied(t, dmPort) {
		t.Error("after re-targeting, Applied does not follow the new port")
	}
	if err := h.backend.Apply(ctx, h.ifc, dmPort); err != nil {
		t.Fatal(err)
	}

	// A restarted agent finds the diversion, and reverts it exactly.
	h.backend = h.newBackend(t)
	if !h.applied(t, dmPort) {
		t.Error("a new backend does not see the diversion in place")
	}
	if err := h.backend.Revert(ctx, h.ifc); err != nil {
		t.Fatal(err)
	}
	reverted := dump(t, h.host, tapName)
	if diff := cmp.Diff(before, reverted); diff != "" {
		t.Errorf("dump after Revert differs from before Apply (-before +after):\n%s", diff)
	}
	if before.String() != reverted.String() {
		t.Errorf("dump text after Revert differs:\n%s\nbefore:\n%s", reverted, before)
	}
	if err := h.backend.Revert(ctx, h.ifc); err != nil {
		t.Fatalf("second Revert: %v", err)
	}
	if diff := cmp.Diff(before, dump(t, h.host, tapName)); diff != "" {
		t.Errorf("a second Revert changed the tap (-before +after):\n%s", diff)
	}
	if h.applied(t, dmPort) {
		t.Error("Applied after Revert")
	}

	// Traffic flows as before, and no longer to the DM.
	h.guestSends(t, label("to the peer, after"), peer, dm, hostOnDM, label("marker to the DM"))
}

// guestSends sends a frame from the guest to the peer and checks that it
// reaches `reaches` and not `misses`. The host then sends a marker on
// markerVia, which reaches misses: had the frame gone there too, it would
// have arrived before the marker.
func (h *tcHost) guestSends(t *testing.T, payload string, reaches, misses, markerVia *sock, marker string) {
	t.Helper()
	h.tap.send(t, frame(h.peerMAC, h.guestMAC, payload))
	reaches.receive(t, payload)
	markerVia.send(t, frame(h.peerMAC, h.guestMAC, marker))
	mustNotContain(t, misses.where, misses.receive(t, marker), payload)
}

// Whatever was on the tap's ingress before stays exactly as it was.
func TestTCRedirectRevertKeepsWhatWasThere(t *testing.T) {
	ingressQdisc := func(t *testing.T, nlh *netlink.Handle, link netlink.Link) {
		t.Helper()
		q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
		if err := nlh.QdiscAdd(q); err != nil {
			t.Fatal(err)
		}
	}
	// An operator's filter: IPv4 UDP mirrored to the peer port.
	foreignFilter := func(prio uint16, proto uint16) func(*testing.T, *netlink.Handle, netlink.Link) {
		return func(t *testing.T, nlh *netlink.Handle, link netlink.Link) {
			t.Helper()
			ingressQdisc(t, nlh, link)
			port, err := nlh.LinkByName(peerPort)
			if err != nil {
				t.Fatal(err)
			}
			mirror := netlink.NewMirredAction(port.Attrs().Index)
			mirror.MirredAction = netlink.TCA_EGRESS_MIRROR
			mirror.Action = netlink.TC_ACT_PIPE
			f := &netlink.U32{
				FilterAttrs: netlink.FilterAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Priority: prio, Protocol: proto},
				ClassId:     netlink.MakeHandle(1, 1),
				Sel: &nl.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Keys: []nl.TcU32Key{
					{Mask: 0x00ff0000, Val: 0x00110000, Off: 8}, // IPv4 protocol = UDP
				}},
				Actions: []netlink.Action{mirror},
			}
			if err := nlh.FilterAdd(f); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name  string
		setup func(*testing.T, *netlink.Handle, netlink.Link)
		// wantForeign is a substring of a filter line that must survive.
		wantForeign string
	}{
		{name: "nothing"},
		{name: "empty ingress qdisc", setup: ingressQdisc},
		{name: "foreign u32 filter", setup: foreignFilter(10, unix.ETH_P_IP), wantForeign: "prio 10 proto 0x0800 kind u32"},
		{name: "foreign filter at the diversion's priority", setup: foreignFilter(FilterPriority, unix.ETH_P_ALL), wantForeign: "egress-mirror dev " + peerPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newTCHost(t)
			ctx := context.Background()
			if tt.setup != nil {
				link, err := h.host.Netlink().LinkByName(tapName)
				if err != nil {
					t.Fatal(err)
				}
				tt.setup(t, h.host.Netlink(), link)
			}
			before := dump(t, h.host, tapName)
			for i := 0; i < 2; i++ {
				if err := h.backend.Apply(ctx, h.ifc, dmPort); err != nil {
					t.Fatalf("Apply %d: %v", i+1, err)
				}
			}
			during := dump(t, h.host, tapName)
			if tt.wantForeign != "" && !strings.Contains(strings.Join(during.Filters, "\n"), tt.wantForeign) {
				t.Errorf("the foreign filter is gone while diverted:\n%s", during)
			}
			if !h.applied(t, dmPort) {
				t.Errorf("not Applied; tap:\n%s", during)
			}
			for i := 0; i < 2; i++ {
				if err := h.newBackend(t).Revert(ctx, h.ifc); err != nil {
					t.Fatalf("Revert %d: %v", i+1, err)
				}
			}
			if diff := cmp.Diff(before, dump(t, h.host, tapName)); diff != "" {
				t.Errorf("Revert did not restore the tap (-before +after):\n%s\nwhile diverted:\n%s", diff, during)
			}
		})
	}
}

// A filter someone adds, while the tap is diverted, to the ingress qdisc
// vsagent added keeps that qdisc alive after Revert.
func TestTCRedirectKeepsQdiscOthersUse(t *testing.T) {
	h := newTCHost(t)
	ctx := context.Background()
	if err := h.backend.Apply(ctx, h.ifc, dmPort); err != nil {
		t.Fatal(err)
	}
	nlh := h.host.Netlink()
	link, err := nlh.LinkByName(tapName)
	if err != nil {
		t.Fatal(err)
	}
	foreign := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 7, Protocol: unix.ETH_P_IP},
		ClassId:     netlink.MakeHandle(1, 7),
	}
	if err := nlh.FilterAdd(foreign); err != nil {
		t.Fatal(err)
	}
	if err := h.backend.Revert(ctx, h.ifc); err != nil {
		t.Fatal(err)
	}
	after := dump(t, h.host, tapName)
	if len(after.Filters) == 0 || !strings.Contains(strings.Join(after.Filters, "\n"), "prio 7 proto 0x0800 kind u32") ||
		strings.Contains(after.String(), "prio 22099") {
		t.Errorf("after Revert, want the foreign filter and nothing of vsagent's:\n%s", after)
	}
}

func TestTCRedirectStale(t *testing.T) {
	h := newTCHost(t)
	ctx := context.Background()
	second := newTap(t, h.host, "vnet1", bridgeName)
	other := Iface{Type: TypeEthernet, Target: second.name}
	for _, ifc := range []Iface{h.ifc, other} {
		if err := h.backend.Apply(ctx, ifc, dmPort); err != nil {
			t.Fatal(err)
		}
	}
	restarted := h.newBackend(t)
	tests := []struct {
		name string
		keep []Iface
		want []string
	}{
		{"nothing kept", nil, []string{tapName, second.name}},
		{"one kept", []Iface{h.ifc}, []string{second.name}},
		{"all kept", []Iface{h.ifc, other}, nil},
	}
	for _, tt := range tests {
		stale, err := restarted.Stale(ctx, tt.keep)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var got []string
		for _, s := range stale {
			got = append(got, s.Target)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s: Stale (-want +got):\n%s", tt.name, diff)
		}
	}
	stale, err := restarted.Stale(ctx, []Iface{h.ifc})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stale {
		if err := restarted.Revert(ctx, s); err != nil {
			t.Fatalf("reverting stale %s: %v", s.Target, err)
		}
	}
	if stale, err := restarted.Stale(ctx, []Iface{h.ifc}); err != nil || len(stale) != 0 {
		t.Errorf("after reverting the stale diversion: %v, %v", stale, err)
	}
	if !h.applied(t, dmPort) {
		t.Error("reverting the stale diversion touched the kept one")
	}
}

func TestTCRedirectRefuses(t *testing.T) {
	h := newTCHost(t)
	ctx := context.Background()
	tests := []struct {
		name string
		ifc  Iface
		port string
		want error
	}{
		{"direct interface", Iface{Type: TypeDirect, Target: tapName}, dmPort, ErrUnsupported},
		{"hostdev interface", Iface{Type: TypeHostdev}, dmPort, ErrUnsupported},
		{"no target", Iface{Type: TypeBridge}, dmPort, ErrNoInterface},
		{"missing tap", Iface{Type: TypeBridge, Target: "vnet9"}, dmPort, ErrNoInterface},
		{"missing port", h.ifc, "dm9", ErrNoInterface},
	}
	for _, tt := range tests {
		if err := h.backend.Apply(ctx, tt.ifc, tt.port); !errors.Is(err, tt.want) {
			t.Errorf("%s: Apply = %v, want %v", tt.name, err, tt.want)
		}
	}
	if err := h.backend.Apply(ctx, h.ifc, tapName); err == nil {
		t.Error("Apply diverted a tap to itself")
	}
	if err := h.backend.Revert(ctx, Iface{Type: TypeBridge, Target: "vnet9"}); err != nil {
		t.Errorf("Revert of a tap that is gone: %v", err)
	}
	if ok, err := h.backend.Applied(ctx, Iface{Type: TypeBridge, Target: "vnet9"}, dmPort); ok || err != nil {
		t.Errorf("Applied on a tap that is gone = %v, %v", ok, err)
	}
}

func TestNewBackends(t *testing.T) {
	tests := []struct {
		name    string
		deps    Deps
		wantErr error
	}{
		{BackendTCRedirect, Deps{}, nil},
		{BackendMacvtap, Deps{Domains: &fakeDomains{}}, nil},
		{BackendSwitchdev, Deps{}, ErrUnavailable},
		{BackendSRIOVVLAN, Deps{}, ErrUnavailable},
		{"ovs", Deps{}, ErrUnavailable},
	}
	for _, tt := range tests {
		b, err := New(tt.name, tt.deps)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("New(%q) error = %v, want %v", tt.name, err, tt.wantErr)
			continue
		}
		if err == nil && b.Name() != tt.name {
			t.Errorf("New(%q).Name() = %q", tt.name, b.Name())
		}
	}
	if _, err := New(BackendMacvtap, Deps{}); err == nil {
		t.Error("macvtap without a libvirt connection was accepted")
	}
}
