package agentapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/vsagent/vsagent/agent"
)

// scriptedCPU returns, per UUID, the CPU time the test sets.
type scriptedCPU struct {
	used  map[string]time.Duration
	vcpus uint
	fail  map[string]bool
}

func (s *scriptedCPU) CPUTime(_ context.Context, uuid string) (time.Duration, uint, error) {
	if s.fail[uuid] {
		return 0, 0, errors.New("domain vanished")
	}
	return s.used[uuid], s.vcpus, nil
}

func TestCPUSampler(t *testing.T) {
	ctx := context.Background()
	hv := &scriptedCPU{used: map[string]time.Duration{"a": 0, "b": 0}, vcpus: 2, fail: map[string]bool{}}
	instances := []agent.ApplianceInfo{{UUID: "a", State: "running"}, {UUID: "b", State: "running"}, {UUID: "c", State: "shut off"}}
	clock := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s := NewCPUSampler(hv, func() []agent.ApplianceInfo { return instances }, 10*time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.now = func() time.Time { return clock }

	s.Sample(ctx)
	if _, ok := s.CPUUtilisation("a"); ok {
		t.Fatal("utilisation after a single sample")
	}

	// 10 s of wall time on 2 vCPUs is 20 s of CPU capacity.
	clock = clock.Add(10 * time.Second)
	hv.used["a"] = 5 * time.Second
	hv.used["b"] = 20 * time.Second
	s.Sample(ctx)
	for uuid, want := range map[string]float64{"a": 0.25, "b": 1} {
		got, ok := s.CPUUtilisation(uuid)
		if !ok || math.Abs(got-want) > 1e-9 {
			t.Errorf("utilisation of %s = %v, %v; want %v", uuid, got, ok, want)
		}
	}
	if _, ok := s.CPUUtilisation("c"); ok {
		t.Error("a stopped instance has a utilisation")
	}

	// a restarted (CPU time went back), b vanished.
	clock = clock.Add(10 * time.Second)
	hv.used["a"] = time.Second
	hv.fail["b"] = true
	s.Sample(ctx)
	if u, ok := s.CPUUtilisation("a"); ok {
		t.Errorf("utilisation %v across a restart, want none until the next sample", u)
	}
	if _, ok := s.CPUUtilisation("b"); ok {
		t.Error("a failing instance kept its utilisation")
	}

	clock = clock.Add(10 * time.Second)
	hv.used["a"] = 3 * time.Second
	instances = instances[:1]
	s.Sample(ctx)
	if got, ok := s.CPUUtilisation("a"); !ok || math.Abs(got-0.1) > 1e-9 {
		t.Errorf("utilisation of a after the restart = %v, %v; want 0.1", got, ok)
	}
	if len(s.last) != 1 {
		t.Errorf("sampler keeps %d instances, want only the one still listed", len(s.last))
	}
}
