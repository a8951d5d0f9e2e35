package sourceroute

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"
)

// Health probes: the DM sends every appliance instance, at an interval, a
// frame routed [instance, DM] whose inner frame is a probe, and expects it
// back (or a drop notice of it) within a timeout. An instance that has
// answered once and then misses ProbeMisses probes in a row is reported
// silent (EventApplianceSilent), with no guest traffic needed to find it. docs/source-route.md describes
// the probe frame as a convention appliances must honour.

// ProbeEtherType is the inner frame's EtherType of a probe: the Ethernet
// Configuration Testing Protocol ("loopback"), which exists for exactly
// this and which no host acts on beyond answering a forward request.
const ProbeEtherType uint16 = 0x9000

// Probe inner frame layout, after the 14-byte Ethernet header (dst = src =
// the DM): the ECTP skip count (0) and a reply message (function 1,
// receipt number 0), so that a host that sees one stops there; then the
// magic, the sequence number and the instance's tag.
const (
	probeMagic     = "vsagent-probe\x00\x00\x01" // 16 bytes; the last octet is the probe version
	probeOffMagic  = EthernetHeaderLen + 6
	probeOffSeq    = probeOffMagic + len(probeMagic)
	probeOffTag    = probeOffSeq + 8
	probeInnerLen  = probeOffTag + 8
	probeFrameLen  = 60 // padded to Ethernet's minimum
	probeMaxHeader = FixedHeaderLen + 2*hopLen
)

// Defaults of Config's probe settings.
const (
	DefaultProbeInterval = time.Second
	DefaultProbeTimeout  = 500 * time.Millisecond
	DefaultProbeMisses   = 3
)

// Probe is a parsed probe inner frame.
type Probe struct {
	From MAC    // the DM that sent it
	Seq  uint64 // per instance, from 1
	Tag  uint64 // names the instance it was sent to
}

// BuildProbe writes a probe's inner frame from the DM self into dst (at
// least 60 bytes) and returns its length.
func BuildProbe(dst []byte, self MAC, seq, tag uint64) int {
	b := dst[:probeFrameLen]
	clear(b)
	copy(b[0:6], self[:])
	copy(b[6:12], self[:])
	binary.BigEndian.PutUint16(b[12:14], ProbeEtherType)
	// ECTP: skip count 0, then a reply message (function 1, receipt 0).
	binary.LittleEndian.PutUint16(b[16:18], 1)
	copy(b[probeOffMagic:], probeMagic)
	binary.BigEndian.PutUint64(b[probeOffSeq:], seq)
	binary.BigEndian.PutUint64(b[probeOffTag:], tag)
	return probeFrameLen
}

// ParseProbe recognises a probe inner frame: ProbeEtherType without VLAN
// tags, the same unicast MAC as source and destination, the magic, and a
// non-zero sequence number. Anything else is not a probe (ok false), and
// is then an ordinary frame to the caller.
func ParseProbe(inner []byte) (p Probe, ok bool) {
	if len(inner) < probeInnerLen || binary.BigEndian.Uint16(inner[12:14]) != ProbeEtherType {
		return Probe{}, false
	}
	if !sameMAC(inner[0:6], inner[6:12]) || !isUnicastBytes(inner[0:6]) || string(inner[probeOffMagic:probeOffSeq]) != probeMagic {
		return Probe{}, false
	}
	p = Probe{From: MAC(inner[6:12]), Seq: binary.BigEndian.Uint64(inner[probeOffSeq:]), Tag: binary.BigEndian.Uint64(inner[probeOffTag:])}
	if p.Seq == 0 {
		return Probe{}, false
	}
	return p, true
}

// isProbeCandidate is the data path's cheap first test: only frames that
// pass it are parsed as probes.
func isProbeCandidate(inner []byte) bool {
	return len(inner) >= probeInnerLen && inner[12] == byte(ProbeEtherType>>8) && inner[13] == byte(ProbeEtherType&0xff)
}

// probeState is one instance's probing. The maintenance goroutine sends
// and judges probes; the worker reading the instance's port marks them
// answered. The outstanding probe is settled exactly once, by whichever
// side swaps pending to zero.
type probeState struct {
	seq      atomic.Uint64
	pending  atomic.Int64  // engine clock + 1 when the outstanding probe was sent; 0 none
	lastSent int64         // engine clock + 1; maintenance goroutine only
	streak   atomic.Uint32 // misses since the last answer, counted once alive
	alive    atomic.Bool   // answered since its ports or address last changed
	sent     atomic.Uint64
	answered atomic.Uint64
	missed   atomic.Uint64
	rttSum   atomic.Int64
	rttLast  atomic.Int64
	buf      [probeMaxHeader + probeFrameLen]byte // maintenance goroutine only
}

// probeReturned handles a probe coming back from inst (forwarded, passed
// through, or in a drop notice), and reports whether inner was one of the
// DM's probes: those are never delivered anywhere.
func (w *worker) probeReturned(inst *instanceObj, inner []byte, now int64) bool {
	if !isProbeCandidate(inner) {
		return false
	}
	p, ok := ParseProbe(inner)
	if !ok || p.From != w.e.self {
		return false // a guest's own test frame: not ours to swallow
	}
	w.e.probeAnswer(inst, p, now)
	return true
}

// probeAnswer settles inst's outstanding probe if p is it.
func (e *Engine) probeAnswer(inst *instanceObj, p Probe, now int64) {
	ps := inst.probe
	if p.From != e.self || p.Tag != inst.seed || p.Seq != ps.seq.Load() {
		return // late, or not ours: the timeout has judged it or will
	}
	at := ps.pending.Load()
	if at == 0 || !ps.pending.CompareAndSwap(at, 0) {
		return
	}
	rtt := max(now-(at-1), 0)
	ps.answered.Add(1)
	ps.rttSum.Add(rtt)
	ps.rttLast.Store(rtt)
	ps.streak.Store(0)
	ps.alive.Store(true)
}

// probeTick judges overdue probes and sends the next ones. It runs on the
// maintenance goroutine.
func (e *Engine) probeTick(st *state, now int64) {
	if e.cfg.ProbeInterval < 0 {
		return
	}
	timeout, interval := int64(e.cfg.ProbeTimeout), int64(e.cfg.ProbeInterval)
	for _, inst := range st.instByMAC {
		ps := inst.probe
		if at := ps.pending.Load(); at != 0 && now-(at-1) > timeout && ps.pending.CompareAndSwap(at, 0) {
			ps.missed.Add(1)
			// An instance that has not answered yet is starting (a VM
			// booting), not silent: only one that answered can fall silent.
			if ps.alive.Load() && ps.streak.Add(1) == uint32(e.cfg.ProbeMisses) {
				e.emit(Event{Kind: EventApplianceSilent, Time: e.wallOf(now), Appliance: inst.appliance, Instance: inst.name})
			}
		}
		if ps.pending.Load() != 0 || (ps.lastSent != 0 && now+1-ps.lastSent < interval) {
			continue
		}
		e.sendProbe(inst, ps, now)
	}
}

// sendProbe sends inst the next probe: routed [inst, DM] to a header
// appliance, bare into a wire appliance's in-port (it must come out of its
// out-port, as a flow's forward frames do).
func (e *Engine) sendProbe(inst *instanceObj, ps *probeState, now int64) {
	var head []byte
	if inst.kind == HeaderAppliance {
		n, err := e.codec.BuildHeader(ps.buf[:], e.self, []MAC{inst.mac, e.self})
		if err != nil {
			return // validated MACs: cannot happen
		}
		head = ps.buf[:n]
	}
	body := ps.buf[len(head):]
	body = body[:BuildProbe(body, e.self, ps.seq.Add(1), inst.seed)]
	ps.lastSent = now + 1
	ps.pending.Store(now + 1) // before the frame leaves: its answer may come at once
	ps.sent.Add(1)
	p := inst.port
	p.mu.Lock()
	n, _ := p.p.WriteBatch([][]byte{head}, [][]byte{body})
	if n == 1 {
		p.txFrames.Add(1)
		p.txBytes.Add(uint64(len(head) + len(body)))
	} else {
		p.txErrors.Add(1) // the probe will be judged missed
	}
	p.mu.Unlock()
}

func (cfg *Config) probeDefaults() error {
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.ProbeMisses == 0 {
		cfg.ProbeMisses = DefaultProbeMisses
	}
	if cfg.ProbeTimeout < 0 || cfg.ProbeMisses < 0 {
		return fmt.Errorf("%w: ProbeTimeout %v and ProbeMisses %d must not be negative", ErrBadEngineConfig, cfg.ProbeTimeout, cfg.ProbeMisses)
	}
	return nil
}

// probeTickEvery is how often the maintenance loop must run for probes to
// be judged within a fraction of their timeout.
func (cfg *Config) probeTickEvery() time.Duration {
	if cfg.ProbeInterval < 0 {
		return time.Second
	}
	return max(min(cfg.ProbeTimeout, cfg.ProbeInterval)/4, 10*time.Millisecond)
}

func (ps *probeState) fill(c *InstanceCounters) {
	c.ProbesSent, c.ProbesAnswered, c.ProbesMissed = ps.sent.Load(), ps.answered.Load(), ps.missed.Load()
	c.ProbeMissStreak = ps.streak.Load()
	c.ProbeRTT, c.ProbeRTTTotal = time.Duration(ps.rttLast.Load()), time.Duration(ps.rttSum.Load())
}
