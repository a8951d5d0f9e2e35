package afpacket

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/netnstest"
)

// testDeadline bounds every wait of these tests; nothing here is meant to
// take more than a fraction of it.
const testDeadline = 30 * time.Second

// peerRecvBuffer holds far more than any burst of these tests.
const peerRecvBuffer = 32 << 20

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0xaa, 1}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0xbb, 1}
)

// link is one end of a veth pair in its own namespace.
type link struct {
	ns   *netnstest.NS
	name string
	mac  net.HardwareAddr
}

// vethPair makes two namespaces joined by a veth pair a0 <-> b0, with IPv6
// off so that no frame appears that a test did not send.
func vethPair(t testing.TB) (a, b link) {
	t.Helper()
	a = link{ns: netnstest.New(t), name: "a0", mac: macA}
	b = link{ns: netnstest.New(t), name: "b0", mac: macB}
	a.ns.QuietIPv6(t)
	b.ns.QuietIPv6(t)
	netnstest.Veth(t, netnstest.End{NS: a.ns, Name: a.name, MAC: a.mac}, netnstest.End{NS: b.ns, Name: b.name, MAC: b.mac})
	return a, b
}

// open opens a Socket on l with cfg (Iface filled in) and closes it when
// the test ends.
func (l link) open(t testing.TB, cfg Config) *Socket {
	t.Helper()
	cfg.Iface = l.name
	var s *Socket
	if err := l.ns.Do(func() (err error) {
		s, err = Open(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// roomyRing sizes cfg's ring for tests that send a whole burst before they
// read. A ring holds NumBlocks blocks, and the kernel hands a block over
// when it is full or BlockTimeout after its first frame: a sender slowed
// down (a loaded machine, the race detector) fills one block per timeout
// with a few frames, so a ring of 8 blocks of 2 ms overflows after 16 ms
// of trickle without a reader. 32 blocks of 250 ms hold 8 s of it.
func roomyRing(cfg Config) Config {
	cfg.BlockSize, cfg.NumBlocks, cfg.BlockTimeout = 64<<10, 32, 250*time.Millisecond
	return cfg
}

// peer opens an independent packet socket on l (one recvfrom or sendto per
// frame, none of this package's code) to check this package against.
// protocol 0 makes a send-only socket.
func (l link) peer(t testing.TB, protocol int) *packet.Conn {
	t.Helper()
	var c *packet.Conn
	if err := l.ns.Do(func() error {
		ifi, err := net.InterfaceByName(l.name)
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, protocol, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A roomy receive buffer lets a test send a whole burst before it
	// reads, without the peer dropping any of it.
	rc, err := c.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, peerRecvBuffer)
		})
		err = errors.Join(err, cerr)
	}
	if err != nil {
		t.Fatalf("peer receive buffer: %v", err)
	}
	return c
}

func sendAll(t testing.TB, c *packet.Conn, frames [][]byte) {
	t.Helper()
	for i, f := range frames {
		if _, err := c.WriteTo(f, &packet.Addr{HardwareAddr: f[:6]}); err != nil {
			t.Fatalf("peer sending frame %d: %v", i, err)
		}
	}
}

// recvAll reads want frames at the peer.
func recvAll(t testing.TB, c *packet.Conn, want int) [][]byte {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(testDeadline)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	var got [][]byte
	for len(got) < want {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("peer received %d of %d frames: %v", len(got), want, err)
		}
		got = append(got, bytes.Clone(buf[:n]))
	}
	return got
}

// readFrames reads want frames from s with batches of at most batch frames,
// copying them out, and returns them with the size of every batch.
func readFrames(t testing.TB, s *Socket, want, batch int) (frames [][]byte, batches []int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	out := make([][]byte, batch)
	for len(frames) < want {
		n, err := s.ReadBatch(ctx, out[:min(batch, want-len(frames))])
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d frames: %v", len(frames), want, err)
		}
		for _, f := range out[:n] {
			frames = append(frames, bytes.Clone(f))
		}
		batches = append(batches, n)
		s.Release()
	}
	return frames, batches
}

// seqFrame is an Ethernet frame from src to dst with a local experimental
// EtherType, carrying seq and filled up to size bytes with a pattern that
// depends on seq, so a reordered, mixed or damaged frame shows.
func seqFrame(dst, src net.HardwareAddr, seq uint32, size int) []byte {
	f := make([]byte, max(size, 18))
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], 0x88b5)
	binary.BigEndian.PutUint32(f[14:], seq)
	for i := 18; i < len(f); i++ {
		f[i] = byte(seq) + byte(i)
	}
	return f
}

// udpFrame is an IPv4/UDP frame of flow (src port) with seq in its
// payload, padded to 64 bytes on the wire.
func udpFrame(dst, src net.HardwareAddr, srcPort uint16, seq uint32) []byte {
	f := make([]byte, 14+20+8+4+14)
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-14))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[12:], []byte{10, 0, 0, 1})
	copy(ip[16:], []byte{10, 0, 0, 2})
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:], srcPort)
	binary.BigEndian.PutUint16(udp[2:], 4789)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(f)-34))
	binary.BigEndian.PutUint32(f[42:], seq)
	return f
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// linkPromisc reports whether l's interface is promiscuous.
func (l link) promisc(t testing.TB) bool {
	t.Helper()
	nl, err := l.ns.Netlink().LinkByName(l.name)
	if err != nil {
		t.Fatal(err)
	}
	return nl.Attrs().Promisc != 0
}

// readUntil reads from s until last arrives and returns every frame read,
// last included.
func readUntil(t testing.TB, s *Socket, last []byte) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	out := make([][]byte, 16)
	var got [][]byte
	for {
		n, err := s.ReadBatch(ctx, out)
		if err != nil {
			t.Fatalf("ReadBatch after %d frames, before %x: %v", len(got), last, err)
		}
		for _, f := range out[:n] {
			got = append(got, bytes.Clone(f))
		}
		s.Release()
		if n > 0 && bytes.Equal(got[len(got)-1], last) {
			return got
		}
	}
}
