package appliance

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/sourceroute"
)

// openIn opens a packet transport on ifname inside ns.
func openIn(t testing.TB, ns *netnstest.NS, ifname string, cfg PacketConfig) *PacketTransport {
	t.Helper()
	var tr *PacketTransport
	if err := ns.Do(func() (err error) {
		tr, err = OpenPacket(ifname, cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// dmAndVSA wires a "dm" namespace to a "vsa" namespace with one veth pair
// (MACs of the test vectors' DM and VSA1) and opens a packet transport on
// each end: the DM's takes every frame addressed to it, the VSA's only MSR
// frames addressed to it.
func dmAndVSA(tb testing.TB, recvBuffer int) (dmTr, vsaTr *PacketTransport) {
	dmNS, vsaNS := netnstest.New(tb), netnstest.New(tb)
	dmNS.QuietIPv6(tb)
	vsaNS.QuietIPv6(tb)
	netnstest.Veth(tb,
		netnstest.End{NS: dmNS, Name: "dm0", MAC: net.HardwareAddr(dm[:])},
		netnstest.End{NS: vsaNS, Name: "vsa0", MAC: net.HardwareAddr(vsa1[:])})
	dmTr = openIn(tb, dmNS, "dm0", PacketConfig{OnlyTo: dm, RecvBuffer: recvBuffer})
	vsaTr = openIn(tb, vsaNS, "vsa0", PacketConfig{EtherType: sourceroute.DefaultEtherType, OnlyTo: vsa1, RecvBuffer: recvBuffer})
	return dmTr, vsaTr
}

// encapsulate builds the MSR frame the DM would send for route.
func encapsulate(t testing.TB, route []sourceroute.MAC, inner []byte) []byte {
	t.Helper()
	codec := sourceroute.DefaultCodec()
	hdr := make([]byte, sourceroute.HeaderLen(len(route)))
	if _, err := codec.BuildHeader(hdr, route[len(route)-1], route); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(hdr)+len(inner))
	if _, reason := sourceroute.Encapsulate(out, hdr, inner); reason != sourceroute.OK {
		t.Fatal(reason)
	}
	return out
}

// TestPacketTransportForwards wires a "dm" namespace to a "vsa" namespace
// with one veth pair and runs an appliance over real AF_PACKET sockets: a
// frame for route [vsa, dm] comes back to the DM advanced by one hop, a
// frame for another MAC never reaches the appliance (the kernel filter
// drops it), and a rewrite that outgrows the link's MTU is counted as too
// big instead of being sent.
func TestPacketTransportForwards(t *testing.T) {
	dmTr, vsaTr := dmAndVSA(t, 0)
	if vsaTr.MAC() != vsa1 || vsaTr.MTU() != 1500 || vsaTr.Interface() != "vsa0" {
		t.Fatalf("transport reports MAC %s MTU %d interface %s", vsaTr.MAC(), vsaTr.MTU(), vsaTr.Interface())
	}

	grow := []byte("grow")
	a, err := NewAppliance(ApplianceConfig{Self: vsa1, Transport: vsaTr, Inspector: InspectorFunc(func(inner []byte, _ FrameMeta) Verdict {
		if bytes.HasSuffix(inner, grow) {
			return Rewrite(len(inner) + 200)
		}
		return Pass()
	})})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()

	v := loadVectors(t, "two-vsa-chain.json")
	inner := v["original_frame"]
	frame := encapsulate(t, []sourceroute.MAC{vsa1, dm}, inner)
	want := append([]byte(nil), frame...)
	f, _ := sourceroute.DefaultCodec().Parse(want)
	if r := sourceroute.DefaultCodec().Advance(f, vsa1); r != sourceroute.OK {
		t.Fatal(r)
	}

	// A frame to a MAC nobody has: the appliance's filter must not pass it up.
	other := append([]byte(nil), frame...)
	copy(other[0:6], []byte{0x02, 0, 0, 0, 0x77, 0x77})
	// An inner frame near the MTU that the inspector grows past it.
	bigInner := append(append(append([]byte(nil), inner...), make([]byte, 1500-len(frame)-len(grow))...), grow...)
	big := encapsulate(t, []sourceroute.MAC{vsa1, dm}, bigInner)

	for _, out := range [][]byte{other, big, frame} {
		if err := dmTr.WriteFrame(ctx, out); err != nil {
			t.Fatal(err)
		}
	}
	// The forwarded frame is the only one that may come back, and the
	// frames were sent in order, so when it arrives the others are done.
	buf := make([]byte, 2048)
	readCtx, readCancel := context.WithTimeout(ctx, 5*time.Second)
	n, err := dmTr.ReadFrame(readCtx, buf)
	readCancel()
	if err != nil {
		t.Fatalf("DM read: %v (appliance counters %+v)", err, a.Counters())
	}
	if diff := cmp.Diff(want, buf[:n]); diff != "" {
		t.Errorf("frame back at the DM (-want +got):\n%s", diff)
	}

	stop()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
	wantC := Counters{Received: 2, Forwarded: 1}
	wantC.Invalid[sourceroute.ReasonTooBig] = 1
	if diff := cmp.Diff(wantC, a.Counters()); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}

	// Nothing else reached the DM: a short read must end by its deadline.
	readCtx, readCancel = context.WithTimeout(ctx, 200*time.Millisecond)
	defer readCancel()
	if n, err := dmTr.ReadFrame(readCtx, buf); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("extra frame at the DM: %d bytes, err %v", n, err)
	}
}

// TestPacketTransportTooBigForBuffer checks that a frame longer than the
// read buffer is reported as ErrFrameTooBig, not silently truncated, and
// that Close unblocks a reader with ErrClosed.
func TestPacketTransportTooBigForBuffer(t *testing.T) {
	a, b := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, netnstest.End{NS: a, Name: "a0", MAC: net.HardwareAddr(dm[:])}, netnstest.End{NS: b, Name: "b0", MAC: net.HardwareAddr(vsa1[:])})
	ta := openIn(t, a, "a0", PacketConfig{})
	tb := openIn(t, b, "b0", PacketConfig{EtherType: sourceroute.DefaultEtherType, OnlyTo: vsa1})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	frame := encapsulate(t, []sourceroute.MAC{vsa1, dm}, make([]byte, 100))
	if err := ta.WriteFrame(ctx, frame); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.ReadFrame(ctx, make([]byte, 64)); !errors.Is(err, ErrFrameTooBig) {
		t.Errorf("read into a small buffer: %v, want ErrFrameTooBig", err)
	}

	errc := make(chan error, 1)
	go func() {
		_, err := tb.ReadFrame(ctx, make([]byte, 64))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the reader block; the result does not depend on it
	tb.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("read after Close: %v, want ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not unblock the reader")
	}
}

// BenchmarkPacketForward measures an appliance forwarding over real
// AF_PACKET sockets on a veth pair: the DM side keeps a window of frames
// in flight and reads each one back, so ns/op is the per-frame cost of the
// whole path (two veth hops, one appliance receive, judge and send, the
// DM's own send and receive). Frames lost to full socket buffers are
// reported as lost/op rather than waited for. allocs/op covers both sides
// and the test's per-window deadline; the appliance adds none.
func BenchmarkPacketForward(b *testing.B) {
	dmTr, vsaTr := dmAndVSA(b, 4<<20)
	a, err := NewAppliance(ApplianceConfig{Self: vsa1, Transport: vsaTr, Inspector: passAll})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	frame := encapsulate(b, []sourceroute.MAC{vsa1, dm}, make([]byte, 60))
	buf := make([]byte, 2048)
	const window = 32
	lost := 0
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n := min(window, b.N-sent)
		for range n {
			if err := dmTr.WriteFrame(ctx, frame); err != nil {
				b.Fatal(err)
			}
		}
		sent += n
		// One deadline per window keeps the DM's own allocations (a
		// context and its timer) out of the per-frame figure.
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		for got := 0; got < n; got++ {
			if _, err := dmTr.ReadFrame(rctx, buf); err != nil {
				lost += n - got
				break
			}
		}
		rcancel()
	}
	b.ReportMetric(float64(lost)/float64(b.N), "lost/op")
}
