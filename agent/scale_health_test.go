package agent

import (
	"context"
	"testing"
	"time"

	"github.com/vsagent/vsagent/sourceroute"
)

func TestSilenceDecision(t *testing.T) {
	type ic = sourceroute.InstanceCounters
	prev := silenceReading{sent: 100, answered: 90, timeouts: 2}
	tests := []struct {
		name   string
		c      ic
		had    bool
		marked bool
		silent bool
	}{
		{"answers probes and frames", ic{Sent: 150, Returned: 140, ProbesAnswered: 9}, true, false, false},
		{"misses fewer probes than probe_misses", ic{Sent: 100, Returned: 90, Timeouts: 2, ProbeMissStreak: 2}, true, false, false},
		{"misses probe_misses probes without traffic", ic{Sent: 100, Returned: 90, Timeouts: 2, ProbeMissStreak: 3}, true, false, true},
		{"marked by the dataplane, answering again since", ic{Sent: 100, Returned: 90, Timeouts: 2}, true, true, true},
		{"takes frames, returns none, timeouts", ic{Sent: 120, Returned: 90, Timeouts: 5}, true, false, true},
		{"takes frames, returns none, no timeout yet", ic{Sent: 120, Returned: 90, Timeouts: 2}, true, false, false},
		{"takes frames, answers with notices", ic{Sent: 120, Returned: 90, Notices: 20, Timeouts: 5}, true, false, false},
		{"first poll: no reading to compare", ic{Sent: 120, Returned: 90, Timeouts: 5}, false, false, false},
		{"no traffic, no probes", ic{Sent: 100, Returned: 90, Timeouts: 2}, true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := silence(tt.c, prev, tt.had, 3, tt.marked)
			if (msg != "") != tt.silent {
				t.Errorf("silence = %q, want silent %v", msg, tt.silent)
			}
		})
	}
}

func TestProbedSince(t *testing.T) {
	type ic = sourceroute.InstanceCounters
	tests := []struct {
		name  string
		c     ic
		since uint64
		want  bool
	}{
		{"not probed at all", ic{}, 0, true},
		{"no answer since", ic{ProbesSent: 5, ProbesAnswered: 4, ProbeMissStreak: 1}, 4, false},
		{"answered, then missed", ic{ProbesSent: 7, ProbesAnswered: 5, ProbeMissStreak: 1}, 4, false},
		{"answered since, no miss after", ic{ProbesSent: 7, ProbesAnswered: 5}, 4, true},
		{"counters started over with the new instance", ic{ProbesSent: 1, ProbesAnswered: 1}, 40, true},
		{"sent, not answered yet", ic{ProbesSent: 41, ProbesAnswered: 40}, 40, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := probedSince(tt.c, tt.since); got != tt.want {
				t.Errorf("probedSince = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMeanLatency(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name      string
		prev, cur loadReading
		want      time.Duration
	}{
		{"two answers", loadReading{answered: 10, rtt: 50 * ms}, loadReading{answered: 12, rtt: 56 * ms}, 3 * ms},
		{"none answered", loadReading{answered: 10, rtt: 50 * ms}, loadReading{answered: 10, rtt: 50 * ms}, 0},
		{"counters started over", loadReading{answered: 10, rtt: 50 * ms}, loadReading{answered: 11, rtt: 1 * ms}, 0},
		{"fewer answers than before", loadReading{answered: 10, rtt: 50 * ms}, loadReading{answered: 2, rtt: 60 * ms}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := meanLatency(tt.prev, tt.cur); got != tt.want {
				t.Errorf("meanLatency = %v, want %v", got, tt.want)
			}
		})
	}
}

// fixedCPU is a cpuTimer whose instances all used the same CPU time.
type fixedCPU struct{ used time.Duration }

func (f *fixedCPU) CPUTime(context.Context, string) (time.Duration, uint, error) {
	return f.used, 1, nil
}

// fixedCounters is an instanceCounters with settable figures.
type fixedCounters map[string]sourceroute.InstanceCounters

func (f fixedCounters) instanceCounters() (map[string]sourceroute.InstanceCounters, map[string]int64) {
	return f, nil
}

// The default sampler turns the probes' round trips into the instance's
// return latency, which the decision weighs against return_timeout.
func TestLoadSamplerReturnLatencyFromProbes(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	cpu := &fixedCPU{}
	counters := fixedCounters{"vsa-ips-1": {ProbesAnswered: 4, ProbeRTTTotal: 2 * time.Millisecond}}
	s := newLoadSampler(cpu, func() time.Time { return now })
	s.dm = counters
	insts := []Instance{{Name: "vsa-ips-1", UUID: "u1"}}
	if got := s.SampleLoad(context.Background(), insts)["vsa-ips-1"].ReturnLatency; got != 0 {
		t.Fatalf("first poll: return latency %v, want none yet", got)
	}
	now = now.Add(10 * time.Second)
	cpu.used = time.Second
	counters["vsa-ips-1"] = sourceroute.InstanceCounters{ProbesAnswered: 14, ProbeRTTTotal: 202 * time.Millisecond}
	load := s.SampleLoad(context.Background(), insts)["vsa-ips-1"]
	if load.ReturnLatency != 20*time.Millisecond || !load.Sampled || load.CPU != 10 {
		t.Errorf("second poll: %+v, want 20ms return latency and 10 %% CPU", load)
	}
}
