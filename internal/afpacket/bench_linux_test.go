package afpacket

import (
	"context"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/netnstest"
)

// forwardTopology is generator → forwarder → sink over two veth pairs, each
// role in its own namespace: gen (g0) <-> fwdIn (f0), fwdOut (f1) <-> sink (s0).
type forwardTopology struct {
	gen, fwdIn, fwdOut, sink link
}

func newForwardTopology(tb testing.TB) forwardTopology {
	tb.Helper()
	g, f, s := netnstest.New(tb), netnstest.New(tb), netnstest.New(tb)
	for _, ns := range []*netnstest.NS{g, f, s} {
		ns.QuietIPv6(tb)
	}
	topo := forwardTopology{
		gen:    link{ns: g, name: "g0", mac: net.HardwareAddr{0x02, 0, 0, 0, 0x01, 1}},
		fwdIn:  link{ns: f, name: "f0", mac: net.HardwareAddr{0x02, 0, 0, 0, 0x02, 1}},
		fwdOut: link{ns: f, name: "f1", mac: net.HardwareAddr{0x02, 0, 0, 0, 0x02, 2}},
		sink:   link{ns: s, name: "s0", mac: net.HardwareAddr{0x02, 0, 0, 0, 0x03, 1}},
	}
	for _, pair := range [][2]link{{topo.gen, topo.fwdIn}, {topo.fwdOut, topo.sink}} {
		netnstest.Veth(tb,
			netnstest.End{NS: pair[0].ns, Name: pair[0].name, MAC: pair[0].mac},
			netnstest.End{NS: pair[1].ns, Name: pair[1].name, MAC: pair[1].mac})
	}
	return topo
}

// benchDeadline bounds one benchmark round, whatever b.N is.
const benchDeadline = 20 * time.Second

// BenchmarkForward measures a forwarder on one veth hop to the next: 60-byte
// UDP frames of 1024 flows come from an skb-based generator (this package's
// WriteBatch, 64 frames per sendmmsg, in the generator's namespace) as fast
// as it can send; the forwarder moves b.N of them to the sink, where the
// kernel drops them (they are not addressed to it). ns/op is per forwarded
// frame; pps is the forwarding rate, offered-pps the generator's (when the
// two are equal the generator, not the forwarder, was the limit), and
// fwd-cpu-ns/frame the forwarder thread's CPU time per frame, which bounds
// what one core could forward whatever the generator does. Copying a frame
// into the ring happens in the generator's context (as it would in a
// NIC's receive softirq) and is not in fwd-cpu-ns; the baseline's copy
// out of the socket queue is.
//
//   - ring: ReadBatch (TPACKET_V3 ring) + WriteBatch straight from the ring.
//   - ring+head34: the same with a 34-byte header in front of every frame,
//     as the DM sends to a VSA.
//   - packet-ReadFrom-WriteTo: the baseline, github.com/mdlayher/packet with
//     one recvfrom and one sendto per frame.
func BenchmarkForward(b *testing.B) {
	topo := newForwardTopology(b)
	gen := topo.gen.open(b, Config{TxOnly: true})
	b.Run("ring", func(b *testing.B) { benchForward(b, topo, gen, ringForwarder(b, topo, 0)) })
	b.Run("ring+head34", func(b *testing.B) { benchForward(b, topo, gen, ringForwarder(b, topo, 34)) })
	b.Run("packet-ReadFrom-WriteTo", func(b *testing.B) { benchForward(b, topo, gen, packetForwarder(b, topo)) })
}

// forwarder moves at least n frames and reports how many it moved and in
// how many batches; close releases its sockets.
type forwarder struct {
	forward func(ctx context.Context, n int) (frames, batches int, err error)
	close   func()
}

func benchForward(b *testing.B, topo forwardTopology, gen *Socket, fw forwarder) {
	defer fw.close()
	ctx, cancel := context.WithTimeout(context.Background(), benchDeadline)
	defer cancel()
	var stop atomic.Bool
	offered := make(chan int64, 1)
	genErr := make(chan error, 1)
	go func() { genErr <- generate(ctx, gen, topo, &stop, offered) }()

	// The forwarder keeps one thread so that the thread's CPU time is
	// the forwarder's: its system calls and the kernel work they do, such
	// as delivering each sent frame into the sink's namespace.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpuBefore := threadCPU(b)
	b.ReportAllocs()
	b.ResetTimer()
	frames, batches, err := fw.forward(ctx, b.N)
	b.StopTimer()
	cpu := threadCPU(b) - cpuBefore
	stop.Store(true)
	if gerr := <-genErr; gerr != nil {
		b.Fatalf("generator: %v", gerr)
	}
	if err != nil {
		b.Fatalf("forwarded %d of %d frames: %v", frames, b.N, err)
	}
	secs := b.Elapsed().Seconds()
	b.ReportMetric(float64(frames)/secs, "pps")
	b.ReportMetric(float64(<-offered)/secs, "offered-pps")
	if frames > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(frames), "fwd-cpu-ns/frame")
	}
	if batches > 0 {
		b.ReportMetric(float64(frames)/float64(batches), "frames/batch")
	}
}

// threadCPU is the user and system time the calling thread has used.
func threadCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// generate sends 60-byte frames of 1024 flows, 64 per WriteBatch, until
// stop is set or ctx ends, then reports how many it sent.
func generate(ctx context.Context, gen *Socket, topo forwardTopology, stop *atomic.Bool, offered chan<- int64) error {
	const batch, flows = 64, 1024
	var frames [flows][]byte
	for i := range frames {
		frames[i] = udpFrame(topo.fwdIn.mac, topo.gen.mac, uint16(10000+i), uint32(i))[:60]
	}
	heads := make([][]byte, batch)
	var sent int64
	defer func() { offered <- sent }()
	for i := 0; !stop.Load(); i = (i + batch) % flows {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		n, err := gen.WriteBatch(heads, frames[i:i+batch])
		sent += int64(n)
		if err != nil {
			return err
		}
	}
	return nil
}

func ringForwarder(b *testing.B, topo forwardTopology, headLen int) forwarder {
	in := topo.fwdIn.open(b, Config{RxOnly: true})
	out := topo.fwdOut.open(b, Config{TxOnly: true})
	const batch = 64
	views := make([][]byte, batch)
	heads := make([][]byte, batch)
	if headLen > 0 {
		head := seqFrame(topo.sink.mac, topo.fwdOut.mac, 0, headLen)
		for i := range heads {
			heads[i] = head
		}
	}
	return forwarder{
		forward: func(ctx context.Context, n int) (frames, batches int, err error) {
			for frames < n {
				k, err := in.ReadBatch(ctx, views)
				if err != nil {
					return frames, batches, err
				}
				// Frames the kernel refuses are counted, not fatal: the
				// benchmark measures throughput.
				sent, err := out.WriteBatch(heads[:k], views[:k])
				in.Release()
				if _, refused := err.(*RejectedError); err != nil && !refused {
					return frames, batches, err
				}
				frames += sent
				batches++
			}
			return frames, batches, nil
		},
		close: func() { in.Close(); out.Close() },
	}
}

func packetForwarder(b *testing.B, topo forwardTopology) forwarder {
	in := topo.fwdIn.peer(b, unix.ETH_P_ALL)
	out := topo.fwdOut.peer(b, 0)
	to := &packet.Addr{HardwareAddr: topo.sink.mac}
	buf := make([]byte, 2048)
	return forwarder{
		forward: func(ctx context.Context, n int) (frames, batches int, err error) {
			deadline, _ := ctx.Deadline()
			if err := in.SetReadDeadline(deadline); err != nil {
				return 0, 0, err
			}
			for frames < n {
				k, _, err := in.ReadFrom(buf)
				if err != nil {
					return frames, batches, err
				}
				if _, err := out.WriteTo(buf[:k], to); err != nil {
					return frames, batches, err
				}
				frames++
			}
			return frames, 0, nil
		},
		close: func() { in.Close(); out.Close() },
	}
}
