package sourceroute

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The streams database: one entry per bidirectional flow, found by the
// flow's canonical key.
//
// Layout. Each shard is one flat array of fixed 52-byte slots (the 44-byte
// key with the verdict and the direction bit in its spare bits, the
// caller's handle and a last-seen tick) searched by linear probing from a
// home slot chosen by the hash, and beside it one tag byte per slot, eight
// to a word, in the manner of SwissTable's control bytes: a probe tests
// eight slots' tags with a few word operations and reads only the slots
// whose tag matches, so a hit usually reads one slot however long its
// cluster. There are no Go pointers per flow, so the garbage collector
// never scans the table. Deletion shifts the following entries back
// instead of leaving tombstones, so probe sequences stay short however much
// the table churns. The arrays are allocated once, for the configured
// capacity at a load of at most maxLoadNum/maxLoadDen: about 62.5 bytes
// per flow of capacity.
//
// Concurrency. Each shard has a mutex for writers and a sequence counter for
// readers (a seqlock): a lookup reads without writing shared memory except
// to refresh a flow's last-seen tick at most once per tick, and retries if a
// writer changed the shard meanwhile. Forwarding workers therefore do not
// contend on a lock or a shared counter; each keeps its own lookup counters
// in a FlowWorker and publishes them in batches. Shards are chosen by the
// top hash bits, home slots by the low bits.
//
// Capacity. The table holds at most Capacity flows, counted across shards,
// and each shard at most maxShardLoad of its slots (hash imbalance lets a
// shard take a little more than its share). Inserting when either is
// reached first removes the least recently used flow among the
// evictionSample entries from the new key's home slot on, in the same shard
// (an approximate LRU, in the manner of sampled eviction in caches): a flood
// of new flows evicts other recent single-packet flows, not established
// ones, and memory never grows. Only if that shard is empty is nothing
// evicted, so Len can exceed Capacity by at most the number of shards, and
// only while the flows sit in the other shards.

// Verdict is the per-flow decision the caller's policy function returns. The
// table stores it but does not interpret it; 0 should mean "drop", so that a
// zero FlowValue fails closed.
type Verdict uint8

// FlowValue is what the table keeps per flow besides the key and the
// last-seen time: a verdict and a handle, for example an index into the
// caller's cache of prebuilt forward and reverse headers and VSA instances.
// Keeping the caller's data behind a 32-bit handle instead of a pointer is
// what keeps the table small and invisible to the garbage collector.
type FlowValue struct {
	Handle  uint32
	Verdict Verdict
}

// Direction tells whether a packet travels the way the flow's first packet
// did (Forward) or the other way (Reverse).
type Direction uint8

const (
	Forward Direction = iota
	Reverse
)

func (d Direction) String() string {
	if d == Reverse {
		return "reverse"
	}
	return "forward"
}

// PolicyFunc decides a new flow's value. key is oriented as the flow's first
// packet (its source is the initiator). It runs with the flow's shard locked,
// exactly once per flow, so it must not call the table; an error is returned
// by LookupOrInsert and no flow is created.
type PolicyFunc func(key FlowKey) (FlowValue, error)

// RemoveReason says why a flow left the table.
type RemoveReason uint8

const (
	RemovedExpired RemoveReason = iota // idle longer than the idle timeout
	RemovedEvicted                     // made room for a new flow in a full shard
	RemovedDeleted                     // Delete or a FlowVisitor
)

func (r RemoveReason) String() string {
	switch r {
	case RemovedExpired:
		return "expired"
	case RemovedEvicted:
		return "evicted"
	}
	return "deleted"
}

// Flow is one entry as reported by Visit and to OnRemove.
type Flow struct {
	Key   FlowKey // oriented as the flow's first packet
	Value FlowValue
	// Idle is how long ago the flow last saw a packet (tick resolution),
	// measured from the now given to Visit or Expire.
	Idle time.Duration
}

// FlowTableConfig configures NewFlowTable.
type FlowTableConfig struct {
	// Capacity is the hard maximum number of flows; all memory for it is
	// allocated up front.
	Capacity int
	// IdleTimeout is how long a flow may go without packets before Expire
	// removes it. Expired flows are also the first chosen for eviction.
	IdleTimeout time.Duration
	// Shards is a power of two; 0 picks one shard per ~16k flows of
	// capacity, at most 256.
	Shards int
	// Seed keys the hash; 0 draws a random seed, so that remote senders
	// cannot predict which flows collide.
	Seed uint64
	// OnRemove, if set, is called for every flow that expires, is evicted or
	// deleted, with the flow's shard locked: it must not call the table.
	OnRemove func(Flow, RemoveReason)
}

// FlowStats are the table's counters since creation.
type FlowStats struct {
	Lookups     uint64 // packets looked up (published by workers in batches; see FlowWorker.Flush)
	Hits        uint64 // lookups that found their flow
	Inserts     uint64 // flows created
	Evictions   uint64 // flows removed to make room
	Expirations uint64 // flows removed for idleness
	Deletes     uint64 // flows removed by Delete or Visit
	PolicyErrs  uint64 // new flows refused because the policy function failed
	Flows       int    // flows currently in the table
	Capacity    int
}

// ErrBadFlowTableConfig reports an unusable FlowTableConfig.
var ErrBadFlowTableConfig = errors.New("sourceroute: invalid flow table configuration")

const (
	// A slot is the key's 11 words, then the handle and the last-seen tick.
	// The verdict lives in the top byte of the key's VLAN word, and the
	// direction of the flow's first packet in a spare bit of its meta word.
	slotWords    = keyWords + 2
	slotBytes    = slotWords * 4
	largeAlloc   = 32 << 10 // the Go runtime's large-object threshold
	runtimePage  = 8 << 10  // and the page size it rounds them to
	slotWordHdl  = keyWords
	slotWordSeen = keyWords + 1
	metaReversed = 0x40 // the initiator's packets are the reverse of the canonical key
	verdictShift = 24
	verdictMask  = 0xff << verdictShift

	// Linear probing stays at a few probes per hit up to this load;
	// 53 bytes / 0.85 keeps the whole table near 62.5 bytes per flow.
	maxLoadNum = 85
	maxLoadDen = 100

	// maxShardLoadPct bounds one shard's load, and so its probe lengths,
	// when the hash gives it more than its share of the flows.
	maxShardLoadPct = 95

	evictionSample = 32
	flowsPerShard  = 16 << 10
	maxShards      = 256

	// tickShift converts nanoseconds to last-seen ticks of 2^24 ns (about
	// 17 ms): fine enough for idle timeouts of seconds, and coarse enough
	// that a busy flow's last-seen word is rewritten (an atomic store) only
	// once per tick. Ages are tick differences read as int32, which bounds
	// the idle timeout to maxIdleTimeout.
	tickShift      = 24
	maxIdleTimeout = time.Duration(1<<31-1) << tickShift

	// workerFlushEvery bounds how stale the published lookup counters are.
	workerFlushEvery = 1024
)

type slot [slotWords]uint32

type flowShard struct {
	seq   atomic.Uint32 // odd while a writer changes slots
	mu    sync.Mutex    // serialises writers
	slots []slot
	// tags hold one byte per slot, eight slots to a word: 0 for an empty
	// slot, else tagBit and seven bits of the flow's hash. A probe tests a
	// whole group of eight slots with a few word operations and compares
	// the full key only of slots whose tag matches, so a hit costs one key
	// comparison however long the cluster, and the tags of a small table
	// stay in L1.
	tags  []uint64
	limit int // most flows this shard may hold, whatever the table's total
	count int // flows held, under mu
	_     [64]byte
}

// FlowTable is the streams database. It is safe for concurrent use: any
// number of FlowWorkers may look up and insert while other goroutines
// Delete, Visit or Expire.
type FlowTable struct {
	shards      []flowShard
	shardShift  uint
	seed        uint64
	idleTicks   uint32
	capacity    int
	onRemove    func(Flow, RemoveReason)
	_           [64]byte // the fields above are read by every lookup, the counters below written by inserts
	lookups     atomic.Uint64
	hits        atomic.Uint64
	inserts     atomic.Uint64
	evictions   atomic.Uint64
	expirations atomic.Uint64
	deletes     atomic.Uint64
	policyErrs  atomic.Uint64
	flows       atomic.Int64
}

// NewFlowTable allocates a table for cfg.Capacity flows.
func NewFlowTable(cfg FlowTableConfig) (*FlowTable, error) {
	if cfg.Capacity < 1 {
		return nil, fmt.Errorf("%w: capacity %d", ErrBadFlowTableConfig, cfg.Capacity)
	}
	if cfg.IdleTimeout <= 0 || cfg.IdleTimeout > maxIdleTimeout {
		return nil, fmt.Errorf("%w: idle timeout %v must be positive and at most %v", ErrBadFlowTableConfig, cfg.IdleTimeout, maxIdleTimeout)
	}
	shards := cfg.Shards
	if shards == 0 {
		shards = 1 << bits.Len(uint((cfg.Capacity-1)/flowsPerShard))
		shards = min(shards, maxShards)
	}
	if shards < 1 || shards&(shards-1) != 0 || shards > cfg.Capacity {
		return nil, fmt.Errorf("%w: %d shards: want a power of two no larger than the capacity", ErrBadFlowTableConfig, shards)
	}
	seed := cfg.Seed
	if seed == 0 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("sourceroute: flow table hash seed: %w", err)
		}
		seed = binary.LittleEndian.Uint64(b[:]) | 1
	}
	t := &FlowTable{
		shards:     make([]flowShard, shards),
		shardShift: uint(64 - bits.TrailingZeros(uint(shards))),
		seed:       seed,
		idleTicks:  uint32((cfg.IdleTimeout + 1<<tickShift - 1) >> tickShift),
		capacity:   cfg.Capacity,
		onRemove:   cfg.OnRemove,
	}
	share := (cfg.Capacity + shards - 1) / shards
	least := max((share*maxLoadDen+maxLoadNum-1)/maxLoadNum, share+1)
	n := (least + groupSlots - 1) &^ (groupSlots - 1) // whole tag groups
	if bytes := n * slotBytes; bytes > largeAlloc {
		// The runtime hands out large objects in whole pages: use the rest
		// of the last page for slots, which lowers the load for free.
		n = (bytes + runtimePage - 1) / runtimePage * runtimePage / slotBytes &^ (groupSlots - 1)
	}
	limit := max(share, min(n-1, n*maxShardLoadPct/100))
	// One allocation for all shards, so that huge pages can span them.
	backing := make([]slot, n*shards)
	adviseHugePages(backing)
	g := n / groupSlots
	tags := make([]uint64, g*shards)
	for i := range t.shards {
		t.shards[i].slots = backing[i*n : (i+1)*n : (i+1)*n]
		t.shards[i].tags = tags[i*g : (i+1)*g : (i+1)*g]
		t.shards[i].limit = limit
	}
	return t, nil
}

// Capacity is the configured maximum number of flows.
func (t *FlowTable) Capacity() int { return t.capacity }

// Len is the number of flows in the table.
func (t *FlowTable) Len() int { return int(t.flows.Load()) }

// Stats returns the counters. Lookups and Hits include only what workers
// have published.
func (t *FlowTable) Stats() FlowStats {
	return FlowStats{
		Lookups:     t.lookups.Load(),
		Hits:        t.hits.Load(),
		Inserts:     t.inserts.Load(),
		Evictions:   t.evictions.Load(),
		Expirations: t.expirations.Load(),
		Deletes:     t.deletes.Load(),
		PolicyErrs:  t.policyErrs.Load(),
		Flows:       t.Len(),
		Capacity:    t.capacity,
	}
}

func tick(nowNanos int64) uint32 { return uint32(uint64(nowNanos) >> tickShift) }

// age is now - seen in ticks. Workers and the expiry sweep read the clock
// independently, so seen may be slightly ahead of now: that is age 0, not
// 52 days.
func age(now, seen uint32) uint32 {
	if d := int32(now - seen); d > 0 {
		return uint32(d)
	}
	return 0
}

// wyhash constants.
const (
	hashP0 = 0xa0761d6478bd642f
	hashP1 = 0xe7037ed1a0b428db
	hashP2 = 0x8ebc6af09c88c6e3
	hashP3 = 0x589965cc75374cc3
)

func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// hash mixes the canonical key in the manner of wyhash: three independent
// 128-bit multiplies over the key's 64-bit lanes, then one to combine them.
func (t *FlowTable) hash(k *FlowKey) uint64 {
	w := &k.w
	s := t.seed
	a := mum(uint64(w[0])|uint64(w[1])<<32^hashP0, uint64(w[2])|uint64(w[3])<<32^s)
	b := mum(uint64(w[4])|uint64(w[5])<<32^hashP1, uint64(w[6])|uint64(w[7])<<32^s)
	c := mum(uint64(w[8])|uint64(w[9])<<32^hashP2, uint64(w[10]&vlanMask)^s)
	return mum(a^b^hashP3, c^s)
}

func (t *FlowTable) locate(k *FlowKey) (*flowShard, probe) {
	h := t.hash(k)
	sh := &t.shards[h>>t.shardShift]
	return sh, probe{home: sh.home(h), tag: tagOf(h)}
}

// probe is where a key's search starts and the tag it looks for.
type probe struct {
	home uint32
	tag  uint8
}

// Tag groups: a tag is tagBit and hash bits 32..38, which neither the home
// slot (the low 32 bits) nor the shard (the top bits) uses.
const (
	groupSlots = 8
	tagBit     = 0x80
	lowBytes   = 0x0101010101010101
	highBits   = 0x8080808080808080
)

func tagOf(h uint64) uint8 { return tagBit | uint8(h>>32)&^tagBit }

// zeroBytes has the high bit set in exactly the bytes of x that are zero
// (no borrow crosses bytes, so there are no false positives).
func zeroBytes(x uint64) uint64 {
	const low7 = ^uint64(highBits)
	return ^(x&low7 + low7 | x) & highBits
}

func (sh *flowShard) setTag(i uint32, tag uint8) {
	w := &sh.tags[i/groupSlots]
	shift := i % groupSlots * 8
	atomic.StoreUint64(w, atomic.LoadUint64(w)&^(0xff<<shift)|uint64(tag)<<shift)
}

func (sh *flowShard) tagAt(i uint32) uint8 {
	return uint8(atomic.LoadUint64(&sh.tags[i/groupSlots]) >> (i % groupSlots * 8))
}

// home maps the hash's low 32 bits onto the slot array without a division.
func (sh *flowShard) home(h uint64) uint32 {
	return uint32((h & 0xffffffff) * uint64(len(sh.slots)) >> 32)
}

func (sh *flowShard) homeOf(t *FlowTable, i uint32) uint32 {
	k := sh.keyAt(i)
	return sh.home(t.hash(&k))
}

// keyAt is the canonical key stored in slot i.
func (sh *flowShard) keyAt(i uint32) FlowKey {
	var k FlowKey
	for j := range keyWords {
		k.w[j] = atomic.LoadUint32(&sh.slots[i][j])
	}
	k.w[keyWordMeta] &^= metaReversed
	k.w[keyWordVLAN] &= vlanMask
	return k
}

func occupied(s *slot) bool { return atomic.LoadUint32(&s[keyWordMeta])&kindMask != 0 }

// find probes for k from p.home, a group of eight slots at a time, in the
// order of linear probing: the slots of the first group before home are
// not part of the sequence, and it ends at the first empty slot. Under the
// seqlock the slots may be changing; the loop is bounded by the array and
// the caller validates the result.
func (sh *flowShard) find(k *FlowKey, p probe) (uint32, bool) {
	groups := uint32(len(sh.tags))
	g := p.home / groupSlots
	valid := ^uint64(0) << (p.home % groupSlots * 8)
	want := uint64(p.tag) * lowBytes
	for range groups + 1 {
		word := atomic.LoadUint64(&sh.tags[g])
		empty := ^word & highBits & valid
		match := zeroBytes(word^want) & valid
		if empty != 0 {
			match &= empty&-empty - 1 // only slots before the first empty one
		}
		for ; match != 0; match &= match - 1 {
			i := g*groupSlots + uint32(bits.TrailingZeros64(match))/8
			if sh.equal(i, k) {
				return i, true
			}
		}
		if empty != 0 {
			return 0, false
		}
		if g++; g == groups {
			g = 0
		}
		valid = ^uint64(0)
	}
	return 0, false
}

// equal compares slot i's key with k, whole, with one branch.
func (sh *flowShard) equal(i uint32, k *FlowKey) bool {
	s := &sh.slots[i]
	diff := (atomic.LoadUint32(&s[keyWordMeta])&^metaReversed ^ k.w[keyWordMeta]) |
		(atomic.LoadUint32(&s[keyWordPorts]) ^ k.w[keyWordPorts]) |
		(atomic.LoadUint32(&s[0]) ^ k.w[0]) |
		(atomic.LoadUint32(&s[1]) ^ k.w[1]) |
		(atomic.LoadUint32(&s[2]) ^ k.w[2]) |
		(atomic.LoadUint32(&s[3]) ^ k.w[3]) |
		(atomic.LoadUint32(&s[4]) ^ k.w[4]) |
		(atomic.LoadUint32(&s[5]) ^ k.w[5]) |
		(atomic.LoadUint32(&s[6]) ^ k.w[6]) |
		(atomic.LoadUint32(&s[7]) ^ k.w[7]) |
		(atomic.LoadUint32(&s[keyWordVLAN])&vlanMask ^ k.w[keyWordVLAN])
	return diff == 0
}

// FlowWorker is one forwarding goroutine's handle on the table. It is not
// safe for concurrent use: give each worker its own. It counts lookups
// locally and publishes the counts every workerFlushEvery lookups and on
// Flush, so the forwarding path writes no shared counter.
type FlowWorker struct {
	t                   *FlowTable
	lookups, hits       uint64
	pubLookups, pubHits uint64
	touched             uint32 // keeps LookupBatch's touch loads from being dropped
	batch               batchScratch
	_                   [64]byte // keep workers' counters on separate cache lines
}

// lookupBatch is how many keys LookupBatch prepares before probing: enough
// cache misses in flight to hide memory latency, few enough that the
// prepared keys stay in L1.
const lookupBatch = 32

type batchScratch struct {
	canon    [lookupBatch]FlowKey
	reversed [lookupBatch]bool
	probe    [lookupBatch]probe
	shard    [lookupBatch]*flowShard
}

// FlowResult is one packet's outcome of LookupBatch.
type FlowResult struct {
	Value FlowValue
	Dir   Direction
	Found bool
}

// NewWorker returns a handle for one forwarding goroutine.
func (t *FlowTable) NewWorker() *FlowWorker { return &FlowWorker{t: t} }

// Flush publishes this worker's counters to Stats.
func (w *FlowWorker) Flush() {
	w.t.lookups.Add(w.lookups - w.pubLookups)
	w.t.hits.Add(w.hits - w.pubHits)
	w.pubLookups, w.pubHits = w.lookups, w.hits
}

func (w *FlowWorker) count(hit bool) {
	w.lookups++
	if hit {
		w.hits++
	}
	if w.lookups-w.pubLookups >= workerFlushEvery {
		w.Flush()
	}
}

// Lookup finds the flow of key (in either direction) and refreshes its
// last-seen time to nowNanos, a monotonic clock reading in nanoseconds.
func (w *FlowWorker) Lookup(key *FlowKey, nowNanos int64) (FlowValue, Direction, bool) {
	var c FlowKey
	reversed := key.canonicalInto(&c)
	sh, p := w.t.locate(&c)
	v, d, ok := sh.lookup(&c, p, reversed, tick(nowNanos))
	w.count(ok)
	return v, d, ok
}

// LookupBatch is Lookup for a batch of packets, such as one receive ring
// block: out[i] is the result for keys[i], and it returns how many were
// found. It computes every key's home slot and touches it before probing
// any, so that in a large table the cache misses of up to lookupBatch
// packets overlap instead of queueing one behind another. out must be at
// least as long as keys.
func (w *FlowWorker) LookupBatch(keys []FlowKey, nowNanos int64, out []FlowResult) int {
	if len(out) < len(keys) {
		panic(fmt.Sprintf("sourceroute: LookupBatch of %d keys into %d results", len(keys), len(out)))
	}
	now := tick(nowNanos)
	found := 0
	b := &w.batch
	for start := 0; start < len(keys); start += lookupBatch {
		chunk := keys[start:min(start+lookupBatch, len(keys))]
		for i := range chunk {
			b.reversed[i] = chunk[i].canonicalInto(&b.canon[i])
			b.shard[i], b.probe[i] = w.t.locate(&b.canon[i])
		}
		// A slot may straddle two cache lines, and about half the hits
		// are found in a later slot: touch the home slot's first word and
		// the next slot's last, which spans what most probes read, and
		// the home slot's tag group.
		touch := uint32(0)
		for i := range chunk {
			sh, h := b.shard[i], b.probe[i].home
			touch ^= atomic.LoadUint32(&sh.slots[h][0]) ^ atomic.LoadUint32(&sh.slots[next(h, uint32(len(sh.slots)))][slotWords-1]) ^
				uint32(atomic.LoadUint64(&sh.tags[h/groupSlots]))
		}
		w.touched ^= touch
		for i := range chunk {
			v, d, ok := b.shard[i].lookup(&b.canon[i], b.probe[i], b.reversed[i], now)
			out[start+i] = FlowResult{Value: v, Dir: d, Found: ok}
			w.count(ok)
			if ok {
				found++
			}
		}
	}
	return found
}

// LookupOrInsert is Lookup, and on a miss creates the flow with the value
// decide returns, evicting if the shard is full. Exactly one decide call
// happens per created flow, even when several workers race on its first
// packets.
func (w *FlowWorker) LookupOrInsert(key *FlowKey, nowNanos int64, decide PolicyFunc) (FlowValue, Direction, error) {
	var c FlowKey
	reversed := key.canonicalInto(&c)
	sh, p := w.t.locate(&c)
	now := tick(nowNanos)
	if v, d, ok := sh.lookup(&c, p, reversed, now); ok {
		w.count(true)
		return v, d, nil
	}
	w.count(false)
	return w.t.insert(sh, &c, p, reversed, now, key, decide)
}

func (sh *flowShard) lookup(c *FlowKey, p probe, reversed bool, now uint32) (FlowValue, Direction, bool) {
	for spins := 0; ; spins++ {
		seq := sh.seq.Load()
		if seq&1 != 0 {
			if spins > 16 {
				runtime.Gosched() // the writer may have been descheduled mid-change
			}
			continue
		}
		i, found := sh.find(c, p)
		var meta, vlan, handle, seen uint32
		if found {
			s := &sh.slots[i]
			meta = atomic.LoadUint32(&s[keyWordMeta])
			vlan = atomic.LoadUint32(&s[keyWordVLAN])
			handle = atomic.LoadUint32(&s[slotWordHdl])
			seen = atomic.LoadUint32(&s[slotWordSeen])
		}
		if sh.seq.Load() != seq {
			continue
		}
		if !found {
			return FlowValue{}, Forward, false
		}
		if seen != now {
			// A writer moving this slot between the check above and this
			// store would make it land on another flow (only delaying that
			// flow's expiry); the re-check retries so this flow's refresh
			// is never lost.
			atomic.StoreUint32(&sh.slots[i][slotWordSeen], now)
			if sh.seq.Load() != seq {
				continue
			}
		}
		return valueOf(vlan, handle), direction(meta, reversed), true
	}
}

func valueOf(vlan, handle uint32) FlowValue {
	return FlowValue{Handle: handle, Verdict: Verdict(vlan >> verdictShift)}
}

func direction(meta uint32, reversed bool) Direction {
	if (meta&metaReversed != 0) != reversed {
		return Reverse
	}
	return Forward
}

func (t *FlowTable) insert(sh *flowShard, c *FlowKey, p probe, reversed bool, now uint32, asSeen *FlowKey, decide PolicyFunc) (FlowValue, Direction, error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if i, ok := sh.find(c, p); ok { // another worker created it meanwhile
		s := &sh.slots[i]
		return valueOf(atomic.LoadUint32(&s[keyWordVLAN]), atomic.LoadUint32(&s[slotWordHdl])),
			direction(atomic.LoadUint32(&s[keyWordMeta]), reversed), nil
	}
	v, err := decide(*asSeen)
	if err != nil {
		t.policyErrs.Add(1)
		return FlowValue{}, Forward, policyError(*asSeen, err)
	}
	overCapacity := t.flows.Add(1) > int64(t.capacity)
	i, reuse := uint32(0), false
	if (overCapacity || sh.count >= sh.limit) && sh.count > 0 {
		victim, inRun, why := t.chooseVictim(sh, p.home, now)
		if inRun {
			t.forget(sh, victim, why, now)
			i, reuse = victim, true
		} else {
			t.removeAt(sh, victim, why, now)
		}
	}
	if !reuse {
		for i = p.home; occupied(&sh.slots[i]); i = next(i, uint32(len(sh.slots))) {
		}
	}
	meta := c.w[keyWordMeta]
	if reversed {
		meta |= metaReversed
	}
	sh.seq.Add(1)
	s := &sh.slots[i]
	for j := range keyWordMeta {
		atomic.StoreUint32(&s[j], c.w[j])
	}
	atomic.StoreUint32(&s[keyWordMeta], meta)
	atomic.StoreUint32(&s[keyWordVLAN], c.w[keyWordVLAN]|uint32(v.Verdict)<<verdictShift)
	atomic.StoreUint32(&s[slotWordHdl], v.Handle)
	atomic.StoreUint32(&s[slotWordSeen], now)
	sh.setTag(i, p.tag)
	sh.seq.Add(1)
	sh.count++
	t.inserts.Add(1)
	return v, Forward, nil
}

// policyError takes the key by value so that formatting it on this rare
// path does not make every caller's key escape to the heap.
//
//go:noinline
func policyError(k FlowKey, err error) error {
	return fmt.Errorf("sourceroute: policy for new flow %v: %w", k, err)
}

// chooseVictim picks the least recently seen flow among the first
// evictionSample flows from home on; those slots were just probed, so the
// sample costs little. It also reports whether the victim lies in the
// unbroken run of occupied slots that starts at home: then the new flow,
// whose probe sequence crosses that run, can take the victim's slot as it
// is, with no entries shifted.
func (t *FlowTable) chooseVictim(sh *flowShard, home uint32, now uint32) (victim uint32, inRun bool, why RemoveReason) {
	n := uint32(len(sh.slots))
	oldest, sampled, run := uint32(0), 0, true
	for i, scanned := home, uint32(0); sampled < evictionSample && scanned < n; scanned++ {
		if !occupied(&sh.slots[i]) {
			run = false
		} else {
			if a := age(now, atomic.LoadUint32(&sh.slots[i][slotWordSeen])); sampled == 0 || a > oldest {
				victim, oldest, inRun = i, a, run
			}
			sampled++
		}
		i = next(i, n)
	}
	why = RemovedEvicted
	if oldest > t.idleTicks {
		why = RemovedExpired
	}
	return victim, inRun, why
}

// forget accounts for the flow in slot i leaving the table, without touching
// the slot. Under sh.mu.
func (t *FlowTable) forget(sh *flowShard, i uint32, why RemoveReason, now uint32) {
	if t.onRemove != nil {
		t.onRemove(sh.flowAt(i, now), why)
	}
	switch why {
	case RemovedExpired:
		t.expirations.Add(1)
	case RemovedEvicted:
		t.evictions.Add(1)
	default:
		t.deletes.Add(1)
	}
	sh.count--
	t.flows.Add(-1)
}

// removeAt deletes slot i and shifts back the entries after it that would
// otherwise become unreachable from their home slots. Under sh.mu.
func (t *FlowTable) removeAt(sh *flowShard, i uint32, why RemoveReason, now uint32) {
	t.forget(sh, i, why, now)
	n := uint32(len(sh.slots))
	sh.seq.Add(1)
	hole := i
	for j := next(hole, n); occupied(&sh.slots[j]); j = next(j, n) {
		// Entry j may fill the hole unless its home lies cyclically in
		// (hole, j]: then moving it before its home would hide it.
		h := sh.homeOf(t, j)
		if (j > hole && (h <= hole || h > j)) || (j < hole && h <= hole && h > j) {
			for w := range slotWords {
				atomic.StoreUint32(&sh.slots[hole][w], atomic.LoadUint32(&sh.slots[j][w]))
			}
			sh.setTag(hole, sh.tagAt(j))
			hole = j
		}
	}
	atomic.StoreUint32(&sh.slots[hole][keyWordMeta], 0)
	sh.setTag(hole, 0)
	sh.seq.Add(1)
}

func next(i, n uint32) uint32 {
	if i+1 == n {
		return 0
	}
	return i + 1
}

// flowAt reports slot i as a Flow oriented as its first packet. Under sh.mu.
func (sh *flowShard) flowAt(i uint32, now uint32) Flow {
	s := &sh.slots[i]
	k := sh.keyAt(i)
	if atomic.LoadUint32(&s[keyWordMeta])&metaReversed != 0 {
		k = k.Reverse()
	}
	return Flow{
		Key:   k,
		Value: valueOf(atomic.LoadUint32(&s[keyWordVLAN]), atomic.LoadUint32(&s[slotWordHdl])),
		Idle:  time.Duration(age(now, atomic.LoadUint32(&s[slotWordSeen]))) << tickShift,
	}
}

// Delete removes the flow of key (either direction) and reports whether it
// existed.
func (t *FlowTable) Delete(key *FlowKey) bool {
	c, _ := key.canonical()
	sh, p := t.locate(&c)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := sh.find(&c, p)
	if ok {
		t.removeAt(sh, i, RemovedDeleted, atomic.LoadUint32(&sh.slots[i][slotWordSeen]))
	}
	return ok
}

// VisitAction is a FlowVisitor's decision about one flow.
type VisitAction uint8

const (
	VisitKeep   VisitAction = iota // leave the flow as it is
	VisitUpdate                    // store the visitor's changes to Flow.Value
	VisitDelete                    // remove the flow
	VisitStop                      // leave the flow and end the visit
)

// FlowVisitor inspects one flow; it may change f.Value and return
// VisitUpdate. It runs with the flow's shard locked: it must not call the
// table.
type FlowVisitor func(f *Flow) VisitAction

// Visit calls fn once for every flow, shard by shard, and returns how many
// flows it updated and deleted. nowNanos only sets Flow.Idle. Flows created
// while Visit runs may or may not be visited. This is how a policy change or
// an appliance failover rewrites "all flows using instance X". Each shard
// stays locked for writers while it is visited; lookups go on.
func (t *FlowTable) Visit(nowNanos int64, fn FlowVisitor) (updated, deleted int) {
	now := tick(nowNanos)
	stopped := false
	for si := range t.shards {
		sh := &t.shards[si]
		t.scanShard(sh, func(i uint32) (removed, stop bool) {
			f := sh.flowAt(i, now)
			switch fn(&f) {
			case VisitStop:
				stopped = true
				return false, true
			case VisitDelete:
				t.removeAt(sh, i, RemovedDeleted, now)
				deleted++
				return true, false
			case VisitUpdate:
				s := &sh.slots[i]
				vlan := atomic.LoadUint32(&s[keyWordVLAN])&^verdictMask | uint32(f.Value.Verdict)<<verdictShift
				sh.seq.Add(1)
				atomic.StoreUint32(&s[keyWordVLAN], vlan)
				atomic.StoreUint32(&s[slotWordHdl], f.Value.Handle)
				sh.seq.Add(1)
				updated++
			}
			return false, false
		})
		if stopped {
			break
		}
	}
	return updated, deleted
}

// Expire removes every flow idle for longer than the idle timeout and
// returns how many it removed. Call it periodically (every second or so);
// between calls, full shards still evict idle flows first.
func (t *FlowTable) Expire(nowNanos int64) int {
	now := tick(nowNanos)
	expired := 0
	for si := range t.shards {
		sh := &t.shards[si]
		t.scanShard(sh, func(i uint32) (removed, stop bool) {
			if age(now, atomic.LoadUint32(&sh.slots[i][slotWordSeen])) <= t.idleTicks {
				return false, false
			}
			t.removeAt(sh, i, RemovedExpired, now)
			expired++
			return true, false
		})
	}
	return expired
}

// scanShard calls fn for every occupied slot of sh with the shard locked.
// fn reports whether it removed the slot's flow, so that the entry shifted
// into the slot is visited next, and whether to stop.
func (t *FlowTable) scanShard(sh *flowShard, fn func(i uint32) (removed, stop bool)) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.count == 0 {
		return
	}
	n := uint32(len(sh.slots))
	// Start just after an empty slot, so no cluster wraps around the start
	// and removeAt only ever shifts entries that are still ahead of us.
	start := uint32(0)
	for occupied(&sh.slots[start]) {
		start++
	}
	i := next(start, n)
	for visited := uint32(0); visited < n; {
		if occupied(&sh.slots[i]) {
			removed, stop := fn(i)
			if stop {
				return
			}
			if removed {
				continue
			}
		}
		i, visited = next(i, n), visited+1
	}
}
