package afpacket

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	// ErrClosed is returned by calls on a closed Socket, including a
	// ReadBatch that Close interrupted. It wraps net.ErrClosed.
	ErrClosed = fmt.Errorf("afpacket: %w", net.ErrClosed)
	// ErrNotReleased is returned by a ReadBatch that follows another one
	// without a Release in between.
	ErrNotReleased = errors.New("afpacket: ReadBatch before Release of the previous batch")
	// ErrSendStalled is returned by a WriteBatch that found no socket
	// buffer space for sendStallLimit. The error also wraps unix.EAGAIN.
	ErrSendStalled = errors.New("afpacket: send buffer stayed full")
)

const (
	// maxSendBatch is how many frames one sendmmsg call carries; longer
	// batches take several calls. It sizes the preallocated arrays.
	maxSendBatch = 256
	// sendStallLimit bounds how long WriteBatch waits for buffer space
	// without any frame going out. A forwarder that waits longer only
	// lets its own receive ring overflow; better to report and move on.
	sendStallLimit = 100 * time.Millisecond
)

// eventOne is the 8-byte counter increment an eventfd write takes.
var eventOne = func() (b [8]byte) {
	binary.NativeEndian.PutUint64(b[:], 1)
	return b
}()

// RejectedError reports frames of a batch that the kernel refused one by
// one: longer than the MTU (EMSGSIZE), shorter than an Ethernet header
// (EINVAL), or dropped by the device's queue (ENOBUFS). Every other frame of
// the batch was still sent, in order. errors.Is(err, unix.EMSGSIZE) and the
// like test the first refused frame's reason.
type RejectedError struct {
	Iface string
	Index int   // position in the batch of the first refused frame
	Len   int   // that frame's length in bytes (head plus body)
	Count int   // how many frames of the batch were refused
	Err   error // why the first one was refused, a unix.Errno
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("afpacket: %s: %d frame(s) of the batch refused, the first is #%d (%d bytes): %v", e.Iface, e.Count, e.Index, e.Len, e.Err)
}

func (e *RejectedError) Unwrap() error { return e.Err }

// Stats are cumulative counters of a Socket since Open.
type Stats struct {
	// From the kernel's PACKET_STATISTICS, which resets on every read;
	// the Socket keeps the running sums.
	Packets uint64 // frames that reached the socket, the dropped ones included
	Drops   uint64 // frames lost because the ring had no free block
	Freezes uint64 // times the ring filled up and the kernel froze it

	// Frames ReadBatch found in the ring but did not hand out, by reason.
	Truncated uint64 // the ring holds only part of the frame
	Malformed uint64 // inconsistent frame or block descriptors (a kernel bug or corrupt memory; each abandoned block counts once)

	// Frames ReadBatch handed out that need a caller's attention.
	VLANRestored    uint64 // the kernel had lifted the 802.1Q/802.1ad tag out of the frame; ReadBatch put it back
	ChecksumPartial uint64 // the sender left the L4 checksum to offload (TP_STATUS_CSUMNOTREADY); TCP and UDP checksums of such frames are completed in the ring

	Sent       uint64 // frames WriteBatch sent
	Rejected   uint64 // frames WriteBatch could not send (see RejectedError)
	SendStalls uint64 // times WriteBatch had to wait for socket buffer space
}

// Socket is an AF_PACKET socket bound to one interface, receiving through a
// memory-mapped TPACKET_V3 ring and sending with sendmmsg.
//
// ReadBatch and Release belong to one goroutine at a time (the receiving
// worker). WriteBatch may be called from any goroutine, concurrently with
// the receiving one: a DM worker that reads port A and writes port B can
// share B with the worker that reads B. Stats, Close, Name and Ifindex are
// safe from any goroutine.
type Socket struct {
	name    string
	ifindex int
	canRecv bool
	canSend bool

	fd      int
	closeFd int // eventfd written once by Close and never drained: a latch
	wakeFd  int // eventfd written when the watched context is done

	closed atomic.Bool
	// life is read-held by every call that uses the descriptors or the
	// ring, so Close (which write-holds it) never frees them under a call.
	life              sync.RWMutex
	torn              bool // descriptors closed, ring unmapped or replaced
	unmapAfterRelease bool // Close left a placeholder where outstanding views point

	// Receive side, owned by the receiving goroutine.
	ring        []byte
	blockSize   int
	numBlocks   int
	cur         int  // block the walk is in, or the next one to wait for
	held        int  // finished blocks before cur not yet given back
	inBlock     bool // walker is open on block cur
	outstanding bool // the last ReadBatch handed out views not yet released
	walker      blockWalker
	rxPoll      [3]unix.PollFd
	drainBuf    [8]byte
	watchedDone <-chan struct{}
	stopWatch   func() bool
	wakeFn      func()

	txMu   sync.Mutex // serialises senders; guards msgs, iovs, txPoll
	msgs   []unix.Mmsghdr
	iovs   []unix.Iovec
	txPoll [2]unix.PollFd

	statsMu sync.Mutex // guards kernel: reading PACKET_STATISTICS resets it
	kernel  Stats

	truncated, malformed, vlanRestored, checksumPartial atomic.Uint64
	sent, rejected, sendStalls                          atomic.Uint64
}

// Open opens a packet socket on cfg.Iface in the calling thread's network
// namespace, maps its receive ring and binds it to every protocol
// (ETH_P_ALL). Errors name the interface and the step that failed.
func Open(cfg Config) (*Socket, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ifi, err := net.InterfaceByName(cfg.Iface)
	if err != nil {
		return nil, fmt.Errorf("afpacket: %s: looking up the interface: %w", cfg.Iface, err)
	}
	s := &Socket{
		name: cfg.Iface, ifindex: ifi.Index,
		canRecv: !cfg.TxOnly, canSend: !cfg.RxOnly,
		fd: -1, closeFd: -1, wakeFd: -1,
	}
	if err := s.setup(cfg); err != nil {
		s.teardown()
		return nil, fmt.Errorf("afpacket: %s: %w", cfg.Iface, err)
	}
	return s, nil
}

func (s *Socket) setup(cfg Config) error {
	// Protocol 0 receives nothing until bind, so no frame reaches the
	// socket before the ring and the options are in place.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening a packet socket: %w", err)
	}
	s.fd = fd
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return fmt.Errorf("selecting TPACKET_V3: %w", err)
	}
	if cfg.SendBuffer > 0 {
		// FORCE lifts the wmem_max cap for privileged callers.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, cfg.SendBuffer); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, cfg.SendBuffer); err != nil {
				return fmt.Errorf("setting SO_SNDBUF to %d: %w", cfg.SendBuffer, err)
			}
		}
	}
	proto := 0
	if s.canRecv {
		if !cfg.IncludeOutgoing {
			if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
				return fmt.Errorf("setting PACKET_IGNORE_OUTGOING: %w", err)
			}
		}
		if err := s.mapRing(cfg); err != nil {
			return err
		}
		proto = unix.ETH_P_ALL
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(uint16(proto)), Ifindex: s.ifindex}); err != nil {
		return fmt.Errorf("binding to interface index %d: %w", s.ifindex, err)
	}
	if cfg.Promiscuous {
		mreq := unix.PacketMreq{Ifindex: int32(s.ifindex), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			return fmt.Errorf("adding the PACKET_MR_PROMISC membership: %w", err)
		}
	}
	if cfg.Fanout != 0 {
		flags := unix.PACKET_FANOUT_HASH | unix.PACKET_FANOUT_FLAG_DEFRAG
		if !cfg.IncludeOutgoing {
			// A group member receives through the group's hook, not its
			// own, so the socket option above no longer applies.
			flags |= unix.PACKET_FANOUT_FLAG_IGNORE_OUTGOING
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT, int(cfg.Fanout)|flags<<16); err != nil {
			return fmt.Errorf("joining PACKET_FANOUT group %d: %w", cfg.Fanout, err)
		}
	}
	if s.closeFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("creating an eventfd: %w", err)
	}
	if s.wakeFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("creating an eventfd: %w", err)
	}
	s.rxPoll = [3]unix.PollFd{
		{Fd: int32(fd), Events: unix.POLLIN},
		{Fd: int32(s.closeFd), Events: unix.POLLIN},
		{Fd: int32(s.wakeFd), Events: unix.POLLIN},
	}
	s.txPoll = [2]unix.PollFd{
		{Fd: int32(fd), Events: unix.POLLOUT},
		{Fd: int32(s.closeFd), Events: unix.POLLIN},
	}
	// Made once: a method value built per call would allocate.
	s.wakeFn = s.wake
	if s.canSend {
		s.msgs = make([]unix.Mmsghdr, maxSendBatch)
		s.iovs = make([]unix.Iovec, 2*maxSendBatch)
	}
	return nil
}

func (s *Socket) mapRing(cfg Config) error {
	req := unix.TpacketReq3{
		Block_size:     uint32(cfg.BlockSize),
		Block_nr:       uint32(cfg.NumBlocks),
		Frame_size:     uint32(cfg.FrameSize),
		Frame_nr:       uint32(cfg.BlockSize / cfg.FrameSize * cfg.NumBlocks),
		Retire_blk_tov: cfg.blockTimeoutMillis(),
	}
	if err := unix.SetsockoptTpacketReq3(s.fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("setting up the receive ring (PACKET_RX_RING, %d blocks of %d bytes): %w", cfg.NumBlocks, cfg.BlockSize, err)
	}
	size := cfg.BlockSize * cfg.NumBlocks
	p, err := unix.MmapPtr(s.fd, 0, nil, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mapping the receive ring (%d bytes): %w", size, err)
	}
	s.ring = unsafe.Slice((*byte)(p), size)
	s.blockSize, s.numBlocks = cfg.BlockSize, cfg.NumBlocks
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Name is the interface the socket is bound to.
func (s *Socket) Name() string { return s.name }

// Ifindex is the index of the interface the socket is bound to.
func (s *Socket) Ifindex() int { return s.ifindex }

// ReadBatch waits until at least one frame is in the ring, then fills out
// with up to len(out) frames and returns how many. The frames are views
// into the ring, not copies: they stay valid until Release, which must come
// before the next ReadBatch. A frame whose VLAN tag the kernel had lifted
// out gets it back, so every frame is as it was on the wire.
//
// The wait ends early when ctx is done (returning ctx.Err()) or the socket
// is closed (ErrClosed). Passing the same long-lived ctx on every call keeps
// ReadBatch free of allocations: a context is registered for cancellation
// once, when it is first seen.
func (s *Socket) ReadBatch(ctx context.Context, out [][]byte) (int, error) {
	s.life.RLock()
	defer s.life.RUnlock()
	if err := s.usable(s.canRecv, "transmit-only"); err != nil {
		return 0, err
	}
	switch {
	case s.outstanding:
		return 0, ErrNotReleased
	case len(out) == 0:
		return 0, fmt.Errorf("afpacket: %s: ReadBatch needs room for at least one frame", s.name)
	}
	for {
		if n := s.fill(out); n > 0 {
			s.outstanding = true
			return n, nil
		}
		// Blocks that held only skipped entries have no views: give them
		// back before sleeping, or the kernel could run out of blocks.
		s.releaseHeld()
		if s.closed.Load() {
			return 0, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		s.watch(ctx)
		if err := s.waitReadable(); err != nil {
			return 0, err
		}
	}
}

// usable is the check of every I/O call, made under s.life's read lock:
// the socket is open and can go the way the call wants (allowed), or is
// only the other way.
func (s *Socket) usable(allowed bool, only string) error {
	if s.torn || s.closed.Load() {
		return ErrClosed
	}
	if !allowed {
		return fmt.Errorf("afpacket: %s is %s: %w", s.name, only, errors.ErrUnsupported)
	}
	return nil
}

// fill walks the ready blocks from where the last batch stopped.
func (s *Socket) fill(out [][]byte) int {
	w := &s.walker
	n := 0
	for n < len(out) {
		if !s.inBlock {
			// With every block finished and awaiting Release, block cur
			// is the oldest of them: walking it again would hand out
			// its frames twice.
			if s.held == s.numBlocks {
				break
			}
			block := s.block(s.cur)
			if atomic.LoadUint32(blockStatus(block))&statusUser == 0 {
				break
			}
			if w.open(block) == verdictMalformed {
				s.malformed.Add(1)
				s.finishBlock()
				continue
			}
			s.inBlock = true
		}
		frame, v := w.next()
		switch v {
		case verdictFrame:
			out[n] = frame
			n++
		case verdictTruncated:
			s.truncated.Add(1)
		case verdictBadFrame, verdictMalformed:
			s.malformed.Add(1)
		}
		if w.left == 0 {
			s.finishBlock()
		}
	}
	if w.vlanRestored != 0 {
		s.vlanRestored.Add(w.vlanRestored)
		w.vlanRestored = 0
	}
	if w.checksumPartial != 0 {
		s.checksumPartial.Add(w.checksumPartial)
		w.checksumPartial = 0
	}
	return n
}

func (s *Socket) block(i int) []byte {
	return s.ring[i*s.blockSize : (i+1)*s.blockSize : (i+1)*s.blockSize]
}

func blockStatus(block []byte) *uint32 {
	return (*uint32)(unsafe.Pointer(&block[bdStatusOff]))
}

// finishBlock moves past block cur; it is given back at the next release,
// since views into it may have been handed out.
func (s *Socket) finishBlock() {
	s.inBlock = false
	s.held++
	s.cur = (s.cur + 1) % s.numBlocks
}

func (s *Socket) releaseHeld() {
	for ; s.held > 0; s.held-- {
		i := (s.cur - s.held + s.numBlocks) % s.numBlocks
		// TP_STATUS_KERNEL; the atomic store orders our reads (and VLAN
		// tag writes) of the block before the kernel may reuse it.
		atomic.StoreUint32(blockStatus(s.block(i)), 0)
	}
}

// Release hands the blocks the last ReadBatch finished back to the kernel;
// the frames it returned are invalid from here on. A block the batch only
// partly consumed stays with the socket until a later batch finishes it.
func (s *Socket) Release() {
	s.life.RLock()
	if !s.torn {
		s.releaseHeld()
		s.outstanding = false
		s.life.RUnlock()
		return
	}
	s.life.RUnlock()
	s.life.Lock()
	defer s.life.Unlock()
	s.outstanding = false
	if s.unmapAfterRelease {
		s.unmapAfterRelease = false
		_ = unix.MunmapPtr(unsafe.Pointer(&s.ring[0]), uintptr(len(s.ring)))
		s.ring = nil
	}
}

// watch arranges for ctx's end to interrupt the poll. Registrations are
// keyed by the Done channel, so a caller passing the same context again
// costs nothing.
func (s *Socket) watch(ctx context.Context) {
	done := ctx.Done()
	if done == nil || done == s.watchedDone {
		return
	}
	if s.stopWatch != nil {
		s.stopWatch()
	}
	s.watchedDone = done
	s.stopWatch = context.AfterFunc(ctx, s.wakeFn)
}

// wake runs on its own goroutine when a watched context ends.
func (s *Socket) wake() {
	s.life.RLock()
	defer s.life.RUnlock()
	if !s.torn {
		_, _ = unix.Write(s.wakeFd, eventOne[:])
	}
}

func (s *Socket) waitReadable() error {
	for i := range s.rxPoll {
		s.rxPoll[i].Revents = 0
	}
	if _, err := unix.Poll(s.rxPoll[:], -1); err != nil {
		if err == unix.EINTR {
			return nil
		}
		return fmt.Errorf("afpacket: %s: waiting for frames: %w", s.name, err)
	}
	if s.rxPoll[2].Revents&unix.POLLIN != 0 {
		_, _ = unix.Read(s.wakeFd, s.drainBuf[:])
	}
	if s.rxPoll[0].Revents&unix.POLLERR != 0 {
		// The kernel reports a device that went down or away this way.
		if errno, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && errno != 0 {
			return fmt.Errorf("afpacket: %s: receiving: %w", s.name, unix.Errno(errno))
		}
	}
	return nil
}

// WriteBatch sends len(heads) frames, frame i being heads[i] followed by
// bodies[i] (either may be empty), gathered by the kernel from the two
// buffers: a prebuilt header and a frame still in a receive ring go out
// without being copied here. Up to 256 frames go per sendmmsg call.
//
// It returns how many frames were sent. Frames the kernel refuses one by one
// are skipped and reported in a *RejectedError; the others still go out. A
// full socket buffer makes WriteBatch wait for space, but never for more
// than 100 ms without progress (then ErrSendStalled). Any other failure
// stops the batch: the frames before it were sent, the rest were not.
func (s *Socket) WriteBatch(heads, bodies [][]byte) (int, error) {
	if len(heads) != len(bodies) {
		return 0, fmt.Errorf("afpacket: %s: WriteBatch with %d heads and %d bodies", s.name, len(heads), len(bodies))
	}
	s.life.RLock()
	defer s.life.RUnlock()
	if err := s.usable(s.canSend, "receive-only"); err != nil {
		return 0, err
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	sent, rejected, err := s.send(heads, bodies)
	s.sent.Add(uint64(sent))
	if rejected != nil {
		s.rejected.Add(uint64(rejected.Count))
		if err == nil {
			return sent, rejected
		}
		return sent, errors.Join(rejected, err)
	}
	return sent, err
}

func (s *Socket) send(heads, bodies [][]byte) (sent int, rejected *RejectedError, err error) {
	var stallSince time.Time
	for base := 0; base < len(heads); {
		k := s.prepare(heads[base:], bodies[base:])
		for j := 0; j < k; {
			r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd),
				uintptr(unsafe.Pointer(&s.msgs[j])), uintptr(k-j), unix.MSG_DONTWAIT, 0, 0)
			i := base + j
			switch errno {
			case 0:
				j += int(r)
				sent += int(r)
				stallSince = time.Time{}
			case unix.EINTR:
			case unix.EAGAIN:
				if err := s.waitWritable(&stallSince); err != nil {
					return sent, rejected, fmt.Errorf("afpacket: %s: frame %d of %d: %w", s.name, i, len(heads), err)
				}
			case unix.EMSGSIZE, unix.EINVAL, unix.ENOBUFS:
				// sendmmsg stops at the first frame that fails; once it is
				// the first of the call the failure is reported for it.
				if rejected == nil {
					rejected = &RejectedError{Iface: s.name, Index: i, Len: len(heads[i]) + len(bodies[i]), Err: errno}
				}
				rejected.Count++
				j++
			default:
				return sent, rejected, fmt.Errorf("afpacket: %s: sending frame %d of %d: %w", s.name, i, len(heads), errno)
			}
		}
		base += k
	}
	return sent, rejected, nil
}

// prepare points the preallocated message headers at up to maxSendBatch
// frames and returns how many it prepared.
func (s *Socket) prepare(heads, bodies [][]byte) int {
	k := min(len(heads), len(s.msgs))
	for i := range k {
		iov := s.iovs[2*i : 2*i+2]
		n := 0
		for _, part := range [2][]byte{heads[i], bodies[i]} {
			if len(part) > 0 {
				iov[n].Base = &part[0]
				iov[n].SetLen(len(part))
				n++
			}
		}
		m := &s.msgs[i]
		m.Hdr.Iov = &iov[0]
		m.Hdr.SetIovlen(n)
		m.Len = 0
	}
	return k
}

// waitWritable waits for socket buffer space, for at most what is left of
// sendStallLimit since the stall began.
func (s *Socket) waitWritable(stallSince *time.Time) error {
	now := time.Now()
	if stallSince.IsZero() {
		*stallSince = now
	}
	left := sendStallLimit - now.Sub(*stallSince)
	if left <= 0 {
		return fmt.Errorf("%w for %v (%w)", ErrSendStalled, sendStallLimit, unix.EAGAIN)
	}
	s.sendStalls.Add(1)
	for i := range s.txPoll {
		s.txPoll[i].Revents = 0
	}
	if _, err := unix.Poll(s.txPoll[:], int((left+time.Millisecond-1)/time.Millisecond)); err != nil && err != unix.EINTR {
		return fmt.Errorf("waiting for buffer space: %w", err)
	}
	if s.txPoll[1].Revents&unix.POLLIN != 0 {
		return ErrClosed
	}
	return nil
}

// Stats returns the socket's counters. After Close it returns the totals as
// they were at Close.
func (s *Socket) Stats() (Stats, error) {
	s.life.RLock()
	defer s.life.RUnlock()
	if !s.torn {
		if err := s.readKernelStats(); err != nil {
			return Stats{}, err
		}
	}
	s.statsMu.Lock()
	st := s.kernel
	s.statsMu.Unlock()
	st.Truncated = s.truncated.Load()
	st.Malformed = s.malformed.Load()
	st.VLANRestored = s.vlanRestored.Load()
	st.ChecksumPartial = s.checksumPartial.Load()
	st.Sent = s.sent.Load()
	st.Rejected = s.rejected.Load()
	st.SendStalls = s.sendStalls.Load()
	return st, nil
}

func (s *Socket) readKernelStats() error {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	st, err := unix.GetsockoptTpacketStatsV3(s.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return fmt.Errorf("afpacket: %s: reading PACKET_STATISTICS: %w", s.name, err)
	}
	s.kernel.Packets += uint64(st.Packets)
	s.kernel.Drops += uint64(st.Drops)
	s.kernel.Freezes += uint64(st.Freeze_q_cnt)
	return nil
}

// Close closes the socket and leaves its fanout group and promiscuous
// membership. It interrupts a ReadBatch, or a WriteBatch waiting for buffer
// space, and waits for them to return before freeing anything. Frames of a
// batch not yet released stay readable but read as zeros from then on (the
// ring's pages are swapped for blank ones so the socket is really gone);
// the following Release frees that memory. Close is idempotent.
func (s *Socket) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	_, _ = unix.Write(s.closeFd, eventOne[:])
	s.life.Lock()
	defer s.life.Unlock()
	statsErr := s.readKernelStats()
	if s.stopWatch != nil {
		s.stopWatch()
	}
	return errors.Join(statsErr, s.teardown())
}

// teardown frees what setup made. The mapping holds a reference to the
// socket, so the socket (its bind, fanout membership and promiscuity) only
// goes away once the ring is unmapped as well as the descriptor closed.
func (s *Socket) teardown() error {
	s.torn = true
	var errs []error
	if s.ring != nil {
		base, size := unsafe.Pointer(&s.ring[0]), uintptr(len(s.ring))
		if s.outstanding {
			_, err := unix.MmapPtr(-1, 0, base, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED)
			if err != nil {
				errs = append(errs, fmt.Errorf("replacing the ring under outstanding frames: %w", err))
			}
			s.unmapAfterRelease = true
		} else {
			if err := unix.MunmapPtr(base, size); err != nil {
				errs = append(errs, fmt.Errorf("unmapping the ring: %w", err))
			}
			s.ring = nil
		}
	}
	for _, fd := range []*int{&s.fd, &s.closeFd, &s.wakeFd} {
		if *fd >= 0 {
			if err := unix.Close(*fd); err != nil {
				errs = append(errs, fmt.Errorf("closing descriptor %d: %w", *fd, err))
			}
			*fd = -1
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("afpacket: %s: closing: %w", s.name, err)
	}
	return nil
}
