package sourceroute

import (
	"context"
	"sort"
	"sync/atomic"
	"time"
)

// DropReason says why the DM dropped a frame. Like Reason it is a dense
// index for counter arrays and String is its metric label.
type DropReason uint8

const (
	dropNone          DropReason = iota
	DropUnknownSource            // intercepted frame from a MAC that is no guest's
	DropSpoofedSource            // source MAC not allowed on the port it came in on
	DropNoDestination            // not a local guest, and no uplink
	DropNotLocal                 // from the uplink, for no local guest (not an error)
	DropChainNotReady            // fail closed: the guest or an appliance of its chain is not ready
	DropChainTooLong             // the two ends' chains together exceed MaxHops
	DropBlocked                  // the source guest is blocked after a timeout or drop notice
	DropTooBig                   // the encapsulated frame would exceed the appliance link's MTU
	DropMalformed                // no flow key, or an invalid MSR frame (see Counters.Unparsable, Counters.Invalid)
	DropFlowMismatch             // the addresses of a flow between other endpoints
	DropFlowError                // no flow could be created
	DropNoFlow                   // from an appliance, for no current flow or route (stale after an Update)
	DropNoticed                  // dropped by an appliance that sent a drop notice
	DropUnexpected               // from an appliance, but not something it should send
	DropTxError                  // the port refused it
	DropForeignVLAN              // on a port of tagged guest interfaces, a VLAN (or none) that is no interface's there
	NumDropReasons               // keep last
)

var dropReasonNames = [NumDropReasons]string{
	dropNone:          "none",
	DropUnknownSource: "unknown_source",
	DropSpoofedSource: "spoofed_source",
	DropNoDestination: "no_destination",
	DropNotLocal:      "not_local",
	DropChainNotReady: "chain_not_ready",
	DropChainTooLong:  "chain_too_long",
	DropBlocked:       "blocked",
	DropTooBig:        "too_big",
	DropMalformed:     "malformed",
	DropFlowMismatch:  "flow_mismatch",
	DropFlowError:     "flow_error",
	DropNoFlow:        "no_flow",
	DropNoticed:       "notice",
	DropUnexpected:    "unexpected",
	DropTxError:       "tx_error",
	DropForeignVLAN:   "foreign_vlan",
}

func (r DropReason) String() string { return label(dropReasonNames[:], r) }

// Counters is a snapshot of the engine's counters. Maps omit zero counts.
type Counters struct {
	Guests    map[string]GuestCounters    // by guest name
	Instances map[string]InstanceCounters // by instance name
	Ports     map[string]PortCounters     // by port name
	// Drops counts every dropped frame by DropReason, whether or not a
	// guest owns it.
	Drops map[string]uint64
	// Invalid counts MSR frames and drop notices from appliances that
	// break SOURCE-ROUTE.md, by Reason; Unparsable counts frames without a
	// flow key, by KeyReason. Both are also in Drops as "malformed".
	Invalid    map[string]uint64
	Unparsable map[string]uint64
	// Bypassed counts flows that skipped an appliance, by appliance.
	Bypassed   map[string]uint64
	EventsLost uint64
	Flows      FlowStats
}

// GuestCounters are one guest's frames. Out is what it sent, In what was
// delivered to it; Flooded counts its broadcast and multicast frames.
type GuestCounters struct {
	FramesOut, BytesOut, FramesIn, BytesIn, Flooded uint64
	Drops                                           map[string]uint64
}

// InstanceCounters are one appliance instance's frames: sent to it,
// received back from it, dropped with a notice, and return timeouts it was
// blamed for.
type InstanceCounters struct {
	Appliance                                string
	Sent, SentBytes, Returned, ReturnedBytes uint64
	Notices, Timeouts                        uint64
	// Health probes (not counted above): sent, answered in time (or with a
	// drop notice), missed; MissStreak is the misses since the last answer,
	// counted only once the instance has answered one (before, it is
	// starting, not silent).
	// ProbeRTT is the last answer's round trip and ProbeRTTTotal the sum
	// over ProbesAnswered, so a mean over any interval is a difference.
	ProbesSent, ProbesAnswered, ProbesMissed uint64
	ProbeMissStreak                          uint32
	ProbeRTT, ProbeRTTTotal                  time.Duration
}

// PortCounters are one port's frames.
type PortCounters struct {
	RxFrames, RxBytes, RxErrors, TxFrames, TxBytes, TxErrors uint64
}

// counter is written by one goroutine only, so an increment needs no
// atomic read-modify-write, only atomic access for readers.
type counter struct{ v atomic.Uint64 }

func (c *counter) add(n uint64) { c.v.Store(c.v.Load() + n) }
func (c *counter) load() uint64 { return c.v.Load() }

// A guest's counters, an instance's and the engine-wide ones are flat
// arrays indexed by these fields, so that they are summed and folded by
// one loop.
const (
	gFramesOut = iota
	gBytesOut
	gFramesIn
	gBytesIn
	gFlooded
	gDrops      // one per DropReason from here
	guestFields = gDrops + int(NumDropReasons)
)

const (
	iSent = iota
	iSentBytes
	iReturned
	iReturnedBytes
	iNotices
	iTimeouts
	instFields
)

const (
	eDrops       = 0                            // one per DropReason
	eInvalid     = eDrops + int(NumDropReasons) // one per Reason
	eUnparsable  = eInvalid + int(NumReasons)   // one per KeyReason
	engineFields = eUnparsable + int(NumKeyReasons)
)

type (
	guestCtr    [guestFields]counter
	instCtr     [instFields]counter
	guestValues [guestFields]uint64
	instValues  [instFields]uint64
)

// workerCounters are one goroutine's counters, indexed by guest and
// instance slot.
type workerCounters struct {
	guests []guestCtr
	insts  []instCtr
	engine [engineFields]counter
}

type atomicCounters = atomic.Pointer[workerCounters]

func addCounters(dst, src []counter) {
	for i := range src {
		dst[i].add(src[i].load())
	}
}

func sumCounters(dst []uint64, src []counter) {
	for i := range src {
		dst[i] += src[i].load()
	}
}

// grown copies c into arrays of at least the given sizes.
func (c *workerCounters) grown(guests, insts int) *workerCounters {
	n := &workerCounters{
		guests: make([]guestCtr, max(guests, len(c.guests))),
		insts:  make([]instCtr, max(insts, len(c.insts))),
	}
	n.fold(c)
	return n
}

// fold adds o's counts to c, growing c as needed. c must have a single
// writer (the caller) at the time.
func (c *workerCounters) fold(o *workerCounters) {
	if len(c.guests) < len(o.guests) {
		c.guests = append(c.guests, make([]guestCtr, len(o.guests)-len(c.guests))...)
	}
	if len(c.insts) < len(o.insts) {
		c.insts = append(c.insts, make([]instCtr, len(o.insts)-len(c.insts))...)
	}
	for i := range o.guests {
		addCounters(c.guests[i][:], o.guests[i][:])
	}
	for i := range o.insts {
		addCounters(c.insts[i][:], o.insts[i][:])
	}
	addCounters(c.engine[:], o.engine[:])
}

// counters is w's current counters, safe to read from any goroutine.
func (w *worker) counters() *workerCounters { return w.pub.Load() }

// allCounters lists every live counter set: the workers', the retired
// workers' and the maintenance loop's.
func (e *Engine) allCounters() []*workerCounters {
	e.mu.Lock()
	defer e.mu.Unlock()
	list := []*workerCounters{e.retired, e.maintCtr}
	if e.fast != nil {
		list = append(list, e.fast.ctr.Load())
	}
	for _, w := range e.workers {
		list = append(list, w.counters())
	}
	return list
}

func (e *Engine) sumGuest(slot int) guestValues {
	var v guestValues
	for _, c := range e.allCounters() {
		if slot < len(c.guests) {
			sumCounters(v[:], c.guests[slot][:])
		}
	}
	return v
}

func (e *Engine) sumInstance(slot int) instValues {
	var v instValues
	for _, c := range e.allCounters() {
		if slot < len(c.insts) {
			sumCounters(v[:], c.insts[slot][:])
		}
	}
	return v
}

// Counters returns every counter: per guest, per appliance instance, per
// port, and per drop reason. Safe to call at any time.
func (e *Engine) Counters() Counters {
	e.updateMu.Lock()
	defer e.updateMu.Unlock()
	st := e.state.Load()
	out := Counters{
		Guests: map[string]GuestCounters{}, Instances: map[string]InstanceCounters{}, Ports: map[string]PortCounters{},
		Drops: map[string]uint64{}, Invalid: map[string]uint64{}, Unparsable: map[string]uint64{}, Bypassed: map[string]uint64{},
		EventsLost: e.eventsLost.Load(), Flows: e.table.Stats(),
	}
	for name, g := range st.guests {
		v := e.sumGuest(g.slot)
		base := e.reg.guestSlots[name].baseG
		for i := range v {
			v[i] -= base[i]
		}
		gc := GuestCounters{FramesOut: v[gFramesOut], BytesOut: v[gBytesOut], FramesIn: v[gFramesIn],
			BytesIn: v[gBytesIn], Flooded: v[gFlooded], Drops: map[string]uint64{}}
		putNonZero(gc.Drops, v[gDrops:], func(i int) string { return DropReason(i).String() })
		out.Guests[name] = gc
	}
	for _, inst := range st.instByMAC {
		v := e.sumInstance(inst.slot)
		base := e.reg.instSlots[inst.name].baseI
		for i := range v {
			v[i] -= base[i]
		}
		ic := InstanceCounters{Appliance: inst.appliance,
			Sent: v[iSent], SentBytes: v[iSentBytes], Returned: v[iReturned], ReturnedBytes: v[iReturnedBytes],
			Notices: v[iNotices], Timeouts: v[iTimeouts]}
		inst.probe.fill(&ic)
		out.Instances[inst.name] = ic
	}
	for name, p := range st.ports {
		out.Ports[name] = PortCounters{RxFrames: p.rxFrames.Load(), RxBytes: p.rxBytes.Load(), RxErrors: p.rxErrors.Load(),
			TxFrames: p.txFrames.Load(), TxBytes: p.txBytes.Load(), TxErrors: p.txErrors.Load()}
	}
	e.fastPortCounters(out.Ports, st)
	var all [engineFields]uint64
	for _, c := range e.allCounters() {
		sumCounters(all[:], c.engine[:])
	}
	putNonZero(out.Drops, all[eDrops:eInvalid], func(i int) string { return DropReason(i).String() })
	putNonZero(out.Invalid, all[eInvalid:eUnparsable], func(i int) string { return Reason(i).String() })
	putNonZero(out.Unparsable, all[eUnparsable:], func(i int) string { return KeyReason(i).String() })
	for name, a := range st.appliances {
		if n := a.rt.bypassed.Load(); n > 0 {
			out.Bypassed[name] = n
		}
	}
	return out
}

// InstanceFlows returns how many flows are pinned to each appliance
// instance now, by instance name: what draining an instance waits to see
// reach zero. A flow counts until its idle entry is reclaimed.
func (e *Engine) InstanceFlows() map[string]int64 {
	e.updateMu.Lock()
	defer e.updateMu.Unlock()
	st := e.state.Load()
	out := make(map[string]int64, len(st.instByMAC))
	for _, inst := range st.instByMAC {
		out[inst.name] = inst.flows.Load()
	}
	return out
}

func putNonZero(m map[string]uint64, values []uint64, name func(int) string) {
	for i, v := range values {
		if v > 0 {
			m[name(i)] = v
		}
	}
}

// FlowInfo describes one flow for operators (`vsactl flows`).
type FlowInfo struct {
	Key FlowKey // oriented as the flow's first packet
	// Initiator and Responder are guest names; empty for a remote host.
	Initiator, Responder string
	// Verdict is "chain", "direct" or "drop: <reason>".
	Verdict string
	// Forward and Reverse are the instances each direction passes, in
	// order; empty means delivered without inspection.
	Forward, Reverse []string
	Bypassed         []string
	Packets, Bytes   [2]uint64 // per Direction
	Notices          uint64
	Timeouts         uint64
	Idle             time.Duration
}

// Flows lists the flows of the named guest (either end), or every flow for
// an empty name, ordered by initiator, responder and key.
func (e *Engine) Flows(guest string) []FlowInfo {
	var out []FlowInfo
	e.table.Visit(e.mono(), func(f *Flow) VisitAction {
		fe := e.slab.at(f.Value.Handle)
		if !fe.live.Load() {
			return VisitKeep
		}
		ini, res := guestName(fe.ends[0].guest), guestName(fe.ends[1].guest)
		if guest != "" && ini != guest && res != guest {
			return VisitKeep
		}
		d := fe.dec
		info := FlowInfo{Key: fe.key, Initiator: ini, Responder: res, Bypassed: d.bypassed,
			Notices: uint64(fe.notices.Load()), Timeouts: uint64(fe.timeouts.Load()), Idle: f.Idle}
		switch d.verdict {
		case verdictChain:
			info.Verdict = "chain"
		case verdictDirect:
			info.Verdict = "direct"
		default:
			info.Verdict = "drop: " + d.reason.String()
		}
		for dir, list := range [2]*[]string{&info.Forward, &info.Reverse} {
			if rt := d.rt[dir]; rt != nil {
				for _, hop := range rt.hops {
					*list = append(*list, hop.inst.name)
				}
			}
			info.Packets[dir] = fe.packets[dir].Load()
			info.Bytes[dir] = fe.bytes[dir].Load()
		}
		out = append(out, info)
		return VisitKeep
	})
	sort.Slice(out, func(i, j int) bool {
		a, b := &out[i], &out[j]
		if a.Initiator != b.Initiator {
			return a.Initiator < b.Initiator
		}
		if a.Responder != b.Responder {
			return a.Responder < b.Responder
		}
		return a.Key.String() < b.Key.String()
	})
	return out
}

// limiter lets one event through per eventInterval and counts the rest.
type limiter struct {
	last       atomic.Int64 // engine clock + 1 of the last event let through; 0 never
	suppressed atomic.Uint64
}

const eventInterval = time.Second

func (l *limiter) allow(now int64) (bool, uint64) {
	last := l.last.Load()
	if (last != 0 && now+1-last < int64(eventInterval)) || !l.last.CompareAndSwap(last, now+1) {
		l.suppressed.Add(1)
		return false, 0
	}
	return true, l.suppressed.Swap(0)
}

// emit queues an event without ever blocking the data path.
func (e *Engine) emit(ev Event) {
	if e.cfg.Events == nil {
		return
	}
	select {
	case e.events <- ev:
	default:
		e.eventsLost.Add(1)
	}
}

func (e *Engine) dispatchEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-e.events:
			e.cfg.Events(ev)
		}
	}
}

// maintain runs the periodic work: return-timeout scans every half return
// timeout (within 10ms..1s), and once a second flow expiry and the
// reclamation of removed flows' entries.
func (e *Engine) maintain(ctx context.Context) {
	tick := min(max(e.cfg.ReturnTimeout/2, 10*time.Millisecond), time.Second, e.cfg.probeTickEvery())
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastExpire int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := e.mono()
		e.probeTick(e.state.Load(), now)
		e.scanTimeouts(now)
		if now-lastExpire >= int64(time.Second) || e.slab.pendingLen() > e.cfg.MaxFlows/8 {
			e.reclaim(ctx, now)
			lastExpire = now
		}
	}
}

// reclaim expires idle flows and makes removed flows' entries reusable.
func (e *Engine) reclaim(ctx context.Context, now int64) {
	e.syncFast(now)
	batch := e.slab.takePending()
	// Expire locks every shard in turn, so once it returns every removal
	// queued above has also finished taking its flow out of the table: no
	// lookup that starts from now on can find those handles.
	e.table.Expire(now)
	if err := e.synchronize(ctx); err != nil {
		e.slab.requeue(batch)
		return
	}
	for _, h := range batch {
		e.slab.at(h).hold(-1)
	}
	e.slab.release(batch)
}

// scanTimeouts raises a timeout for every flow direction whose frames went
// into its chain longer than the return timeout ago with nothing back.
func (e *Engine) scanTimeouts(now int64) {
	st := e.state.Load()
	e.mu.Lock()
	if len(e.maintCtr.insts) < st.instSlots {
		e.maintCtr = e.maintCtr.grown(0, st.instSlots)
	}
	mc := e.maintCtr
	e.mu.Unlock()
	e.syncFastChains(now)
	hw := e.slab.highWater()
	for h := uint32(1); h < hw; h++ {
		fe := e.slab.at(h)
		if !fe.live.Load() || fe.removed.Load() {
			continue
		}
		for d := range fe.ret {
			v := fe.ret[d].Load()
			stamp := v & retStampMask
			if stamp == 0 || v&retAlerted != 0 || now-retSince(stamp) <= e.returnTimeout {
				continue
			}
			if fe.ret[d].CompareAndSwap(v, v|retAlerted) {
				e.timedOut(mc, fe, Direction(d), int(v&retProgMask>>retProgShift), now)
				e.fastTimedOut(h, Direction(d))
			}
		}
	}
}

// timedOut reports one timeout. The instance blamed is the first hop that
// has passed nothing back since the episode began: frames go through the
// hops in order, so that is where they stop.
func (e *Engine) timedOut(mc *workerCounters, fe *flowEntry, d Direction, passed int, now int64) {
	rt := fe.dec.rt[d]
	if rt == nil {
		return
	}
	inst := rt.hops[min(passed, len(rt.hops)-1)].inst
	fe.timeouts.Add(1)
	if inst.slot < len(mc.insts) {
		mc.insts[inst.slot][iTimeouts].add(1)
	}
	src, dst := fe.ends[d].guest, fe.ends[1-d].guest
	pol := governing(src, dst)
	ev := Event{Kind: EventReturnTimeout, Time: e.wallOf(now), Guest: guestName(src), Flow: fe.key, HasFlow: true,
		Direction: d, Appliance: inst.appliance, Instance: inst.name}
	if pol != nil {
		ev.Policy = pol.name
	}
	e.emit(ev)
	if pol != nil && pol.onTimeout == OnTimeoutBlock && src != nil {
		e.block(src, pol, now)
	}
}
