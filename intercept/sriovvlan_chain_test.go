package intercept

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
	"github.com/vsagent/vsagent/sourceroute"
	"github.com/vsagent/vsagent/sriov"
	"github.com/vsagent/vsagent/sriov/sriovtest"
)

// A NIC's switch in legacy (VEB) mode, simulated for sriov-vlan.
//
// This kernel has neither 8021q nor bridge VLAN filtering, so the VEB is
// two tc programs (cls_bpf, direct action) on the host ends of veth pairs
// that stand for VFs. A guest's VF has a port VLAN: everything it sends is
// tagged with that VLAN and handed to the only other member of the VLAN,
// the DM's VF, which is trusted and promiscuous and so a member of every
// VLAN (a trunk). What the DM's VF sends tagged with a guest's VLAN is
// untagged and delivered to that guest's VF; anything else it sends is
// dropped (the DM delivers nothing untagged there). That is exactly what
// the switch does for VFs that each own a port VLAN, which is the only
// configuration sriov-vlan makes.

// vebGuestProgram tags what a guest's VF sends with its port VLAN and hands
// it to the DM's VF.
func vebGuestProgram(vid uint16, trunkIndex int) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R2, int32(htons(unix.ETH_P_8021Q))),
		asm.Mov.Imm(asm.R3, int32(vid)),
		asm.FnSkbVlanPush.Call(), // R1 is still the skb
		asm.JNE.Imm(asm.R0, 0, "drop"),
		asm.Mov.Imm(asm.R1, int32(trunkIndex)),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(), // to the egress of the DM VF's switch port
		asm.Return(),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("drop"), // TC_ACT_SHOT
		asm.Return(),
	}
}

// vebTrunkProgram delivers what the DM's VF sends to the guest VF whose
// port VLAN it is tagged with, without the tag.
func vebTrunkProgram(vfByVLAN map[uint16]int) asm.Instructions {
	const vlanPresent, vlanTCI = 20, 24 // offsets in struct __sk_buff
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R7, asm.R6, vlanPresent, asm.Word),
		asm.JEq.Imm(asm.R7, 0, "drop"),
		asm.LoadMem(asm.R7, asm.R6, vlanTCI, asm.Word),
		asm.And.Imm(asm.R7, 0x0fff),
		asm.FnSkbVlanPop.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),
	}
	var ports asm.Instructions
	for vid, index := range vfByVLAN {
		label := fmt.Sprintf("vlan%d", vid)
		insns = append(insns, asm.JEq.Imm(asm.R7, int32(vid), label))
		ports = append(ports,
			asm.Mov.Imm(asm.R1, int32(index)).WithSymbol(label),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirect.Call(),
			asm.Return())
	}
	insns = append(insns, asm.Ja.Label("drop"))
	insns = append(insns, ports...)
	return append(insns, asm.Mov.Imm(asm.R0, 2).WithSymbol("drop"), asm.Return())
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// attachIngress runs prog on every frame that link (in ns) receives.
func attachIngress(t *testing.T, ns *netnstest.NS, link string, insns asm.Instructions) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, Instructions: insns, License: "GPL"})
	if err != nil {
		t.Fatalf("load the switch program for %s: %v", link, err)
	}
	t.Cleanup(func() { prog.Close() })
	nl := ns.Netlink()
	l, err := nl.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.QdiscAdd(ingressQdisc(l)); err != nil {
		t.Fatalf("ingress qdisc on %s: %v", link, err)
	}
	f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0),
		Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1}, Fd: prog.FD(), Name: "veb-" + link, DirectAction: true}
	if err := nl.FilterAdd(f); err != nil {
		t.Fatalf("switch program on %s: %v", link, err)
	}
}

func ifindex(t *testing.T, ns *netnstest.NS, name string) int {
	t.Helper()
	l, err := ns.Netlink().LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// noOffloads makes a guest's link send frames no bigger than its MTU, as a
// VF does once the NIC has segmented them (a veth would hand on 64 KiB
// segmentation-offload packets).
func noOffloads(t *testing.T, ns *netnstest.NS, link string) {
	t.Helper()
	err := ns.Do(func() error {
		et, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer et.Close()
		return et.Change(link, map[string]bool{"tx-generic-segmentation": false, "tx-tcp-segmentation": false,
			"tx-tcp6-segmentation": false, "tx-tcp-ecn-segmentation": false, "tx-tcp-mangleid-segmentation": false,
			"tx-udp-segmentation": false, "rx-gro": false})
	})
	if err != nil {
		t.Fatalf("offloads of %s: %v", link, err)
	}
}

// capture keeps copies of the frames a link receives (bounded), until the
// test ends.
type capture struct {
	mu     sync.Mutex
	frames [][]byte
}

func startCapture(t *testing.T, ctx context.Context, ns *netnstest.NS, link string) *capture {
	t.Helper()
	s, err := openSocket(ns, link)
	if err != nil {
		t.Fatal(err)
	}
	c := &capture{}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		views := make([][]byte, 64)
		for {
			n, err := s.ReadBatch(cctx, views)
			if err != nil {
				return
			}
			c.mu.Lock()
			for _, v := range views[:n] {
				if len(c.frames) < 100_000 {
					c.frames = append(c.frames, bytes.Clone(v))
				}
			}
			c.mu.Unlock()
			s.Release()
		}
	}()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	return c
}

// with returns the captured frames that contain marker.
func (c *capture) with(marker string) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]byte
	for _, f := range c.frames {
		if bytes.Contains(f, []byte(marker)) {
			out = append(out, f)
		}
	}
	return out
}

// untagged splits an 802.1Q-tagged frame into its VLAN and the frame
// without the tag; ok is false for an untagged frame.
func untagged(f []byte) (vid uint16, inner []byte, ok bool) {
	if len(f) < 18 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_8021Q {
		return 0, nil, false
	}
	return binary.BigEndian.Uint16(f[14:16]) & 0x0fff, append(bytes.Clone(f[:12]), f[16:]...), true
}

// TestSRIOVVLANChainOnSimulatedNIC carries real UDP, TCP and ICMP between
// two guests, each on a "VF" with the port VLAN the sriov-vlan backend
// gives it, through the simulated switch above, a DM (sourceroute.Engine
// on AF_PACKET sockets) reading the DM's "VF" as a trunk, and two
// vsafilter processes, ips then fw. The backend's Delivery tells the DM
// each guest's port and VLAN. On the trunk, frames to the DM carry the
// sender's VLAN and frames from it the receiver's, byte for byte the same
// frame inside; a flow fw denies never arrives; a frame of a foreign VLAN
// is dropped and counted.
func TestSRIOVVLANChainOnSimulatedNIC(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := vsafiltertest.Build(t, "..")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	host, aNS, bNS, cNS, ipsNS, fwNS := netnstest.New(t), netnstest.New(t), netnstest.New(t), netnstest.New(t), netnstest.New(t), netnstest.New(t)
	for _, ns := range []*netnstest.NS{host, aNS, bNS, cNS, ipsNS, fwNS} {
		ns.QuietIPv6(t)
	}

	// The backend's view: guest a holds VF 2 and b VF 1 of the E810
	// table, whose VF 0 is the DM's, named dmvf here.
	const dmVF = "dmvf"
	sr := &sriov.Host{SysRoot: sriovtest.Build(t, "e810-legacy", map[string]string{"VF0": dmVF}), Netlink: sriovtest.NewNetlink(), Logger: testLogger(t)}
	backend, err := New(BackendSRIOVVLAN, Deps{SRIOV: sr, Domains: newVLANDomains(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	a, b := vfGuest("a", "0000:3b:01.2", "52:54:00:c5:00:0a"), vfGuest("b", "0000:3b:01.1", "52:54:00:c5:00:0b")
	dl := map[string]Delivery{}
	for _, ifc := range []Iface{a, b} {
		if dl[ifc.GuestName], err = DeliveryOf(ctx, backend, ifc, dmVF); err != nil {
			t.Fatal(err)
		}
	}
	const e810Net = "sriov:0000:3b:00.0" // both VFs are on the same PF's switch
	if dl["a"] != (Delivery{Port: dmVF, VLAN: 3802, Network: e810Net}) || dl["b"] != (Delivery{Port: dmVF, VLAN: 3801, Network: e810Net}) {
		t.Fatalf("deliveries: %+v", dl)
	}
	const foreignVLAN = 3900 // guest c's VF: a VLAN that is no diverted guest's

	// The simulated NIC: a VF per guest, the DM's VF, the switch.
	for _, g := range []struct {
		ns   *netnstest.NS
		mac  sourceroute.MAC
		port string
	}{{aNS, guestA, "vfa"}, {bNS, guestB, "vfb"}, {cNS, sourceroute.MAC{0x52, 0x54, 0, 0xc5, 0, 0x0c}, "vfc"}} {
		netnstest.Veth(t, netnstest.End{NS: g.ns, Name: "eth0", MAC: g.mac[:]}, netnstest.End{NS: host, Name: g.port})
		noOffloads(t, g.ns, "eth0")
	}
	netnstest.Veth(t, netnstest.End{NS: host, Name: dmVF}, netnstest.End{NS: host, Name: "dmvf-sw"})
	trunk := ifindex(t, host, "dmvf-sw")
	attachIngress(t, host, "vfa", vebGuestProgram(dl["a"].VLAN, trunk))
	attachIngress(t, host, "vfb", vebGuestProgram(dl["b"].VLAN, trunk))
	attachIngress(t, host, "vfc", vebGuestProgram(foreignVLAN, trunk))
	attachIngress(t, host, "dmvf-sw", vebTrunkProgram(map[uint16]int{
		dl["a"].VLAN: ifindex(t, host, "vfa"), dl["b"].VLAN: ifindex(t, host, "vfb"), foreignVLAN: ifindex(t, host, "vfc")}))
	toDM, fromDM := startCapture(t, ctx, host, dmVF), startCapture(t, ctx, host, "dmvf-sw")

	for _, g := range []struct {
		ns   *netnstest.NS
		addr string
	}{{aNS, "10.78.0.1/24"}, {bNS, "10.78.0.2/24"}} {
		if out, err := g.ns.Exec(ctx, "ip", "addr", "add", g.addr, "dev", "eth0"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}

	ips, fw := startChainAppliances(t, ctx, bin, host, ipsNS, fwNS, "[[rule]]\nname = \"no-5009\"\naction = \"deny\"\nproto = \"udp\"\ndport = 5009\n")
	forwarded := func(v *vsafiltertest.Run) uint64 { return v.Counters(t).Appliance.Forwarded }
	iface := func(mac sourceroute.MAC, d Delivery) []sourceroute.GuestInterface {
		return []sourceroute.GuestInterface{{MAC: mac, Port: d.Port, Dedicated: d.Dedicated, VLAN: d.VLAN, Network: d.Network}}
	}
	e, _ := startChainDM(t, ctx, host,
		sourceroute.GuestRule{Name: "a", Ready: true, Policy: &sourceroute.PolicyRule{Name: "protected", Chain: []string{"ips", "fw"}, Symmetric: true},
			Interfaces: iface(guestA, dl["a"])},
		sourceroute.GuestRule{Name: "b", Ready: true, Interfaces: iface(guestB, dl["b"])})

	// ICMP: a pings b; the first attempts also resolve addresses (ARP is
	// flooded by the DM to b's VLAN).
	ping := func(count int) ([]byte, error) {
		return aNS.Exec(ctx, "ping", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "5", "10.78.0.2")
	}
	for attempt := 0; ; attempt++ {
		if _, err := ping(1); err == nil {
			break
		}
		if attempt == 10 {
			t.Fatalf("a never reached b; DM drops %v", e.Counters().Drops)
		}
	}
	ips0, fw0 := forwarded(ips), forwarded(fw)
	if out, err := ping(5); err != nil || !strings.Contains(string(out), " 5 received") {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	if d := forwarded(ips) - ips0; d < 10 {
		t.Errorf("ips forwarded %d frames of 5 echo requests and replies, want at least 10", d)
	}
	if d := forwarded(fw) - fw0; d < 10 {
		t.Errorf("fw forwarded %d frames of 5 echo requests and replies, want at least 10", d)
	}

	// UDP: each datagram arrives once, as sent, through both appliances.
	var bUDP, bDenied net.PacketConn
	var bTCP net.Listener
	if err := bNS.Do(func() (err error) {
		if bUDP, err = net.ListenPacket("udp4", "10.78.0.2:5000"); err != nil {
			return err
		}
		if bDenied, err = net.ListenPacket("udp4", "10.78.0.2:5009"); err != nil {
			return err
		}
		bTCP, err = net.Listen("tcp4", "10.78.0.2:5001")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bUDP.Close(); bDenied.Close(); bTCP.Close() })
	var aUDP, aDenied net.Conn
	if err := aNS.Do(func() (err error) {
		if aUDP, err = net.Dial("udp4", "10.78.0.2:5000"); err != nil {
			return err
		}
		aDenied, err = net.Dial("udp4", "10.78.0.2:5009")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aUDP.Close(); aDenied.Close() })
	receive := func(c net.PacketConn, wait time.Duration) (string, error) {
		buf := make([]byte, 2048)
		c.SetReadDeadline(time.Now().Add(wait))
		n, _, err := c.ReadFrom(buf)
		return string(buf[:n]), err
	}
	ips1, fw1 := forwarded(ips), forwarded(fw)
	const n = 20
	for i := range n {
		want := fmt.Sprintf("sriov-vlan udp %02d", i)
		if _, err := aUDP.Write([]byte(want)); err != nil {
			t.Fatal(err)
		}
		if got, err := receive(bUDP, 10*time.Second); got != want {
			t.Fatalf("datagram %d arrived as %q (%v), want %q", i, got, err, want)
		}
	}
	if d := forwarded(ips) - ips1; d != n {
		t.Errorf("ips forwarded %d frames, want %d", d, n)
	}
	if d := forwarded(fw) - fw1; d != n {
		t.Errorf("fw forwarded %d frames, want %d", d, n)
	}

	// On the trunk: to the DM with a's VLAN, from the DM with b's, the same
	// frame inside.
	for i := range n {
		marker := fmt.Sprintf("sriov-vlan udp %02d", i)
		var to, from [][]byte
		for wait := 0; wait < 100; wait++ { // captures run behind the traffic
			if to, from = toDM.with(marker), fromDM.with(marker); len(to) == 1 && len(from) == 1 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(to) != 1 || len(from) != 1 {
			t.Fatalf("%q: %d frames to the DM, %d from it, want 1 each", marker, len(to), len(from))
		}
		vidTo, innerTo, okTo := untagged(to[0])
		vidFrom, innerFrom, okFrom := untagged(from[0])
		if !okTo || vidTo != dl["a"].VLAN || !okFrom || vidFrom != dl["b"].VLAN {
			t.Fatalf("%q: to the DM %x (VLAN %d), from it %x (VLAN %d); want VLANs %d and %d",
				marker, to[0], vidTo, from[0], vidFrom, dl["a"].VLAN, dl["b"].VLAN)
		}
		if !bytes.Equal(innerTo, innerFrom) {
			t.Fatalf("%q changed on its way:\n%x\n%x", marker, innerTo, innerFrom)
		}
	}

	// A denied flow never arrives: fw drops it, and the datagram sent
	// after it on an allowed flow arrives alone.
	fwDropped := fw.Counters(t).Appliance.Dropped
	if _, err := aDenied.Write([]byte("sriov-vlan denied")); err != nil {
		t.Fatal(err)
	}
	if _, err := aUDP.Write([]byte("sriov-vlan after the denied one")); err != nil {
		t.Fatal(err)
	}
	if got, err := receive(bUDP, 10*time.Second); got != "sriov-vlan after the denied one" {
		t.Fatalf("after the denied datagram came %q (%v)", got, err)
	}
	if d := fw.Counters(t).Appliance.Dropped - fwDropped; d != 1 {
		t.Errorf("fw dropped %d frames, want the denied one", d)
	}
	if got, err := receive(bDenied, 500*time.Millisecond); !timedOut(err) {
		t.Errorf("the denied flow delivered %q (%v)", got, err)
	}

	// TCP: 256 KiB from a to b, echoed back whole.
	echoed := make(chan error, 1)
	go func() {
		c, err := bTCP.Accept()
		if err == nil {
			c.SetDeadline(time.Now().Add(time.Minute))
			_, err = io.Copy(c, c)
			c.Close()
		}
		echoed <- err
	}()
	var aTCP net.Conn
	if err := aNS.Do(func() (err error) {
		aTCP, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp4", "10.78.0.2:5001")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aTCP.Close() })
	aTCP.SetDeadline(time.Now().Add(time.Minute))
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i*7 + i>>8)
	}
	ips2, fw2 := forwarded(ips), forwarded(fw)
	sent := make(chan error, 1)
	go func() {
		_, err := aTCP.Write(data)
		if err == nil {
			err = aTCP.(*net.TCPConn).CloseWrite()
		}
		sent <- err
	}()
	back, err := io.ReadAll(aTCP)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatalf("TCP: %d bytes came back, not the %d sent", len(back), len(data))
	}
	// 256 KiB both ways is at least 2 × 180 full-size segments.
	if d := forwarded(ips) - ips2; d < 360 {
		t.Errorf("ips forwarded %d TCP frames, want at least 360", d)
	}
	if d := forwarded(fw) - fw2; d < 360 {
		t.Errorf("fw forwarded %d TCP frames, want at least 360", d)
	}

	// A frame of a foreign VLAN reaches the DM's VF and goes no further.
	cSock, err := openSocket(cNS, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cSock.Close() })
	foreign := udpFrame(sourceroute.MAC{0x52, 0x54, 0, 0xc5, 0, 0x0c}, guestB, "10.78.0.3", "10.78.0.2", 40000, 5000, "sriov-vlan foreign")
	if _, err := cSock.WriteBatch([][]byte{nil}, [][]byte{foreign}); err != nil {
		t.Fatal(err)
	}
	for wait := 0; e.Counters().Drops["foreign_vlan"] == 0; wait++ {
		if wait == 100 {
			t.Fatalf("no foreign_vlan drop; drops %v", e.Counters().Drops)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if to := toDM.with("sriov-vlan foreign"); len(to) != 1 {
		t.Errorf("%d foreign frames reached the DM's VF, want 1", len(to))
	} else if vid, _, _ := untagged(to[0]); vid != foreignVLAN {
		t.Errorf("the foreign frame reached the DM's VF with VLAN %d, want %d", vid, foreignVLAN)
	}
	if got, err := receive(bUDP, 500*time.Millisecond); !timedOut(err) {
		t.Errorf("b received the foreign frame: %q (%v)", got, err)
	}
	c := e.Counters()
	if c.Drops["foreign_vlan"] != 1 {
		t.Errorf("foreign_vlan drops: %d, want 1", c.Drops["foreign_vlan"])
	}
	t.Logf("DM: guests %+v; drops %v; trunk rx %d tx %d", c.Guests, c.Drops, c.Ports[dmVF].RxFrames, c.Ports[dmVF].TxFrames)
}

// timedOut reports whether err is a read deadline that passed.
func timedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
