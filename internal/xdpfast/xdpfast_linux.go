//go:build linux

package xdpfast

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Errors Offload wraps when a port cannot take part; the flow then stays
// on the userspace path.
var (
	// ErrIngress: the program cannot be attached to the port frames arrive
	// on (no native XDP, or an MTU too large for it on a veth).
	ErrIngress = errors.New("xdpfast: cannot attach XDP to the receiving port")
	// ErrEgress: the port frames would leave by cannot take XDP-redirected
	// frames (a veth whose peer runs neither XDP nor GRO, a device without
	// ndo_xdp_xmit).
	ErrEgress = errors.New("xdpfast: destination port cannot receive redirected frames")
	// ErrUnsupported: the kernel cannot load the program or its map.
	ErrUnsupported = errors.New("xdpfast: kernel lacks XDP support")
)

// KeyLen is the size of an entry's key.
const KeyLen = 32

// Entry identifies one offloaded flow direction: the map key, which is
// also what the program builds from a frame.
type Entry = [KeyLen]byte

// Layout of the map key (all fields at aligned offsets, as the verifier
// demands for stack writes). Addresses and ports keep network byte order;
// the interface index and protocol are host-order words.
const (
	kIfindex = 0  // u32: where the frame arrived
	kDst     = 4  // 6 bytes: destination MAC
	kSrc     = 10 // 6 bytes: source MAC
	kSaddr   = 16 // IPv4 source
	kDaddr   = 20 // IPv4 destination
	kPorts   = 24 // source and destination port
	kProto   = 28 // u32: IP protocol
)

// Layout of the map value. The first 32 bytes are all a direct entry
// uses; chained entries add the header they push or expect.
const (
	vOut     = 0 // u32: ifindex to redirect to
	vKind    = 4 // u32: kindDirect, …
	vCookie  = 8
	vPackets = 16
	vBytes   = 24 // counts the inner frame, without any MSR header
	vMaxLen  = 32 // u32: longer frames (as they arrive) go to userspace
	vHdrLen  = 36 // u32: the MSR header's length (push and return entries)
	vInner   = 40 // 12 bytes: the inner frame's MACs (return entries)
	vHdr     = 56 // the MSR header to push, or the one a returning frame must carry
	valueLen = vHdr + maxHdrLen
)

// What an entry does with a frame it matches.
const (
	kindDirect = iota // redirect as it is (a flow without a chain)
	kindPush          // push the entry's MSR header, redirect to the first appliance
	kindHop           // a frame an appliance sent to the next one: switch it there
	kindStrip         // a frame back from the last appliance: strip, deliver
)

// MaxHops bounds the chains the kernel carries (appliances plus the DM, the
// header's N); longer ones stay on the userspace path. It keeps the header
// inside the map value and the program's copy loop short.
const MaxHops = 8

// MSR header layout (SOURCE-ROUTE.md), as far as the program needs it.
const (
	msrFixed       = 16
	msrNumOff      = 14
	msrNextOff     = 15
	msrHopLen      = 6
	maxHdrLen      = msrFixed + msrHopLen*MaxHops
	minMSRFrame    = msrFixed + msrHopLen + minUDPFrame // = maxHdrLen: a check for it covers every header byte
	dropNoticeType = 0x88B6
)

// Frame offsets the program reads: untagged Ethernet, IPv4 without options.
const (
	ethLen       = 14
	ipLenOff     = ethLen + 2
	minIPTotal   = 20 + 4 // the header and the ports
	ipProtoOff   = ethLen + 9
	ipFragOff    = ethLen + 6
	ipSaddrOff   = ethLen + 12
	ipDaddrOff   = ethLen + 16
	l4Off        = ethLen + 20
	tcpFlagsOff  = l4Off + 13
	minUDPFrame  = l4Off + 8
	minTCPFrame  = l4Off + 14
	tcpSynFinRst = 0x07
	// ICMP echo (RFC 792): type, code, checksum, identifier, sequence.
	icmpEchoReply = 0
	icmpEcho      = 8
	minICMPTotal  = 20 + 8
)

const (
	xdpPass           = 2
	netdevCmdDevGet   = 1 // NETDEV_CMD_DEV_GET
	netdevAIfindex    = 1 // NETDEV_A_DEV_IFINDEX
	netdevAXDPFeat    = 3 // NETDEV_A_DEV_XDP_FEATURES
	xdpActNdoXmit     = 1 << 2
	egressRecheck     = time.Second
	defaultMaxEntries = 1 << 21
)

// Config configures New.
type Config struct {
	// Do runs fn in the network namespace of the DM's ports, on a thread
	// locked to it; nil runs fn in the caller's.
	Do func(fn func() error) error
	// MaxEntries bounds the kernel map (flow directions). Entries are
	// allocated as used. Default 2 097 152.
	MaxEntries int
	// Feeds names, for a port frames arrive on from the other end of a
	// veth (the DM's intercept link), that other end. Where native XDP
	// cannot run on the port (a jumbo MTU), the tc variant of the program
	// goes on the other end's egress, where the frames redirected into the
	// link pass before they cross it. (Not on the port's own tc ingress:
	// the engine's packet socket would see every frame before it.)
	Feeds map[string]string
}

// FastPath owns the map, the program and its attachments.
type FastPath struct {
	cfg   Config
	flows *ebpf.Map
	prog  *ebpf.Program
	// progTC is the program for tc, for ports where native XDP cannot run
	// (see Config.Feeds); nil where the kernel cannot load it.
	progTC *ebpf.Program
	// An update of a map-of-maps returns only after an RCU grace period,
	// once every program run that began before it has ended: Barrier's
	// way to wait for the program without a kernel interface of its own.
	barrier, barrierInner *ebpf.Map

	mu    sync.Mutex
	ports map[string]*port
}

type port struct {
	ifindex int
	in      link.Link
	tc      bool // in is the tc program: frames it redirects are skbs
	key     int  // the ifindex in the keys of frames arriving here
	inErr   error
	outOK   bool
	outErr  error
	checked time.Time
}

// New loads the map and the program. It fails with ErrUnsupported where
// the kernel cannot load them; callers keep their userspace path then.
func New(cfg Config) (*FastPath, error) {
	if cfg.Do == nil {
		cfg.Do = func(fn func() error) error { return fn() }
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = defaultMaxEntries
	}
	flows, err := ebpf.NewMap(&ebpf.MapSpec{Name: "vsa_fast_flows", Type: ebpf.Hash, KeySize: KeyLen, ValueSize: valueLen,
		MaxEntries: uint32(cfg.MaxEntries), Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		return nil, fmt.Errorf("%w: flow map: %w", ErrUnsupported, err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "vsa_fast", Type: ebpf.XDP, License: "GPL",
		Instructions: program(flows.FD(), xdpHook)})
	if err != nil {
		flows.Close()
		return nil, fmt.Errorf("%w: program: %w", ErrUnsupported, err)
	}
	// Without it, ports that cannot run XDP just stay on the userspace path.
	progTC, _ := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "vsa_fast_tc", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: program(flows.FD(), tcHook)})
	inner := &ebpf.MapSpec{Name: "vsa_fast_sync", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	barrierInner, err := ebpf.NewMap(inner)
	if err != nil {
		closeIf(progTC)
		prog.Close()
		flows.Close()
		return nil, fmt.Errorf("%w: barrier map: %w", ErrUnsupported, err)
	}
	barrier, err := ebpf.NewMap(&ebpf.MapSpec{Name: "vsa_fast_barrier", Type: ebpf.ArrayOfMaps, KeySize: 4, MaxEntries: 1, InnerMap: inner})
	if err != nil {
		barrierInner.Close()
		closeIf(progTC)
		prog.Close()
		flows.Close()
		return nil, fmt.Errorf("%w: barrier map: %w", ErrUnsupported, err)
	}
	return &FastPath{cfg: cfg, flows: flows, prog: prog, progTC: progTC, barrier: barrier, barrierInner: barrierInner,
		ports: map[string]*port{}}, nil
}

func closeIf(p *ebpf.Program) {
	if p != nil {
		p.Close()
	}
}

// Barrier returns once every run of the program that may have found an
// entry removed before the call has ended, and sent its frame: after it, no
// frame takes a removed entry's path. It waits an RCU grace period
// (milliseconds), so callers batch their removals before it.
func (f *FastPath) Barrier() error {
	if err := f.barrier.Put(uint32(0), f.barrierInner); err != nil {
		return fmt.Errorf("xdpfast: wait for the program: %w", err)
	}
	return nil
}

// program forwards a frame whose key is in the map as the entry says and
// counts it there; everything else goes on to the stack and the DM's ring.
// Frames it does not parse are passed: the userspace path decides those,
// and counts the malformed ones by reason. A frame that is not IPv4 may be
// an MSR frame coming back from an appliance: its key is built from the
// inner frame, and it is forwarded only if its whole header is the one the
// entry expects, which userspace has validated when it made the entry.
// Its constants for multi-byte header fields assume a little-endian host
// (x86-64, arm64), as does KeyOf's layout of the interface index.
//
// Registers kept across the program: R6 the context, R7 the MSR header's
// length (0 for a plain frame), R8 the frame's length, R9 the inner frame.
func program(mapFD int, h hook) asm.Instructions {
	ins := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, h.data, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, h.dataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, minUDPFrame),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
	}
	if h.tc {
		// The whole frame's length: an skb's data may be only its head.
		ins = append(ins, asm.LoadMem(asm.R8, asm.R6, skbLen, asm.Word))
	} else {
		ins = append(ins, asm.Mov.Reg(asm.R8, asm.R3), asm.Sub.Reg(asm.R8, asm.R2))
	}
	ins = append(ins,
		asm.Mov.Imm(asm.R7, 0),
		asm.Mov.Reg(asm.R9, asm.R2),
		// EtherType IPv4 (bytes 08 00, loaded little-endian), no tag.
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JEq.Imm(asm.R5, 0x0008, "inner"),
		// Drop notices always go to userspace, which raises their events.
		asm.JEq.Imm(asm.R5, int32(swap16(dropNoticeType)), "pass"),
		// Perhaps an MSR frame: N hops, the inner frame after them.
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, minMSRFrame),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R2, msrNumOff, asm.Byte),
		asm.JLT.Imm(asm.R5, 1, "pass"),
		asm.JGT.Imm(asm.R5, MaxHops, "pass"),
		asm.Mov.Reg(asm.R7, asm.R5),
		asm.Mul.Imm(asm.R7, msrHopLen),
		asm.Add.Imm(asm.R7, msrFixed),
		asm.Add.Reg(asm.R9, asm.R7),
		asm.Mov.Reg(asm.R4, asm.R9),
		asm.Add.Imm(asm.R4, minUDPFrame),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R9, 12, asm.Half),
		asm.JNE.Imm(asm.R5, 0x0008, "pass"),

		// Version 4, no options: the ports are at a fixed offset.
		asm.LoadMem(asm.R5, asm.R9, ethLen, asm.Byte).WithSymbol("inner"),
		asm.JNE.Imm(asm.R5, 0x45, "pass"),
		// The IP total length covers the ports and fits the frame, as the
		// userspace path's key extraction demands (else: malformed).
		asm.LoadMem(asm.R5, asm.R9, ipLenOff, asm.Half),
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.JLT.Imm(asm.R5, minIPTotal, "pass"),
		asm.Add.Imm(asm.R5, ethLen),
		asm.Add.Reg(asm.R5, asm.R7),
		asm.JGT.Reg(asm.R5, asm.R8, "pass"),
		// No fragment: MF and the offset (bytes 20-21, little-endian load).
		asm.LoadMem(asm.R5, asm.R9, ipFragOff, asm.Half),
		asm.And.Imm(asm.R5, 0xff3f),
		asm.JNE.Imm(asm.R5, 0, "pass"),
		asm.LoadMem(asm.R5, asm.R9, ipProtoOff, asm.Byte),
		asm.JEq.Imm(asm.R5, unix.IPPROTO_UDP, "key"),
		asm.JEq.Imm(asm.R5, unix.IPPROTO_ICMP, "icmp"),
		asm.JNE.Imm(asm.R5, unix.IPPROTO_TCP, "pass"),
		// TCP segments that open or close a connection go to userspace,
		// which sees every connection's start and end.
		asm.Mov.Reg(asm.R4, asm.R9),
		asm.Add.Imm(asm.R4, minTCPFrame),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R9, tcpFlagsOff, asm.Byte),
		asm.And.Imm(asm.R5, tcpSynFinRst),
		asm.JNE.Imm(asm.R5, 0, "pass"),
		asm.Ja.Label("key"),

		// ICMP: echo requests and replies only, whose whole header the IP
		// total length covers; errors and the rest go to userspace.
		asm.LoadMem(asm.R5, asm.R9, l4Off, asm.Byte).WithSymbol("icmp"),
		asm.JEq.Imm(asm.R5, icmpEchoReply, "icmp echo"),
		asm.JNE.Imm(asm.R5, icmpEcho, "pass"),
		asm.LoadMem(asm.R5, asm.R9, ipLenOff, asm.Half).WithSymbol("icmp echo"),
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.JLT.Imm(asm.R5, minICMPTotal, "pass"),

		asm.LoadMem(asm.R1, asm.R6, h.ifindex, asm.Word).WithSymbol("key"),
		asm.StoreMem(asm.RFP, -KeyLen+kIfindex, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R2, 0, asm.Word),
		asm.StoreMem(asm.RFP, -KeyLen+kDst, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R2, 4, asm.Half),
		asm.StoreMem(asm.RFP, -KeyLen+kDst+4, asm.R1, asm.Half),
		asm.LoadMem(asm.R1, asm.R2, 6, asm.Half),
		asm.StoreMem(asm.RFP, -KeyLen+kSrc, asm.R1, asm.Half),
		asm.LoadMem(asm.R1, asm.R2, 8, asm.Word),
		asm.StoreMem(asm.RFP, -KeyLen+kSrc+2, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R9, ipSaddrOff, asm.Word),
		asm.StoreMem(asm.RFP, -KeyLen+kSaddr, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R9, ipDaddrOff, asm.Word),
		asm.StoreMem(asm.RFP, -KeyLen+kDaddr, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R9, l4Off, asm.Word),
		asm.StoreMem(asm.RFP, -KeyLen+kPorts, asm.R1, asm.Word),
		// ICMP: type and code, then the identifier in place of the
		// checksum, which differs from frame to frame.
		asm.LoadMem(asm.R5, asm.R9, ipProtoOff, asm.Byte),
		asm.JNE.Imm(asm.R5, unix.IPPROTO_ICMP, "proto word"),
		asm.LoadMem(asm.R1, asm.R9, l4Off+4, asm.Half),
		asm.StoreMem(asm.RFP, -KeyLen+kPorts+2, asm.R1, asm.Half),
		// The protocol word also says, for an MSR frame, which header and
		// which hop: the header's length and its next.
		asm.LoadMem(asm.R5, asm.R9, ipProtoOff, asm.Byte).WithSymbol("proto word"),
		asm.JEq.Imm(asm.R7, 0, "proto"),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.LSh.Imm(asm.R1, 8),
		asm.Or.Reg(asm.R5, asm.R1),
		asm.LoadMem(asm.R1, asm.R2, msrNextOff, asm.Byte),
		asm.LSh.Imm(asm.R1, 16),
		asm.Or.Reg(asm.R5, asm.R1),
		asm.StoreMem(asm.RFP, -KeyLen+kProto, asm.R5, asm.Word).WithSymbol("proto"),
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -KeyLen),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Sub.Reg(asm.R8, asm.R7), // from here on: the inner frame's length
		asm.LoadMem(asm.R1, asm.R0, vKind, asm.Word),
		asm.JEq.Imm(asm.R1, kindDirect, "redirect"),
		asm.LoadMem(asm.R1, asm.R0, vMaxLen, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Reg(asm.R2, asm.R7),
		asm.JGT.Reg(asm.R2, asm.R1, "pass"), // too big for the next link: userspace drops and counts it
		asm.LoadMem(asm.R1, asm.R0, vKind, asm.Word),
		asm.JEq.Imm(asm.R1, kindPush, "push"),

		// A frame back from an appliance: its header must be the one the
		// entry expects, byte for byte, and its inner frame the flow's.
		asm.LoadMem(asm.R2, asm.R6, h.data, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, h.dataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, minMSRFrame),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
	)
	for off := int16(0); off < msrFixed; off += 8 {
		ins = append(ins, mismatch(asm.R2, off, asm.R0, vHdr+off, asm.DWord)...)
	}
	ins = append(ins, asm.LoadMem(asm.R5, asm.R2, msrNumOff, asm.Byte))
	for j := int16(0); j < MaxHops; j++ {
		off := msrFixed + msrHopLen*j
		ins = append(ins, asm.JLE.Imm(asm.R5, int32(j), "route ok"))
		ins = append(ins, mismatch(asm.R2, off, asm.R0, vHdr+off, asm.Word)...)
		ins = append(ins, mismatch(asm.R2, off+4, asm.R0, vHdr+off+4, asm.Half)...)
	}
	ins = append(ins, asm.Mov.Reg(asm.R5, asm.R5).WithSymbol("route ok"))
	ins = append(ins, mismatch(asm.R9, 0, asm.R0, vInner, asm.Word)...)
	ins = append(ins, mismatch(asm.R9, 4, asm.R0, vInner+4, asm.Word)...)
	ins = append(ins, mismatch(asm.R9, 8, asm.R0, vInner+8, asm.Word)...)
	ins = append(ins,
		asm.LoadMem(asm.R1, asm.R0, vKind, asm.Word),
		asm.JNE.Imm(asm.R1, kindStrip, "redirect"),
	)
	if h.tc {
		// Stripping an skb's head is not done here: such ports carry
		// guests' frames, never an appliance's.
		ins = append(ins, asm.Ja.Label("pass"))
	} else {
		ins = append(ins,
			asm.Mov.Reg(asm.R9, asm.R0),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Reg(asm.R2, asm.R7),
			asm.FnXdpAdjustHead.Call(),
			asm.JNE.Imm(asm.R0, 0, "pass"),
			asm.Mov.Reg(asm.R0, asm.R9),
			asm.Mov.Imm(asm.R7, 0), // the inner frame is all there is now
			asm.Ja.Label("redirect"),
		)
	}
	// Push: grow the head by the header's length and write it.
	ins = append(ins, asm.Mov.Reg(asm.R9, asm.R0).WithSymbol("push"))
	if h.tc {
		ins = append(ins,
			// A segmentation-offload skb would be segmented after the
			// push, as what its EtherType no longer says: userspace's.
			asm.LoadMem(asm.R1, asm.R6, skbGSOSize, asm.Word),
			asm.JNE.Imm(asm.R1, 0, "pass"),
			asm.LoadMem(asm.R2, asm.R9, vHdrLen, asm.Word),
			asm.Mov.Imm(asm.R3, 0),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.FnSkbChangeHead.Call(),
		)
	} else {
		ins = append(ins,
			asm.Mov.Imm(asm.R2, 0),
			asm.LoadMem(asm.R1, asm.R9, vHdrLen, asm.Word),
			asm.Sub.Reg(asm.R2, asm.R1),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.FnXdpAdjustHead.Call(),
		)
	}
	ins = append(ins,
		asm.JNE.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R6, h.data, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, h.dataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, minMSRFrame),
		asm.JGT.Reg(asm.R4, asm.R3, "aborted"), // cannot be: the inner frame is long enough
	)
	for off := int16(0); off < msrFixed; off += 8 {
		ins = append(ins, copyMem(asm.R2, off, asm.R9, vHdr+off, asm.DWord)...)
	}
	ins = append(ins, asm.LoadMem(asm.R5, asm.R9, vHdr+msrNumOff, asm.Byte))
	for j := int16(0); j < MaxHops; j++ {
		off := msrFixed + msrHopLen*j
		ins = append(ins, asm.JLE.Imm(asm.R5, int32(j), "pushed"))
		ins = append(ins, copyMem(asm.R2, off, asm.R9, vHdr+off, asm.Word)...)
		ins = append(ins, copyMem(asm.R2, off+4, asm.R9, vHdr+off+4, asm.Half)...)
	}
	ins = append(ins, asm.Mov.Reg(asm.R0, asm.R9).WithSymbol("pushed"))
	if h.tc {
		// An skb keeps its pending checksum offload across the redirect.
		ins = append(ins, asm.Ja.Label("count").WithSymbol("redirect"))
	} else {
		ins = append(ins,
			// The inner frame now starts after the pushed header.
			asm.LoadMem(asm.R7, asm.R9, vHdrLen, asm.Word),
			asm.And.Imm(asm.R7, 0xff),
		)
		ins = append(ins, completeChecksum()...)
	}
	return append(ins,
		asm.Mov.Imm(asm.R1, 1).WithSymbol("count"),
		xadd(asm.R0, vPackets, asm.R1),
		xadd(asm.R0, vBytes, asm.R8),
		asm.LoadMem(asm.R1, asm.R0, vOut, asm.Word),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, h.pass).WithSymbol("pass"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, h.aborted).WithSymbol("aborted"),
		asm.Return(),
	)
}

// Stack of the XDP program below the key: what completeChecksum keeps
// across helper calls, and the buffer it sums the L4 segment in.
const (
	stValue    = -KeyLen - 8  // the entry's value
	stInnerLen = -KeyLen - 16 // R8
	stFieldOff = -KeyLen - 24 // the checksum field's offset in the frame
	stField    = -KeyLen - 32 // the checksum to store
	stProto    = -KeyLen - 40
	sumChunk   = 256              // bytes summed per helper call
	sumBuf     = sumChunk + 8     // room for the last chunk rounded up to 4 bytes
	stBuf      = stProto - sumBuf // the chunk buffer
	maxSummed  = 4096             // no XDP frame here is longer (no fragments)
)

// completeChecksum fills in the TCP or UDP checksum of a frame about to be
// redirected whose sender left it to offload. Taps and veths hand such
// frames (CHECKSUM_PARTIAL) to XDP with only the pseudo-header's sum in the
// checksum field, and that state does not survive an XDP redirect: the
// receiver would drop the frame as corrupt. XDP cannot see the skb's
// state, so the field itself tells: it is completed when it holds exactly
// the pseudo-header's folded sum. A frame whose checksum was complete and
// happened to equal that sum gets the same value back, so the rule never
// spoils a good frame. Userspace completes the frames it forwards in the
// same way (TP_STATUS_CSUMNOTREADY).
//
// It runs with R0 the entry, R7 the inner frame's offset, R8 its length,
// and leaves R0 and R8 as they were. The frame already has its final
// shape (pushed or stripped), so nothing here may pass it to the stack:
// what cannot happen aborts.
func completeChecksum() asm.Instructions {
	ins := asm.Instructions{
		asm.StoreMem(asm.RFP, stValue, asm.R0, asm.DWord).WithSymbol("redirect"),
		asm.StoreMem(asm.RFP, stInnerLen, asm.R8, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, xdpHook.data, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, xdpHook.dataEnd, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R2),
		asm.Add.Reg(asm.R1, asm.R7),
		asm.Mov.Reg(asm.R4, asm.R1),
		asm.Add.Imm(asm.R4, minUDPFrame),
		asm.JGT.Reg(asm.R4, asm.R3, "aborted"),
		asm.LoadMem(asm.R5, asm.R1, ipProtoOff, asm.Byte),
		asm.StoreMem(asm.RFP, stProto, asm.R5, asm.DWord),
		asm.JEq.Imm(asm.R5, unix.IPPROTO_UDP, "csum udp"),
		asm.JNE.Imm(asm.R5, unix.IPPROTO_TCP, "csum done"),
		asm.Mov.Reg(asm.R4, asm.R1),
		asm.Add.Imm(asm.R4, l4Off+18),
		asm.JGT.Reg(asm.R4, asm.R3, "csum done"), // no room for a checksum field
		asm.LoadMem(asm.R9, asm.R1, l4Off+16, asm.Half),
		asm.Mov.Reg(asm.R4, asm.R7),
		asm.Add.Imm(asm.R4, l4Off+16),
		asm.Ja.Label("csum pseudo"),
		asm.LoadMem(asm.R9, asm.R1, l4Off+6, asm.Half).WithSymbol("csum udp"),
		asm.JEq.Imm(asm.R9, 0, "csum done"), // no checksum at all
		asm.Mov.Reg(asm.R4, asm.R7),
		asm.Add.Imm(asm.R4, l4Off+6),
		asm.StoreMem(asm.RFP, stFieldOff, asm.R4, asm.DWord).WithSymbol("csum pseudo"),

		// The pseudo-header's sum, as 16-bit words loaded little-endian
		// (one's complement sums do not care which byte order, as long as
		// it is the same throughout).
		asm.LoadMem(asm.R2, asm.R1, ipLenOff, asm.Half),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.JGT.Imm(asm.R2, maxSummed, "aborted"),
		asm.JLT.Imm(asm.R2, minIPTotal, "aborted"), // checked before; said again for the verifier
		asm.Sub.Imm(asm.R2, 20),                    // the L4 segment's length
		asm.Mov.Imm(asm.R3, 0),
	}
	for _, off := range []int16{ipSaddrOff, ipDaddrOff} {
		ins = append(ins,
			asm.LoadMem(asm.R4, asm.R1, off, asm.Word),
			asm.Mov.Reg(asm.R5, asm.R4),
			asm.And.Imm(asm.R5, 0xffff),
			asm.Add.Reg(asm.R3, asm.R5),
			asm.RSh.Imm(asm.R4, 16),
			asm.Add.Reg(asm.R3, asm.R4),
		)
	}
	ins = append(ins,
		asm.LoadMem(asm.R4, asm.RFP, stProto, asm.DWord),
		asm.LSh.Imm(asm.R4, 8),
		asm.Add.Reg(asm.R3, asm.R4),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.Add.Reg(asm.R3, asm.R4),
	)
	ins = append(ins, fold(asm.R3)...)
	ins = append(ins,
		asm.JNE.Reg(asm.R3, asm.R9, "csum done"),

		// Sum the segment as it is: the field's pseudo-header sum stands
		// in for the pseudo-header, as it does for the NIC.
		asm.Add.Imm(asm.R7, l4Off), // the segment's offset in the frame
		asm.Mov.Reg(asm.R9, asm.R2),
		asm.Mov.Imm(asm.R8, 0),
		asm.JLT.Imm(asm.R9, sumChunk, "csum tail").WithSymbol("csum chunk"),
	)
	chunk := []asm.Instruction{asm.Mov.Imm(asm.R4, sumChunk)}
	ins = append(ins, sumFrameBytes(chunk, chunk)...)
	ins = append(ins,
		asm.Add.Imm(asm.R7, sumChunk),
		asm.Sub.Imm(asm.R9, sumChunk),
		asm.Ja.Label("csum chunk"),
		asm.JEq.Imm(asm.R9, 0, "csum fold").WithSymbol("csum tail"),
	)
	// Zeros after the last byte: an odd length sums as if padded.
	ins = append(ins, asm.Mov.Imm(asm.R1, 0))
	for off := int16(stBuf); off < stBuf+sumBuf; off += 8 {
		ins = append(ins, asm.StoreMem(asm.RFP, off, asm.R1, asm.DWord))
	}
	ins = append(ins, sumFrameBytes(
		[]asm.Instruction{asm.Mov.Reg(asm.R4, asm.R9)},
		[]asm.Instruction{asm.Mov.Reg(asm.R4, asm.R9), asm.Add.Imm(asm.R4, 3), asm.And.Imm(asm.R4, -4)},
	)...)
	ins = append(ins, asm.Mov.Reg(asm.R8, asm.R8).WithSymbol("csum fold"))
	ins = append(ins, fold(asm.R8)...)
	return append(ins,
		asm.Xor.Imm(asm.R8, 0xffff),
		asm.JNE.Imm(asm.R8, 0, "csum store"),
		asm.LoadMem(asm.R1, asm.RFP, stProto, asm.DWord),
		asm.JNE.Imm(asm.R1, unix.IPPROTO_UDP, "csum store"),
		asm.Mov.Imm(asm.R8, 0xffff), // 0 means "no checksum" in UDP over IPv4
		asm.StoreMem(asm.RFP, stField, asm.R8, asm.Half).WithSymbol("csum store"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMem(asm.R2, asm.RFP, stFieldOff, asm.DWord),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stField),
		asm.Mov.Imm(asm.R4, 2),
		asm.FnXdpStoreBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "aborted"),

		asm.LoadMem(asm.R0, asm.RFP, stValue, asm.DWord).WithSymbol("csum done"),
		asm.LoadMem(asm.R8, asm.RFP, stInnerLen, asm.DWord),
	)
}

// sumFrameBytes copies bytes of the frame at offset R7 into the stack
// buffer (loadLen sets R4 to how many) and adds them to the running sum in
// R8 (sumLen sets R4 to how many: a whole number of words, the buffer
// holding zeros past the frame's bytes).
func sumFrameBytes(loadLen, sumLen []asm.Instruction) asm.Instructions {
	ins := append(asm.Instructions{}, loadLen...)
	ins = append(ins,
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stBuf),
		asm.FnXdpLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "aborted"),
	)
	ins = append(ins, sumLen...)
	return append(ins,
		asm.Mov.Imm(asm.R1, 0),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stBuf),
		asm.Mov.Reg(asm.R5, asm.R8),
		asm.FnCsumDiff.Call(),
		asm.JSLT.Imm(asm.R0, 0, "aborted"),
		asm.Mov.Reg(asm.R8, asm.R0),
	)
}

// fold folds a one's complement sum in r to 16 bits, using R4.
func fold(r asm.Register) asm.Instructions {
	var ins asm.Instructions
	for range 2 {
		ins = append(ins,
			asm.Mov.Reg(asm.R4, r),
			asm.RSh.Imm(asm.R4, 16),
			asm.And.Imm(r, 0xffff),
			asm.Add.Reg(r, asm.R4),
		)
	}
	return ins
}

// hook is where the program runs: the context's fields it reads and the
// verdicts it returns differ between XDP and tc.
type hook struct {
	tc                     bool
	data, dataEnd, ifindex int16
	pass, aborted          int32
}

var (
	xdpHook = hook{data: 0, dataEnd: 4, ifindex: 12, pass: xdpPass, aborted: 0} // xdp_md; XDP_ABORTED
	// At tc egress __sk_buff.ifindex is the transmitting device: the feed.
	tcHook = hook{tc: true, data: 76, dataEnd: 80, ifindex: 40, pass: 0, aborted: 2} // TC_ACT_OK, TC_ACT_SHOT
)

// __sk_buff fields.
const (
	skbLen     = 0
	skbGSOSize = 176
)

// mismatch jumps to "pass" unless the size bytes at pkt+pktOff equal those
// at val+valOff. It uses R3 and R4.
func mismatch(pkt asm.Register, pktOff int16, val asm.Register, valOff int16, size asm.Size) []asm.Instruction {
	return []asm.Instruction{
		asm.LoadMem(asm.R3, pkt, pktOff, size),
		asm.LoadMem(asm.R4, val, valOff, size),
		asm.JNE.Reg(asm.R3, asm.R4, "pass"),
	}
}

// copyMem copies size bytes from src+srcOff to dst+dstOff through R3.
func copyMem(dst asm.Register, dstOff int16, src asm.Register, srcOff int16, size asm.Size) []asm.Instruction {
	return []asm.Instruction{
		asm.LoadMem(asm.R3, src, srcOff, size),
		asm.StoreMem(dst, dstOff, asm.R3, size),
	}
}

func swap16(v uint16) uint16 { return v>>8 | v<<8 }

// xadd is an atomic 64-bit add of src to the word at dst+off: the entry
// is shared by every CPU forwarding the flow.
func xadd(dst asm.Register, off int16, src asm.Register) asm.Instruction {
	ins := asm.StoreXAdd(dst, src, asm.DWord)
	ins.Offset = off
	return ins
}

// KeyOf builds the key the program builds for frame arriving on ifindex;
// ok is false for frames the program passes to userspace whatever the map
// holds. TCP flags are not checked: the first segment of a connection
// installs the entry its later segments use. An MSR frame (any EtherType
// but IPv4 and the drop notice's, with 1..MaxHops hops) is keyed by its
// outer MACs, its inner frame's addresses and ports, and its header's
// length and next hop. An ICMP echo request or reply is keyed by its type
// and identifier where a port pair would be.
func KeyOf(ifindex int, frame []byte) (key Entry, ok bool) {
	hdrLen := msrLen(frame)
	if hdrLen < 0 {
		return key, false
	}
	in := frame[hdrLen:]
	if len(in) < minUDPFrame || binary.BigEndian.Uint16(in[12:]) != unix.ETH_P_IP || in[ethLen] != 0x45 ||
		binary.BigEndian.Uint16(in[ipFragOff:])&0x3fff != 0 {
		return key, false
	}
	if total := int(binary.BigEndian.Uint16(in[ipLenOff:])); total < minIPTotal || ethLen+total > len(in) {
		return key, false // malformed for the userspace path, which drops it
	}
	proto, total := in[ipProtoOff], int(binary.BigEndian.Uint16(in[ipLenOff:]))
	switch {
	case proto == unix.IPPROTO_UDP:
	case proto == unix.IPPROTO_TCP && len(in) >= minTCPFrame:
	case proto == unix.IPPROTO_ICMP && (in[l4Off] == icmpEcho || in[l4Off] == icmpEchoReply) && total >= minICMPTotal:
	default:
		return key, false
	}
	protoWord := uint32(proto)
	if hdrLen > 0 {
		protoWord |= uint32(hdrLen)<<8 | uint32(frame[msrNextOff])<<16
	}
	binary.NativeEndian.PutUint32(key[kIfindex:], uint32(ifindex))
	copy(key[kDst:kDst+6], frame[0:6])
	copy(key[kSrc:kSrc+6], frame[6:12])
	copy(key[kSaddr:kSaddr+4], in[ipSaddrOff:])
	copy(key[kDaddr:kDaddr+4], in[ipDaddrOff:])
	copy(key[kPorts:kPorts+4], in[l4Off:])
	if proto == unix.IPPROTO_ICMP {
		copy(key[kPorts+2:kPorts+4], in[l4Off+4:]) // the identifier, not the checksum
	}
	binary.NativeEndian.PutUint32(key[kProto:], protoWord)
	return key, true
}

// msrLen is the length of the MSR header the program assumes frame
// carries: 0 for IPv4, -1 for frames it passes without a look.
func msrLen(frame []byte) int {
	if len(frame) < minUDPFrame {
		return -1
	}
	switch binary.BigEndian.Uint16(frame[12:]) {
	case unix.ETH_P_IP:
		return 0
	case dropNoticeType:
		return -1
	}
	if len(frame) < minMSRFrame {
		return -1
	}
	n := int(frame[msrNumOff])
	if n < 1 || n > MaxHops {
		return -1
	}
	return msrFixed + msrHopLen*n
}

// Offload makes the kernel forward frames like frame (same ports, MACs,
// IPv4 addresses and L4 ports) arriving on port in out of port out, and
// count them under cookie. ok is false, with a nil error, for a frame of a
// kind the program does not handle; an error wrapping ErrIngress or
// ErrEgress means a port cannot take part.
func (f *FastPath) Offload(in, out string, frame []byte, cookie uint64) (Entry, bool, error) {
	if _, ok := KeyOf(1, frame); !ok || msrLen(frame) != 0 {
		return Entry{}, false, nil
	}
	var val [valueLen]byte
	return f.add(in, out, frame, kindDirect, cookie, &val)
}

// OffloadPush makes the kernel push header (an MSR header, SOURCE-ROUTE.md)
// onto frames like frame arriving on port in and send them out of port out,
// the first appliance's; frames longer than maxLen go to userspace. A
// header of more than MaxHops hops is not offloaded (ok false).
func (f *FastPath) OffloadPush(in, out string, frame, header []byte, maxLen int, cookie uint64) (Entry, bool, error) {
	if _, ok := KeyOf(1, frame); !ok || msrLen(frame) != 0 || len(header) < msrFixed+msrHopLen ||
		int(header[msrNumOff]) > MaxHops || len(header) != msrFixed+msrHopLen*int(header[msrNumOff]) {
		return Entry{}, false, nil
	}
	var val [valueLen]byte
	binary.NativeEndian.PutUint32(val[vMaxLen:], uint32(min(maxLen, 1<<16)))
	binary.NativeEndian.PutUint32(val[vHdrLen:], uint32(len(header)))
	copy(val[vHdr:], header)
	return f.add(in, out, frame, kindPush, cookie, &val)
}

// OffloadReturn makes the kernel forward MSR frames that come back from an
// appliance on port in exactly like frame (the same header, the same inner
// flow) out of port out: as they are, to the next appliance, or with the
// header stripped, to the destination, if strip. Frames longer than maxLen
// as they arrive go to userspace.
func (f *FastPath) OffloadReturn(in, out string, frame []byte, strip bool, maxLen int, cookie uint64) (Entry, bool, error) {
	hdrLen := msrLen(frame)
	if _, ok := KeyOf(1, frame); !ok || hdrLen <= 0 {
		return Entry{}, false, nil
	}
	var val [valueLen]byte
	binary.NativeEndian.PutUint32(val[vMaxLen:], uint32(min(maxLen, 1<<16)))
	binary.NativeEndian.PutUint32(val[vHdrLen:], uint32(hdrLen))
	copy(val[vInner:vInner+12], frame[hdrLen:])
	copy(val[vHdr:], frame[:hdrLen])
	kind := uint32(kindHop)
	if strip {
		kind = kindStrip
	}
	return f.add(in, out, frame, kind, cookie, &val)
}

// add completes val and puts it in the map under frame's key on port in.
func (f *FastPath) add(in, out string, frame []byte, kind uint32, cookie uint64, val *[valueLen]byte) (Entry, bool, error) {
	inIdx, tc, err := f.ingress(in)
	if err != nil {
		return Entry{}, false, err
	}
	if tc && kind == kindStrip {
		return Entry{}, false, nil // the tc variant does not strip
	}
	// An skb redirected at tc ingress can leave by any device; an XDP
	// frame needs one that takes XDP frames.
	outIdx, err := f.egress(out, !tc)
	if err != nil {
		return Entry{}, false, err
	}
	key, _ := KeyOf(inIdx, frame)
	binary.NativeEndian.PutUint32(val[vOut:], uint32(outIdx))
	binary.NativeEndian.PutUint32(val[vKind:], kind)
	binary.NativeEndian.PutUint64(val[vCookie:], cookie)
	if err := f.flows.Update(key[:], val[:], ebpf.UpdateAny); err != nil {
		return Entry{}, false, fmt.Errorf("xdpfast: add entry: %w", err)
	}
	return key, true, nil
}

// Remove deletes an entry and returns its final counters. Frames that
// reach the program after Remove returns take the userspace path. An
// entry that is not there (removed already) yields zeros and no error.
func (f *FastPath) Remove(key Entry) (packets, bytes uint64, err error) {
	var val [valueLen]byte
	if err := f.flows.LookupAndDelete(key[:], val[:]); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, 0, nil
		}
		// Kernels without lookup-and-delete on hash maps: the counters of
		// the last moments are lost, the entry is not.
		if derr := f.flows.Delete(key[:]); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) {
			return 0, 0, fmt.Errorf("xdpfast: remove entry: %w", derr)
		}
		return 0, 0, nil
	}
	return binary.NativeEndian.Uint64(val[vPackets:]), binary.NativeEndian.Uint64(val[vBytes:]), nil
}

// Visit calls fn with every entry's cookie and counters. It reads the map
// in batches (one system call per visitBatch entries), or entry by entry
// where the kernel cannot.
func (f *FastPath) Visit(fn func(cookie, packets, bytes uint64)) error {
	keys := make([]Entry, visitBatch)
	vals := make([][valueLen]byte, visitBatch)
	var cursor ebpf.MapBatchCursor
	for first := true; ; first = false {
		n, err := f.flows.BatchLookup(&cursor, keys, vals, nil)
		for _, v := range vals[:n] {
			fn(binary.NativeEndian.Uint64(v[vCookie:]), binary.NativeEndian.Uint64(v[vPackets:]), binary.NativeEndian.Uint64(v[vBytes:]))
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case err == nil:
			continue
		case first && n == 0:
			return f.visitEach(fn)
		default:
			return fmt.Errorf("xdpfast: read counters: %w", err)
		}
	}
}

const visitBatch = 1024

func (f *FastPath) visitEach(fn func(cookie, packets, bytes uint64)) error {
	var key Entry
	var val [valueLen]byte
	it := f.flows.Iterate()
	for it.Next(&key, &val) {
		fn(binary.NativeEndian.Uint64(val[vCookie:]), binary.NativeEndian.Uint64(val[vPackets:]), binary.NativeEndian.Uint64(val[vBytes:]))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("xdpfast: read counters: %w", err)
	}
	return nil
}

// Len is how many entries the map holds.
func (f *FastPath) Len() (int, error) {
	n := 0
	err := f.Visit(func(_, _, _ uint64) { n++ })
	return n, err
}

// Attach attaches the program to the named port now rather than at its
// first offload. Frames that can only arrive through a veth's XDP receive
// path (XDP_TX from the peer) need that.
func (f *FastPath) Attach(name string) error {
	_, _, err := f.ingress(name)
	return err
}

// ingress attaches the program to the named port once, in native mode:
// generic XDP would run after the skb is built and gain nothing. Where
// native XDP is refused and the port is fed by another link (Config.Feeds),
// the tc variant goes on that link's egress instead. It returns the
// ifindex of the port's keys, and whether the port has the tc variant.
func (f *FastPath) ingress(name string) (keyIfindex int, tc bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, err := f.portLocked(name)
	if err != nil {
		return 0, false, err
	}
	if p.in == nil && p.inErr == nil {
		p.key = p.ifindex
		err := f.cfg.Do(func() error {
			l, err := link.AttachXDP(link.XDPOptions{Program: f.prog, Interface: p.ifindex, Flags: link.XDPDriverMode})
			p.in = l
			return err
		})
		if feed := f.cfg.Feeds[name]; err != nil && feed != "" && f.progTC != nil {
			var fp *port
			if fp, err = f.portLocked(feed); err == nil {
				err = f.cfg.Do(func() error {
					l, err := link.AttachTCX(link.TCXOptions{Program: f.progTC, Interface: fp.ifindex, Attach: ebpf.AttachTCXEgress})
					p.in = l
					return err
				})
			}
			if err == nil {
				p.tc, p.key = true, fp.ifindex
			}
		}
		if err != nil {
			p.inErr = fmt.Errorf("%w %s: %w", ErrIngress, name, err)
		}
	}
	return p.key, p.tc, p.inErr
}

// egress checks that the named port can transmit redirected frames, at
// most once a second per port.
func (f *FastPath) egress(name string, xdp bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, err := f.portLocked(name)
	if err != nil {
		return 0, err
	}
	if !xdp {
		return p.ifindex, nil
	}
	if now := time.Now(); now.Sub(p.checked) >= egressRecheck {
		p.checked = now
		var feat uint64
		err := f.cfg.Do(func() error {
			var err error
			feat, err = xdpFeatures(p.ifindex)
			return err
		})
		switch {
		case err != nil:
			p.outErr = fmt.Errorf("%w %s: %w", ErrEgress, name, err)
		case feat&xdpActNdoXmit == 0:
			p.outErr = fmt.Errorf("%w %s (a veth needs XDP or GRO on its peer)", ErrEgress, name)
		default:
			p.outErr = nil
		}
	}
	return p.ifindex, p.outErr
}

func (f *FastPath) portLocked(name string) (*port, error) {
	if p := f.ports[name]; p != nil {
		return p, nil
	}
	var ifindex int
	err := f.cfg.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			ifindex = ifi.Index
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("xdpfast: port %s: %w", name, err)
	}
	p := &port{ifindex: ifindex}
	f.ports[name] = p
	return p, nil
}

// xdpFeatures asks the kernel's netdev generic-netlink family which XDP
// actions the interface supports (Linux 6.3 and later). The request is
// made by hand: the netlink package's generic request helper rejects the
// family's replies.
func xdpFeatures(ifindex int) (uint64, error) {
	fam, err := netlink.GenlFamilyGet("netdev")
	if err != nil {
		return 0, fmt.Errorf("netdev netlink family: %w", err)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return 0, fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	req := make([]byte, 0, 28)
	req = binary.NativeEndian.AppendUint32(req, 28)
	req = binary.NativeEndian.AppendUint16(req, fam.ID)
	req = binary.NativeEndian.AppendUint16(req, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	req = binary.NativeEndian.AppendUint32(req, 1) // sequence
	req = binary.NativeEndian.AppendUint32(req, 0) // port id: the kernel's
	req = append(req, netdevCmdDevGet, 1, 0, 0)
	req = binary.NativeEndian.AppendUint16(req, 8)
	req = binary.NativeEndian.AppendUint16(req, netdevAIfindex)
	req = binary.NativeEndian.AppendUint32(req, uint32(ifindex))
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("netdev dev-get: %w", err)
	}
	var (
		buf   = make([]byte, 8192)
		feat  uint64
		found bool
	)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return 0, fmt.Errorf("netdev dev-get: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return 0, fmt.Errorf("netdev dev-get reply: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return 0, errors.New("netdev dev-get: short error reply")
				}
				if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
					return 0, fmt.Errorf("netdev dev-get: %w", unix.Errno(-errno))
				}
				if !found {
					return 0, errors.New("netdev dev-get: no xdp-features in the reply")
				}
				return feat, nil
			case fam.ID:
				if len(m.Data) < 4 {
					continue
				}
				attrs, err := nl.ParseRouteAttr(m.Data[4:])
				if err != nil {
					return 0, fmt.Errorf("netdev dev-get reply: %w", err)
				}
				for _, a := range attrs {
					if a.Attr.Type == netdevAXDPFeat && len(a.Value) == 8 {
						feat, found = binary.NativeEndian.Uint64(a.Value), true
					}
				}
			}
		}
	}
}

// Forget detaches the program from a port the DM no longer reads and drops
// what is known about it (an interface of that name may come back as
// another device).
func (f *FastPath) Forget(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.ports[name]
	delete(f.ports, name)
	if p != nil && p.in != nil {
		return p.in.Close()
	}
	return nil
}

// Close detaches the program everywhere and unloads it with its map.
func (f *FastPath) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for name, p := range f.ports {
		if p.in != nil {
			errs = append(errs, p.in.Close())
		}
		delete(f.ports, name)
	}
	if f.progTC != nil {
		errs = append(errs, f.progTC.Close())
	}
	return errors.Join(append(errs, f.prog.Close(), f.flows.Close(), f.barrier.Close(), f.barrierInner.Close())...)
}
