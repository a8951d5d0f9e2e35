package sourceroute

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const testSeed = 0x5eed

// udpKey is the key of a UDP packet from 10.1.x.y:port to 10.2.x.y:53,
// distinct for every i; built from words so benchmarks can make one per
// iteration without touching memory.
func udpKey(i uint32) FlowKey {
	var k FlowKey
	k.w[keyWordA] = 10 | 1<<8 | (i>>8&0xff)<<16 | (i&0xff)<<24 // 10.1.(i>>8).(i), loaded as from the wire
	k.w[keyWordB] = 10 | 2<<8 | (i>>24&0xff)<<16 | (i>>16&0xff)<<24
	k.w[keyWordPorts] = (1024+i&0x3fff)<<16 | 53
	k.w[keyWordMeta] = protoUDP<<8 | kindPorts | uint32(KindIPv4)
	return k
}

// udpIndex recovers i (modulo 2^14) from udpKey(i) or its reverse.
func udpIndex(k FlowKey) uint32 {
	if k.w[keyWordPorts]&0xffff != 53 {
		k = k.Reverse()
	}
	return k.w[keyWordPorts]>>16 - 1024
}

func newTestTable(t testing.TB, capacity int, cfg FlowTableConfig) *FlowTable {
	t.Helper()
	cfg.Capacity = capacity
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.Seed == 0 {
		cfg.Seed = testSeed
	}
	ft, err := NewFlowTable(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ft
}

func constPolicy(v FlowValue) PolicyFunc {
	return func(FlowKey) (FlowValue, error) { return v, nil }
}

func TestFlowTableBothDirections(t *testing.T) {
	ft := newTestTable(t, 100, FlowTableConfig{})
	w := ft.NewWorker()
	tests := []struct {
		name      string
		fwd, back netip.AddrPort
	}{
		{"initiator is the lower endpoint", netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.2:53")},
		{"initiator is the higher endpoint", netip.MustParseAddrPort("10.0.0.9:40000"), netip.MustParseAddrPort("10.0.0.2:53")},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fwd, err := MakeIPFlowKey(1, protoUDP, tt.fwd, tt.back)
			if err != nil {
				t.Fatal(err)
			}
			back := fwd.Reverse()
			if _, _, ok := w.Lookup(&back, 0); ok {
				t.Fatal("found a flow before it was created")
			}
			want := FlowValue{Handle: uint32(100 + i), Verdict: 3}
			calls := 0
			var seen FlowKey
			v, d, err := w.LookupOrInsert(&fwd, 0, func(k FlowKey) (FlowValue, error) { calls++; seen = k; return want, nil })
			if err != nil || v != want || d != Forward {
				t.Fatalf("LookupOrInsert = %v %v %v", v, d, err)
			}
			if seen != fwd {
				t.Fatalf("policy saw %v, want the first packet's key %v", seen, fwd)
			}
			for _, c := range []struct {
				key  FlowKey
				want Direction
			}{{fwd, Forward}, {back, Reverse}} {
				v, d, ok := w.Lookup(&c.key, 1)
				if !ok || v != want || d != c.want {
					t.Errorf("Lookup(%v) = %v %v %v, want %v %v", c.key, v, d, ok, want, c.want)
				}
				v, d, err := w.LookupOrInsert(&c.key, 1, constPolicy(FlowValue{Handle: 999}))
				if err != nil || v != want || d != c.want {
					t.Errorf("LookupOrInsert(%v) = %v %v %v", c.key, v, d, err)
				}
			}
			if calls != 1 {
				t.Fatalf("policy called %d times", calls)
			}
			var flows []Flow
			ft.Visit(0, func(f *Flow) VisitAction {
				if f.Value == want {
					flows = append(flows, *f)
				}
				return VisitKeep
			})
			if len(flows) != 1 || flows[0].Key != fwd {
				t.Fatalf("Visit reports %v, want one flow oriented as %v", flows, fwd)
			}
		})
	}
	w.Flush()
	st := ft.Stats()
	if st.Inserts != 2 || st.Flows != 2 || st.Lookups != 12 || st.Hits != 8 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFlowTablePolicyErrors(t *testing.T) {
	ft := newTestTable(t, 10, FlowTableConfig{})
	w := ft.NewWorker()
	k := udpKey(1)
	errDeny := errors.New("no policy")
	if _, _, err := w.LookupOrInsert(&k, 0, func(FlowKey) (FlowValue, error) { return FlowValue{}, errDeny }); !errors.Is(err, errDeny) {
		t.Fatalf("err = %v, want it to wrap the policy error", err)
	}
	if ft.Len() != 0 || ft.Stats().PolicyErrs != 1 {
		t.Fatalf("after refused flows: Len %d, stats %+v", ft.Len(), ft.Stats())
	}
}

func TestNewFlowTableConfig(t *testing.T) {
	bad := []FlowTableConfig{
		{Capacity: 0, IdleTimeout: time.Second},
		{Capacity: 10},
		{Capacity: 10, IdleTimeout: -time.Second},
		{Capacity: 10, IdleTimeout: maxIdleTimeout + 1},
		{Capacity: 10, IdleTimeout: time.Second, Shards: 3},
		{Capacity: 10, IdleTimeout: time.Second, Shards: 16},
	}
	for _, cfg := range bad {
		if _, err := NewFlowTable(cfg); !errors.Is(err, ErrBadFlowTableConfig) {
			t.Errorf("NewFlowTable(%+v) err = %v", cfg, err)
		}
	}
	for _, c := range []struct{ capacity, shards int }{{1, 1}, {1000, 1}, {16 << 10, 1}, {16<<10 + 1, 2}, {1e6, 64}, {1e8, 256}} {
		if c.capacity > 1e6 {
			continue // not worth the memory in a unit test; the rule is the same
		}
		ft, err := NewFlowTable(FlowTableConfig{Capacity: c.capacity, IdleTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for i := range ft.shards {
			total += ft.shards[i].limit
			if len(ft.shards[i].slots) <= ft.shards[i].limit {
				t.Errorf("capacity %d: shard %d has no free slot at its limit", c.capacity, i)
			}
		}
		if len(ft.shards) != c.shards || total < c.capacity {
			t.Errorf("capacity %d: %d shards holding %d, want %d shards holding at least the capacity", c.capacity, len(ft.shards), total, c.shards)
		}
	}
}

// A table filled to exactly its capacity keeps every flow, although the
// hash never spreads flows perfectly evenly over the shards.
func TestFlowTableFillsToCapacity(t *testing.T) {
	const capacity = 40_000
	ft := newTestTable(t, capacity, FlowTableConfig{})
	if len(ft.shards) < 2 {
		t.Fatalf("want several shards, got %d", len(ft.shards))
	}
	w := ft.NewWorker()
	for i := range uint32(capacity) {
		k := udpKey(i)
		if _, _, err := w.LookupOrInsert(&k, 0, constPolicy(FlowValue{Handle: i})); err != nil {
			t.Fatal(err)
		}
	}
	if st := ft.Stats(); st.Flows != capacity || st.Evictions != 0 {
		t.Fatalf("stats %+v", st)
	}
	k := udpKey(capacity)
	if _, _, err := w.LookupOrInsert(&k, 0, constPolicy(FlowValue{})); err != nil {
		t.Fatal(err)
	}
	if st := ft.Stats(); st.Flows != capacity || st.Evictions != 1 {
		t.Fatalf("one past capacity: stats %+v", st)
	}
}

// TestFlowTableAgainstModel drives a small, crowded table with random
// inserts, lookups and deletes and checks it against a Go map after every
// step, so clusters, wrap-around and backward-shift deletion are exercised.
func TestFlowTableAgainstModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			const capacity, universe = 200, 400
			model := map[FlowKey]FlowValue{}
			evicted := 0
			ft := newTestTable(t, capacity, FlowTableConfig{Shards: 1, Seed: seed, OnRemove: func(f Flow, why RemoveReason) {
				if why != RemovedDeleted { // evicted, or expired when chosen for eviction
					c, _ := f.Key.canonical()
					if _, ok := model[c]; !ok {
						t.Errorf("evicted %v, which the model does not hold", f.Key)
					}
					delete(model, c)
					evicted++
				}
			}})
			w := ft.NewWorker()
			rng := rand.New(rand.NewPCG(seed, 99))
			for step := range 20000 {
				k := udpKey(uint32(rng.IntN(universe)))
				if rng.IntN(2) == 0 {
					k = k.Reverse()
				}
				switch op := rng.IntN(10); {
				case op < 5:
					v := FlowValue{Handle: uint32(step), Verdict: Verdict(step)}
					got, _, err := w.LookupOrInsert(&k, int64(step)<<tickShift, constPolicy(v))
					if err != nil {
						t.Fatal(err)
					}
					c, _ := k.canonical()
					if old, ok := model[c]; ok {
						v = old
					}
					model[c] = v
					if got != v {
						t.Fatalf("step %d: LookupOrInsert = %v, model %v", step, got, v)
					}
				case op < 8:
					c, _ := k.canonical()
					if _, inModel := model[c]; ft.Delete(&k) != inModel {
						t.Fatalf("step %d: Delete disagrees with model", step)
					}
					delete(model, c)
				default:
					if ft.Len() != len(model) {
						t.Fatalf("step %d: Len %d, model %d", step, ft.Len(), len(model))
					}
					checkTags(t, ft)
					for c, v := range model {
						if got, _, ok := w.Lookup(&c, 0); !ok || got != v {
							t.Fatalf("step %d: lost flow %v (got %v %v)", step, c, got, ok)
						}
					}
				}
			}
			if evicted == 0 {
				t.Fatal("the model run never filled the table")
			}
			// Deleting through Visit must see every flow exactly once.
			flows := len(model)
			visits := map[FlowKey]int{}
			_, deleted := ft.Visit(0, func(f *Flow) VisitAction {
				c, _ := f.Key.canonical()
				visits[c]++
				if f.Value.Handle%2 == 0 {
					return VisitDelete
				}
				return VisitKeep
			})
			wantDeleted := 0
			for c, v := range model {
				if visits[c] != 1 {
					t.Errorf("flow %v visited %d times", c, visits[c])
				}
				if v.Handle%2 == 0 {
					wantDeleted++
					delete(model, c)
				}
			}
			if len(visits) != flows || deleted != wantDeleted || ft.Len() != len(model) {
				t.Fatalf("Visit deleted %d (want %d), Len %d (want %d)", deleted, wantDeleted, ft.Len(), len(model))
			}
			for c, v := range model {
				if got, _, ok := w.Lookup(&c, 0); !ok || got != v {
					t.Fatalf("after Visit: lost flow %v", c)
				}
			}
		})
	}
}

func TestFlowTableFloodEvictsIdleNotActive(t *testing.T) {
	const capacity = 1024
	var removed [3]int
	ft := newTestTable(t, capacity, FlowTableConfig{
		OnRemove: func(f Flow, why RemoveReason) { removed[why]++ },
	})
	w := ft.NewWorker()
	const ms = int64(time.Millisecond)
	now := int64(0)
	const active = 64
	for i := range uint32(active) {
		k := udpKey(i)
		if _, _, err := w.LookupOrInsert(&k, now, constPolicy(FlowValue{Handle: i})); err != nil {
			t.Fatal(err)
		}
	}
	// A flood of single-packet flows, 20 times the capacity, while the
	// active flows keep sending.
	for i := uint32(active); i < 20*capacity; i++ {
		now += ms
		k := udpKey(i)
		if _, _, err := w.LookupOrInsert(&k, now, constPolicy(FlowValue{Handle: i})); err != nil {
			t.Fatal(err)
		}
		if ft.Len() > capacity {
			t.Fatalf("Len %d above capacity", ft.Len())
		}
		if i%64 == 0 {
			for j := range uint32(active) {
				k := udpKey(j)
				if _, _, ok := w.Lookup(&k, now); !ok {
					t.Fatalf("active flow %d evicted after %d flood flows", j, i-active)
				}
			}
		}
	}
	st := ft.Stats()
	if st.Flows != capacity || st.Evictions == 0 || int(st.Evictions) != removed[RemovedEvicted] || st.Inserts != 20*capacity {
		t.Fatalf("stats %+v, OnRemove %v", st, removed)
	}
	// Nothing on the insert path allocates, however many flows are evicted.
	i := uint32(20 * capacity)
	policy := func(FlowKey) (FlowValue, error) { return FlowValue{Handle: i}, nil }
	allocs := testing.AllocsPerRun(1000, func() {
		now += ms
		i++
		k := udpKey(i)
		if _, _, err := w.LookupOrInsert(&k, now, policy); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("insert with eviction: %v allocs", allocs)
	}
}

func TestFlowTableExpire(t *testing.T) {
	var expired []FlowValue
	ft := newTestTable(t, 1000, FlowTableConfig{
		IdleTimeout: 10 * time.Second,
		OnRemove: func(f Flow, why RemoveReason) {
			if why == RemovedExpired {
				expired = append(expired, f.Value)
			}
		},
	})
	w := ft.NewWorker()
	sec := int64(time.Second)
	for i := range uint32(100) {
		k := udpKey(i)
		if _, _, err := w.LookupOrInsert(&k, 100*sec, constPolicy(FlowValue{Handle: i})); err != nil {
			t.Fatal(err)
		}
	}
	for i := uint32(0); i < 100; i += 2 { // the even flows stay busy, from either side
		k := udpKey(i).Reverse()
		if _, _, ok := w.Lookup(&k, 105*sec); !ok {
			t.Fatal("lost flow")
		}
	}
	if n := ft.Expire(109 * sec); n != 0 {
		t.Fatalf("Expire before the timeout removed %d", n)
	}
	if n := ft.Expire(111 * sec); n != 50 {
		t.Fatalf("Expire removed %d, want the 50 idle flows", n)
	}
	for _, v := range expired {
		if v.Handle%2 == 0 {
			t.Fatalf("busy flow %d expired", v.Handle)
		}
	}
	// A worker's clock may run slightly ahead of the sweeper's.
	k := udpKey(0)
	w.Lookup(&k, 200*sec)
	ft.Expire(199 * sec)
	if _, _, ok := w.Lookup(&k, 200*sec); !ok {
		t.Fatal("flow seen in the sweeper's future was expired")
	}
	if st := ft.Stats(); st.Expirations != uint64(len(expired)) || st.Flows != 50-49 {
		t.Fatalf("stats %+v, %d expired", st, len(expired))
	}
}

// Failover: every flow pinned to a dead instance's headers moves to another.
func TestFlowTableVisitRewrite(t *testing.T) {
	ft := newTestTable(t, 5000, FlowTableConfig{})
	w := ft.NewWorker()
	for i := range uint32(3000) {
		k := udpKey(i)
		if _, _, err := w.LookupOrInsert(&k, 0, constPolicy(FlowValue{Handle: i % 3, Verdict: 1})); err != nil {
			t.Fatal(err)
		}
	}
	updated, deleted := ft.Visit(0, func(f *Flow) VisitAction {
		switch f.Value.Handle {
		case 1:
			f.Value.Handle = 7
			return VisitUpdate
		case 2:
			return VisitDelete
		}
		return VisitKeep
	})
	if updated != 1000 || deleted != 1000 || ft.Len() != 2000 {
		t.Fatalf("updated %d deleted %d Len %d", updated, deleted, ft.Len())
	}
	got := map[uint32]int{}
	for i := range uint32(3000) {
		k := udpKey(i)
		if v, _, ok := w.Lookup(&k, 0); ok {
			got[v.Handle]++
		}
	}
	if diff := cmp.Diff(map[uint32]int{0: 1000, 7: 1000}, got); diff != "" {
		t.Fatalf("handles after rewrite (-want +got):\n%s", diff)
	}
	visited := 0
	ft.Visit(0, func(*Flow) VisitAction { visited++; return VisitStop })
	if visited != 1 {
		t.Fatalf("VisitStop visited %d flows", visited)
	}
}

// TestFlowTableConcurrent runs workers that create and look up flows while
// another goroutine deletes, rewrites and expires others. Run it with -race.
// Flows in the stable set are never removed, so each must have been decided
// exactly once and always read back with its own value.
func TestFlowTableConcurrent(t *testing.T) {
	const stable, churn, workers, rounds = 500, 2000, 4, 20
	// Room to spare, so that no shard fills and evicts a stable flow.
	ft := newTestTable(t, 4*(stable+churn), FlowTableConfig{Shards: 4})
	var decided [stable]atomic.Int32
	policy := func(k FlowKey) (FlowValue, error) {
		if i := udpIndex(k); i < stable {
			decided[i].Add(1)
		}
		return FlowValue{Handle: k.w[keyWordA] ^ k.w[keyWordB]}, nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers+1)
	for wi := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := ft.NewWorker()
			defer w.Flush()
			rng := rand.New(rand.NewPCG(uint64(wi), 1))
			for r := range rounds * stable {
				var k FlowKey
				if r%2 == 0 {
					k = udpKey(uint32(rng.IntN(stable)))
				} else {
					k = udpKey(uint32(stable + rng.IntN(churn)))
				}
				if rng.IntN(2) == 0 {
					k = k.Reverse()
				}
				v, _, err := w.LookupOrInsert(&k, int64(r), policy)
				if err != nil {
					errs <- err
					return
				}
				if want := k.w[keyWordA] ^ k.w[keyWordB]; v.Handle != want {
					errs <- fmt.Errorf("flow %v read back handle %#x, want %#x", k, v.Handle, want)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for r := range rounds * 10 {
			k := udpKey(uint32(stable + r%churn))
			ft.Delete(&k)
			ft.Visit(0, func(f *Flow) VisitAction {
				if udpIndex(f.Key) >= stable && f.Value.Handle%7 == 0 {
					return VisitDelete
				}
				f.Value.Verdict = Verdict(r % 2)
				return VisitUpdate
			})
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range decided {
		if n := decided[i].Load(); n != 1 {
			t.Errorf("stable flow %d decided %d times", i, n)
		}
	}
	st := ft.Stats()
	if st.Lookups != workers*rounds*stable || st.Hits+st.Inserts > st.Lookups || st.Hits == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestFlowTableLookupBatch(t *testing.T) {
	ft := newTestTable(t, 1000, FlowTableConfig{})
	w := ft.NewWorker()
	for i := uint32(0); i < 200; i += 2 { // even flows exist
		k := udpKey(i)
		if _, _, err := w.LookupOrInsert(&k, 0, constPolicy(FlowValue{Handle: i, Verdict: 2})); err != nil {
			t.Fatal(err)
		}
	}
	keys := make([]FlowKey, 2*lookupBatch+11) // several chunks and a partial one
	for i := range keys {
		keys[i] = udpKey(uint32(i * 3 % 200))
		if i%5 == 0 {
			keys[i] = keys[i].Reverse()
		}
	}
	want := make([]FlowResult, len(keys))
	wantFound := 0
	for i := range keys {
		v, d, ok := w.Lookup(&keys[i], 0)
		want[i] = FlowResult{Value: v, Dir: d, Found: ok}
		if ok {
			wantFound++
		}
	}
	got := make([]FlowResult, len(keys)+1)
	if n := w.LookupBatch(keys, 0, got); n != wantFound {
		t.Errorf("LookupBatch found %d, Lookup %d", n, wantFound)
	}
	if diff := cmp.Diff(want, got[:len(keys)]); diff != "" {
		t.Fatalf("LookupBatch differs from Lookup (-want +got):\n%s", diff)
	}
	if a := testing.AllocsPerRun(100, func() { w.LookupBatch(keys, 0, got) }); a != 0 {
		t.Errorf("LookupBatch: %v allocs", a)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("LookupBatch with a short result slice did not panic")
		}
	}()
	w.LookupBatch(keys, 0, got[:3])
}

func TestFlowTableZeroAllocs(t *testing.T) {
	ft := newTestTable(t, 1000, FlowTableConfig{})
	w := ft.NewWorker()
	frame := loadChainVectors(t).Original
	var i uint32
	policy := constPolicy(FlowValue{Handle: 1})
	for i = range 500 {
		k := udpKey(i)
		w.LookupOrInsert(&k, 0, policy)
	}
	ops := []struct {
		name string
		fn   func()
	}{
		{"ExtractKey", func() { k, _ := ExtractKey(frame, 0); i += k.w[0] }},
		{"Lookup", func() { k := udpKey(i % 500); i++; w.Lookup(&k, int64(i)<<tickShift) }},
		{"LookupOrInsert hit", func() { k := udpKey(i % 500); i++; w.LookupOrInsert(&k, 0, policy) }},
		{"LookupOrInsert miss", func() { k := udpKey(1000 + i); i++; w.LookupOrInsert(&k, 0, policy) }},
	}
	for _, op := range ops {
		if a := testing.AllocsPerRun(200, op.fn); a != 0 {
			t.Errorf("%s: %v allocs per packet", op.name, a)
		}
	}
}

// checkTags verifies the tag of every slot: zero when empty, else the tag of
// the hash of the key the slot holds. A stale tag would hide a flow.
func checkTags(t *testing.T, ft *FlowTable) {
	t.Helper()
	for si := range ft.shards {
		sh := &ft.shards[si]
		for i := range uint32(len(sh.slots)) {
			want := uint8(0)
			if occupied(&sh.slots[i]) {
				k := sh.keyAt(i)
				want = tagOf(ft.hash(&k))
			}
			if got := sh.tagAt(i); got != want {
				t.Fatalf("shard %d slot %d: tag %#x, want %#x", si, i, got, want)
			}
		}
	}
}

func TestZeroBytes(t *testing.T) {
	for _, tc := range []struct{ x, want uint64 }{
		{0, highBits},
		{^uint64(0), 0},
		{0x0100ff0080007f01, 0x0080008000800000},
		{0x8000000000000080, 0x0080808080808000},
		{0x0101010101010101, 0},
	} {
		if got := zeroBytes(tc.x); got != tc.want {
			t.Errorf("zeroBytes(%#016x) = %#016x, want %#016x", tc.x, got, tc.want)
		}
	}
}
