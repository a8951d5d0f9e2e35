package appliance

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/sourceroute"
)

// PacketConfig configures OpenPacket.
type PacketConfig struct {
	// EtherType is the only protocol the socket receives (the kernel
	// filters on it); 0 receives every protocol.
	EtherType uint16
	// OnlyTo, if not zero, makes the kernel pass up only frames whose
	// destination is this MAC, so a busy shared segment costs nothing.
	OnlyTo sourceroute.MAC
	// Promiscuous asks the interface for frames to any MAC, for an
	// appliance whose hop address is not the interface's own. The kernel
	// undoes it when the socket closes.
	Promiscuous bool
	// RecvBuffer sets the socket's receive buffer in bytes; 0 keeps the
	// system default.
	RecvBuffer int
}

// PacketTransport is a Transport over a Linux AF_PACKET raw socket bound to
// one interface. Reads and writes go through the Go runtime's poller, so
// they block only their goroutine, honour their context and allocate
// nothing. It is safe for one reader and any number of writers at a time.
type PacketTransport struct {
	ifname string
	mac    sourceroute.MAC
	mtu    int
	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool

	rmu     sync.Mutex // serialises readers; guards the read* fields
	rwatch  ctxWatch
	readFn  func(fd uintptr) bool
	readBuf []byte
	readN   int
	readErr error

	wmu      sync.Mutex // serialises writers; guards the write* fields
	wwatch   ctxWatch
	writeFn  func(fd uintptr) bool
	writeBuf []byte
	writeErr error
}

// OpenPacket opens a raw packet socket on the interface ifname in the
// calling thread's network namespace.
func OpenPacket(ifname string, cfg PacketConfig) (*PacketTransport, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("appliance: interface %q: %w", ifname, err)
	}
	// Protocol 0 receives nothing until bind, so no frame can slip in
	// before the filter is attached.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("appliance: packet socket on %s: %w", ifname, err)
	}
	if err := setupPacketSocket(fd, ifi.Index, cfg); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("appliance: packet socket on %s: %w", ifname, err)
	}
	f := os.NewFile(uintptr(fd), "packet:"+ifname)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("appliance: packet socket on %s: %w", ifname, err)
	}
	t := &PacketTransport{ifname: ifname, mtu: ifi.MTU, f: f, rc: rc}
	copy(t.mac[:], ifi.HardwareAddr)
	t.rwatch.setDeadline = f.SetReadDeadline
	t.wwatch.setDeadline = f.SetWriteDeadline
	// The closures are made once: building them per frame would allocate.
	t.readFn = t.recv
	t.writeFn = t.send
	return t, nil
}

func setupPacketSocket(fd, ifindex int, cfg PacketConfig) error {
	if !cfg.OnlyTo.IsZero() {
		prog := dstFilter(cfg.OnlyTo)
		fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
			return fmt.Errorf("attaching destination filter: %w", err)
		}
	}
	if cfg.RecvBuffer > 0 {
		// FORCE lifts the rmem_max cap for root; fall back for others.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, cfg.RecvBuffer); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.RecvBuffer); err != nil {
				return fmt.Errorf("setting receive buffer: %w", err)
			}
		}
	}
	// Our own transmissions are never input, even for an all-protocols
	// socket. Kernels before 4.20 lack the option; they are not harmed.
	_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	proto := unix.ETH_P_ALL
	if cfg.EtherType != 0 {
		proto = int(cfg.EtherType)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(uint16(proto)), Ifindex: ifindex}); err != nil {
		return fmt.Errorf("binding: %w", err)
	}
	if cfg.Promiscuous {
		mreq := unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			return fmt.Errorf("enabling promiscuous mode: %w", err)
		}
	}
	return nil
}

// dstFilter is a classic BPF program accepting frames whose destination
// MAC is mac, in two loads: the first four octets, then the last two.
func dstFilter(mac sourceroute.MAC) []unix.SockFilter {
	hi := binary.BigEndian.Uint32(mac[0:4])
	lo := uint32(binary.BigEndian.Uint16(mac[4:6]))
	return []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 3, K: hi},
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 4},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: lo},
		{Code: unix.BPF_RET | unix.BPF_K, K: math.MaxUint32},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// MAC is the interface's hardware address.
func (t *PacketTransport) MAC() sourceroute.MAC { return t.mac }

// MTU is the interface's MTU when the socket was opened.
func (t *PacketTransport) MTU() int { return t.mtu }

// Interface is the name of the interface the socket is bound to.
func (t *PacketTransport) Interface() string { return t.ifname }

// Close closes the socket; blocked reads and writes return ErrClosed.
func (t *PacketTransport) Close() error {
	t.closed.Store(true)
	return t.f.Close()
}

// ReadFrame implements Transport.
func (t *PacketTransport) ReadFrame(ctx context.Context, buf []byte) (int, error) {
	if len(buf) == 0 {
		return 0, fmt.Errorf("appliance: reading %s: empty buffer", t.ifname)
	}
	t.rmu.Lock()
	defer t.rmu.Unlock()
	if err := t.rwatch.watch(ctx); err != nil {
		return 0, err
	}
	t.readBuf, t.readN, t.readErr = buf, 0, nil
	err := t.rc.Read(t.readFn)
	for t.rwatch.stale(ctx, err) {
		err = t.rc.Read(t.readFn)
	}
	t.readBuf = nil
	if err == nil {
		err = t.readErr
	}
	if err != nil {
		return 0, t.ioError(ctx, "reading", err)
	}
	if t.readN > len(buf) {
		return 0, fmt.Errorf("appliance: reading %s: %d-byte frame, %d-byte buffer: %w", t.ifname, t.readN, len(buf), ErrFrameTooBig)
	}
	return t.readN, nil
}

// recv is one non-blocking receive attempt; false asks the poller to wait.
// MSG_TRUNC makes the kernel report a frame's full length even when it did
// not fit, which is how a too-big frame is told from one that fits exactly.
func (t *PacketTransport) recv(fd uintptr) bool {
	b := t.readBuf
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_TRUNC, 0, 0)
	switch errno {
	case 0:
		t.readN = int(n)
	case unix.EAGAIN, unix.EINTR:
		return false
	default:
		t.readErr = errno
	}
	return true
}

// WriteFrame implements Transport.
func (t *PacketTransport) WriteFrame(ctx context.Context, frame []byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if err := t.wwatch.watch(ctx); err != nil {
		return err
	}
	t.writeBuf, t.writeErr = frame, nil
	err := t.rc.Write(t.writeFn)
	for t.wwatch.stale(ctx, err) {
		err = t.rc.Write(t.writeFn)
	}
	t.writeBuf = nil
	if err == nil {
		err = t.writeErr
	}
	if err != nil {
		if errors.Is(err, unix.EMSGSIZE) {
			return fmt.Errorf("appliance: sending %d bytes on %s (MTU %d): %w", len(frame), t.ifname, t.mtu, ErrFrameTooBig)
		}
		return t.ioError(ctx, "sending", err)
	}
	return nil
}

// send is one non-blocking send attempt on the bound interface; a packet
// socket sends a frame without an address to the interface it is bound to.
func (t *PacketTransport) send(fd uintptr) bool {
	_, err := unix.Write(int(fd), t.writeBuf)
	switch err {
	case unix.EAGAIN, unix.EINTR:
		return false
	case nil:
	default:
		t.writeErr = err
	}
	return true
}

func (t *PacketTransport) ioError(ctx context.Context, op string, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("appliance: %s %s: %w", op, t.ifname, ctx.Err())
	case t.closed.Load():
		return fmt.Errorf("appliance: %s %s: %w", op, t.ifname, ErrClosed)
	}
	return fmt.Errorf("appliance: %s %s: %w", op, t.ifname, err)
}

// ctxWatch turns the end of a context into an expired socket deadline, so
// a blocked read or write returns. It re-arms only when a call brings a
// different context, which keeps the per-frame path free of allocations
// while Run's context stays the same.
type ctxWatch struct {
	setDeadline func(time.Time) error
	armed       bool
	done        <-chan struct{}
	stopFn      func() bool
}

func (w *ctxWatch) watch(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := ctx.Done()
	if w.armed && done == w.done {
		return nil
	}
	w.stop()
	// A deadline left expired by an earlier context must not fail this one.
	if err := w.setDeadline(time.Time{}); err != nil {
		return err
	}
	w.armed, w.done = true, done
	if done != nil {
		set := w.setDeadline
		w.stopFn = context.AfterFunc(ctx, func() { _ = set(time.Unix(1, 0)) })
	}
	return nil
}

// stale reports whether err is an expired deadline that belongs to an
// earlier context (its cancellation can land after the re-arm for this
// one); it clears the deadline so the caller can retry.
func (w *ctxWatch) stale(ctx context.Context, err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
		return false
	}
	return w.setDeadline(time.Time{}) == nil
}

func (w *ctxWatch) stop() {
	if w.stopFn != nil {
		w.stopFn()
		w.stopFn = nil
	}
	w.armed, w.done = false, nil
}
