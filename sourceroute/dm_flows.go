package sourceroute

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Per-flow state lives in a slab of fixed-size entries indexed by the flow
// table's handle. What is the same for many flows (the decision: routes,
// their prebuilt headers, the instances chosen) is built once per distinct
// decision and shared; an entry holds the flow's own state: its endpoints,
// its counters and its return-timeout tracking. After warm-up a new flow
// allocates nothing: its entry comes from the free list and its decision
// from the cache.
//
// An entry whose flow left the table is not reused at once: a worker may
// still be forwarding a frame of that flow. Removed handles wait in a
// pending list until a grace period (Engine.synchronize) has passed.

// Verdicts stored in the flow table; 0 drops, so a zero value fails closed.
const (
	verdictDrop   Verdict = iota
	verdictDirect         // delivered without a chain in both directions
	verdictChain          // at least one direction has a route
)

// decision is what classification decided for a flow. Immutable.
type decision struct {
	verdict Verdict
	reason  DropReason // verdictDrop only
	// rt holds each Direction's route; nil delivers directly.
	rt       [2]*route
	insts    []*instanceObj // every instance of either route
	deps     []string       // appliances skipped or missing: their availability shaped this decision
	depRT    []*applianceRuntime
	bypassed []string // appliances skipped (FailBypass)
	missing  string   // the appliance without an instance (chain_not_ready)
}

// route is one direction's path through appliances, with its headers.
type route struct {
	hops []routeHop
	// hdr[j] is the header that sends a frame to hop j: next = j, dst =
	// the hop, src = the DM for j = 0, else the wire appliance before it
	// (the DM stands in for it). nil for wire hops, which get no header.
	hdr [][]byte
	// wire is the route array as it appears in frames, to check that a
	// frame coming back belongs to this route.
	wire []byte
}

type routeHop struct {
	inst       *instanceObj
	send, back *openPort // back: where the frame comes back
	wire       bool
}

// flowEntry is one flow's slot in the slab.
type flowEntry struct {
	// Written when the flow is created, before the flow table publishes
	// its handle, and not changed until the entry is reclaimed.
	key          FlowKey      // as its first packet
	ends         [2]*endpoint // initiator, responder: indexed by the Direction of a frame's sender
	dec          *decision
	blockedUntil int64 // dec == state.blocked: when the block ends

	live    atomic.Bool // fields above are set
	removed atomic.Bool // left the flow table
	// ret tracks frames inside the chain per Direction; see retWord.
	ret      [2]atomic.Uint64
	packets  [2]atomic.Uint64
	bytes    [2]atomic.Uint64
	notices  atomic.Uint32
	timeouts atomic.Uint32
	fast     [2]atomic.Uint32 // per Direction: fastNone, fastOn, …
}

const (
	slabChunkBits = 12
	slabChunk     = 1 << slabChunkBits
)

type flowSlab struct {
	chunks []atomic.Pointer[[slabChunk]flowEntry]

	mu      sync.Mutex
	free    []uint32
	next    uint32 // handles below next have been handed out at least once
	pending []uint32
	spare   []uint32
}

var errSlabFull = errors.New("sourceroute: no free flow entry (flows removed faster than they are reclaimed)")

// newFlowSlab allows for twice the table's capacity: entries of removed
// flows wait for a grace period before reuse, and the table itself may
// exceed its capacity by a little.
func newFlowSlab(capacity int) *flowSlab {
	n := (2*capacity + 1024 + slabChunk - 1) / slabChunk
	return &flowSlab{chunks: make([]atomic.Pointer[[slabChunk]flowEntry], n)}
}

// at returns the entry of a handle the flow table gave out.
func (s *flowSlab) at(h uint32) *flowEntry {
	return &s.chunks[h>>slabChunkBits].Load()[h&(slabChunk-1)]
}

func (s *flowSlab) alloc() (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.free); n > 0 {
		h := s.free[n-1]
		s.free = s.free[:n-1]
		return h, nil
	}
	if s.next == 0 {
		s.next = 1 // handle 0 is never used, so a zero FlowValue names no entry
	}
	h := s.next
	c := int(h >> slabChunkBits)
	if c >= len(s.chunks) {
		return 0, errSlabFull
	}
	if s.chunks[c].Load() == nil {
		s.chunks[c].Store(new([slabChunk]flowEntry))
	}
	s.next++
	return h, nil
}

// onRemove is the flow table's OnRemove: it runs under a shard lock, so it
// only marks and queues the entry.
func (s *flowSlab) onRemove(f Flow, _ RemoveReason) {
	h := f.Value.Handle
	if h == 0 {
		return
	}
	s.at(h).removed.Store(true)
	s.mu.Lock()
	s.pending = append(s.pending, h)
	s.mu.Unlock()
}

// takePending returns the handles removed so far.
func (s *flowSlab) takePending() []uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending
	s.pending = s.spare[:0]
	s.spare = nil
	return p
}

func (s *flowSlab) pendingLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// requeue puts back handles that could not be released yet.
func (s *flowSlab) requeue(batch []uint32) {
	s.mu.Lock()
	s.pending = append(s.pending, batch...)
	s.mu.Unlock()
}

// release makes handles reusable; the caller guarantees that no worker
// still holds them. batch is kept as the next pending list's storage.
func (s *flowSlab) release(batch []uint32) {
	for _, h := range batch {
		fe := s.at(h)
		fe.live.Store(false)
		fe.removed.Store(false)
		fe.key, fe.ends, fe.dec, fe.blockedUntil = FlowKey{}, [2]*endpoint{}, nil, 0
		for d := range fe.ret {
			fe.ret[d].Store(0)
			fe.packets[d].Store(0)
			fe.bytes[d].Store(0)
			fe.fast[d].Store(fastNone)
		}
		fe.notices.Store(0)
		fe.timeouts.Store(0)
	}
	s.mu.Lock()
	s.free = append(s.free, batch...)
	if s.spare == nil {
		s.spare = batch[:0]
	}
	s.mu.Unlock()
}

// highWater is one past the largest handle ever handed out.
func (s *flowSlab) highWater() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

// The return-tracking word of one direction of a flow: when frames went
// into the chain and nothing has come back since (0: nothing pending), how
// many hops have passed a frame back to the DM since then, and whether
// this episode was reported.
const (
	retStampMask   = 1<<48 - 1
	retProgShift   = 48
	retProgMask    = 0xff << retProgShift
	retAlerted     = 1 << 63
	retStampShift  = 10 // ~1 µs resolution: 2^48 µs is ~9 years
	retStampOffset = 1  // so that time 0 is not "nothing pending"
)

func retStamp(now int64) uint64 { return (uint64(now)>>retStampShift + retStampOffset) & retStampMask }

func retSince(stamp uint64) int64 { return int64((stamp - retStampOffset) << retStampShift) }

// sent notes a frame entering the chain: it opens an episode unless one is
// open already, so a busy flow costs one load here.
func (fe *flowEntry) sent(d Direction, now int64) {
	w := &fe.ret[d]
	if v := w.Load(); v&retStampMask == 0 {
		w.CompareAndSwap(v, retStamp(now))
	}
}

// passed notes that hop hop (0-based) handed a frame of this episode back.
func (fe *flowEntry) passed(d Direction, hop int) {
	w := &fe.ret[d]
	want := uint64(hop+1) << retProgShift
	for {
		v := w.Load()
		if v&retStampMask == 0 || v&retProgMask >= want {
			return
		}
		if w.CompareAndSwap(v, v&^retProgMask|want) {
			return
		}
	}
}

// returned notes a frame that came out of the whole chain: the episode is
// over.
func (fe *flowEntry) returned(d Direction) {
	w := &fe.ret[d]
	for {
		v := w.Load()
		if v == 0 || w.CompareAndSwap(v, 0) {
			return
		}
	}
}

// decisionKey builds the cache key of a decision into buf.
func decisionKey(buf []byte, verdict Verdict, reason DropReason, fwd, rev []*instanceObj, deps, bypassed []string, missing string) []byte {
	buf = append(buf[:0], byte(verdict), byte(reason), byte(len(fwd)), byte(len(rev)))
	for _, list := range [2][]*instanceObj{fwd, rev} {
		for _, inst := range list {
			buf = binary.LittleEndian.AppendUint32(buf, uint32(inst.slot))
		}
	}
	for _, list := range [2][]string{deps, bypassed} {
		buf = append(buf, byte(len(list)))
		for _, name := range list {
			buf = append(append(buf, name...), 0)
		}
	}
	return append(buf, missing...)
}

// classifier is a worker's scratch space for classifying new flows, so
// that classification allocates only when it creates a new decision.
type classifier struct {
	apps     []string
	sym      []bool
	fwd, rev []*instanceObj
	deps     []string
	depRT    []*applianceRuntime
	bypassed []string
	keyBuf   []byte
}

// decide classifies a new flow from src to dst whose first packet has key.
// It returns the shared decision and, for a blocked source, when the block
// ends. Events for bypassed appliances are raised here.
func (e *Engine) decide(c *classifier, st *state, src, dst *endpoint, key *FlowKey, now int64) (*decision, int64) {
	ig, rg := src.guest, dst.guest
	if ig != nil {
		if until := ig.rt.blockedUntil.Load(); until > now {
			return st.blocked, until
		}
	}
	c.apps, c.sym = c.apps[:0], c.sym[:0]
	if ig != nil && ig.policy != nil {
		for _, a := range ig.policy.chainFor(Egress, key, key.DstAddr()) {
			c.apps = append(c.apps, a)
			c.sym = append(c.sym, ig.policy.symmetric)
		}
	}
	if rg != nil && rg.policy != nil {
		for _, a := range rg.policy.chainFor(Ingress, key, key.SrcAddr()) {
			// An appliance both ends ask for inspects the flow once, at
			// the initiator's position.
			if i := indexOf(c.apps, a); i >= 0 {
				c.sym[i] = c.sym[i] || rg.policy.symmetric
				continue
			}
			c.apps = append(c.apps, a)
			c.sym = append(c.sym, rg.policy.symmetric)
		}
	}
	if len(c.apps) == 0 {
		return st.direct, 0
	}
	h := flowHash(key, e.hashSeed)
	c.fwd, c.rev, c.deps, c.depRT, c.bypassed = c.fwd[:0], c.rev[:0], c.deps[:0], c.depRT[:0], c.bypassed[:0]
	missing := ""
	for i, name := range c.apps {
		a := st.appliances[name]
		if a == nil || len(a.healthy) == 0 {
			c.deps = append(c.deps, name)
			if a != nil {
				c.depRT = append(c.depRT, a.rt)
			}
			if a != nil && a.onFailure == FailBypass {
				c.bypassed = append(c.bypassed, name)
				continue
			}
			missing = name
			break
		}
		inst := a.healthy[pickInstance(h, a.healthy)]
		c.fwd = append(c.fwd, inst)
		if c.sym[i] {
			c.rev = append(c.rev, inst)
		}
	}
	verdict, reason := verdictChain, DropReason(0)
	switch {
	case missing != "":
		verdict, reason = verdictDrop, DropChainNotReady
		c.fwd, c.rev = c.fwd[:0], c.rev[:0]
	case len(c.fwd) == 0:
		verdict = verdictDirect // every step bypassed
	case len(c.fwd)+1 > e.codec.maxHops():
		verdict, reason = verdictDrop, DropChainTooLong
		c.fwd, c.rev = c.fwd[:0], c.rev[:0]
	}
	for i, j := 0, len(c.rev)-1; i < j; i, j = i+1, j-1 {
		c.rev[i], c.rev[j] = c.rev[j], c.rev[i]
	}
	c.keyBuf = decisionKey(c.keyBuf, verdict, reason, c.fwd, c.rev, c.deps, c.bypassed, missing)
	dc := &st.decisions
	dc.mu.Lock()
	d := dc.m[string(c.keyBuf)]
	if d == nil {
		d = e.newDecision(verdict, reason, c, missing)
		dc.m[string(c.keyBuf)] = d
	}
	dc.mu.Unlock()
	for _, name := range c.bypassed {
		if a := st.appliances[name]; a != nil {
			a.rt.bypassed.Add(1)
			if ok, suppressed := a.rt.bypass.allow(now); ok {
				e.emit(Event{Kind: EventBypass, Time: e.wallOf(now), Guest: guestName(ig), Policy: policyName(ig, rg),
					Flow: *key, HasFlow: true, Appliance: name, Suppressed: suppressed})
			}
		}
	}
	return d, 0
}

func (e *Engine) newDecision(verdict Verdict, reason DropReason, c *classifier, missing string) *decision {
	d := &decision{verdict: verdict, reason: reason, missing: missing,
		deps: cloneOrNil(c.deps), depRT: cloneOrNil(c.depRT), bypassed: cloneOrNil(c.bypassed)}
	if len(c.fwd) > 0 {
		d.rt[Forward] = e.newRoute(c.fwd, false)
		d.insts = cloneOrNil(c.fwd)
	}
	if len(c.rev) > 0 {
		d.rt[Reverse] = e.newRoute(c.rev, true)
	}
	return d
}

// newRoute builds a route through insts and every header it can need.
// Frames of a reply route enter wire appliances by their out-port.
func (e *Engine) newRoute(insts []*instanceObj, reply bool) *route {
	macs := make([]MAC, 0, len(insts)+1)
	for _, inst := range insts {
		macs = append(macs, inst.mac)
	}
	macs = append(macs, e.self)
	base := make([]byte, HeaderLen(len(macs)))
	if _, err := e.codec.BuildHeader(base, e.self, macs); err != nil {
		// Snapshot validation and decide rule this out.
		panic("sourceroute: building a validated route: " + err.Error())
	}
	r := &route{hdr: make([][]byte, len(insts)), wire: base[FixedHeaderLen:]}
	for j, inst := range insts {
		hop := routeHop{inst: inst, send: inst.port, back: inst.port, wire: inst.kind == WireAppliance}
		if hop.wire {
			if reply {
				hop.send, hop.back = inst.out, inst.port
			} else {
				hop.send, hop.back = inst.port, inst.out
			}
		} else {
			h := append([]byte(nil), base...)
			h[15] = byte(j)
			copy(h[0:6], macs[j][:])
			if j > 0 {
				copy(h[6:12], macs[j-1][:])
			}
			r.hdr[j] = h
		}
		r.hops = append(r.hops, hop)
	}
	return r
}

// hopOf finds inst in the route, coming back on port p.
func (r *route) hopOf(inst *instanceObj, p *openPort) int {
	for j := range r.hops {
		if r.hops[j].inst == inst && r.hops[j].back == p {
			return j
		}
	}
	return -1
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// chainFor returns the chain for a flow in direction dir as seen from the
// policy's guest; peer is the other end's address.
func (p *policyObj) chainFor(dir TrafficDirection, key *FlowKey, peer netip.Addr) []string {
	for i := range p.classifiers {
		c := &p.classifiers[i]
		if c.matches(dir, key, peer) {
			return c.Chain
		}
	}
	return p.chain
}

func (c *ClassifierRule) matches(dir TrafficDirection, key *FlowKey, peer netip.Addr) bool {
	if c.Direction != BothDirections && c.Direction != dir {
		return false
	}
	ip := key.Kind() == KindIPv4 || key.Kind() == KindIPv6
	if c.Protocol != AnyProtocol && (!ip || int(key.Proto()) != c.Protocol) {
		return false
	}
	if len(c.Ports) > 0 {
		port, ok := key.DstPort(), ip && !key.IsFragment() && protoHasPorts(key.Proto())
		if !ok || !inRanges(c.Ports, port) {
			return false
		}
	}
	if len(c.Prefixes) > 0 {
		if !ip || !inPrefixes(c.Prefixes, peer) {
			return false
		}
	}
	return true
}

func inRanges(ranges [][2]uint16, port uint16) bool {
	for _, r := range ranges {
		if port >= r[0] && port <= r[1] {
			return true
		}
	}
	return false
}

func inPrefixes(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// flowHash hashes a flow the same way from both directions, so both pick
// the same instances.
func flowHash(key *FlowKey, seed uint64) uint64 {
	c, _ := key.canonical()
	h := seed
	for _, w := range c.w[:keyWordVLAN] {
		h = mix64(h ^ uint64(w))
	}
	return mix64(h ^ uint64(c.w[keyWordVLAN]&vlanMask))
}

// mix64 is the splitmix64 finaliser.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// pickInstance is rendezvous hashing: the instance with the highest score
// wins. When an instance leaves, only its flows move; when one joins, it
// takes a fair share of new flows.
func pickInstance(h uint64, insts []*instanceObj) int {
	best, bestScore := 0, uint64(0)
	for i, inst := range insts {
		if s := mix64(h ^ inst.seed); i == 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

func randomSeed() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("sourceroute: reading random bytes: " + err.Error())
	}
	return binary.LittleEndian.Uint64(b[:])
}

func guestName(g *guestObj) string {
	if g == nil {
		return ""
	}
	return g.name
}

// policyName is the policy that governs a frame from src to dst: the
// sender's if it is managed, else the receiver's.
func policyName(src, dst *guestObj) string {
	if p := governing(src, dst); p != nil {
		return p.name
	}
	return ""
}

func governing(src, dst *guestObj) *policyObj {
	if src != nil && src.policy != nil {
		return src.policy
	}
	if dst != nil && dst.policy != nil {
		return dst.policy
	}
	return nil
}
