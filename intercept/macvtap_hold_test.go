package intercept

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/netnstest"
)

// macvtapQueue is the character device of a macvtap, held as QEMU holds
// it: writing is the guest sending, reading the guest receiving. Frames
// carry a virtio-net header, which a fresh queue has on.
type macvtapQueue struct {
	file *os.File
}

const vnetHdrLen = 10

func openMacvtapQueue(t *testing.T, ifindex int) *macvtapQueue {
	t.Helper()
	f, err := os.OpenFile(fmt.Sprintf("/dev/tap%d", ifindex), os.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatalf("open the macvtap's queue: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return &macvtapQueue{file: f}
}

func (q *macvtapQueue) send(t *testing.T, f []byte) {
	t.Helper()
	if _, err := q.file.Write(append(make([]byte, vnetHdrLen), f...)); err != nil {
		t.Fatalf("guest sending on its macvtap: %v", err)
	}
}

func (q *macvtapQueue) receive(t *testing.T, want string) []string {
	t.Helper()
	return receiveUntil(t, "guest on its macvtap", want, func(b []byte) (int, error) {
		if err := q.file.SetReadDeadline(time.Now().Add(frameWait)); err != nil {
			return 0, err
		}
		n, err := q.file.Read(b)
		if n < vnetHdrLen {
			return 0, err
		}
		copy(b, b[vnetHdrLen:n])
		return n - vnetHdrLen, err
	})
}

// TestMacvtapHoldAtStart holds a macvtap as the start hook does, before a
// guest runs: what the guest sends reaches the DM and not its parent's
// segment, what the segment sends the guest reaches the DM and not the
// guest. Holding again changes nothing; a diverted interface is not held.
func TestMacvtapHoldAtStart(t *testing.T) {
	host, peer, dm := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	for _, ns := range []*netnstest.NS{host, peer, dm} {
		ns.QuietIPv6(t)
	}
	guestMAC := net.HardwareAddr{0x52, 0x54, 0, 0xcc, 0, 1}
	peerMAC := net.HardwareAddr{0x52, 0x54, 0, 0xcc, 0, 9}
	netnstest.Veth(t, netnstest.End{NS: host, Name: "pv0"}, netnstest.End{NS: peer, Name: "pv1", MAC: peerMAC})
	netnstest.Veth(t, netnstest.End{NS: host, Name: "dm0"}, netnstest.End{NS: dm, Name: "dm1"})
	nlh := host.Netlink()
	parent, err := nlh.LinkByName("pv0")
	if err != nil {
		t.Fatal(err)
	}
	mv := &netlink.Macvtap{Macvlan: netlink.Macvlan{
		// The queue's ring is as long as the transmit queue: with none,
		// every frame to the guest is dropped.
		LinkAttrs: netlink.LinkAttrs{Name: "mvt0", ParentIndex: parent.Attrs().Index, HardwareAddr: guestMAC, TxQLen: 500},
		Mode:      netlink.MACVLAN_MODE_BRIDGE,
	}}
	if err := nlh.LinkAdd(mv); err != nil {
		t.Fatal(err)
	}
	link, err := nlh.LinkByName("mvt0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nlh.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	guest := openMacvtapQueue(t, link.Attrs().Index)
	atPeer, atDM, onParent := newSock(t, peer, "pv1"), newSock(t, dm, "dm1"), newSock(t, host, "pv0")
	label := labelled(t)

	// Unheld, the guest and its peer reach each other.
	out, in := label("to the peer"), label("to the guest")
	guest.send(t, frame(peerMAC, guestMAC, out))
	atPeer.receive(t, out)
	atPeer.send(t, frame(guestMAC, peerMAC, in))
	guest.receive(t, in)

	b := &macvtap{netNS: nsPath(host), log: testLogger(t)}
	ifc := Iface{GuestName: "guest", Type: TypeDirect, Target: "mvt0", MAC: guestMAC, Source: "pv0", Mode: "bridge"}
	ctx := context.Background()
	for range 2 {
		if err := b.HoldAtStart(ctx, ifc, "dm0"); err != nil {
			t.Fatal(err)
		}
	}
	// The dump shows each of clsact's filters under both of its parents.
	holds := map[string]bool{}
	for _, f := range dump(t, host, "mvt0").Filters {
		if h, _, ok := strings.Cut(f, fmt.Sprintf(":%x chain", FilterNodeHold)); ok && strings.Contains(f, "egress-redirect dev dm0") {
			holds[h[strings.LastIndex(h, " "):]] = true
		}
	}
	if len(holds) != 2 {
		t.Errorf("%d hold filters after holding twice, want 2 (egress, ingress):\n%s", len(holds), dump(t, host, "mvt0"))
	}

	held, marker := label("held, from the guest"), label("marker")
	guest.send(t, frame(peerMAC, guestMAC, held))
	atDM.receive(t, held)
	// A frame the parent sends after the held one arrives after it would
	// have: the held frame never came.
	onParent.send(t, frame(peerMAC, parent.Attrs().HardwareAddr, marker))
	mustNotContain(t, "the peer", atPeer.receive(t, marker), held)

	heldIn := label("held, to the guest")
	atPeer.send(t, frame(guestMAC, peerMAC, heldIn))
	atDM.receive(t, heldIn)
	// Unheld again (as when Apply replaces the macvtap), the guest receives
	// what comes next, and not the held frame before it.
	if err := nlh.QdiscDel(&netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}); err != nil {
		t.Fatal(err)
	}
	after := label("after the hold")
	atPeer.send(t, frame(guestMAC, peerMAC, after))
	mustNotContain(t, "the guest", guest.receive(t, after), heldIn)

	// A diverted interface is not held; a tap cannot be.
	diverted := ifc
	diverted.Source, diverted.Mode = "dm0", "vepa"
	if err := b.HoldAtStart(ctx, diverted, "dm0"); err != nil {
		t.Errorf("hold of a diverted interface: %v", err)
	}
	if got := dump(t, host, "mvt0"); len(got.Filters) != 0 {
		t.Errorf("a diverted interface got filters: %+v", got.Filters)
	}
	if err := b.HoldAtStart(ctx, Iface{Type: TypeBridge, Target: "pv0"}, "dm0"); err == nil {
		t.Error("a tap was held as a macvtap")
	}
	if err := b.HoldAtStart(ctx, Iface{Type: TypeDirect, Target: "pv0", Source: "x"}, "dm0"); err == nil {
		t.Error("a veth was held as a macvtap")
	}
}
