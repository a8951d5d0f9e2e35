package intercept

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/vsagent/vsagent/internal/afpacket"
	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
	"github.com/vsagent/vsagent/sourceroute"
)

// Addresses of the chain test: the DM and the two appliances as in
// SOURCE-ROUTE.md's vectors, and two guests.
var (
	chainDM  = sourceroute.MAC{0x02, 0, 0, 0, 0x0d, 0x01}
	chainIPS = sourceroute.MAC{0x02, 0, 0, 0, 0x10, 0x01}
	chainFW  = sourceroute.MAC{0x02, 0, 0, 0, 0x10, 0x02}
	guestA   = sourceroute.MAC{0x52, 0x54, 0, 0xc5, 0, 0x0a}
	guestB   = sourceroute.MAC{0x52, 0x54, 0, 0xc5, 0, 0x0b}
)

// udpFrame is an Ethernet frame with an IPv4 UDP datagram; the UDP
// checksum stays zero (none), the IPv4 header's is right.
func udpFrame(src, dst sourceroute.MAC, sip, dip string, sport, dport uint16, payload string) []byte {
	b := append(append([]byte{}, dst[:]...), src[:]...)
	b = binary.BigEndian.AppendUint16(b, 0x0800)
	ip := []byte{0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip = append(append(ip, net.ParseIP(sip).To4()...), net.ParseIP(dip).To4()...)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := binary.BigEndian.AppendUint16(nil, sport)
	udp = binary.BigEndian.AppendUint16(udp, dport)
	udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(payload)))
	udp = append(udp, 0, 0)
	return append(append(append(b, ip...), udp...), payload...)
}

// startChainAppliances links two vsafilter processes to host, ips (MAC
// chainIPS) on v-ips and fw (chainFW) on v-fw, fw with fwRules, and starts
// them. The links carry the guests' MTU plus a header's worth.
func startChainAppliances(t *testing.T, ctx context.Context, bin string, host, ipsNS, fwNS *netnstest.NS, fwRules string) (ips, fw *vsafiltertest.Run) {
	t.Helper()
	for _, l := range []struct {
		ns   *netnstest.NS
		port string
		mac  sourceroute.MAC
	}{{ipsNS, "v-ips", chainIPS}, {fwNS, "v-fw", chainFW}} {
		netnstest.Veth(t, netnstest.End{NS: l.ns, Name: "eth0", MAC: l.mac[:], MTU: 1600}, netnstest.End{NS: host, Name: l.port, MTU: 1600})
	}
	const quiet = "[output]\nstats_interval = \"0s\"\n"
	return vsafiltertest.Start(t, ctx, ipsNS, bin, "ips", "eth0", quiet),
		vsafiltertest.Start(t, ctx, fwNS, bin, "fw", "eth0", fwRules+quiet)
}

// startChainDM runs a DM on AF_PACKET sockets in host with guests and the
// appliances of startChainAppliances. stop ends it (also at cleanup).
func startChainDM(t *testing.T, ctx context.Context, host *netnstest.NS, guests ...sourceroute.GuestRule) (e *sourceroute.Engine, stop func()) {
	t.Helper()
	e, err := sourceroute.NewEngine(sourceroute.Config{Self: chainDM, ReturnTimeout: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Open: func(name string) (sourceroute.Port, error) {
			s, err := openSocket(host, name)
			if err != nil {
				return nil, err
			}
			return s, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if err := e.Update(ctx, sourceroute.Snapshot{Guests: guests,
		Appliances: []sourceroute.ApplianceRule{
			{Appliance: "ips", Instance: "ips-1", MAC: chainIPS, Port: "v-ips", Healthy: true},
			{Appliance: "fw", Instance: "fw-1", MAC: chainFW, Port: "v-fw", Healthy: true},
		},
	}); err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- e.Run(runCtx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			stopRun()
			if err := <-runDone; err != nil {
				t.Errorf("DM Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return e, stop
}

// openSocket opens an AF_PACKET socket (the DM's production port type) on
// name inside ns; it stays in ns whichever goroutine uses it.
func openSocket(ns *netnstest.NS, name string) (*afpacket.Socket, error) {
	var s *afpacket.Socket
	err := ns.Do(func() (err error) {
		s, err = afpacket.Open(afpacket.Config{Iface: name, BlockSize: 1 << 16, NumBlocks: 4})
		return err
	})
	return s, err
}

// TestSwitchdevChainOnSimulatedNIC carries real traffic through a
// simulated NIC in switchdev mode: guests a and b each hold a "VF" (a veth
// end in their own namespace) whose representor (the peer, in the host
// namespace) starts as a port of the host's bridge, so a and b talk
// directly. Diverted by the switchdev backend, the representors become
// the DM's dedicated ports; the DM (sourceroute.Engine on AF_PACKET
// sockets) sends a's UDP to b through two vsafilter processes, ips then
// fw. Every datagram must arrive once, byte for byte, after passing both;
// after Revert a and b talk through the bridge again and the appliances
// see nothing more.
func TestSwitchdevChainOnSimulatedNIC(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := vsafiltertest.Build(t, "..")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	host, aNS, bNS, ipsNS, fwNS := netnstest.New(t), netnstest.New(t), netnstest.New(t), netnstest.New(t), netnstest.New(t)
	for _, ns := range []*netnstest.NS{host, aNS, bNS, ipsNS, fwNS} {
		ns.QuietIPv6(t)
	}
	nic := newSimulatedNIC(t, host,
		netnstest.End{NS: aNS, Name: "eth0", MAC: guestA[:]},
		netnstest.End{NS: bNS, Name: "eth0", MAC: guestB[:]})
	host.AddBridge(t, "br-nic")
	for _, rep := range []string{rep0, rep1} {
		if _, err := host.Exec(ctx, "ip", "link", "set", rep, "master", "br-nic"); err != nil {
			t.Fatal(err)
		}
	}
	ips, fw := startChainAppliances(t, ctx, bin, host, ipsNS, fwNS, "")
	forwarded := func(v *vsafiltertest.Run) uint64 { return v.Counters(t).Appliance.Forwarded }

	aSock, err := openSocket(aNS, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { aSock.Close() })
	bSock, err := openSocket(bNS, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bSock.Close() })
	frame := func(payload string) []byte {
		return udpFrame(guestA, guestB, "10.77.0.1", "10.77.0.2", 40000, 5000, payload)
	}
	send := func(f []byte) {
		t.Helper()
		if _, err := aSock.WriteBatch([][]byte{nil}, [][]byte{f}); err != nil {
			t.Fatal(err)
		}
	}
	// receive returns the next frame from a that reaches b, or nil.
	receive := func(wait time.Duration) []byte {
		rctx, rcancel := context.WithTimeout(ctx, wait)
		defer rcancel()
		views := make([][]byte, 1)
		for {
			n, err := bSock.ReadBatch(rctx, views)
			if err != nil {
				return nil
			}
			var got []byte
			if n == 1 && bytes.Equal(views[0][6:12], guestA[:]) {
				got = bytes.Clone(views[0])
			}
			bSock.Release()
			if got != nil {
				return got
			}
		}
	}
	// settle sends probes until one arrives (links and processes coming
	// up), bounded, then drains what else arrives.
	settle := func(when string) {
		t.Helper()
		for attempt := 0; receive(time.Second) == nil; attempt++ {
			if attempt == 10 {
				t.Fatalf("%s: no probe reached b", when)
			}
			send(frame("probe"))
		}
		for receive(300*time.Millisecond) != nil {
		}
	}
	// exchange sends n datagrams and checks that each arrives once, as
	// sent, and that a marker sent last arrives with nothing before it.
	exchange := func(when string, n int) {
		t.Helper()
		for i := range n {
			want := frame(fmt.Sprintf("%s %02d", when, i))
			send(want)
			if got := receive(10 * time.Second); !bytes.Equal(got, want) {
				t.Fatalf("%s: datagram %d arrived as %x, want %x", when, i, got, want)
			}
		}
		marker := frame(when + " marker")
		send(marker)
		if got := receive(10 * time.Second); !bytes.Equal(got, marker) {
			t.Fatalf("%s: after %d datagrams came %x, want the marker", when, n, got)
		}
	}

	settle("bridged")
	ips0, fw0 := forwarded(ips), forwarded(fw)
	exchange("bridged", 5)
	if ips1, fw1 := forwarded(ips), forwarded(fw); ips1 != ips0 || fw1 != fw0 {
		t.Fatalf("appliances forwarded bridged frames: ips %v→%v, fw %v→%v", ips0, ips1, fw0, fw1)
	}

	backend := nic.backend(t)
	a, b := vfGuest("a", vf0Address, "52:54:00:c5:00:0a"), vfGuest("b", vf1Address, "52:54:00:c5:00:0b")
	ports := map[string]string{}
	for _, ifc := range []Iface{a, b} {
		dl, err := DeliveryOf(ctx, backend, ifc, "")
		if err != nil {
			t.Fatal(err)
		}
		if !dl.Dedicated || dl.Network != "sriov:"+cx5PF {
			t.Fatalf("delivery to %s: %+v, want a dedicated port in network sriov:%s", ifc, dl, cx5PF)
		}
		port := dl.Port
		if err := backend.Apply(ctx, ifc, port); err != nil {
			t.Fatal(err)
		}
		ports[ifc.GuestName] = port
	}

	e, stopDM := startChainDM(t, ctx, host,
		sourceroute.GuestRule{Name: "a", Ready: true, Policy: &sourceroute.PolicyRule{Name: "protected", Chain: []string{"ips", "fw"}, Symmetric: true},
			Interfaces: []sourceroute.GuestInterface{{MAC: guestA, Port: ports["a"], Dedicated: true}}},
		sourceroute.GuestRule{Name: "b", Ready: true, Interfaces: []sourceroute.GuestInterface{{MAC: guestB, Port: ports["b"], Dedicated: true}}})

	settle("diverted")
	ips1, fw1 := forwarded(ips), forwarded(fw)
	const n = 20
	exchange("diverted", n)
	// Each datagram and the marker passed both appliances exactly once.
	if d := forwarded(ips) - ips1; d != n+1 {
		t.Errorf("ips forwarded %d frames, want %d", d, n+1)
	}
	if d := forwarded(fw) - fw1; d != n+1 {
		t.Errorf("fw forwarded %d frames, want %d", d, n+1)
	}
	if c := e.Counters(); c.Instances["fw-1"].Returned < n {
		t.Errorf("the DM counted %d frames back from fw-1, want at least %d", c.Instances["fw-1"].Returned, n)
	}
	stopDM()

	for _, ifc := range []Iface{a, b} {
		if err := backend.Revert(ctx, ifc); err != nil {
			t.Fatal(err)
		}
	}
	settle("reverted")
	ips2, fw2 := forwarded(ips), forwarded(fw)
	exchange("reverted", 5)
	if ips3, fw3 := forwarded(ips), forwarded(fw); ips3 != ips2 || fw3 != fw2 {
		t.Errorf("appliances forwarded frames after Revert: ips %v→%v, fw %v→%v", ips2, ips3, fw2, fw3)
	}
}
