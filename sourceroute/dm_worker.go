package sourceroute

import (
	"bytes"
	"context"
	"encoding/binary"
	"time"
)

// worker forwards the frames of one receiving port. Everything it touches
// per frame is its own (counters, transmit queues, flow-table handle,
// classification scratch) or immutable (the state), so the data path takes
// no lock except a port's transmit lock once per batch and the flow
// table's shard lock for a new flow.
type worker struct {
	e        *Engine
	port     *openPort
	fw       *FlowWorker
	slot     *readerSlot
	c        *workerCounters // this worker's; published in pub for readers
	pub      atomicCounters
	rx       [][]byte
	tx       []txQueue // by openPort.idx
	dirty    []int
	cls      classifier
	cur      flowCtx    // the frame decideFn classifies
	decideFn PolicyFunc // made once: a method value per frame would allocate
	scratch  [MaxNoticedBytes]byte
	errLog   limiter

	// Lifecycle, guarded by Engine.mu.
	cancel context.CancelFunc
	done   chan struct{}
}

type flowCtx struct {
	st       *state
	src, dst *endpoint
	now      int64
}

type txQueue struct {
	port          *openPort
	heads, bodies [][]byte
	tags          tagHeads // by position in the queue
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// newWorkerLocked makes the worker of port p; e.mu is held.
func (e *Engine) newWorkerLocked(p *openPort) *worker {
	w := &worker{e: e, port: p, fw: e.table.NewWorker(), c: &workerCounters{}, done: closedChan,
		rx: make([][]byte, e.cfg.BatchSize)}
	w.pub.Store(w.c)
	w.decideFn = w.decide
	w.slot = &readerSlot{}
	list := append(append([]*readerSlot(nil), *e.readers.Load()...), w.slot)
	e.readers.Store(&list)
	return w
}

// syncWorkers makes a worker for every port st reads, and starts it if the
// engine runs.
func (e *Engine) syncWorkers(st *state) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range st.ports {
		if !p.rx || st.rx[p.idx].kind == rxNone || e.workers[p] != nil {
			continue
		}
		w := e.newWorkerLocked(p)
		e.workers[p] = w
		if e.running {
			e.startWorker(w)
		}
	}
}

// startWorker runs w until Run's context ends or w is stopped; e.mu is held.
func (e *Engine) startWorker(w *worker) {
	ctx, cancel := context.WithCancel(e.runCtx)
	w.cancel, w.done = cancel, make(chan struct{})
	done := w.done
	e.runWG.Add(1)
	go func() {
		defer e.runWG.Done()
		defer close(done)
		w.loop(ctx)
	}()
}

// stop asks w's goroutine to end; e.mu is held. Wait on w.done.
func (w *worker) stop() {
	if w.cancel != nil {
		w.cancel()
		w.cancel = nil
	}
}

func (e *Engine) workerList() []*worker {
	e.mu.Lock()
	defer e.mu.Unlock()
	list := make([]*worker, 0, len(e.workers))
	for _, w := range e.workers {
		list = append(list, w)
	}
	return list
}

func (w *worker) loop(ctx context.Context) {
	var backoff time.Duration
	for ctx.Err() == nil {
		err := w.poll(ctx)
		if err == nil {
			backoff = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		w.port.rxErrors.Add(1)
		backoff = min(max(2*backoff, time.Millisecond), time.Second)
		if ok, suppressed := w.errLog.allow(w.e.mono()); ok {
			w.e.log.Warn("reading a port failed; retrying", "port", w.port.name, "err", err, "retry_in", backoff, "suppressed", suppressed)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// poll reads one batch, forwards it and sends what it produced, all before
// the port may reuse the frames' memory.
func (w *worker) poll(ctx context.Context) error {
	p := w.port
	n, err := p.p.ReadBatch(ctx, w.rx)
	if err != nil {
		return err
	}
	w.slot.epoch.Store(w.e.epoch.Load())
	st := w.e.state.Load()
	now := w.e.mono()
	w.prepare(st)
	role := rxRole{}
	if p.idx < len(st.rx) && st.ports[p.name] == p {
		role = st.rx[p.idx]
	}
	var size uint64
	for _, frame := range w.rx[:n] {
		size += uint64(len(frame))
		w.handle(st, role, frame, now)
	}
	p.rxFrames.Store(p.rxFrames.Load() + uint64(n))
	p.rxBytes.Store(p.rxBytes.Load() + size)
	w.flush()
	clear(w.rx[:n])
	p.p.Release()
	w.slot.epoch.Store(0)
	return nil
}

// prepare grows the worker's arrays when the state has more guests,
// instances or ports than they hold. Only then does the data path allocate.
func (w *worker) prepare(st *state) {
	if len(w.c.guests) < st.guestSlots || len(w.c.insts) < st.instSlots {
		w.c = w.c.grown(st.guestSlots, st.instSlots)
		w.pub.Store(w.c)
	}
	for len(w.tx) < st.portSlots {
		w.tx = append(w.tx, txQueue{heads: make([][]byte, 0, w.e.cfg.BatchSize), bodies: make([][]byte, 0, w.e.cfg.BatchSize),
			tags: make(tagHeads, w.e.cfg.BatchSize)})
	}
}

func (w *worker) handle(st *state, role rxRole, frame []byte, now int64) {
	if role.vlans != nil && w.fromTagged(st, role.vlans, frame, now) {
		return
	}
	switch role.kind {
	case rxIntercept:
		w.fromGuest(st, nil, frame, now)
	case rxGuest:
		w.fromGuest(st, role.ep, frame, now)
	case rxUplink:
		w.fromUplink(st, frame, now)
	case rxHeader:
		w.fromHeaderAppliance(st, role.inst, frame, now)
	case rxWire:
		w.fromWire(st, role.inst, frame, now)
	case rxTrunk:
		w.fromTrunk(frame)
	default:
		w.drop(nil, DropUnexpected)
	}
}

// fromGuest handles a frame a guest sent. The guest is known by the
// frame's source MAC; on a dedicated port only that port's interface may
// send, and on the shared intercept port no dedicated interface may.
func (w *worker) fromGuest(st *state, dedicated *endpoint, frame []byte, now int64) {
	if len(frame) < EthernetHeaderLen {
		w.unparsable(nil, KeyTruncatedEthernet)
		return
	}
	src := st.ifaceByMAC[macKey(frame[6:12])]
	switch {
	case dedicated != nil && src != dedicated:
		w.drop(dedicated.guest, DropSpoofedSource)
		return
	case src == nil:
		w.drop(nil, DropUnknownSource)
		return
	case dedicated == nil && (src.dedicated || src.vlan != 0):
		w.drop(src.guest, DropSpoofedSource)
		return
	}
	g := src.guest
	gc := &w.c.guests[g.slot]
	gc[gFramesOut].add(1)
	gc[gBytesOut].add(uint64(len(frame)))
	if !g.ready {
		w.failClosed(g, "", now)
		return
	}
	if frame[0]&1 != 0 { // a group address
		gc[gFlooded].add(1)
		w.flood(st, src, frame, st.flood[src.zone], true)
		return
	}
	dst := st.ifaceByMAC[macKey(frame[0:6])]
	if dst == nil || dst.zone != src.zone {
		dst = st.uplink
	}
	switch {
	case dst == nil:
		w.drop(g, DropNoDestination)
	case dst.guest != nil && !dst.guest.ready:
		w.failClosed(dst.guest, "", now)
	default:
		w.forward(st, src, dst, src.zone, frame, now)
	}
}

// fromUplink handles a frame from a remote host. It must not claim to come
// from a local guest, and is for us only if it is addressed to one.
func (w *worker) fromUplink(st *state, frame []byte, now int64) {
	if len(frame) < EthernetHeaderLen {
		w.unparsable(nil, KeyTruncatedEthernet)
		return
	}
	if spoofed := st.ifaceByMAC[macKey(frame[6:12])]; spoofed != nil {
		w.drop(spoofed.guest, DropSpoofedSource)
		return
	}
	if frame[0]&1 != 0 { // a group address
		w.flood(st, st.uplink, frame, st.floodAll, false)
		return
	}
	dst := st.ifaceByMAC[macKey(frame[0:6])]
	switch {
	case dst == nil:
		w.drop(nil, DropNotLocal)
	case !dst.guest.ready:
		w.failClosed(dst.guest, "", now)
	default:
		w.forward(st, st.uplink, dst, dst.zone, frame, now)
	}
}

// flood delivers a group-addressed frame, without a chain, to every port of
// targets but the sender's, if every guest behind that port is ready.
func (w *worker) flood(st *state, src *endpoint, frame []byte, targets []floodTarget, toUplink bool) {
	for i := range targets {
		t := &targets[i]
		if t.port == src.port && t.vlan == src.vlan && !othersThan(t.eps, src) || !allReady(t.eps) {
			continue
		}
		w.queueTagged(t.port, t.vlan, frame)
		for _, ep := range t.eps {
			gc := &w.c.guests[ep.guest.slot]
			gc[gFramesIn].add(1)
			gc[gBytesIn].add(uint64(len(frame)))
		}
	}
	if toUplink && st.uplink != nil {
		w.queue(st.uplink.port, nil, frame)
	}
}

// othersThan reports whether eps holds an endpoint besides src. A frame is
// flooded back into the port it came from only then: that port is shared,
// like the DM's end of the parent of macvtap guests in VEPA mode, where the
// macvlan layer hands a broadcast to every macvtap but the sender's.
func othersThan(eps []*endpoint, src *endpoint) bool {
	for _, ep := range eps {
		if ep != src {
			return true
		}
	}
	return false
}

func allReady(eps []*endpoint) bool {
	for _, ep := range eps {
		if !ep.guest.ready {
			return false
		}
	}
	return true
}

const etherTypeARP = 0x0806

// forward takes a unicast frame from src to dst through its flow: ARP
// directly, everything else by the flow's decision.
func (w *worker) forward(st *state, src, dst *endpoint, zone uint16, frame []byte, now int64) {
	owner := src.guest
	if owner == nil {
		owner = dst.guest
	}
	if innerEtherType(frame) == etherTypeARP {
		w.deliver(dst, frame)
		return
	}
	key, kr := ExtractKey(frame, zone)
	if kr != KeyOK {
		w.unparsable(owner, kr)
		return
	}
	w.cur = flowCtx{st: st, src: src, dst: dst, now: now}
	for attempt := 0; ; attempt++ {
		v, dir, err := w.fw.LookupOrInsert(&key, now, w.decideFn)
		if err != nil {
			w.drop(owner, DropFlowError)
			if ok, suppressed := w.errLog.allow(now); ok {
				w.e.log.Warn("cannot create a flow", "err", err, "suppressed", suppressed)
			}
			return
		}
		fe := w.e.slab.at(v.Handle)
		if fe.ends[dir] != src || fe.ends[1-dir] != dst {
			if fe.ends[dir] == src && fe.ends[1-dir].remote && !dst.remote && attempt == 0 {
				// The sender's own flow to a remote peer that has
				// since become a local guest: decide it again.
				w.e.table.Delete(&key)
				continue
			}
			// The addresses of another pair's flow: spoofed, or an
			// address conflict. Never let it ride that flow's decision.
			w.drop(owner, DropFlowMismatch)
			return
		}
		if v.Verdict == verdictDrop {
			d := fe.dec
			switch {
			case d.reason == DropBlocked && now >= fe.blockedUntil && attempt == 0:
				w.e.table.Delete(&key) // the block is over: decide again
				continue
			case d.reason == DropChainNotReady:
				w.failClosed(owner, d.missing, now)
			default:
				w.drop(owner, d.reason)
			}
			return
		}
		fe.packets[dir].Add(1)
		fe.bytes[dir].Add(uint64(len(frame)))
		rt := fe.dec.rt[dir]
		if rt == nil {
			w.deliver(dst, frame)
			if w.offloadable(fe, dir, src) {
				w.offload(fe, v.Handle, dir, src, dst, frame)
			}
			return
		}
		if w.toHop(fe, dir, rt, 0, frame) {
			fe.sent(dir, now)
			if w.offloadable(fe, dir, src) {
				w.offloadChain(fe, v.Handle, dir, src, dst, rt, frame)
			}
		}
		return
	}
}

// offloadable says whether the flow direction a frame from src just took
// is due to go to the fast path: it has carried enough frames and has not
// been tried.
func (w *worker) offloadable(fe *flowEntry, dir Direction, src *endpoint) bool {
	f := w.e.fast
	return f != nil && !src.remote && fe.packets[dir].Load() >= f.after && fe.fast[dir].Load() == fastNone
}

// decide is the flow table's PolicyFunc for the frame in w.cur.
func (w *worker) decide(key FlowKey) (FlowValue, error) {
	h, err := w.e.slab.alloc()
	if err != nil {
		return FlowValue{}, err
	}
	c := &w.cur
	fe := w.e.slab.at(h)
	fe.key = key
	fe.ends = [2]*endpoint{c.src, c.dst}
	fe.dec, fe.blockedUntil = w.e.decide(&w.cls, c.st, c.src, c.dst, &key, c.now)
	fe.hold(1)
	fe.live.Store(true)
	return FlowValue{Handle: h, Verdict: fe.dec.verdict}, nil
}

// toHop sends inner to hop j of rt with the header hop j needs.
func (w *worker) toHop(fe *flowEntry, dir Direction, rt *route, j int, inner []byte) bool {
	var head []byte
	if !rt.hops[j].wire {
		head = rt.hdr[j]
	}
	return w.sendHop(fe, dir, &rt.hops[j], head, inner)
}

// sendHop queues head‖body for an appliance, unless it would not fit the
// link: then it is dropped and counted, never truncated.
func (w *worker) sendHop(fe *flowEntry, dir Direction, hop *routeHop, head, body []byte) bool {
	size := len(head) + len(body)
	if size-EthernetHeaderLen > hop.send.mtu {
		w.drop(fe.owner(dir), DropTooBig)
		return false
	}
	w.queue(hop.send, head, body)
	ic := &w.c.insts[hop.inst.slot]
	ic[iSent].add(1)
	ic[iSentBytes].add(uint64(size))
	return true
}

// owner is the guest a frame of direction d is counted against: its
// sender, or its receiver when the sender is remote.
func (fe *flowEntry) owner(d Direction) *guestObj {
	if g := fe.ends[d].guest; g != nil {
		return g
	}
	return fe.ends[1-d].guest
}

func (w *worker) deliver(ep *endpoint, frame []byte) {
	w.queueTagged(ep.port, ep.vlan, frame)
	if g := ep.guest; g != nil {
		gc := &w.c.guests[g.slot]
		gc[gFramesIn].add(1)
		gc[gBytesIn].add(uint64(len(frame)))
	}
}

// fromHeaderAppliance handles what a header appliance sent: a frame for
// the next hop, one that has passed the whole chain, or a drop notice.
func (w *worker) fromHeaderAppliance(st *state, inst *instanceObj, frame []byte, now int64) {
	if len(frame) < EthernetHeaderLen {
		w.invalid(ReasonTruncated)
		return
	}
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case DropNoticeEtherType:
		w.notice(st, inst, frame, now)
		return
	case w.e.codec.etherType():
	default:
		w.drop(nil, DropUnexpected) // the appliance's own ARP, ND, …
		return
	}
	f, r := w.e.codec.Parse(frame)
	if r != OK {
		w.invalid(r)
		return
	}
	next := f.Next()
	if next == 0 || f.Src() != inst.mac || f.Hop(next-1) != inst.mac {
		w.drop(nil, DropUnexpected) // not a frame this instance forwarded
		return
	}
	if w.probeReturned(inst, f.Inner(), now) {
		return
	}
	ic := &w.c.insts[inst.slot]
	ic[iReturned].add(1)
	ic[iReturnedBytes].add(uint64(len(frame)))
	fe, dir, rt := w.flowOf(st, f.Inner(), now)
	if rt == nil || !bytes.Equal(frame[FixedHeaderLen:f.HeaderLen()], rt.wire) || rt.hops[next-1].inst != inst {
		w.drop(nil, DropNoFlow)
		return
	}
	fe.passed(dir, next-1)
	if f.AtLastHop() {
		inner, r := w.e.codec.Strip(f, w.e.self)
		if r != OK {
			w.invalid(r)
			return
		}
		fe.returned(dir)
		w.deliver(fe.ends[1-dir], inner)
		return
	}
	if hop := &rt.hops[next]; hop.wire {
		w.sendHop(fe, dir, hop, nil, f.Inner())
	} else {
		w.sendHop(fe, dir, hop, nil, frame) // the appliance addressed it already: switch it
	}
}

// fromWire handles a frame coming out of a wire appliance: the DM finds its
// flow again, and restores the header for the next hop or delivers it.
func (w *worker) fromWire(st *state, inst *instanceObj, frame []byte, now int64) {
	if w.probeReturned(inst, frame, now) {
		return
	}
	fe, dir, rt := w.flowOf(st, frame, now)
	j := -1
	if rt != nil {
		j = rt.hopOf(inst, w.port)
	}
	if j < 0 {
		w.drop(nil, DropNoFlow) // not ours, or the box's own chatter
		return
	}
	ic := &w.c.insts[inst.slot]
	ic[iReturned].add(1)
	ic[iReturnedBytes].add(uint64(len(frame)))
	fe.passed(dir, j)
	if j == len(rt.hops)-1 {
		fe.returned(dir)
		w.deliver(fe.ends[1-dir], frame)
		return
	}
	w.toHop(fe, dir, rt, j+1, frame)
}

// flowOf finds the flow of an inner frame coming back from an appliance,
// and the route of its direction; rt is nil if there is none. The zone is
// that of the local guest at either end.
func (w *worker) flowOf(st *state, inner []byte, now int64) (*flowEntry, Direction, *route) {
	key, ok := w.innerKey(st, inner)
	if !ok {
		return nil, Forward, nil
	}
	v, dir, found := w.fw.Lookup(&key, now)
	if !found || v.Verdict != verdictChain {
		return nil, Forward, nil
	}
	fe := w.e.slab.at(v.Handle)
	return fe, dir, fe.dec.rt[dir]
}

func (w *worker) innerKey(st *state, inner []byte) (FlowKey, bool) {
	if len(inner) < EthernetHeaderLen {
		return FlowKey{}, false
	}
	ep := st.ifaceByMAC[macKey(inner[6:12])]
	if ep == nil {
		if ep = st.ifaceByMAC[macKey(inner[0:6])]; ep == nil {
			return FlowKey{}, false
		}
	}
	key, kr := ExtractKey(inner, ep.zone)
	return key, kr == KeyOK
}

// notice handles a drop notice: counted per instance and per flow, an
// Event, and a block if the flow's policy says so.
func (w *worker) notice(st *state, inst *instanceObj, frame []byte, now int64) {
	n, r := ParseDropNotice(frame)
	if r != OK {
		w.invalid(r)
		return
	}
	if n.From != inst.mac || n.To != w.e.self {
		w.drop(nil, DropUnexpected)
		return
	}
	if f, r := w.e.codec.Parse(n.Dropped); r == OK && w.probeReturned(inst, f.Inner(), now) {
		return // a probe's notice answers it all the same: the instance is alive
	}
	w.c.insts[inst.slot][iNotices].add(1)
	ev := Event{Kind: EventDropNotice, Time: w.e.wallOf(now), Appliance: inst.appliance, Instance: inst.name, Notice: n.Why}
	var fe *flowEntry
	dir := Forward
	if f, r := w.e.codec.Parse(n.Dropped); r == OK {
		// The notice carries at most MaxNoticedBytes of the frame, so the
		// inner frame's IP lengths may promise more than is there.
		inner := truncatedInner(w.scratch[:], f.Inner())
		var rt *route
		if fe, dir, rt = w.flowOf(st, inner, now); rt == nil || !bytes.Equal(f.Bytes()[FixedHeaderLen:f.HeaderLen()], rt.wire) {
			fe = nil
		}
	}
	if fe == nil {
		w.drop(nil, DropNoticed)
		w.e.emit(ev)
		return
	}
	fe.notices.Add(1)
	fe.returned(dir) // the frame's fate is known: no timeout for it
	src, dst := fe.ends[dir].guest, fe.ends[1-dir].guest
	w.drop(fe.owner(dir), DropNoticed)
	pol := governing(src, dst)
	ev.Guest, ev.Flow, ev.HasFlow, ev.Direction = guestName(src), fe.key, true, dir
	if pol != nil {
		ev.Policy = pol.name
	}
	w.e.emit(ev)
	if pol != nil && pol.onTimeout == OnTimeoutBlock && src != nil {
		w.e.block(src, pol, now)
	}
}

// truncatedInner copies a possibly truncated inner frame into buf and
// lowers its IP length fields to what is present, so that its flow key
// can be extracted.
func truncatedInner(buf []byte, inner []byte) []byte {
	n := copy(buf, inner)
	b := buf[:n]
	off, et := EthernetHeaderLen, binary.BigEndian.Uint16(b[12:14])
	for tags := 0; tags < 2 && (et == etherTypeVLAN || et == etherTypeQinQ || et == etherTypeQinQv1) && len(b) >= off+4; tags++ {
		et = binary.BigEndian.Uint16(b[off+2:])
		off += 4
	}
	ip := b[off:]
	switch {
	case et == etherTypeIPv4 && len(ip) >= 20:
		if total := int(binary.BigEndian.Uint16(ip[2:4])); total > len(ip) {
			binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)))
		}
	case et == etherTypeIPv6 && len(ip) >= 40:
		if payload := int(binary.BigEndian.Uint16(ip[4:6])); payload > len(ip)-40 {
			binary.BigEndian.PutUint16(ip[4:6], uint16(len(ip)-40))
		}
	}
	return b
}

// innerEtherType is the EtherType after up to two VLAN tags.
func innerEtherType(frame []byte) uint16 {
	et := binary.BigEndian.Uint16(frame[12:14])
	for off := EthernetHeaderLen; off <= EthernetHeaderLen+4 && (et == etherTypeVLAN || et == etherTypeQinQ || et == etherTypeQinQv1); off += 4 {
		if len(frame) < off+4 {
			return 0
		}
		et = binary.BigEndian.Uint16(frame[off+2:])
	}
	return et
}

// block stops src from starting flows until now + the policy's BlockFor,
// extending a block in force.
func (e *Engine) block(src *guestObj, pol *policyObj, now int64) {
	until := now + pol.blockFor
	for {
		old := src.rt.blockedUntil.Load()
		if old >= until {
			return
		}
		if src.rt.blockedUntil.CompareAndSwap(old, until) {
			if old <= now {
				e.emit(Event{Kind: EventGuestBlocked, Time: e.wallOf(now), Guest: src.name, Policy: pol.name, Until: e.wallOf(until)})
			}
			return
		}
	}
}

// failClosed drops a frame of a guest whose chain is not ready, with a
// rate-limited Event.
func (w *worker) failClosed(g *guestObj, appliance string, now int64) {
	w.drop(g, DropChainNotReady)
	if g == nil {
		return
	}
	if ok, suppressed := g.rt.failClosed.allow(now); ok {
		pol := ""
		if g.policy != nil {
			pol = g.policy.name
		}
		w.e.emit(Event{Kind: EventFailClosed, Time: w.e.wallOf(now), Guest: g.name, Policy: pol,
			Appliance: appliance, Reason: DropChainNotReady, Suppressed: suppressed})
	}
}

func (w *worker) drop(g *guestObj, why DropReason) {
	w.c.engine[eDrops+int(why)].add(1)
	if g != nil {
		w.c.guests[g.slot][gDrops+int(why)].add(1)
	}
}

func (w *worker) invalid(r Reason) {
	w.c.engine[eInvalid+int(r)].add(1)
	w.drop(nil, DropMalformed)
}

func (w *worker) unparsable(g *guestObj, r KeyReason) {
	w.c.engine[eUnparsable+int(r)].add(1)
	w.drop(g, DropMalformed)
}

// queue adds a frame to port p's batch, sending the batch when it is full.
func (w *worker) queue(p *openPort, head, body []byte) {
	q := &w.tx[p.idx]
	if len(q.bodies) == 0 {
		q.port = p
		w.dirty = append(w.dirty, p.idx)
	}
	q.heads = append(q.heads, head)
	q.bodies = append(q.bodies, body)
	if len(q.bodies) == cap(q.bodies) {
		w.send(q)
	}
}

func (w *worker) flush() {
	for _, i := range w.dirty {
		if q := &w.tx[i]; len(q.bodies) > 0 {
			w.send(q)
		}
	}
	w.dirty = w.dirty[:0]
}

func (w *worker) send(q *txQueue) {
	p := q.port
	p.mu.Lock()
	n, err := p.p.WriteBatch(q.heads, q.bodies)
	n = min(max(n, 0), len(q.bodies))
	var size uint64
	for i := range n {
		size += uint64(len(q.heads[i]) + len(q.bodies[i]))
	}
	p.txFrames.Store(p.txFrames.Load() + uint64(n))
	p.txBytes.Store(p.txBytes.Load() + size)
	lost := len(q.bodies) - n
	p.txErrors.Store(p.txErrors.Load() + uint64(lost))
	p.mu.Unlock()
	if lost > 0 {
		w.c.engine[eDrops+int(DropTxError)].add(uint64(lost))
		if ok, suppressed := w.errLog.allow(w.e.mono()); ok {
			w.e.log.Warn("sending on a port failed", "port", p.name, "lost", lost, "err", err, "suppressed", suppressed)
		}
	}
	clear(q.heads)
	clear(q.bodies)
	q.heads, q.bodies = q.heads[:0], q.bodies[:0]
}
