//go:build linux

package xdpgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// XDP verdicts the programs return (enum xdp_action).
const (
	xdpPass = 2
	xdpTX   = 3
)

// ErrInvalidConfig is wrapped by every error New returns for a Config
// that cannot work, before anything is loaded into the kernel.
var ErrInvalidConfig = errors.New("xdpgen: invalid configuration")

// Config describes the frames to generate.
type Config struct {
	// Frame is the template: a whole Ethernet frame, at least 14 bytes and
	// at most what fits a page-pool page (about 3.5 KB).
	Frame []byte
	// FieldOffset is where a big-endian field of FieldSize bytes starts
	// that every frame gets a random value of, from First to
	// First+Flows-1 (a UDP source port at offset 34 of an IPv4 frame
	// without options; or both ports, 4 bytes, for more than 65 536
	// flows). The UDP checksum must then be 0 (none) in the template,
	// since it is not recomputed.
	FieldOffset int
	// FieldSize is 2 (the default when 0) or 4.
	FieldSize int
	First     uint32
	// Flows is how many distinct values the field takes: a power of two,
	// or 0 or 1 to leave the template unchanged.
	Flows int
}

// Generator sends copies of a template frame from one interface.
type Generator struct {
	cfg   Config
	prog  *ebpf.Program
	count *ebpf.Map
}

// New loads the generator's program into the kernel.
func New(cfg Config) (*Generator, error) {
	if cfg.FieldSize == 0 {
		cfg.FieldSize = 2
	}
	switch {
	case len(cfg.Frame) < 14 || len(cfg.Frame) > 3500:
		return nil, fmt.Errorf("%w: frame of %d bytes, want 14 to 3500", ErrInvalidConfig, len(cfg.Frame))
	case cfg.FieldSize != 2 && cfg.FieldSize != 4:
		return nil, fmt.Errorf("%w: field of %d bytes, want 2 or 4", ErrInvalidConfig, cfg.FieldSize)
	case cfg.Flows > 1 && bits.OnesCount(uint(cfg.Flows)) != 1:
		return nil, fmt.Errorf("%w: %d flows is not a power of two", ErrInvalidConfig, cfg.Flows)
	case cfg.Flows > 1<<31 || uint64(cfg.First)+uint64(cfg.Flows) > 1<<(8*cfg.FieldSize):
		return nil, fmt.Errorf("%w: %d values from %d do not fit %d bits", ErrInvalidConfig, cfg.Flows, cfg.First, 8*cfg.FieldSize)
	case cfg.Flows > 1 && (cfg.FieldOffset < 0 || cfg.FieldOffset+cfg.FieldSize > len(cfg.Frame)):
		return nil, fmt.Errorf("%w: field at %d is outside the %d-byte frame", ErrInvalidConfig, cfg.FieldOffset, len(cfg.Frame))
	}
	count, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("xdpgen: counter map: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xdpgen_tx", Type: ebpf.XDP, License: "GPL",
		Instructions: txProgram(count.FD(), cfg),
	})
	if err != nil {
		count.Close()
		return nil, fmt.Errorf("xdpgen: load program: %w", err)
	}
	return &Generator{cfg: cfg, prog: prog, count: count}, nil
}

// txProgram counts the frame in the map (exactly, unlike the repeat count
// BPF_PROG_RUN is given, which the kernel restarts when interrupted),
// rewrites the flow field and transmits.
func txProgram(countFD int, cfg Config) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // the xdp_md context survives helper calls in R6
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, countFD),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "counted"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
	}
	if cfg.Flows <= 1 {
		return append(insns, asm.Mov.Imm(asm.R0, xdpTX).WithSymbol("counted"), asm.Return())
	}
	off, size := int16(cfg.FieldOffset), int16(cfg.FieldSize)
	insns = append(insns,
		asm.FnGetPrandomU32.Call().WithSymbol("counted"),
		asm.And.Imm(asm.R0, int32(cfg.Flows-1)),
		// Only the field's low bytes are stored: a First of 2^31 or more,
		// sign-extended here, still lands right.
		asm.Add.Imm(asm.R0, int32(cfg.First)),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, int32(off+size)),
		asm.JGT.Reg(asm.R4, asm.R3, "send"),
	)
	// Big-endian, one byte at a time: the field need not be aligned.
	for i := range size {
		insns = append(insns,
			asm.Mov.Reg(asm.R5, asm.R0),
			asm.RSh.Imm(asm.R5, int32(8*(size-1-i))),
			asm.StoreMem(asm.R2, off+i, asm.R5, asm.Byte),
		)
	}
	return append(insns,
		asm.Mov.Imm(asm.R0, xdpTX).WithSymbol("send"),
		asm.Return(),
	)
}

// xdpMD is struct xdp_md, the context BPF_PROG_RUN hands the program.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// runsPerCall bounds one BPF_PROG_RUN call (a few milliseconds at the
// rates this reaches), so that Run notices the end of ctx promptly.
const runsPerCall = 16384

// Run transmits frames out of the interface ifindex as fast as the kernel
// takes them until ctx ends, then returns nil. The interface is looked up
// in the network namespace of the calling thread, so a caller working in
// another namespace must call Run from a thread locked into it.
func (g *Generator) Run(ctx context.Context, ifindex int) error {
	opts := &ebpf.RunOptions{
		Data:      g.cfg.Frame,
		Repeat:    runsPerCall,
		Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		Context:   xdpMD{DataEnd: uint32(len(g.cfg.Frame)), IngressIfindex: uint32(ifindex)},
		BatchSize: 64,
	}
	for ctx.Err() == nil {
		if _, err := g.prog.Run(opts); err != nil {
			return fmt.Errorf("xdpgen: transmit on ifindex %d: %w", ifindex, err)
		}
	}
	return nil
}

// Sent is how many frames the program has handed to the kernel for
// transmission so far. Frames the receiving side had no room for are
// included: this is the offered load.
func (g *Generator) Sent() (uint64, error) {
	var n uint64
	if err := g.count.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("xdpgen: read counter: %w", err)
	}
	return n, nil
}

// Close unloads the program.
func (g *Generator) Close() error {
	return errors.Join(g.prog.Close(), g.count.Close())
}

// PassProgram loads an XDP program that passes every frame on to the
// stack. Attached to the receiving end of a veth it enables the veth's XDP
// receive path, which frames transmitted with XDP_TX need.
func PassProgram() (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xdpgen_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("xdpgen: load pass program: %w", err)
	}
	return prog, nil
}

// UDPPortOffset is where the UDP source port of a frame built by UDPFrame
// starts: the field to vary for many flows.
const UDPPortOffset = 14 + 20

// UDPFrame builds an IPv4/UDP frame of size bytes (without the FCS; at
// least 42) from 10.0.0.1 to 10.0.0.2, source port 1024, destination
// port 9 (discard), no UDP checksum, so that the source port can be
// rewritten per frame.
func UDPFrame(dst, src net.HardwareAddr, size int) []byte {
	f := make([]byte, max(size, UDPPortOffset+8))
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[14:UDPPortOffset]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-14))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[12:], []byte{10, 0, 0, 1})
	copy(ip[16:], []byte{10, 0, 0, 2})
	var sum uint32
	for i := 0; i < len(ip); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[UDPPortOffset:]
	binary.BigEndian.PutUint16(udp[0:], 1024)
	binary.BigEndian.PutUint16(udp[2:], 9)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(f)-UDPPortOffset))
	return f
}
