package agent

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"
)

// BenchmarkThousandGuests defines and starts 1000 guests at once on the test
// driver and measures the time until the agent has gated and resumed every
// one of them, and the process's peak RSS meanwhile (agent and the
// in-process test driver together).
func BenchmarkThousandGuests(b *testing.B) {
	const guests = 1000
	for range b.N {
		h := newHarness(b)
		h.start(h.config(baseConfig))
		resetPeakRSS(b)
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for i := range guests {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ctx := context.Background()
				d, err := h.conn.Define(ctx, &libvirtxml.Domain{
					Type:   "test",
					Name:   fmt.Sprintf("web-%04d", i),
					Memory: &libvirtxml.DomainMemory{Value: 65536, Unit: "KiB"},
					VCPU:   &libvirtxml.DomainVCPU{Value: 1},
					OS:     &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"}},
				})
				if err != nil {
					b.Error(err)
					return
				}
				if err := h.conn.Start(ctx, d.UUID); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		deadline := time.Now().Add(5 * time.Minute)
		for {
			n := 0
			for _, g := range h.agent.Guests() {
				if g.State == GuestInspected {
					n++
				}
			}
			if n == guests {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("only %d of %d guests inspected", n, guests)
			}
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.ReportMetric(elapsed.Seconds()*1000, "ms-all-resumed")
		b.ReportMetric(float64(peakRSSKiB(b))/1024, "peak-RSS-MiB")
		h.stop()
	}
}

func resetPeakRSS(b *testing.B) {
	// Writing 5 to clear_refs resets VmHWM (Linux ≥ 4.0), so the peak is
	// this run's, not that of whatever ran before in the process.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Logf("cannot reset peak RSS: %v", err)
	}
}

func peakRSSKiB(b *testing.B) int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}
