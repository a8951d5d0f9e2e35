package afpacket

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite testdata/"+capturedBlockFile+" from a live ring")

func TestOpenRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no interface", Config{}, "interface name"},
		{"interface name too long", Config{Iface: "sixteen-bytes-xx"}, "interface name"},
		{"both directions off", Config{Iface: "lo", RxOnly: true, TxOnly: true}, "exclude each other"},
		{"fanout on a transmit-only socket", Config{Iface: "lo", TxOnly: true, Fanout: 7}, "receiving socket"},
		{"promiscuous on a transmit-only socket", Config{Iface: "lo", TxOnly: true, Promiscuous: true}, "receiving socket"},
		{"block size not a page multiple", Config{Iface: "lo", BlockSize: 6000}, "BlockSize 6000"},
		{"block size not a power of two", Config{Iface: "lo", BlockSize: 3 * 4096}, "BlockSize 12288"},
		{"negative block count", Config{Iface: "lo", NumBlocks: -1}, "NumBlocks -1"},
		{"frame size unaligned", Config{Iface: "lo", FrameSize: 2008}, "FrameSize 2008"},
		{"frame size larger than a block", Config{Iface: "lo", BlockSize: 4096, FrameSize: 8192}, "FrameSize 8192"},
		{"frame size below the header", Config{Iface: "lo", FrameSize: 64}, "FrameSize 64"},
		{"negative timeout", Config{Iface: "lo", BlockTimeout: -time.Millisecond}, "BlockTimeout"},
		{"negative send buffer", Config{Iface: "lo", SendBuffer: -1}, "SendBuffer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(tt.cfg)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%+v) succeeded", tt.cfg)
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open(%+v) = %v, want ErrInvalidConfig mentioning %q", tt.cfg, err, tt.want)
			}
		})
	}
}

func TestOpenNamesInterfaceAndStep(t *testing.T) {
	_, err := Open(Config{Iface: "nosuch0"})
	if err == nil || !strings.Contains(err.Error(), "nosuch0") || !strings.Contains(err.Error(), "looking up") {
		t.Errorf("Open on a missing interface = %v, want an error naming it and the lookup", err)
	}
	a, _ := vethPair(t)
	// Members of one fanout group must agree on its flags; this one asks
	// for outgoing frames, the first one does not, so the kernel refuses
	// the join.
	a.open(t, Config{Fanout: 99})
	err = a.ns.Do(func() error {
		s, err := Open(Config{Iface: a.name, Fanout: 99, IncludeOutgoing: true})
		if err == nil {
			s.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), a.name) || !strings.Contains(err.Error(), "PACKET_FANOUT group 99") || !errors.Is(err, unix.EINVAL) {
		t.Errorf("Open joining a fanout group with other flags = %v, want EINVAL naming %s and the fanout step", err, a.name)
	}
}

func TestReceiveInOrderInBatches(t *testing.T) {
	a, b := vethPair(t)
	rx := b.open(t, roomyRing(Config{}))
	peer := a.peer(t, 0)
	var sent [][]byte
	for i := range 300 {
		sent = append(sent, seqFrame(b.mac, a.mac, uint32(i), 60+(i*97)%1455))
	}
	sendAll(t, peer, sent)
	got, batches := readFrames(t, rx, len(sent), 32)
	if diff := cmp.Diff(sent, got); diff != "" {
		t.Fatalf("received frames differ from sent (-sent +received):\n%s", diff)
	}
	if largest := maxOf(batches); largest < 2 {
		t.Errorf("300 waiting frames came in batches of at most %d", largest)
	}
	st, err := rx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets != 300 || st.Drops != 0 || st.Truncated != 0 || st.Malformed != 0 {
		t.Errorf("Stats = %+v, want 300 packets and nothing dropped or skipped", st)
	}
}

func maxOf(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// TestReceiveManyWithoutLoss sends 10 000 frames through a small ring (512
// KiB, so it wraps several times) while they are read, and checks every one
// arrives, in order, and the kernel counted no drop. The sender keeps at
// most 500 frames ahead of the reader so that neither side's queues, only
// the ring's handling, are under test; the ring's 32 blocks of 20 ms give
// the reader 640 ms of slack even when frames trickle in.
func TestReceiveManyWithoutLoss(t *testing.T) {
	const total, ahead = 10000, 500
	a, b := vethPair(t)
	rx := b.open(t, Config{BlockSize: 16 << 10, NumBlocks: 32, BlockTimeout: 20 * time.Millisecond})
	peer := a.peer(t, 0)
	var received atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	sendErr := make(chan error, 1)
	go func() {
		for i := range total {
			for int64(i)-received.Load() >= ahead {
				if ctx.Err() != nil {
					sendErr <- ctx.Err()
					return
				}
				time.Sleep(100 * time.Microsecond)
			}
			f := seqFrame(b.mac, a.mac, uint32(i), 60+i%140)
			if _, err := peer.WriteTo(f, &packet.Addr{HardwareAddr: b.mac}); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	out := make([][]byte, 64)
	for next := uint32(0); next < total; {
		n, err := rx.ReadBatch(ctx, out)
		if err != nil {
			t.Fatalf("ReadBatch after %d frames: %v", next, err)
		}
		for _, f := range out[:n] {
			if want := seqFrame(b.mac, a.mac, next, 60+int(next)%140); !bytes.Equal(f, want) {
				t.Fatalf("frame %d = %x, want %x", next, f, want)
			}
			next++
		}
		rx.Release()
		received.Add(int64(n))
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	st, err := rx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets != total || st.Drops != 0 {
		t.Errorf("Stats = %+v, want %d packets, 0 drops", st, total)
	}
}

func TestReadBatchUnblocks(t *testing.T) {
	a, _ := vethPair(t)
	wait := func(t *testing.T, errc <-chan error) error {
		t.Helper()
		select {
		case err := <-errc:
			return err
		case <-time.After(testDeadline):
			t.Fatal("ReadBatch did not return")
			return nil
		}
	}

	t.Run("context cancelled", func(t *testing.T) {
		s := a.open(t, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := s.ReadBatch(ctx, make([][]byte, 8))
			errc <- err
		}()
		cancel()
		if err := wait(t, errc); !errors.Is(err, context.Canceled) {
			t.Errorf("ReadBatch = %v, want context.Canceled", err)
		}
		// The socket stays usable after a cancelled read.
		ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel2()
		if _, err := s.ReadBatch(ctx2, make([][]byte, 8)); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("second ReadBatch = %v, want context.DeadlineExceeded", err)
		}
	})

	t.Run("closed", func(t *testing.T) {
		s := a.open(t, Config{})
		errc := make(chan error, 1)
		go func() {
			_, err := s.ReadBatch(context.Background(), make([][]byte, 8))
			errc <- err
		}()
		// Close may come before or after ReadBatch starts waiting; both
		// must end in ErrClosed.
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := wait(t, errc); !errors.Is(err, ErrClosed) || !errors.Is(err, net.ErrClosed) {
			t.Errorf("ReadBatch = %v, want ErrClosed", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close = %v, want nil", err)
		}
		if _, err := s.WriteBatch([][]byte{nil}, [][]byte{make([]byte, 60)}); !errors.Is(err, ErrClosed) {
			t.Errorf("WriteBatch after Close = %v, want ErrClosed", err)
		}
		if _, err := s.Stats(); err != nil {
			t.Errorf("Stats after Close = %v", err)
		}
	})
}

func TestReadBatchMisuse(t *testing.T) {
	a, b := vethPair(t)
	rx := b.open(t, Config{})
	sendAll(t, a.peer(t, 0), [][]byte{seqFrame(b.mac, a.mac, 1, 60), seqFrame(b.mac, a.mac, 2, 60)})
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	out := make([][]byte, 1)
	if _, err := rx.ReadBatch(ctx, out); err != nil {
		t.Fatal(err)
	}
	if _, err := rx.ReadBatch(ctx, out); !errors.Is(err, ErrNotReleased) {
		t.Errorf("ReadBatch without Release = %v, want ErrNotReleased", err)
	}
	rx.Release()
	if _, err := rx.ReadBatch(ctx, nil); err == nil {
		t.Errorf("ReadBatch with no room succeeded")
	}
	if _, err := rx.ReadBatch(ctx, out); err != nil {
		t.Errorf("ReadBatch after Release = %v", err)
	}
	rx.Release()

	tx := a.open(t, Config{TxOnly: true})
	if _, err := tx.ReadBatch(ctx, out); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("ReadBatch on a TxOnly socket = %v, want ErrUnsupported", err)
	}
	ro := a.open(t, Config{RxOnly: true})
	if _, err := ro.WriteBatch([][]byte{nil}, [][]byte{make([]byte, 60)}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("WriteBatch on an RxOnly socket = %v, want ErrUnsupported", err)
	}
	if _, err := tx.WriteBatch(make([][]byte, 2), make([][]byte, 1)); err == nil {
		t.Errorf("WriteBatch with 2 heads and 1 body succeeded")
	}
}

func TestDeviceDownEndsReadBatch(t *testing.T) {
	a, _ := vethPair(t)
	rx := a.open(t, Config{})
	errc := make(chan error, 1)
	go func() {
		_, err := rx.ReadBatch(context.Background(), make([][]byte, 8))
		errc <- err
	}()
	l, err := a.ns.Netlink().LinkByName(a.name)
	if err == nil {
		err = a.ns.Netlink().LinkSetDown(l)
	}
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, unix.ENETDOWN) || !strings.Contains(err.Error(), a.name) {
			t.Errorf("ReadBatch on a device going down = %v, want ENETDOWN naming %s", err, a.name)
		}
	case <-time.After(testDeadline):
		t.Fatal("ReadBatch did not return when the device went down")
	}
}

// TestVLANTagRestored sends tagged frames from a raw socket on one side of
// a veth; the receiving side's kernel lifts the outer tag out of each, and
// ReadBatch must give back the frames as sent. With -update it also stores
// the ring block it read as the walker's golden input.
func TestVLANTagRestored(t *testing.T) {
	a, b := vethPair(t)
	rx := b.open(t, Config{})
	sent := capturedFrames()
	sendAll(t, a.peer(t, 0), sent)
	got, _ := readFrames(t, rx, len(sent), len(sent))
	if diff := cmp.Diff(sent, got); diff != "" {
		t.Errorf("received frames differ from sent (-sent +received):\n%s", diff)
	}
	st, err := rx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.VLANRestored != 2 {
		t.Errorf("VLANRestored = %d, want 2 (the kernel no longer strips tags on veth?)", st.VLANRestored)
	}
	if *update {
		captureBlock(t, a, b)
	}
}

// captureBlock records a block a real kernel filled with capturedFrames,
// before ReadBatch restores any tag in it.
func captureBlock(t *testing.T, a, b link) {
	raw := b.open(t, Config{})
	sendAll(t, a.peer(t, 0), capturedFrames())
	deadline := time.Now().Add(testDeadline)
	for atomic.LoadUint32(blockStatus(raw.block(0)))&statusUser == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no block retired")
		}
		time.Sleep(time.Millisecond)
	}
	block := raw.block(0)
	used := int(binary.NativeEndian.Uint32(block[bdBlockLenOff:]))
	if err := os.WriteFile(filepath.Join("testdata", capturedBlockFile), block[:used], 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d bytes to testdata/%s", used, capturedBlockFile)
}

func TestWriteBatchGathersHeadAndBody(t *testing.T) {
	a, b := vethPair(t)
	tx := a.open(t, Config{TxOnly: true})
	peer := b.peer(t, unix.ETH_P_ALL)
	head := seqFrame(b.mac, a.mac, 0xfeed, 34)
	var heads, bodies, want [][]byte
	for i := range 40 {
		body := seqFrame(b.mac, a.mac, uint32(i), 60+i*31)
		switch i % 3 {
		case 0: // a DM header in front of the frame
			heads = append(heads, head)
			want = append(want, append(bytes.Clone(head), body...))
		case 1: // no header
			heads = append(heads, nil)
			want = append(want, body)
		case 2: // everything in the head
			heads, body = append(heads, body), nil
			want = append(want, heads[i])
		}
		bodies = append(bodies, body)
	}
	n, err := tx.WriteBatch(heads, bodies)
	if err != nil || n != len(heads) {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil", n, err, len(heads))
	}
	if diff := cmp.Diff(want, recvAll(t, peer, len(want))); diff != "" {
		t.Errorf("peer received (-want +got):\n%s", diff)
	}
}

func TestWriteBatchRejectsFramesItCannotSend(t *testing.T) {
	a, b := vethPair(t)
	tx := a.open(t, Config{TxOnly: true})
	peer := b.peer(t, unix.ETH_P_ALL)
	ok := func(seq uint32) []byte { return seqFrame(b.mac, a.mac, seq, 100) }
	bodies := [][]byte{
		ok(0),
		seqFrame(b.mac, a.mac, 1, 1500+14+5), // longer than the MTU allows
		ok(2),
		ok(3)[:13], // shorter than an Ethernet header
		ok(4),
	}
	n, err := tx.WriteBatch(make([][]byte, len(bodies)), bodies)
	var rej *RejectedError
	if n != 3 || !errors.As(err, &rej) || !errors.Is(err, unix.EMSGSIZE) {
		t.Fatalf("WriteBatch = %d, %v; want 3 and a RejectedError for EMSGSIZE", n, err)
	}
	if rej.Index != 1 || rej.Count != 2 || rej.Len != 1519 || rej.Iface != a.name {
		t.Errorf("RejectedError = %+v, want the first at #1 (1519 bytes), 2 in all, on %s", rej, a.name)
	}
	if diff := cmp.Diff([][]byte{ok(0), ok(2), ok(4)}, recvAll(t, peer, 3)); diff != "" {
		t.Errorf("peer received (-want +got):\n%s", diff)
	}
	st, err := tx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != 3 || st.Rejected != 2 {
		t.Errorf("Stats = %+v, want 3 sent and 2 rejected", st)
	}
}

// TestWriteBatchWaitsForBufferSpace sends a batch far larger than the
// socket's send buffer through a rate-limiting qdisc that holds frames
// (and their buffer space) back: sendmmsg sends part of the batch and then
// reports EAGAIN, and WriteBatch must wait and carry on until all is sent.
func TestWriteBatchWaitsForBufferSpace(t *testing.T) {
	a, b := vethPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	if _, err := a.ns.Exec(ctx, "tc", "qdisc", "replace", "dev", a.name, "root", "tbf", "rate", "40mbit", "burst", "8kb", "limit", "4mb"); err != nil {
		t.Fatal(err)
	}
	tx := a.open(t, Config{TxOnly: true, SendBuffer: 8 << 10})
	peer := b.peer(t, unix.ETH_P_ALL)
	var bodies [][]byte
	for i := range 300 {
		bodies = append(bodies, seqFrame(b.mac, a.mac, uint32(i), 1000))
	}
	got := make(chan [][]byte, 1)
	go func() { got <- recvAll(t, peer, len(bodies)) }()
	n, err := tx.WriteBatch(make([][]byte, len(bodies)), bodies)
	if err != nil || n != len(bodies) {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil", n, err, len(bodies))
	}
	if diff := cmp.Diff(bodies, <-got); diff != "" {
		t.Errorf("peer received (-want +got):\n%s", diff)
	}
	st, err := tx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.SendStalls == 0 {
		t.Errorf("Stats = %+v: WriteBatch never waited for buffer space, so the test did not test it", st)
	}
}

// TestIgnoreOutgoing: by default a socket does not see frames sent on its
// interface, neither by other sockets nor (through a fanout group's shared
// hook) by itself; IncludeOutgoing does see them.
func TestIgnoreOutgoing(t *testing.T) {
	a, b := vethPair(t)
	plain := a.open(t, Config{})
	grouped := a.open(t, Config{Fanout: 4242})
	seeing := a.open(t, Config{IncludeOutgoing: true})
	var ours [][]byte
	for i := range 3 {
		ours = append(ours, seqFrame(b.mac, a.mac, uint32(i), 80))
	}
	if _, err := grouped.WriteBatch(make([][]byte, len(ours)), ours); err != nil {
		t.Fatal(err)
	}
	marker := seqFrame(a.mac, b.mac, 0x7777, 60)
	sendAll(t, b.peer(t, 0), [][]byte{marker})
	for _, tt := range []struct {
		name string
		s    *Socket
		want [][]byte
	}{
		{"default", plain, [][]byte{marker}},
		{"fanout member that sent them", grouped, [][]byte{marker}},
		{"IncludeOutgoing", seeing, append(append([][]byte(nil), ours...), marker)},
	} {
		got := readUntil(t, tt.s, marker)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s socket received (-want +got):\n%s", tt.name, diff)
		}
	}
}

// TestFullRing fills every block of a small ring, reads it all in one
// batch larger than the ring, and then checks the kernel, frozen while the
// ring was full, delivers again once the blocks are released.
func TestFullRing(t *testing.T) {
	a, b := vethPair(t)
	rx := b.open(t, Config{BlockSize: 4096, NumBlocks: 4, FrameSize: 2048, BlockTimeout: time.Millisecond})
	peer := a.peer(t, 0)
	var flood [][]byte
	for i := range 200 {
		flood = append(flood, seqFrame(b.mac, a.mac, uint32(i), 100))
	}
	sendAll(t, peer, flood)

	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	// Only the kernel knows how many frames fit; wait until all 200 are
	// accounted for, received or dropped.
	var st Stats
	for st.Packets < uint64(len(flood)) {
		if ctx.Err() != nil {
			t.Fatalf("Stats = %+v, want %d packets", st, len(flood))
		}
		time.Sleep(time.Millisecond)
		var err error
		if st, err = rx.Stats(); err != nil {
			t.Fatal(err)
		}
	}
	if st.Drops == 0 || st.Freezes == 0 {
		t.Fatalf("Stats = %+v: 200 frames did not overflow a 16 KiB ring", st)
	}
	out := make([][]byte, 1000)
	var got [][]byte
	for uint64(len(got)) < st.Packets-st.Drops {
		n, err := rx.ReadBatch(ctx, out)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range out[:n] {
			got = append(got, bytes.Clone(f))
		}
		rx.Release()
	}
	if uint64(len(got)) != st.Packets-st.Drops {
		t.Fatalf("read %d frames, the kernel kept %d", len(got), st.Packets-st.Drops)
	}
	for i, f := range got {
		if want := seqFrame(b.mac, a.mac, uint32(i), 100); !bytes.Equal(f, want) {
			t.Fatalf("frame %d of the full ring = %x, want %x", i, f, want)
		}
	}
	after := seqFrame(b.mac, a.mac, 0xaf7e, 100)
	sendAll(t, peer, [][]byte{after})
	if diff := cmp.Diff([][]byte{after}, readUntil(t, rx, after)); diff != "" {
		t.Errorf("after the ring drained (-want +got):\n%s", diff)
	}
}
