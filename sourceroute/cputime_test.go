package sourceroute

import (
	"syscall"
	"testing"
	"time"
)

// cpuClock reports the process's CPU time per operation next to the wall
// time: on a shared machine a benchmark spends much of its wall time
// descheduled, which says nothing about the code. It is only meaningful for
// loops that allocate nothing (no GC work is counted in).
type cpuClock struct{ start time.Duration }

func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPUClock(b *testing.B) cpuClock { return cpuClock{processCPU(b)} }

func (c cpuClock) report(b *testing.B) {
	b.ReportMetric(float64(processCPU(b)-c.start)/float64(b.N), "cpu-ns/op")
}

// reportPer adds wall and CPU time per unit when one op handles several.
func (c cpuClock) reportPer(b *testing.B, perOp int, unit string) {
	ops := float64(b.N * perOp)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/ops, "ns/"+unit)
	b.ReportMetric(float64(processCPU(b)-c.start)/ops, "cpu-ns/"+unit)
}
