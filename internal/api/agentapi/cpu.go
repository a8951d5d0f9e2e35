package agentapi

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/hypervisor"
)

// CPUTimer reads a domain's cumulative CPU time and vCPU count;
// *hypervisor.Conn is one.
type CPUTimer interface {
	CPUTime(ctx context.Context, uuid string) (time.Duration, uint, error)
}

// Instances lists the appliance instances to sample; (*agent.Agent).Appliances
// is one.
type Instances func() []agent.ApplianceInfo

// CPUSampler keeps the CPU utilisation of every running appliance instance
// over its last sampling interval. libvirt reports only cumulative CPU time,
// so utilisation needs two samples; sampling in the background at a steady
// interval gives every reader the same recent figure instead of an average
// over whatever gap separated two operator commands.
type CPUSampler struct {
	hv        CPUTimer
	instances Instances
	interval  time.Duration
	now       func() time.Time
	log       *slog.Logger

	mu   sync.Mutex
	last map[string]cpuSample
	util map[string]float64
}

type cpuSample struct {
	at    time.Time
	used  time.Duration
	vcpus uint
}

// NewCPUSampler samples the running instances that list returns every
// interval (the [scaling] poll_interval is the natural choice).
func NewCPUSampler(hv CPUTimer, list Instances, interval time.Duration, log *slog.Logger) *CPUSampler {
	if log == nil {
		log = slog.Default()
	}
	return &CPUSampler{
		hv: hv, instances: list, interval: interval, now: time.Now, log: log,
		last: make(map[string]cpuSample), util: make(map[string]float64),
	}
}

// Run samples until ctx ends.
func (s *CPUSampler) Run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		s.Sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sample takes one sample of every running instance and updates their
// utilisation. An instance that stopped or vanished loses its figure; one
// whose CPU time went backwards (it restarted) starts over.
func (s *CPUSampler) Sample(ctx context.Context) {
	running := make(map[string]bool)
	for _, inst := range s.instances() {
		if inst.State != hypervisor.StateRunning.String() {
			continue
		}
		running[inst.UUID] = true
		used, vcpus, err := s.hv.CPUTime(ctx, inst.UUID)
		if err != nil {
			s.log.Debug("cpu sample failed", "appliance_instance", inst.Name, "error", err)
			s.forget(inst.UUID)
			continue
		}
		s.record(inst.UUID, cpuSample{at: s.now(), used: used, vcpus: vcpus})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for uuid := range s.last {
		if !running[uuid] {
			delete(s.last, uuid)
			delete(s.util, uuid)
		}
	}
}

func (s *CPUSampler) record(uuid string, cur cpuSample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, ok := s.last[uuid]
	s.last[uuid] = cur
	wall := cur.at.Sub(prev.at)
	if !ok || wall <= 0 || cur.vcpus == 0 || cur.used < prev.used {
		delete(s.util, uuid)
		return
	}
	s.util[uuid] = float64(cur.used-prev.used) / (float64(wall) * float64(cur.vcpus))
}

func (s *CPUSampler) forget(uuid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.last, uuid)
	delete(s.util, uuid)
}

// CPUUtilisation is the instance's CPU use over the last interval as a
// fraction of its vCPUs; false until two samples exist.
func (s *CPUSampler) CPUUtilisation(uuid string) (float64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.util[uuid]
	return u, ok
}
