package agent

import (
	"context"
	"time"

	"github.com/vsagent/vsagent/sourceroute"
)

// cpuTimer reads a domain's cumulative CPU time and vCPU count.
type cpuTimer interface {
	CPUTime(ctx context.Context, uuid string) (time.Duration, uint, error)
}

// instanceCounters gives the distribution manager's cumulative counters
// and current flows per instance name.
type instanceCounters interface {
	instanceCounters() (map[string]sourceroute.InstanceCounters, map[string]int64)
}

// loadSampler is the default LoadSampler: CPU utilisation from libvirt's
// CPU time over the poll interval, and the distribution manager's load.
// Both sources are cumulative, so every figure is a difference between
// this poll and the last one.
type loadSampler struct {
	hv   cpuTimer
	dm   instanceCounters // nil: no dataplane figures
	now  func() time.Time
	prev map[string]loadReading // by domain UUID: a recreated instance starts over
}

type loadReading struct {
	at       time.Time
	used     time.Duration
	vcpus    uint
	sent     uint64
	answered uint64        // health probes
	rtt      time.Duration // their round trips, summed
}

func newLoadSampler(hv cpuTimer, now func() time.Time) *loadSampler {
	return &loadSampler{hv: hv, now: now, prev: make(map[string]loadReading)}
}

func (s *loadSampler) SampleLoad(ctx context.Context, insts []Instance) map[string]InstanceLoad {
	var counters map[string]sourceroute.InstanceCounters
	var flows map[string]int64
	if s.dm != nil {
		counters, flows = s.dm.instanceCounters()
	}
	out := make(map[string]InstanceLoad, len(insts))
	seen := make(map[string]bool, len(insts))
	for _, inst := range insts {
		used, vcpus, err := s.hv.CPUTime(ctx, inst.UUID)
		if err != nil {
			continue // stopped or gone: the next poll sees why
		}
		seen[inst.UUID] = true
		c := counters[inst.Name]
		cur := loadReading{at: s.now(), used: used, vcpus: vcpus, sent: c.Sent, answered: c.ProbesAnswered, rtt: c.ProbeRTTTotal}
		load := InstanceLoad{Flows: flows[inst.Name]}
		if answered := c.Returned + c.Notices + c.Timeouts; c.Sent > answered {
			load.AwaitingReturn = c.Sent - answered
		}
		prev, ok := s.prev[inst.UUID]
		s.prev[inst.UUID] = cur
		if ok {
			load.ReturnLatency = meanLatency(prev, cur)
		}
		dt := cur.at.Sub(prev.at)
		// CPU time that went backwards is a restarted domain; a vCPU count
		// that changed mid-interval makes the division meaningless. Either
		// way the next poll has a clean pair.
		if !ok || dt <= 0 || used < prev.used || vcpus == 0 || vcpus != prev.vcpus {
			out[inst.Name] = load
			continue
		}
		load.Sampled = true
		load.CPU = min(100, 100*float64(used-prev.used)/(float64(dt)*float64(vcpus)))
		if c.Sent >= prev.sent {
			load.PPS = float64(c.Sent-prev.sent) / dt.Seconds()
		}
		out[inst.Name] = load
	}
	for uuid := range s.prev {
		if !seen[uuid] {
			delete(s.prev, uuid)
		}
	}
	return out
}

// meanLatency is the mean round trip of the health probes answered between
// two readings; 0 when none was (a silent instance is the health check's
// business, not a load).
func meanLatency(prev, cur loadReading) time.Duration {
	if cur.answered <= prev.answered || cur.rtt < prev.rtt {
		return 0 // none answered, or the counters started over
	}
	return (cur.rtt - prev.rtt) / time.Duration(cur.answered-prev.answered)
}
