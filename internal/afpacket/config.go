package afpacket

import (
	"errors"
	"fmt"
	"math"
	"os"
	"time"
)

// Config configures Open. The zero value of every field but Iface is a
// sensible default for the distribution manager.
type Config struct {
	// Iface is the name of the interface to bind to (required).
	Iface string

	// BlockSize is the size of one ring block in bytes: a power of two and
	// a multiple of the page size. 0 means 1 MiB. A frame must fit in one
	// block.
	BlockSize int
	// NumBlocks is the number of ring blocks. 0 means 8.
	NumBlocks int
	// FrameSize is TPACKET_V3's tp_frame_size: only a hint for the kernel's
	// accounting, since V3 packs frames of any length into a block. A
	// multiple of 16, at most BlockSize. 0 means 2048.
	FrameSize int
	// BlockTimeout is how long the kernel lets a partly filled block wait
	// for more frames before handing it over: the latency a lone frame can
	// see, traded against batch size. It is rounded up to whole
	// milliseconds, the kernel's unit. 0 means 2 ms.
	//
	// It also bounds how long a reader may stall: light traffic hands over
	// one barely used block per timeout, so a ring whose reader stops
	// drops frames after NumBlocks × BlockTimeout (16 ms by default) even
	// though it is nearly empty in bytes.
	BlockTimeout time.Duration

	// Fanout, if not 0, joins the socket to this PACKET_FANOUT group on the
	// interface. The group spreads frames by a symmetric flow hash
	// (PACKET_FANOUT_HASH), with IPv4 fragments reassembled first
	// (PACKET_FANOUT_FLAG_DEFRAG), so both directions of a flow reach the
	// same socket. Every socket of a group needs the same settings.
	Fanout uint16
	// Promiscuous adds a PACKET_MR_PROMISC membership: the interface
	// accepts frames to any MAC while the socket is open. This counts
	// towards the interface's promiscuity but does not set its flag
	// permanently; the membership goes away on Close.
	Promiscuous bool
	// IncludeOutgoing also delivers frames the host transmits on the
	// interface, this socket's own included. The zero value ignores them
	// (PACKET_IGNORE_OUTGOING), which is what a forwarder needs: otherwise
	// every frame it sends comes back as input.
	IncludeOutgoing bool

	// RxOnly opens a socket that only receives: WriteBatch is refused.
	RxOnly bool
	// TxOnly opens a socket that only sends: no ring is mapped and the
	// socket receives nothing, so it costs no memory and no per-frame work
	// on input.
	TxOnly bool
	// SendBuffer sets SO_SNDBUF in bytes; 0 keeps the system default. Sent
	// frames hold buffer space until the device has taken them.
	SendBuffer int
}

const (
	defaultBlockSize    = 1 << 20
	defaultNumBlocks    = 8
	defaultFrameSize    = 2048
	defaultBlockTimeout = 2 * time.Millisecond
	frameAlignment      = 16 // TPACKET_ALIGNMENT
	// minFrameSize is TPACKET3_HDRLEN (the frame header plus a
	// sockaddr_ll) rounded up to the alignment, the kernel's lower bound.
	minFrameSize = 80
	maxIfaceName = 15 // IFNAMSIZ without the terminating NUL
)

// ErrInvalidConfig is wrapped by every error Open returns for a Config that
// cannot work, before anything is opened.
var ErrInvalidConfig = errors.New("invalid configuration")

// withDefaults returns cfg with its zero values replaced by defaults, or an
// error naming the first field that cannot work.
func (cfg Config) withDefaults() (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("afpacket: %q: %w: %s", cfg.Iface, ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if cfg.Iface == "" || len(cfg.Iface) > maxIfaceName {
		return bad("interface name must have 1 to %d bytes", maxIfaceName)
	}
	if cfg.RxOnly && cfg.TxOnly {
		return bad("RxOnly and TxOnly exclude each other")
	}
	if cfg.TxOnly && (cfg.Fanout != 0 || cfg.Promiscuous || cfg.IncludeOutgoing) {
		return bad("Fanout, Promiscuous and IncludeOutgoing only apply to a receiving socket, not a TxOnly one")
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = defaultBlockSize
	}
	if cfg.NumBlocks == 0 {
		cfg.NumBlocks = defaultNumBlocks
	}
	if cfg.FrameSize == 0 {
		cfg.FrameSize = defaultFrameSize
	}
	if cfg.BlockTimeout == 0 {
		cfg.BlockTimeout = defaultBlockTimeout
	}
	page := os.Getpagesize()
	switch {
	case cfg.BlockSize < page || cfg.BlockSize%page != 0 || cfg.BlockSize&(cfg.BlockSize-1) != 0 || cfg.BlockSize > math.MaxUint32/2:
		return bad("BlockSize %d is not a power of two multiple of the page size (%d)", cfg.BlockSize, page)
	case cfg.NumBlocks < 1 || int64(cfg.NumBlocks)*int64(cfg.BlockSize) > math.MaxUint32:
		return bad("NumBlocks %d must be positive and the ring at most 4 GiB", cfg.NumBlocks)
	case cfg.FrameSize < minFrameSize || cfg.FrameSize%frameAlignment != 0 || cfg.FrameSize > cfg.BlockSize:
		return bad("FrameSize %d must be a multiple of %d between %d and BlockSize", cfg.FrameSize, frameAlignment, minFrameSize)
	case cfg.BlockTimeout < 0 || cfg.BlockTimeout > time.Minute:
		return bad("BlockTimeout %v must be between 0 and a minute", cfg.BlockTimeout)
	case cfg.SendBuffer < 0:
		return bad("SendBuffer %d is negative", cfg.SendBuffer)
	}
	return cfg, nil
}

// blockTimeoutMillis is the retire timeout in the kernel's unit, rounded up
// so that a sub-millisecond request never becomes 0 (which asks the kernel
// to pick a timeout from the link speed).
func (cfg Config) blockTimeoutMillis() uint32 {
	return uint32((cfg.BlockTimeout + time.Millisecond - 1) / time.Millisecond)
}
