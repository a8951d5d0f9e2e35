//go:build linux

package sourceroute

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
)

// packetPort is a Port on a real interface through mdlayher/packet: one
// read and one write system call per frame. Slow, but real; production
// uses a TPACKET_V3 ring instead.
type packetPort struct {
	name string
	mtu  int
	c    *packet.Conn
	buf  []byte
	wbuf []byte
}

// openPacketPort opens name inside ns. The socket stays in ns for good,
// whichever goroutine uses it later.
func openPacketPort(ns *netnstest.NS, name string) (*packetPort, error) {
	var p *packetPort
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		c, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		if err != nil {
			return err
		}
		rc, err := c.SyscallConn()
		if err == nil {
			err = rc.Control(func(fd uintptr) {
				// Our own transmissions are never input.
				_ = unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
			})
		}
		if err != nil {
			c.Close()
			return err
		}
		p = &packetPort{name: name, mtu: ifi.MTU, c: c, buf: make([]byte, 1<<16)}
		return nil
	})
	return p, err
}

func (p *packetPort) Name() string { return p.name }
func (p *packetPort) MTU() int     { return p.mtu }
func (p *packetPort) Release()     {}
func (p *packetPort) Close() error { return p.c.Close() }

func (p *packetPort) ReadBatch(ctx context.Context, out [][]byte) (int, error) {
	if err := p.c.SetReadDeadline(time.Time{}); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { _ = p.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	n, _, err := p.c.ReadFrom(p.buf)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, err
	}
	out[0] = p.buf[:n]
	return 1, nil
}

func (p *packetPort) WriteBatch(heads, bodies [][]byte) (int, error) {
	for i := range bodies {
		p.wbuf = append(append(p.wbuf[:0], heads[i]...), bodies[i]...)
		if _, err := p.c.WriteTo(p.wbuf, &packet.Addr{HardwareAddr: net.HardwareAddr(p.wbuf[0:6])}); err != nil {
			return i, err
		}
	}
	return len(bodies), nil
}

// TestDMWithVsafiltersInNamespaces runs the engine on real veth links:
// two guest namespaces connected to the DM's namespace (their host ends
// are dedicated guest ports), and two vsafilter processes, each in its own
// namespace, as the appliances ips and fw. UDP from guest a to guest b
// must pass ips then fw and arrive byte for byte; a frame ips's rule
// denies must never arrive, and its drop notice must become an Event.
//
// It runs in every dataplane mode: the chained flow takes the userspace
// path whether or not a fast path is configured.
func TestDMWithVsafiltersInNamespaces(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := vsafiltertest.Build(t, "..")
	for _, mode := range dataplaneModes {
		t.Run(mode.name, func(t *testing.T) { testDMWithVsafilters(t, bin, mode.fast, mode.guestXDP) })
	}
}

func testDMWithVsafilters(t *testing.T, bin string, fast, guestXDP bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	lab := newChainLab(t, ctx, bin)
	dmNS, aNS, bNS, macA, macB, ips, fw := lab.dm, lab.a, lab.b, lab.macA, lab.macB, lab.ips, lab.fw

	if guestXDP {
		attachPass(t, aNS, "eth0")
		attachPass(t, bNS, "eth0")
	}

	events := make(chan Event, 64)
	e := newNetnsEngine(t, dmNS, fast, Config{ReturnTimeout: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Events: func(ev Event) { events <- ev }})
	pol := dmPolicy("protected", "ips", "fw")
	if err := e.Update(ctx, lab.snapshot(pol)); err != nil {
		t.Fatal(err)
	}
	runEngine(t, ctx, e)

	// The guests: raw sockets to send and see exact frames, and a UDP
	// socket in b so its kernel accepts them quietly.
	g := openRawGuests(t, ctx, aNS, bNS, macA)
	send, receive := g.send, g.receive
	var udpB net.PacketConn
	if err := bNS.Do(func() (err error) { udpB, err = net.ListenPacket("udp4", "10.9.0.2:5000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer udpB.Close()

	frameTo := func(dport uint16, payload string) []byte {
		return dmUDPFrame(macA, macB, "10.9.0.1", "10.9.0.2", 40000, dport, payload)
	}
	// Prove the whole path first (links and processes settle), bounded.
	probe := frameTo(5000, "probe")
	for attempt := 0; receive(time.Second) == nil; attempt++ {
		if attempt == 10 {
			t.Fatalf("no probe crossed the chain; DM counters %+v", e.Counters())
		}
		send(probe)
	}
	for receive(300*time.Millisecond) != nil {
	}
	ips0, fw0 := ips.Counters(t), fw.Counters(t)

	const n = 20
	for i := range n {
		want := frameTo(5000, fmt.Sprintf("datagram %02d", i))
		send(want)
		got := receive(10 * time.Second)
		if !bytes.Equal(got, want) {
			t.Fatalf("datagram %d arrived as %x, want %x", i, got, want)
		}
	}
	ips1, fw1 := ips.Counters(t), fw.Counters(t)
	if d := ips1.Appliance.Forwarded - ips0.Appliance.Forwarded; d != n {
		t.Errorf("ips forwarded %d, want %d", d, n)
	}
	if d := fw1.Appliance.Forwarded - fw0.Appliance.Forwarded; d != n {
		t.Errorf("fw forwarded %d, want %d", d, n)
	}

	// The denied frame, then a marker: the marker arriving means the
	// denied frame had its chance.
	denied := frameTo(9, "discard me")
	send(denied)
	send(frameTo(5000, "marker"))
	for {
		got := receive(10 * time.Second)
		if got == nil {
			t.Fatal("the marker never arrived")
		}
		if bytes.Equal(got, denied) {
			t.Fatal("the denied frame was delivered")
		}
		if bytes.Contains(got, []byte("marker")) {
			break
		}
	}
	select {
	case ev := <-events:
		if ev.Kind != EventDropNotice || ev.Appliance != "ips" || ev.Instance != "ips-1" || ev.Guest != "a" ||
			ev.Notice != NoticePolicyDeny || !ev.HasFlow || ev.Flow.DstPort() != 9 {
			t.Errorf("event %+v, want ips's policy-deny notice for a's flow to port 9", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no drop notice event")
	}
	ips2 := ips.Counters(t)
	if d := ips2.Appliance.NoticesSent - ips1.Appliance.NoticesSent; d != 1 {
		t.Errorf("ips sent %d notices, want 1", d)
	}
	c := e.Counters()
	if got := c.Instances["ips-1"].Notices; got != 1 {
		t.Errorf("DM counted %d notices from ips-1, want 1", got)
	}
	if got := c.Instances["fw-1"].Returned; got < n {
		t.Errorf("DM counted %d frames back from fw-1, want at least %d", got, n)
	}
}
