package intercept_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/netnsutil"
)

// arpFrame is an ARP message (op 1 request, 2 reply) in an Ethernet frame.
func arpFrame(dst, src net.HardwareAddr, op uint16, senderIP, targetIP net.IP) []byte {
	f := make([]byte, 0, 42)
	f = append(f, dst...)
	f = append(f, src...)
	f = binary.BigEndian.AppendUint16(f, unix.ETH_P_ARP)
	f = binary.BigEndian.AppendUint16(f, 1) // Ethernet
	f = binary.BigEndian.AppendUint16(f, unix.ETH_P_IP)
	f = append(f, 6, 4)
	f = binary.BigEndian.AppendUint16(f, op)
	f = append(f, src...)
	f = append(f, senderIP.To4()...)
	f = append(f, make([]byte, 6)...)
	return append(f, targetIP.To4()...)
}

// arpOf returns the operation and sender hardware address of an ARP frame.
func arpOf(f []byte) (op uint16, sender net.HardwareAddr, ok bool) {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_ARP {
		return 0, nil, false
	}
	return binary.BigEndian.Uint16(f[20:]), net.HardwareAddr(f[22:28]), true
}

// arpSocket is a packet socket for ARP on a link of the lab's namespace.
// Bound to ARP alone it sees what the link receives, not what it sends.
func arpSocket(t *testing.T, netNS, link string) *packet.Conn {
	t.Helper()
	var conn *packet.Conn
	err := netnsutil.Do(netNS, func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ARP, nil)
		return err
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", link, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// readARP reads what conn receives for up to wait and returns the first ARP
// frame with operation op from sender, or nil.
func readARP(t *testing.T, conn *packet.Conn, op uint16, sender net.HardwareAddr, wait time.Duration) []byte {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	for range 1000 {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return nil // deadline
		}
		if o, s, ok := arpOf(buf[:n]); ok && o == op && bytes.Equal(s, sender) {
			return bytes.Clone(buf[:n])
		}
	}
	return nil
}

// TestMacvtapDeliveryOnRealGuest moves a real QEMU guest's macvtap onto one
// end of a veth pair, as the agent moves it onto the DM's redirect port, and
// plays the DM at the other end, the port Delivery names: a frame written
// there reaches the guest (it answers an ARP request addressed to its MAC),
// and what the guest sends arrives there. A frame written to the macvtap's
// own netdev instead does not reach the guest: it leaves through the
// parent and arrives back at the DM's end.
func TestMacvtapDeliveryOnRealGuest(t *testing.T) {
	lab := libvirtlab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img := hotplugImage(ctx, t)
	log := intercept.LoggerFor(t)
	labNS := filepath.Join("/run/netns", lab.NetNS)

	const hostIP, guestIP, dmIP = "10.83.0.1", "10.83.0.2", "10.83.0.9"
	labLinks(ctx, t, lab, hostIP, "dm0", "dm0-in")
	conn, err := hypervisor.Connect(ctx, lab.URI(), hypervisor.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	guestMAC, _ := net.ParseMAC("52:54:00:83:00:02")
	dmMAC, _ := net.ParseMAC("02:00:00:83:00:09")
	dom := startLabGuest(ctx, t, lab, conn, img,
		libvirtlab.GuestInterface{Type: "direct", Source: "vp0", Mode: "bridge", MAC: guestMAC.String(), Address: guestIP + "/24"})
	ping := func(when string) { pingLabGuest(ctx, t, lab, guestIP, when) }
	ping("after boot")

	backend, err := intercept.New(intercept.BackendMacvtap, intercept.Deps{Domains: conn, NetNS: labNS, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	x, err := conn.DomainXML(ctx, dom.UUID, false)
	if err != nil {
		t.Fatal(err)
	}
	ifc := intercept.InterfacesOf(x)[0]
	dl, err := intercept.DeliveryOf(ctx, backend, ifc, "dm0")
	if err != nil || dl != (intercept.Delivery{Port: "dm0-in"}) {
		t.Fatalf("Delivery through dm0 = %+v, %v; want dm0-in, shared", dl, err)
	}
	if err := backend.Apply(ctx, ifc, "dm0"); err != nil {
		t.Fatal(err)
	}
	if x, err = conn.DomainXML(ctx, dom.UUID, false); err != nil {
		t.Fatal(err)
	}
	moved := intercept.InterfacesOf(x)[0]
	if moved.Source != "dm0" || moved.Mode != "vepa" || moved.Network != "vp0" {
		t.Fatalf("after Apply the interface is on %s in %s mode, network %s; want dm0, vepa, vp0", moved.Source, moved.Mode, moved.Network)
	}

	// The DM's end: a request written there is received on the parent and
	// handed to the guest's macvtap by destination MAC; the guest's answer
	// leaves through the parent and arrives there. The guest configures the
	// plugged-in NIC again by itself, so ask until it answers.
	dm := arpSocket(t, labNS, dl.Port)
	request := arpFrame(guestMAC, dmMAC, 1, net.ParseIP(dmIP), net.ParseIP(guestIP))
	var reply []byte
	for range 60 {
		if _, err := dm.WriteTo(request, &packet.Addr{HardwareAddr: guestMAC}); err != nil {
			t.Fatal(err)
		}
		if reply = readARP(t, dm, 2, guestMAC, 500*time.Millisecond); reply != nil {
			break
		}
	}
	if reply == nil {
		t.Fatalf("no ARP reply from the guest at %s\nconsole:\n%s", dl.Port, labConsole(lab))
	}
	if !bytes.Equal(reply[:6], dmMAC) {
		t.Errorf("the guest's reply is addressed to %s, want %s", net.HardwareAddr(reply[:6]), dmMAC)
	}

	// The macvtap's own netdev is the wrong way in: a frame sent there goes
	// out through the parent, to the DM's end, and the guest never sees it.
	tap := arpSocket(t, labNS, moved.Target)
	if _, err := tap.WriteTo(request, &packet.Addr{HardwareAddr: guestMAC}); err != nil {
		t.Fatal(err)
	}
	if readARP(t, dm, 1, dmMAC, 5*time.Second) == nil {
		t.Errorf("a request written to the macvtap %s did not come out at %s", moved.Target, dl.Port)
	}
	if got := readARP(t, dm, 2, guestMAC, time.Second); got != nil {
		t.Errorf("the guest answered a request written to its macvtap %s: it reached the guest", moved.Target)
	}

	if err := backend.Revert(ctx, moved); err != nil {
		t.Fatal(err)
	}
	ping("after revert")
}

// labLinks makes the lab namespace's links for a macvtap guest: the veth
// pair vp0/vp1 its macvtap sits on and the host answers on (vp1, hostIP),
// and the pair a/b, ARP off, for the DM or a sink; IPv6 off throughout.
func labLinks(ctx context.Context, t *testing.T, lab *libvirtlab.Lab, hostIP, a, b string) {
	t.Helper()
	for _, cmd := range [][]string{
		{"sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"},
		{"ip", "link", "add", "vp0", "type", "veth", "peer", "name", "vp1"},
		{"ip", "link", "add", a, "type", "veth", "peer", "name", b},
		{"ip", "link", "set", "vp0", "up"},
		{"ip", "link", "set", "vp1", "up"},
		{"ip", "link", "set", a, "arp", "off", "up"},
		{"ip", "link", "set", b, "arp", "off", "up"},
		{"ip", "addr", "add", hostIP + "/24", "dev", "vp1"},
	} {
		if _, err := lab.Exec(ctx, cmd...); err != nil {
			t.Fatal(err)
		}
	}
}
