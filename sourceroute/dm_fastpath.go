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
	fp FastPath

	mu     sync.Mutex // guards everything below; held across the FastPath's calls
	recs   map[uint64]fastRec
	remote int // recs whose destination is the uplink
	ctr    atomicCounters
	ports  map[*openPort]*[4]uint64 // rx frames, rx bytes, tx frames, tx bytes
	logged map[string]bool
	fw     *FlowWorker // refreshes offloaded flows in the table
	frames atomic.Uint64
	bytes  atomic.Uint64
}

// fastRec is one offloaded flow direction and what of its kernel
// counters has been accounted already.
type fastRec struct {
	entry          FastEntry
	in, out        *openPort
	src, dst       *guestObj
	dstMAC         uint64
	remote         bool
	packets, bytes uint64
}

func newFastPath(fp FastPath, t *FlowTable) *fastPath {
	f := &fastPath{fp: fp, recs: map[uint64]fastRec{}, ports: map[*openPort]*[4]uint64{}, logged: map[string]bool{}, fw: t.NewWorker()}
	f.ctr.Store(&workerCounters{})
	return f
}

func fastCookie(h uint32, d Direction) uint64 { return uint64(h)<<1 | uint64(d) }

// offload hands a pass-through flow direction that a guest's frame just
// took to the fast path, once per direction.
func (w *worker) offload(fe *flowEntry, h uint32, dir Direction, src, dst *endpoint, frame []byte) {
	f := w.e.fast
	if !fe.fast[dir].CompareAndSwap(fastNone, fastTrying) {
		return
	}
	cookie := fastCookie(h, dir)
	f.mu.Lock()
	defer f.mu.Unlock()
	entry, ok, err := f.fp.Offload(w.port.name, dst.port.name, frame, cookie)
	if err != nil {
		if msg := err.Error(); !f.logged[msg] {
			f.logged[msg] = true
			w.e.log.Warn("fast path unavailable for these ports; their flows stay on the userspace path",
				"in", w.port.name, "out", dst.port.name, "err", err)
		}
	}
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
		f.removeLocked(e, fastCookie(fl.Value.Handle, d))
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
	f.accountLocked(e, &rec, cookie, packets, bytes)
	delete(f.recs, cookie)
	if rec.remote {
		f.remote--
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
	fe := e.slab.at(uint32(cookie >> 1))
	d := Direction(cookie & 1)
	fe.packets[d].Add(dp)
	fe.bytes[d].Add(db)
	c := f.ctr.Load()
	for _, g := range []*guestObj{rec.src, rec.dst} {
		if g != nil && g.slot >= len(c.guests) {
			c = c.grown(max(g.slot+1, e.state.Load().guestSlots), 0)
			f.ctr.Store(c)
		}
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
		pc[2*i+1] += db
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
	err := f.fp.Visit(func(cookie, packets, bytes uint64) {
		rec, ok := f.recs[cookie]
		if !ok || packets == rec.packets {
			return
		}
		f.accountLocked(e, &rec, cookie, packets, bytes)
		f.recs[cookie] = rec
		if fe := e.slab.at(uint32(cookie >> 1)); !fe.removed.Load() {
			f.fw.Lookup(&fe.key, now)
		}
	})
	if err != nil {
		e.log.Warn("reading fast-path counters failed", "err", err)
	}
}

// revalidateFast removes the kernel entries that ns would no longer send
// the same way: a flow to a remote peer whose MAC is now a local guest's
// must come to userspace, which decides it again (see forward).
func (e *Engine) revalidateFast(ns *state) {
	f := e.fast
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.remote == 0 {
		return
	}
	for cookie, rec := range f.recs {
		if rec.remote && ns.ifaceByMAC[rec.dstMAC] != nil {
			f.removeLocked(e, cookie)
		}
	}
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
