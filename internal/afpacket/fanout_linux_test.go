package afpacket

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// TestFanoutKeepsFlowsTogether sends 32 UDP flows through a fanout group
// of two sockets: the flows must be split between the sockets, and all
// frames of one flow must reach one socket, in order.
func TestFanoutKeepsFlowsTogether(t *testing.T) {
	const flows, perFlow = 32, 20
	a, b := vethPair(t)
	// Everything is sent before anything is read, so the rings must hold
	// the whole stream even if it trickles in (see roomyRing).
	workers := []*Socket{b.open(t, roomyRing(Config{Fanout: 7})), b.open(t, roomyRing(Config{Fanout: 7}))}
	var sent [][]byte
	for seq := range perFlow {
		for flow := range flows {
			sent = append(sent, udpFrame(b.mac, a.mac, uint16(40000+flow), uint32(seq)))
		}
	}
	sendAll(t, a.peer(t, 0), sent)

	// Each socket's kernel counter says how many frames the hash gave it;
	// once they add up to all that was sent, each socket is read for
	// exactly its share.
	perWorker := make([]int, len(workers))
	deadline := time.Now().Add(testDeadline)
	for total := 0; total != len(sent); {
		if time.Now().After(deadline) {
			t.Fatalf("sockets of the group counted %v frames, want %d in all", perWorker, len(sent))
		}
		time.Sleep(time.Millisecond)
		total = 0
		for w, s := range workers {
			st, err := s.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Drops != 0 {
				t.Fatalf("worker %d dropped %d frames: %+v", w, st.Drops, st)
			}
			perWorker[w] = int(st.Packets)
			total += perWorker[w]
		}
	}
	owner := map[uint16]int{} // flow (source port) -> worker
	nextSeq := map[uint16]uint32{}
	for w, s := range workers {
		frames, _ := readFrames(t, s, perWorker[w], 64)
		for _, f := range frames {
			flow := binary.BigEndian.Uint16(f[34:])
			seq := binary.BigEndian.Uint32(f[42:])
			if o, seen := owner[flow]; seen && o != w {
				t.Fatalf("flow %d reached worker %d and worker %d", flow, o, w)
			}
			owner[flow] = w
			if seq != nextSeq[flow] {
				t.Fatalf("flow %d: frame %d arrived when %d was due", flow, seq, nextSeq[flow])
			}
			nextSeq[flow]++
		}
	}
	if perWorker[0] == 0 || perWorker[1] == 0 {
		t.Errorf("frames per worker = %v, want the %d flows split between both", perWorker, flows)
	}
	if len(owner) != flows {
		t.Errorf("%d flows arrived, want %d", len(owner), flows)
	}
}

// TestFanoutReassemblesFragments: with PACKET_FANOUT_FLAG_DEFRAG the group
// hashes whole datagrams, so the fragments of one arrive as one frame.
func TestFanoutReassemblesFragments(t *testing.T) {
	a, b := vethPair(t)
	rx := b.open(t, Config{Fanout: 8})
	whole := udpFrame(b.mac, a.mac, 5555, 1)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 8) // 128 bytes
	whole = append(whole[:42], payload...)
	ip := whole[14:34]
	binary.BigEndian.PutUint16(ip[2:], uint16(len(whole)-14))
	binary.BigEndian.PutUint16(whole[38:], uint16(len(whole)-34))
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))

	// Split the IP payload (UDP header + data, 136 bytes) at 64 bytes.
	fragment := func(offset, end int, more bool) []byte {
		f := append(bytes.Clone(whole[:34]), whole[34+offset:34+end]...)
		h := f[14:34]
		binary.BigEndian.PutUint16(h[2:], uint16(20+end-offset))
		flags := uint16(offset / 8)
		if more {
			flags |= 0x2000
		}
		binary.BigEndian.PutUint16(h[4:], 0x1234) // identification
		binary.BigEndian.PutUint16(h[6:], flags)
		binary.BigEndian.PutUint16(h[10:], 0)
		binary.BigEndian.PutUint16(h[10:], ipChecksum(h))
		return f
	}
	ipPayload := len(whole) - 34
	sendAll(t, a.peer(t, 0), [][]byte{fragment(0, 64, true), fragment(64, ipPayload, false)})
	got, _ := readFrames(t, rx, 1, 4)
	f := got[0]
	if len(f) != len(whole) || !bytes.Equal(f[34:], whole[34:]) {
		t.Errorf("received %d bytes %x, want the reassembled datagram (%d bytes)", len(f), f, len(whole))
	}
}

func TestPromiscuousUntilClose(t *testing.T) {
	a, b := vethPair(t)
	if a.promisc(t) {
		t.Fatalf("%s is promiscuous before the test", a.name)
	}
	s := a.open(t, Config{Promiscuous: true})
	if !a.promisc(t) {
		t.Fatalf("%s is not promiscuous with a Promiscuous socket open", a.name)
	}
	// Close with a batch still out: the membership must go anyway.
	sendAll(t, b.peer(t, 0), [][]byte{seqFrame(a.mac, b.mac, 1, 60)})
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	out := make([][]byte, 1)
	if _, err := s.ReadBatch(ctx, out); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if a.promisc(t) {
		t.Errorf("%s is still promiscuous after Close", a.name)
	}
	// The outstanding view is still mapped (as blank memory) until Release.
	if !bytes.Equal(out[0], make([]byte, len(out[0]))) {
		t.Errorf("view after Close = %x, want zeros", out[0])
	}
	s.Release()
}

// TestForwardFromRing runs the DM's loop: read a batch from one interface,
// send each frame behind a 34-byte header out of another, straight from the
// ring, release. The sink must get header‖frame for every frame, in order.
func TestForwardFromRing(t *testing.T) {
	topo := newForwardTopology(t)
	in := topo.fwdIn.open(t, roomyRing(Config{RxOnly: true}))
	out := topo.fwdOut.open(t, Config{TxOnly: true})
	sink := topo.sink.peer(t, unix.ETH_P_ALL)
	var sent, want [][]byte
	head := seqFrame(topo.sink.mac, topo.fwdOut.mac, 0xd0d0, 34)
	for i := range 500 {
		f := seqFrame(topo.fwdIn.mac, topo.gen.mac, uint32(i), 60+i%300)
		sent = append(sent, f)
		want = append(want, append(bytes.Clone(head), f...))
	}
	sendAll(t, topo.gen.peer(t, 0), sent)

	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	views := make([][]byte, 64)
	heads := make([][]byte, 64)
	for i := range heads {
		heads[i] = head
	}
	for forwarded := 0; forwarded < len(sent); {
		n, err := in.ReadBatch(ctx, views)
		if err != nil {
			t.Fatal(err)
		}
		m, err := out.WriteBatch(heads[:n], views[:n])
		if err != nil || m != n {
			t.Fatalf("WriteBatch = %d, %v; want %d, nil", m, err, n)
		}
		in.Release()
		forwarded += n
	}
	if diff := cmp.Diff(want, recvAll(t, sink, len(want))); diff != "" {
		t.Errorf("sink received (-want +got):\n%s", diff)
	}
}

// TestSteadyStateAllocatesNothing proves the per-batch claim: a WriteBatch
// of 16 frames, the ReadBatches that receive them and their Releases
// allocate nothing once the context is registered.
func TestSteadyStateAllocatesNothing(t *testing.T) {
	a, b := vethPair(t)
	tx := a.open(t, Config{TxOnly: true})
	rx := b.open(t, Config{})
	const batch = 16
	heads := make([][]byte, batch)
	bodies := make([][]byte, batch)
	for i := range bodies {
		heads[i] = make([]byte, 34)
		copy(heads[i], seqFrame(b.mac, a.mac, 0, 34))
		bodies[i] = seqFrame(b.mac, a.mac, uint32(i), 64)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	out := make([][]byte, batch)
	var runErr error
	allocs := testing.AllocsPerRun(200, func() {
		if runErr != nil {
			return
		}
		if _, runErr = tx.WriteBatch(heads, bodies); runErr != nil {
			return
		}
		for got := 0; got < batch; {
			var n int
			if n, runErr = rx.ReadBatch(ctx, out); runErr != nil {
				return
			}
			got += n
			rx.Release()
		}
	})
	if runErr != nil {
		t.Fatal(runErr)
	}
	if allocs != 0 {
		t.Errorf("WriteBatch + ReadBatch + Release of %d frames allocate %v times per batch, want 0", batch, allocs)
	}
}
