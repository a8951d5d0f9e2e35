package sourceroute

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
)

// Flow table benchmarks. Lookups visit flows in a random order: walking the
// flows in insertion order would let the caches and the prefetcher hide the
// memory latency that dominates a large table. The random keys are made
// before the clock starts and streamed from an array at least as large as
// the table, so the loop measures lookups, not key generation, and every
// flow is visited. The Go map baseline is keyed by the same canonical
// FlowKey and runs in the same process and run.

var benchSizes = []int{1_000, 1_000_000}

// xorshift is a small deterministic RNG for the benchmarks.
type xorshift uint64

func (x *xorshift) below(n int) uint32 {
	*x ^= *x << 13
	*x ^= *x >> 7
	*x ^= *x << 17
	return uint32(uint64(*x) >> 32 * uint64(n) >> 32)
}

// randomKeys returns keys of flows 0..n-1 in a random order, half of them
// as replies, max(n, 1<<16) of them.
func randomKeys(n int, seed uint64) []FlowKey {
	rng := xorshift(seed)
	keys := make([]FlowKey, max(n, 1<<16))
	for i := range keys {
		keys[i] = udpKey(rng.below(n))
		if rng&1 == 0 {
			keys[i].reverse()
		}
	}
	return keys
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func buildBenchTable(b *testing.B, flows int) (*FlowTable, float64) {
	before := heapInUse()
	ft, err := NewFlowTable(FlowTableConfig{Capacity: flows, IdleTimeout: 1 << 40, Seed: testSeed})
	if err != nil {
		b.Fatal(err)
	}
	w := ft.NewWorker()
	policy := func(k FlowKey) (FlowValue, error) { return FlowValue{Handle: k.w[0], Verdict: 1}, nil }
	for i := range flows {
		k := udpKey(uint32(i))
		if _, _, err := w.LookupOrInsert(&k, 0, policy); err != nil {
			b.Fatal(err)
		}
	}
	if ft.Len() != flows {
		b.Fatalf("built %d flows, want %d", ft.Len(), flows)
	}
	return ft, float64(heapInUse()-before) / float64(flows)
}

func BenchmarkFlowLookup(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			ft, perFlow := buildBenchTable(b, n)
			w := ft.NewWorker()
			keys := randomKeys(n, 88172645463325252)
			now, i := int64(0), 0
			b.ReportAllocs()
			b.ResetTimer()
			cpu := startCPUClock(b)
			for b.Loop() {
				// The clock runs as for a stream of 10 Mpps, so flows are
				// refreshed as often as they would be: nearly every packet
				// of a large table, rarely those of a small one.
				now += 100
				if _, _, ok := w.Lookup(&keys[i], now); !ok {
					b.Fatal("miss")
				}
				if i++; i == len(keys) {
					i = 0
				}
			}
			cpu.report(b)
			b.ReportMetric(perFlow, "bytes/flow")
			runtime.KeepAlive(ft)
		})
	}
}

func BenchmarkGoMapLookup(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			before := heapInUse()
			m := make(map[FlowKey]FlowValue, n)
			for i := range n {
				k := udpKey(uint32(i))
				c, _ := k.canonical()
				m[c] = FlowValue{Handle: uint32(i)}
			}
			perFlow := float64(heapInUse()-before) / float64(n)
			keys := randomKeys(n, 88172645463325252)
			i := 0
			b.ReportAllocs()
			b.ResetTimer()
			cpu := startCPUClock(b)
			for b.Loop() {
				c, _ := keys[i].canonical()
				if _, ok := m[c]; !ok {
					b.Fatal("miss")
				}
				if i++; i == len(keys) {
					i = 0
				}
			}
			cpu.report(b)
			b.ReportMetric(perFlow, "bytes/flow")
			runtime.KeepAlive(m)
		})
	}
}

// BenchmarkFlowLookupBatch looks packets up lookupBatch at a time, as a
// forwarding loop does with a receive batch; ns/packet is comparable with
// BenchmarkFlowLookup's ns/op.
func BenchmarkFlowLookupBatch(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			ft, _ := buildBenchTable(b, n)
			w := ft.NewWorker()
			keys := randomKeys(n, 88172645463325252)
			out := make([]FlowResult, lookupBatch)
			now, i := int64(0), 0
			b.ReportAllocs()
			b.ResetTimer()
			cpu := startCPUClock(b)
			for b.Loop() {
				now += 100 * lookupBatch // as in BenchmarkFlowLookup
				if w.LookupBatch(keys[i:i+lookupBatch], now, out) != lookupBatch {
					b.Fatal("miss")
				}
				if i += lookupBatch; i+lookupBatch > len(keys) {
					i = 0
				}
			}
			cpu.reportPer(b, lookupBatch, "packet")
		})
	}
}

// BenchmarkFlowLookupParallel runs one worker per GOMAXPROCS on the same
// table, to show that lookups do not contend.
func BenchmarkFlowLookupParallel(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			ft, _ := buildBenchTable(b, n)
			var goroutines atomic.Uint64
			keySets := [][]FlowKey{randomKeys(n, 1), randomKeys(n, 2), randomKeys(n, 3), randomKeys(n, 4)}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := startCPUClock(b)
			defer cpu.report(b)
			b.RunParallel(func(pb *testing.PB) {
				w := ft.NewWorker()
				keys := keySets[goroutines.Add(1)%uint64(len(keySets))]
				now, i := int64(0), 0
				for pb.Next() {
					now += 100 // as in BenchmarkFlowLookup
					if _, _, ok := w.Lookup(&keys[i], now); !ok {
						panic("miss")
					}
					if i++; i == len(keys) {
						i = 0
					}
				}
			})
		})
	}
}

// BenchmarkFlowInsertEvict floods a full table with new flows: each
// iteration decides, inserts and evicts one flow.
func BenchmarkFlowInsertEvict(b *testing.B) {
	const n = 100_000
	ft, _ := buildBenchTable(b, n)
	w := ft.NewWorker()
	i := uint32(n)
	policy := func(FlowKey) (FlowValue, error) { return FlowValue{Handle: i}, nil }
	now := int64(0)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPUClock(b)
	for b.Loop() {
		i++
		now += 1 << tickShift
		k := udpKey(i)
		if _, _, err := w.LookupOrInsert(&k, now, policy); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b)
	if ft.Len() != n {
		b.Fatalf("Len %d", ft.Len())
	}
}

func BenchmarkExtractKey(b *testing.B) {
	frames := []struct {
		name  string
		frame []byte
	}{
		{"ipv4-udp", loadChainVectors(b).Original},
		{"qinq-ipv4-tcp", ethFrame(macB, macA, []vlanTag{{0x88a8, 10}, {0x8100, 20}}, etherTypeIPv4,
			ipv4Packet(protoTCP, "10.0.0.1", "10.0.0.2", 0, ports(1, 2, 16)))},
		{"ipv6-ext-tcp", v6(ipv6Packet(protoHopByHop, "2001:db8::1", "2001:db8::2",
			append(ipv6Ext(protoDestOpts, 8), ipv6Ext(protoTCP, 16)...), ports(5000, 443, 16)))},
	}
	for _, f := range frames {
		b.Run(f.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu := startCPUClock(b)
			for b.Loop() {
				if _, r := ExtractKey(f.frame, 1); r != KeyOK {
					b.Fatal(r)
				}
			}
			cpu.report(b)
		})
	}
}

// BenchmarkFlowExpireSweep is one Expire pass over a full table of a million
// flows of which none is due: the periodic cost of idle expiry.
func BenchmarkFlowExpireSweep(b *testing.B) {
	ft, _ := buildBenchTable(b, 1_000_000)
	b.ReportAllocs()
	cpu := startCPUClock(b)
	for b.Loop() {
		if n := ft.Expire(1 << tickShift); n != 0 {
			b.Fatalf("expired %d", n)
		}
	}
	cpu.report(b)
}

// BenchmarkMemoryLatencyFloor is not about the table: it chases a random
// cycle through a 64 MiB array laid out like the table's slots (huge pages
// advised the same way), one dependent read per op. It is the floor for one
// cache miss on this machine at this moment, against which the million-flow
// lookups can be read.
func BenchmarkMemoryLatencyFloor(b *testing.B) {
	slots := make([]slot, (64<<20)/slotBytes)
	adviseHugePages(slots)
	rng := xorshift(12345)
	perm := make([]uint32, len(slots))
	for i := range perm {
		perm[i] = uint32(i)
	}
	for i := len(perm) - 1; i > 0; i-- { // Sattolo: one cycle through every slot
		j := rng.below(i)
		perm[i], perm[j] = perm[j], perm[i]
	}
	for i, p := range perm {
		slots[i][0] = p
	}
	at := uint32(0)
	b.ResetTimer()
	cpu := startCPUClock(b)
	for b.Loop() {
		at = slots[at][0]
	}
	cpu.report(b)
	runtime.KeepAlive(at)
}
