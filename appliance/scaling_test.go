package appliance

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var (
	testScaling = ScalingConfig{
		UpperLoad: 80, LowerLoad: 20, Hold: 30 * time.Second, Cooldown: 2 * time.Minute,
		DrainTimeout: 5 * time.Minute, LatencyCeiling: 100 * time.Millisecond,
		HostCPUPercent: 50, HostMemoryPercent: 50,
	}
	testLimits = ScalingLimits{VCPUs: 1, MaxVCPUs: 3, MemoryKiB: 1 << 20, MaxMemoryKiB: 3 << 20, MaxInstances: 2}
	testHost   = HostResources{CPUs: 16, MemoryKiB: 32 << 20}
	t0         = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

// inst is an instance at size v vCPUs (memory on the base-to-max line)
// with load cpu; modifiers adjust the rest.
func inst(index, v int, cpu float64, mods ...func(*InstanceSample)) InstanceSample {
	in := InstanceSample{
		Name: InstanceName("ips", index), Index: index, VCPUs: v, MemoryKiB: memoryFor(testLimits, v),
		InstanceLoad: InstanceLoad{CPU: cpu, Sampled: true, Flows: 10}, Healthy: true,
	}
	for _, m := range mods {
		m(&in)
	}
	return in
}

func draining(flows int64) func(*InstanceSample) {
	return func(in *InstanceSample) { in.Draining, in.Flows = true, flows }
}

func definedMax(v int, kib uint64) func(*InstanceSample) {
	return func(in *InstanceSample) { in.MaxVCPUs, in.MaxMemoryKiB = v, kib }
}

func unhealthy(in *InstanceSample) { in.Healthy = false }
func unsampled(in *InstanceSample) { in.Sampled = false }
func latency(d time.Duration) func(*InstanceSample) {
	return func(in *InstanceSample) { in.ReturnLatency = d }
}

type poll struct {
	at        time.Duration // since t0
	instances []InstanceSample
	want      []string          // "kind instance vcpus memKiB"
	others    []ApplianceSample // further appliances sharing the host budget
}

func sharing(p poll, others ...ApplianceSample) poll {
	p.others = others
	return p
}

func describe(acts []ScaleAction) []string {
	var out []string
	for _, a := range acts {
		out = append(out, fmt.Sprintf("%s %s %d %d", a.Kind, a.Instance, a.VCPUs, a.MemoryKiB))
	}
	return out
}

func TestDecideScaling(t *testing.T) {
	fwAt90 := ApplianceSample{Name: "fw", Limits: ScalingLimits{VCPUs: 1, MaxVCPUs: 1, MemoryKiB: 1 << 20, MaxMemoryKiB: 1 << 20, MaxInstances: 4},
		Instances: []InstanceSample{inst(1, 1, 90, func(in *InstanceSample) { in.Name = "vsa-fw-1" })}}
	tests := []struct {
		name   string
		cfg    ScalingConfig
		limits ScalingLimits
		host   HostResources
		polls  []poll
	}{
		{
			name: "above the upper threshold for the hold time adds a vCPU and its memory",
			polls: []poll{
				{0, []InstanceSample{inst(1, 1, 90)}, nil, nil},
				{10 * time.Second, []InstanceSample{inst(1, 1, 95)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 1, 85)}, []string{"scale-up vsa-ips-1 2 2097152"}, nil},
			},
		},
		{
			name: "a dip below the threshold restarts the hold",
			polls: []poll{
				{0, []InstanceSample{inst(1, 1, 90)}, nil, nil},
				{20 * time.Second, []InstanceSample{inst(1, 1, 70)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 1, 90)}, nil, nil},
				{50 * time.Second, []InstanceSample{inst(1, 1, 90)}, nil, nil},
				{60 * time.Second, []InstanceSample{inst(1, 1, 90)}, []string{"scale-up vsa-ips-1 2 2097152"}, nil},
			},
		},
		{
			name: "the cooldown spaces two steps even under a sustained load",
			polls: []poll{
				{0, []InstanceSample{inst(1, 1, 90)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 1, 90)}, []string{"scale-up vsa-ips-1 2 2097152"}, nil},
				{60 * time.Second, []InstanceSample{inst(1, 2, 90)}, nil, nil},
				{149 * time.Second, []InstanceSample{inst(1, 2, 90)}, nil, nil},
				{150 * time.Second, []InstanceSample{inst(1, 2, 90)}, []string{"scale-up vsa-ips-1 3 3145728"}, nil},
			},
		},
		{
			name: "return latency counts as load when the CPU is idle",
			polls: []poll{
				{0, []InstanceSample{inst(1, 1, 5, latency(90*time.Millisecond))}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 1, 5, latency(95*time.Millisecond))}, []string{"scale-up vsa-ips-1 2 2097152"}, nil},
			},
		},
		{
			name: "at the maxima a second instance is started at the base size",
			polls: []poll{
				{0, []InstanceSample{inst(1, 3, 90)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 3, 90)}, []string{"scale-out  1 1048576"}, nil},
			},
		},
		{
			name: "an instance defined with lower maxima than the configuration's stops at its own",
			polls: []poll{
				{0, []InstanceSample{inst(1, 2, 90, definedMax(2, 2<<20))}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 2, 90, definedMax(2, 2<<20))}, []string{"scale-out  1 1048576"}, nil},
			},
		},
		{
			name: "an instance defined with higher maxima than the configuration's stops at the configuration's",
			polls: []poll{
				{0, []InstanceSample{inst(1, 3, 90, definedMax(8, 8<<20))}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 3, 90, definedMax(8, 8<<20))}, []string{"scale-out  1 1048576"}, nil},
			},
		},
		{
			name: "the busiest instance that can grow grows first",
			polls: []poll{
				{0, []InstanceSample{inst(1, 3, 95), inst(2, 1, 85)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 3, 95), inst(2, 1, 85)}, []string{"scale-up vsa-ips-2 2 2097152"}, nil},
			},
		},
		{
			name: "max_instances reached: a limit event, repeated once per cooldown",
			polls: []poll{
				{0, []InstanceSample{inst(1, 3, 90), inst(2, 3, 90)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 3, 90), inst(2, 3, 90)}, []string{"scale-limit  0 0"}, nil},
				{60 * time.Second, []InstanceSample{inst(1, 3, 90), inst(2, 3, 90)}, nil, nil},
				{150 * time.Second, []InstanceSample{inst(1, 3, 90), inst(2, 3, 90)}, []string{"scale-limit  0 0"}, nil},
			},
		},
		{
			name: "an unhealthy instance still counts against max_instances",
			polls: []poll{
				{0, []InstanceSample{inst(1, 3, 90), inst(2, 1, 0, unhealthy)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 3, 90), inst(2, 1, 0, unhealthy)}, []string{"scale-limit  0 0"}, nil},
			},
		},
		{
			name: "the host budget refuses a vCPU",
			host: HostResources{CPUs: 4, MemoryKiB: 32 << 20}, // 2 vCPUs of budget
			polls: []poll{
				{0, []InstanceSample{inst(1, 2, 90)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 2, 90)}, []string{"budget-exceeded vsa-ips-1 3 3145728"}, nil},
				{60 * time.Second, []InstanceSample{inst(1, 2, 90)}, nil, nil},
			},
		},
		{
			name: "the host budget refuses memory for another instance",
			host: HostResources{CPUs: 16, MemoryKiB: 7 << 20}, // 3.5 GiB of budget
			polls: []poll{
				{0, []InstanceSample{inst(1, 3, 90)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 3, 90)}, []string{"budget-exceeded  1 1048576"}, nil},
			},
		},
		{
			name:   "the budget is shared: what one appliance takes the next cannot",
			host:   HostResources{CPUs: 6, MemoryKiB: 32 << 20}, // 3 vCPUs of budget
			limits: ScalingLimits{VCPUs: 1, MaxVCPUs: 1, MemoryKiB: 1 << 20, MaxMemoryKiB: 1 << 20, MaxInstances: 4},
			polls: []poll{
				sharing(poll{0, []InstanceSample{inst(1, 1, 90)}, nil, nil}, fwAt90),
				sharing(poll{30 * time.Second, []InstanceSample{inst(1, 1, 90)}, []string{"scale-out  1 1048576", "budget-exceeded  1 1048576"}, nil}, fwAt90),
			},
		},
		{
			name: "below the lower threshold a duplicate is drained first, then deleted when idle",
			polls: []poll{
				{0, []InstanceSample{inst(1, 2, 10), inst(2, 1, 10)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 2, 10), inst(2, 1, 10)}, []string{"scale-in-drain vsa-ips-2 0 0"}, nil},
				{40 * time.Second, []InstanceSample{inst(1, 2, 10), inst(2, 1, 0, draining(3))}, nil, nil},
				{50 * time.Second, []InstanceSample{inst(1, 2, 10), inst(2, 1, 0, draining(0))}, []string{"scale-in vsa-ips-2 0 0"}, nil},
			},
		},
		{
			name: "a drain that never goes idle ends at the drain timeout",
			polls: []poll{
				{0, []InstanceSample{inst(1, 1, 10), inst(2, 1, 10)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 1, 10), inst(2, 1, 10)}, []string{"scale-in-drain vsa-ips-2 0 0"}, nil},
				{329 * time.Second, []InstanceSample{inst(1, 1, 10), inst(2, 1, 0, draining(3))}, nil, nil},
				{330 * time.Second, []InstanceSample{inst(1, 1, 10), inst(2, 1, 0, draining(3))}, []string{"scale-in vsa-ips-2 0 0"}, nil},
			},
		},
		{
			name: "load back up while a duplicate drains takes it back instead of a new one",
			polls: []poll{
				{0, []InstanceSample{inst(1, 3, 90), inst(2, 1, 0, draining(5))}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 3, 90), inst(2, 1, 0, draining(5))}, []string{"scale-in-cancelled vsa-ips-2 0 0"}, nil},
			},
		},
		{
			name: "a drain is taken when the others can carry the work",
			polls: []poll{
				// 2 × 1 vCPU at 19 %: one alone would be at 38 %, below
				// the midpoint of 20 % and 80 %.
				{0, []InstanceSample{inst(1, 1, 19), inst(2, 1, 19)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 1, 19), inst(2, 1, 19)}, []string{"scale-in-drain vsa-ips-2 0 0"}, nil},
			},
		},
		{
			name: "with a narrow band the projected load forbids the same drain",
			cfg:  ScalingConfig{UpperLoad: 30, LowerLoad: 20, Hold: 30 * time.Second, Cooldown: 2 * time.Minute, DrainTimeout: time.Minute, HostCPUPercent: 50, HostMemoryPercent: 50},
			polls: []poll{
				{0, []InstanceSample{inst(1, 1, 19), inst(2, 1, 19)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 1, 19), inst(2, 1, 19)}, nil, nil},
				{300 * time.Second, []InstanceSample{inst(1, 1, 19), inst(2, 1, 19)}, nil, nil},
			},
		},
		{
			name: "with one instance the vCPUs shrink one step at a time, memory with them",
			polls: []poll{
				{0, []InstanceSample{inst(1, 3, 5)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 3, 5)}, []string{"scale-down vsa-ips-1 2 2097152"}, nil},
				{150 * time.Second, []InstanceSample{inst(1, 2, 7)}, nil, nil}, // the hold restarted after the step
				{180 * time.Second, []InstanceSample{inst(1, 2, 7)}, []string{"scale-down vsa-ips-1 1 1048576"}, nil},
				{400 * time.Second, []InstanceSample{inst(1, 1, 3)}, nil, nil},
				{500 * time.Second, []InstanceSample{inst(1, 1, 3)}, nil, nil}, // at the base: nothing left to give
			},
		},
		{
			name: "a shrink that would land above the midpoint is not taken",
			cfg:  ScalingConfig{UpperLoad: 30, LowerLoad: 20, Hold: 30 * time.Second, Cooldown: 2 * time.Minute, DrainTimeout: time.Minute, HostCPUPercent: 50, HostMemoryPercent: 50},
			polls: []poll{
				// 2 vCPUs at 19 % are 38 % of one vCPU: above the midpoint 25 %.
				{0, []InstanceSample{inst(1, 2, 19)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 2, 19)}, nil, nil},
				{10 * time.Minute, []InstanceSample{inst(1, 2, 19)}, nil, nil},
			},
		},
		{
			name: "unsampled and unhealthy instances are not judged",
			polls: []poll{
				{0, []InstanceSample{inst(1, 1, 99, unsampled)}, nil, nil},
				{30 * time.Second, []InstanceSample{inst(1, 1, 99, unsampled)}, nil, nil},
				{60 * time.Second, []InstanceSample{inst(1, 1, 99, unhealthy)}, nil, nil},
				{90 * time.Second, []InstanceSample{inst(1, 1, 99, unhealthy)}, nil, nil},
			},
		},
		{
			name: "between the thresholds nothing ever happens",
			polls: []poll{
				{0, []InstanceSample{inst(1, 2, 50)}, nil, nil},
				{time.Hour, []InstanceSample{inst(1, 2, 79)}, nil, nil},
				{2 * time.Hour, []InstanceSample{inst(1, 2, 21)}, nil, nil},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, lim, host := testScaling, testLimits, testHost
			if tc.cfg != (ScalingConfig{}) {
				cfg = tc.cfg
			}
			if tc.limits != (ScalingLimits{}) {
				lim = tc.limits
			}
			if tc.host != (HostResources{}) {
				host = tc.host
			}
			var st ScalingState
			for _, p := range tc.polls {
				apps := []ApplianceSample{{Name: "ips", Limits: lim, Instances: p.instances}}
				apps = append(apps, p.others...)
				got := describe(DecideScaling(&st, cfg, host, apps, t0.Add(p.at)))
				if diff := cmp.Diff(p.want, got); diff != "" {
					t.Fatalf("at %s (-want +got):\n%s", p.at, diff)
				}
			}
		})
	}
}

func TestScaleKindNames(t *testing.T) {
	for k := ScaleUp; k <= ScaleLimit; k++ {
		if k.String() == "" || k.String()[0] == 'S' {
			t.Errorf("kind %d has no name", k)
		}
	}
	if got := ScaleKind(200).String(); got != "ScaleKind(200)" {
		t.Errorf("unknown kind: %q", got)
	}
}

// simulation applies decisions to a model host: a fixed amount of work
// (in vCPUs' worth) spread evenly over the active instances, with noise.
type simulation struct {
	cfg       ScalingConfig
	lim       ScalingLimits
	host      HostResources
	instances []InstanceSample
	next      int
}

func (s *simulation) sample(work, noise float64) []InstanceSample {
	capacity := 0
	for _, in := range s.instances {
		if !in.Draining {
			capacity += in.VCPUs
		}
	}
	out := make([]InstanceSample, len(s.instances))
	for i, in := range s.instances {
		in.CPU = 0
		if !in.Draining && capacity > 0 {
			in.CPU = min(100, 100*work/float64(capacity)*(1+noise))
		}
		out[i] = in
	}
	return out
}

func (s *simulation) apply(t *testing.T, acts []ScaleAction) {
	for _, a := range acts {
		i := -1
		for j, in := range s.instances {
			if in.Name == a.Instance {
				i = j
			}
		}
		switch a.Kind {
		case ScaleUp, ScaleDown:
			s.instances[i].VCPUs, s.instances[i].MemoryKiB = a.VCPUs, a.MemoryKiB
		case ScaleOut:
			s.next++
			s.instances = append(s.instances, InstanceSample{Name: InstanceName("ips", s.next), Index: s.next,
				VCPUs: a.VCPUs, MemoryKiB: a.MemoryKiB, InstanceLoad: InstanceLoad{Sampled: true, Flows: 1}, Healthy: true})
		case ScaleDrain:
			s.instances[i].Draining, s.instances[i].Flows = true, 0
		case ScaleUndrain:
			s.instances[i].Draining, s.instances[i].Flows = false, 1
		case ScaleDelete:
			s.instances = append(s.instances[:i], s.instances[i+1:]...)
		}
	}
	vcpus, mem := 0, uint64(0)
	for _, in := range s.instances {
		if in.VCPUs > s.lim.MaxVCPUs || in.MemoryKiB > s.lim.MaxMemoryKiB || in.VCPUs < s.lim.VCPUs || in.MemoryKiB < s.lim.MemoryKiB {
			t.Fatalf("instance %s outside its limits: %d vCPUs, %d KiB", in.Name, in.VCPUs, in.MemoryKiB)
		}
		vcpus += in.VCPUs
		mem += in.MemoryKiB
	}
	if len(s.instances) > s.lim.MaxInstances {
		t.Fatalf("%d instances, max_instances %d", len(s.instances), s.lim.MaxInstances)
	}
	if float64(vcpus) > float64(s.host.CPUs)*s.cfg.HostCPUPercent/100 || float64(mem) > float64(s.host.MemoryKiB)*s.cfg.HostMemoryPercent/100 {
		t.Fatalf("budget exceeded: %d vCPUs, %d KiB of %+v", vcpus, mem, s.host)
	}
}

func direction(k ScaleKind) int {
	switch k {
	case ScaleUp, ScaleOut, ScaleUndrain:
		return 1
	case ScaleDown, ScaleDrain:
		return -1
	}
	return 0
}

// checkScaling runs a simulation from a random seed: the sizes always stay
// within the limits and the budget, and a load that is steady apart from
// noise smaller than the hysteresis never reverses the direction of
// scaling.
func checkScaling(t *testing.T, seed uint64, upper, lower uint8, maxV, maxI, hostCPUs uint8, work uint16) {
	r := rand.New(rand.NewPCG(seed, seed>>32))
	up := 30 + float64(upper%70)           // 30..99
	low := float64(lower) / 255 * up * 0.6 // keeps the noise inside the band
	cfg := ScalingConfig{UpperLoad: up, LowerLoad: low, Hold: 20 * time.Second, Cooldown: time.Minute,
		DrainTimeout: time.Minute, HostCPUPercent: 50, HostMemoryPercent: 50}
	lim := ScalingLimits{VCPUs: 1, MaxVCPUs: 1 + int(maxV%8), MemoryKiB: 1 << 20, MaxInstances: 1 + int(maxI%4)}
	lim.MaxMemoryKiB = lim.MemoryKiB * uint64(lim.MaxVCPUs)
	sim := &simulation{cfg: cfg, lim: lim, host: HostResources{CPUs: 2 + int(hostCPUs%64), MemoryKiB: 64 << 20}, next: 1}
	sim.instances = []InstanceSample{{Name: InstanceName("ips", 1), Index: 1, VCPUs: 1, MemoryKiB: 1 << 20, InstanceLoad: InstanceLoad{Sampled: true, Flows: 1}, Healthy: true}}
	steady := float64(work%4000) / 100 // 0..40 vCPUs of work
	var st ScalingState
	last := 0
	for i := range 400 {
		noise := (r.Float64()*2 - 1) * 0.04
		acts := DecideScaling(&st, cfg, sim.host, []ApplianceSample{{Name: "ips", Limits: lim, Instances: sim.sample(steady, noise)}}, t0.Add(time.Duration(i)*10*time.Second))
		for _, a := range acts {
			d := direction(a.Kind)
			if d != 0 && last != 0 && d != last {
				t.Fatalf("flap at poll %d: %s after scaling the other way (work %.2f, upper %.0f, lower %.0f, instances %+v)", i, a.Kind, steady, up, low, sim.instances)
			}
			if d != 0 {
				last = d
			}
		}
		sim.apply(t, acts)
	}
}

func TestScalingNeverFlapsNorExceedsLimits(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		checkScaling(t, r.Uint64(), uint8(r.Uint32()), uint8(r.Uint32()), uint8(r.Uint32()), uint8(r.Uint32()), uint8(r.Uint32()), uint16(r.Uint32()))
	}
}

func FuzzDecideScaling(f *testing.F) {
	f.Add(uint64(1), uint8(50), uint8(100), uint8(3), uint8(2), uint8(16), uint16(150))
	f.Add(uint64(7), uint8(0), uint8(255), uint8(7), uint8(3), uint8(3), uint16(3999))
	f.Fuzz(func(t *testing.T, seed uint64, upper, lower, maxV, maxI, hostCPUs uint8, work uint16) {
		checkScaling(t, seed, upper, lower, maxV, maxI, hostCPUs, work)
	})
}

// BenchmarkDecideScaling is one poll of a host with 50 appliances of 4
// instances each: the decision's cost is what a poll adds to libvirt's.
func BenchmarkDecideScaling(b *testing.B) {
	var apps []ApplianceSample
	for a := range 50 {
		app := ApplianceSample{Name: fmt.Sprintf("app%d", a), Limits: ScalingLimits{VCPUs: 1, MaxVCPUs: 4, MemoryKiB: 1 << 20, MaxMemoryKiB: 4 << 20, MaxInstances: 4}}
		for i := 1; i <= 4; i++ {
			app.Instances = append(app.Instances, inst(i, 2, float64(10+a), func(in *InstanceSample) { in.Name = InstanceName(app.Name, i) }))
		}
		apps = append(apps, app)
	}
	var st ScalingState
	host := HostResources{CPUs: 512, MemoryKiB: 1 << 30}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		DecideScaling(&st, testScaling, host, apps, t0.Add(time.Duration(i)*10*time.Second))
	}
}
