package sourceroute

import (
	"sync"
	"sync/atomic"
)

// FastPath forwards the frames of flows that take no chain in the kernel,
// so that they skip the DM's rings. The engine offloads a flow direction
// once it has classified it, removes the entry whenever the flow leaves
// the flow table or may no longer take that path, and reads the entries'
// counters back. The agent wires an implementation (an XDP program on the
// ports where guest frames arrive); the engine needs nothing else of it.
type FastPath interface {
	// Offload makes the kernel forward frames like frame (same arrival
	// port, MACs, addresses and L4 ports) that arrive on port in out of
	// port out, counting them under cookie. ok is false for frames of a
	// kind the fast path does not handle; an error says a port cannot
	// take part.
	Offload(in, out string, frame []byte, cookie uint64) (entry FastEntry, ok bool, err error)
	// Remove deletes an entry and returns its final counters. Frames
	// arriving after it returns take the userspace path.
	Remove(entry FastEntry) (packets, bytes uint64, err error)
	// Visit calls fn with the cookie and counters of every entry.
	Visit(fn func(cookie, packets, bytes uint64)) error
}

// ChainFastPath is a FastPath that also carries chained flows whose
// appliances all speak the MSR header: it pushes the flow's header onto
// the guest's frames, switches them from appliance to appliance, and
// strips and delivers them after the last, all in the kernel. The engine
// uses it when its FastPath has it.
type ChainFastPath interface {
	FastPath
	// OffloadPush makes the kernel push header onto frames like frame
	// arriving on port in and send them out of port out (the first
	// appliance's); frames longer than maxLen stay in userspace. ok is
	// false for frames or headers it does not handle.
	OffloadPush(in, out string, frame, header []byte, maxLen int, cookie uint64) (entry FastEntry, ok bool, err error)
	// OffloadReturn makes the kernel forward MSR frames exactly like frame
	// (the same header, the same inner flow) arriving on port in out of
	// port out: as they are, or stripped of the header if strip. Frames
	// longer than maxLen stay in userspace.
	OffloadReturn(in, out string, frame []byte, strip bool, maxLen int, cookie uint64) (entry FastEntry, ok bool, err error)
}

// FastEntry names one offloaded flow direction to its FastPath.
type FastEntry = [32]byte

// FastPathStats describes what the fast path carries.
type FastPathStats struct {
	// Entries is the number of flow directions offloaded now.
	Entries int
	// Frames and Bytes count what the kernel forwarded so far, as read
	// back (at least once a second, and when an entry is removed).
	Frames, Bytes uint64
}

// A flow direction's offload state, in flowEntry.fast.
const (
	fastNone   = iota // not tried yet
	fastTrying        // a worker is offloading it
	fastOn            // in the kernel
	fastNo            // cannot be offloaded: stays on the userspace path
)

type fastPath struct {
	fp    FastPath
	after uint64 // frames a direction takes in userspace before it is offloaded

	mu     sync.Mutex // guards everything below; held across the FastPath's calls
	recs   map[uint64]fastRec
	remote int // recs whose destination is the uplink
	ctr    atomicCounters
	ports  map[*openPort]*[4]uint64 // rx frames, rx bytes, tx frames, tx bytes
	logged map[string]bool
	fw     *FlowWorker // refreshes offloaded flows in the table
	chains int         // recs that push a chain's header
	stale  bool        // entries were removed since the last barrier
	buf    []byte      // builds the frames OffloadReturn is given
	frames atomic.Uint64
	bytes  atomic.Uint64
}

// fastRec is one kernel entry of an offloaded flow direction and what of
// its counters has been accounted already. A flow without a chain has one
// (step 0); a chained one has step 0 (the push) and one step per
// appliance, for the frames coming back from it.
type fastRec struct {
	entry          FastEntry
	in, out        *openPort
	src, dst       *guestObj // the guest whose frames it takes in, the one it delivers to
	dstMAC         uint64
	remote         bool
	packets, bytes uint64

	step         int          // 0: the guest's frames; j > 0: back from hop j-1
	to, from     *instanceObj // the instance it sends to, the one it takes frames back from
	rxHdr, txHdr uint64       // header bytes per frame on arrival and on departure
	last         bool         // strips the header: frames that passed the whole chain
	notices      uint32       // step 0 of a chain: the flow's notices already seen
}

func newFastPath(fp FastPath, t *FlowTable) *fastPath {
	f := &fastPath{fp: fp, recs: map[uint64]fastRec{}, ports: map[*openPort]*[4]uint64{}, logged: map[string]bool{}, fw: t.NewWorker()}
	f.ctr.Store(&workerCounters{})
	return f
}

// A cookie names one kernel entry: the flow's handle, the step and the
// direction.
func fastCookie(h uint32, d Direction, step int) uint64 {
	return uint64(h)<<cookieStepBits | uint64(step)<<1 | uint64(d)
}

func cookieHandle(c uint64) uint32 { return uint32(c >> cookieStepBits) }

func cookieDir(c uint64) Direction { return Direction(c & 1) }

const defaultFastPathAfter = 8

const (
	cookieStepBits = 8
	maxFastSteps   = 1<<(cookieStepBits-1) - 1 // appliances in a chain the kernel carries, at most
)

// offload hands a pass-through flow direction that a guest's frame just
// took to the fast path, once per direction.
func (w *worker) offload(fe *flowEntry, h uint32, dir Direction, src, dst *endpoint, frame []byte) {
	f := w.e.fast
	if !fe.fast[dir].CompareAndSwap(fastNone, fastTrying) {
		return
	}
	cookie := fastCookie(h, dir, 0)
	f.mu.Lock()
	defer f.mu.Unlock()
	entry, ok, err := f.fp.Offload(w.port.name, dst.port.name, frame, cookie)
	f.refusedLocked(w.e, w.port.name, dst.port.name, err)
	if !ok {
		fe.fast[dir].Store(fastNo)
		return
	}
	f.recs[cookie] = fastRec{entry: entry, in: w.port, out: dst.port, src: src.guest, dst: dst.guest,
		dstMAC: macKey(frame[0:6]), remote: dst.remote}
	if dst.remote {
		f.remote++
	}
	fe.fast[dir].Store(fastOn)
	// A removal that ran while the entry was being added found no record
	// to remove: the flow must not keep a kernel entry it no longer has.
	if fe.removed.Load() {
		f.removeLocked(w.e, cookie)
	}
}

// refusedLocked logs, once per reason, that ports cannot take part.
func (f *fastPath) refusedLocked(e *Engine, in, out string, err error) {
	if err == nil {
		return
	}
	if msg := err.Error(); !f.logged[msg] {
		f.logged[msg] = true
		e.log.Warn("fast path unavailable for these ports; their flows stay on the userspace path",
			"in", in, "out", out, "err", err)
	}
}

// offloadChain hands a chained flow direction to the fast path once a
// frame of it went into the chain, if the fast path carries chains: first
// an entry for the frames coming back from each appliance, then the one
// that pushes the header, so that no frame the kernel pushed comes back
// to find no entry. The direction stays on the userspace path if any of
// them cannot be made, and if its chain holds a wire appliance (the DM
// must find such frames' flow again and restore their header) or its
// destination takes tagged frames.
func (w *worker) offloadChain(fe *flowEntry, h uint32, dir Direction, src, dst *endpoint, rt *route, frame []byte) {
	f := w.e.fast
	cf, ok := f.fp.(ChainFastPath)
	if !ok || !fe.fast[dir].CompareAndSwap(fastNone, fastTrying) {
		return
	}
	k := len(rt.hops)
	if k > maxFastSteps || dst.vlan != 0 || src.vlan != 0 {
		fe.fast[dir].Store(fastNo)
		return
	}
	for j := range rt.hops {
		if rt.hops[j].wire {
			fe.fast[dir].Store(fastNo)
			return
		}
	}
	hdrLen := uint64(len(rt.hdr[0]))
	f.mu.Lock()
	defer f.mu.Unlock()
	recs := make([]fastRec, 0, k+1)
	add := func(rec fastRec, entry FastEntry, ok bool, err error) bool {
		f.refusedLocked(w.e, rec.in.name, rec.out.name, err)
		if ok {
			rec.entry = entry
			recs = append(recs, rec)
		}
		return ok
	}
	installed := true
	for j := k; j >= 1 && installed; j-- {
		back := &rt.hops[j-1]
		rec := fastRec{in: back.back, from: back.inst, rxHdr: hdrLen, step: j}
		head := rt.hdr[min(j, k-1)]
		maxLen := 1 << 16
		if j < k {
			hop := &rt.hops[j]
			rec.out, rec.to, rec.txHdr = hop.send, hop.inst, hdrLen
			maxLen = hop.send.mtu + EthernetHeaderLen
		} else {
			rec.out, rec.dst, rec.last = dst.port, dst.guest, true
			rec.remote, rec.dstMAC = dst.remote, macKey(frame[0:6])
		}
		f.buf = append(append(f.buf[:0], head...), frame...)
		if j == k { // as the last appliance sends it: to the DM, at the last hop
			f.buf[15] = byte(k)
			copy(f.buf[0:6], w.e.self[:])
			copy(f.buf[6:12], back.inst.mac[:])
		}
		entry, ok, err := cf.OffloadReturn(rec.in.name, rec.out.name, f.buf, rec.last, maxLen, fastCookie(h, dir, j))
		installed = add(rec, entry, ok, err)
	}
	if installed {
		first := &rt.hops[0]
		rec := fastRec{in: w.port, out: first.send, src: src.guest, to: first.inst, txHdr: hdrLen, notices: fe.notices.Load()}
		entry, ok, err := cf.OffloadPush(w.port.name, first.send.name, frame, rt.hdr[0],
			first.send.mtu+EthernetHeaderLen-int(hdrLen), fastCookie(h, dir, 0))
		installed = add(rec, entry, ok, err)
	}
	if !installed {
		for _, rec := range recs {
			if _, _, err := f.fp.Remove(rec.entry); err != nil {
				w.e.log.Error("removing a fast-path entry failed", "err", err)
			}
		}
		fe.fast[dir].Store(fastNo)
		return
	}
	for _, rec := range recs {
		f.recs[fastCookie(h, dir, rec.step)] = rec
		if rec.remote {
			f.remote++
		}
	}
	f.chains++
	fe.fast[dir].Store(fastOn)
	if fe.removed.Load() {
		f.removeDirLocked(w.e, h, dir)
	}
}

// flowRemoved is the flow table's OnRemove: the flow's kernel entries go
// before the removal is over, so that an Update that deletes a flow
// returns only once none of its frames can take the old path.
func (e *Engine) flowRemoved(fl Flow, why RemoveReason) {
	e.slab.onRemove(fl, why)
	f := e.fast
	if f == nil || fl.Value.Handle == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.recs) == 0 {
		return
	}
	for d := Forward; d <= Reverse; d++ {
		f.removeDirLocked(e, fl.Value.Handle, d)
	}
}

// removeDirLocked removes every kernel entry of one flow direction.
func (f *fastPath) removeDirLocked(e *Engine, h uint32, d Direction) {
	if _, ok := f.recs[fastCookie(h, d, 0)]; !ok {
		return
	}
	for step := 0; step <= maxFastSteps; step++ {
		if _, ok := f.recs[fastCookie(h, d, step)]; !ok && step > 0 {
			return
		}
		f.removeLocked(e, fastCookie(h, d, step))
	}
}

func (f *fastPath) removeLocked(e *Engine, cookie uint64) {
	rec, ok := f.recs[cookie]
	if !ok {
		return
	}
	packets, bytes, err := f.fp.Remove(rec.entry)
	if err != nil {
		e.log.Error("removing a fast-path entry failed", "err", err)
	}
	f.stale = true
	f.accountLocked(e, &rec, cookie, packets, bytes)
	delete(f.recs, cookie)
	if rec.remote {
		f.remote--
	}
	if rec.to != nil && rec.step == 0 {
		f.chains--
	}
}

// accountLocked adds what the kernel forwarded since the last reading to
// the flow's, the guests' and the ports' counters.
func (f *fastPath) accountLocked(e *Engine, rec *fastRec, cookie uint64, packets, bytes uint64) {
	if packets <= rec.packets {
		return
	}
	dp, db := packets-rec.packets, bytes-rec.bytes
	rec.packets, rec.bytes = packets, bytes
	if rec.step == 0 {
		fe := e.slab.at(cookieHandle(cookie))
		d := cookieDir(cookie)
		fe.packets[d].Add(dp)
		fe.bytes[d].Add(db)
	}
	c := f.ctr.Load()
	for _, g := range []*guestObj{rec.src, rec.dst} {
		if g != nil && g.slot >= len(c.guests) {
			c = c.grown(max(g.slot+1, e.state.Load().guestSlots), 0)
			f.ctr.Store(c)
		}
	}
	for _, inst := range []*instanceObj{rec.to, rec.from} {
		if inst != nil && inst.slot >= len(c.insts) {
			c = c.grown(0, max(inst.slot+1, e.state.Load().instSlots))
			f.ctr.Store(c)
		}
	}
	if inst := rec.to; inst != nil {
		c.insts[inst.slot][iSent].add(dp)
		c.insts[inst.slot][iSentBytes].add(db + dp*rec.txHdr)
	}
	if inst := rec.from; inst != nil {
		c.insts[inst.slot][iReturned].add(dp)
		c.insts[inst.slot][iReturnedBytes].add(db + dp*rec.rxHdr)
	}
	if g := rec.src; g != nil {
		c.guests[g.slot][gFramesOut].add(dp)
		c.guests[g.slot][gBytesOut].add(db)
	}
	if g := rec.dst; g != nil {
		c.guests[g.slot][gFramesIn].add(dp)
		c.guests[g.slot][gBytesIn].add(db)
	}
	for i, p := range []*openPort{rec.in, rec.out} {
		pc := f.ports[p]
		if pc == nil {
			pc = new([4]uint64)
			f.ports[p] = pc
		}
		pc[2*i] += dp
		pc[2*i+1] += db + dp*[2]uint64{rec.rxHdr, rec.txHdr}[i]
	}
	f.frames.Add(dp)
	f.bytes.Add(db)
}

// syncFast reads the kernel's counters back into the engine's, and marks
// the flows that had frames as active so that they do not expire while
// the kernel forwards them. It runs before every expiry.
func (e *Engine) syncFast(now int64) {
	f := e.fast
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.recs) == 0 {
		return
	}
	var moved map[uint64]*chainProgress // by the cookie of the direction's step 0
	err := f.fp.Visit(func(cookie, packets, bytes uint64) {
		rec, ok := f.recs[cookie]
		if !ok || packets == rec.packets {
			return
		}
		dp := packets - rec.packets
		f.accountLocked(e, &rec, cookie, packets, bytes)
		f.recs[cookie] = rec
		fe := e.slab.at(cookieHandle(cookie))
		if fe.removed.Load() {
			return
		}
		if rec.step == 0 {
			f.fw.Lookup(&fe.key, now)
		}
		if rec.to == nil && rec.from == nil {
			return
		}
		if moved == nil {
			moved = map[uint64]*chainProgress{}
		}
		head := cookie &^ (1<<cookieStepBits - 2)
		p := moved[head]
		if p == nil {
			p = &chainProgress{}
			moved[head] = p
		}
		switch {
		case rec.step == 0:
			p.pushed += dp
		case rec.last:
			p.stripped += dp
			p.passed |= 1 << (rec.step - 1)
		default:
			p.passed |= 1 << (rec.step - 1)
		}
	})
	if err != nil {
		e.log.Warn("reading fast-path counters failed", "err", err)
	}
	for head, p := range moved {
		f.trackReturnsLocked(e, head, p, now)
	}
}

// chainProgress is what the kernel did with one chained flow direction
// since the last reading.
type chainProgress struct {
	pushed, stripped uint64
	passed           uint64 // bit j: hop j handed frames back
}

// trackReturnsLocked feeds what the kernel carried into the flow's return
// tracking as the userspace path would have: frames out of the chain end
// the episode; frames still inside it (pushed, and neither stripped nor
// answered by a drop notice) open one, which times out unless some come
// back within the return timeout. The kernel is read every half return
// timeout at most, so a timeout is raised up to that much later.
func (f *fastPath) trackReturnsLocked(e *Engine, head uint64, p *chainProgress, now int64) {
	fe := e.slab.at(cookieHandle(head))
	d := cookieDir(head)
	rec, ok := f.recs[head]
	if !ok {
		return
	}
	notices := fe.notices.Load()
	answered := uint64(notices - rec.notices)
	rec.notices = notices
	f.recs[head] = rec
	if p.stripped > 0 {
		fe.returned(d)
	}
	if p.pushed > p.stripped+answered {
		fe.sent(d, now)
	}
	for hop := 0; p.passed>>hop != 0; hop++ {
		if p.passed&(1<<hop) != 0 {
			fe.passed(d, hop)
		}
	}
}

// fastTimedOut takes a flow direction whose frames did not come back out
// of the kernel for good: the userspace path then carries it, and its
// policy's timeout handling (blocking, alerts) works on it as on any.
func (e *Engine) fastTimedOut(h uint32, d Direction) {
	f := e.fast
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.recs[fastCookie(h, d, 0)]; !ok {
		return
	}
	f.removeDirLocked(e, h, d)
	e.slab.at(h).fast[d].Store(fastNo)
}

// syncFastChains reads the kernel's counters back when chained flows are
// offloaded, so that return timeouts are seen in time.
func (e *Engine) syncFastChains(now int64) {
	if f := e.fast; f != nil {
		f.mu.Lock()
		chains := f.chains
		f.mu.Unlock()
		if chains > 0 {
			e.syncFast(now)
		}
	}
}

// revalidateFast removes the kernel entries that ns would no longer send
// the same way: a flow to a remote peer whose MAC is now a local guest's
// must come to userspace, which decides it again (see forward). Update
// calls it after deleting the flows the change made stale; so it also
// waits until no frame can take a removed entry's path any more.
func (e *Engine) revalidateFast(ns *state) {
	f := e.fast
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.remote > 0 {
		for cookie, rec := range f.recs {
			if rec.remote && ns.ifaceByMAC[rec.dstMAC] != nil {
				f.removeDirLocked(e, cookieHandle(cookie), cookieDir(cookie))
			}
		}
	}
	if b, ok := f.fp.(interface{ Barrier() error }); ok && f.stale {
		if err := b.Barrier(); err != nil {
			e.log.Warn("waiting for the fast path to let go of removed entries", "err", err)
		}
	}
	f.stale = false
}

// fastPortClosed tells the fast path a port is gone, if it cares: an
// interface of the same name may come back with another index.
func (e *Engine) fastPortClosed(p *openPort) {
	f := e.fast
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ports, p)
	if fg, ok := f.fp.(interface{ Forget(port string) error }); ok {
		if err := fg.Forget(p.name); err != nil {
			e.log.Warn("detaching the fast path from a port", "port", p.name, "err", err)
		}
	}
}

// fastPortCounters adds what the kernel forwarded to the ports' counters.
func (e *Engine) fastPortCounters(ports map[string]PortCounters, st *state) {
	f := e.fast
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, p := range st.ports {
		if pc := f.ports[p]; pc != nil {
			c := ports[name]
			c.RxFrames += pc[0]
			c.RxBytes += pc[1]
			c.TxFrames += pc[2]
			c.TxBytes += pc[3]
			ports[name] = c
		}
	}
}

// FastPathStats reports the fast path's entries and what it forwarded; all
// zero without a fast path.
func (e *Engine) FastPathStats() FastPathStats {
	f := e.fast
	if f == nil {
		return FastPathStats{}
	}
	f.mu.Lock()
	n := len(f.recs)
	f.mu.Unlock()
	return FastPathStats{Entries: n, Frames: f.frames.Load(), Bytes: f.bytes.Load()}
}
