package config

import (
	"fmt"
	"net/netip"
	"path"
	"time"
)

// DefaultPath is where the daemon looks for its configuration.
const DefaultPath = "/etc/vsagent/vsagent.toml"

// Config is a complete, validated configuration.
type Config struct {
	Agent      Agent
	Dataplane  Dataplane
	Intercept  Intercept
	Metrics    Metrics
	Scaling    Scaling
	Appliances []Appliance // [[appliance]], in file order (main file, then conf.d)
	Policies   []Policy    // [[policy]], in file order, which is the order of glob matching
	Files      []string    // the files that were read, in order
}

// Agent is the [agent] table.
type Agent struct {
	LibvirtURI string // libvirt_uri
	// GateTimeout is how long a guest may wait for its appliances before an
	// error is logged; the guest stays paused and retries continue.
	GateTimeout    time.Duration // gate_timeout
	ResyncInterval time.Duration // resync_interval
	StateDir       string        // state_dir
	Socket         string        // socket: the control API's unix socket
	LogLevel       string        // log_level: debug|info|warn|error
	// HookFailure is what the libvirt qemu hook does when the agent does
	// not answer in time for a guest whose policy needs inspection:
	// "closed" refuses the start or migration, "open" lets it proceed.
	HookFailure string // hook_failure: closed|open
}

// HookSocket is where the agent answers libvirt's qemu hook: next to the
// control socket but separate, so that a hook's short deadline never waits
// behind an operator's request.
func (a Agent) HookSocket() string { return a.Socket + hookSocketSuffix }

const hookSocketSuffix = ".hook"

// Dataplane is the [dataplane] table: the distribution manager. There is
// deliberately no fail-open switch: the DM always fails closed.
type Dataplane struct {
	EtherType       uint16        // ethertype of the source-route header
	MaxHops         int           // max_hops: route entries, the DM included
	ReturnTimeout   time.Duration // return_timeout: how long an appliance may hold a frame
	FlowIdleTimeout time.Duration // flow_idle_timeout
	MaxFlows        int           // max_flows
	Workers         int           // workers; 0 means one per CPU
	Port            string        // port: the DM's own interface
	// FastPath lets the kernel forward established flows (XDP on the
	// ports guest frames arrive on, and on appliance ports for chains);
	// where it cannot, those flows stay on the userspace path.
	FastPath bool // fast_path
	// FastPathAfter is how many frames a flow direction takes on the
	// userspace path before it is offloaded.
	FastPathAfter int           // fast_path_after
	ProbeInterval time.Duration // probe_interval: how often each appliance instance gets a health probe
	ProbeTimeout  time.Duration // probe_timeout: how long a probe's answer may take; <= ProbeInterval
	ProbeMisses   int           // probe_misses: probes missed in a row that make an instance silent
}

// Intercept is the [intercept] table.
type Intercept struct {
	Backend string // backend: tc-redirect|macvtap|switchdev|sriov-vlan
	Uplink  string // uplink: where frames to non-local destinations go; may be empty
}

// Metrics is the [metrics] table.
type Metrics struct {
	Listen string // listen: host:port of the metrics endpoint; empty turns it off
}

// Scaling is the [scaling] table: appliance elasticity and its host budget.
type Scaling struct {
	PollInterval      time.Duration // poll_interval
	UpperCPU          float64       // upper_cpu: percent of an instance's vCPUs above which it grows
	LowerCPU          float64       // lower_cpu: percent below which it shrinks; < UpperCPU
	Hold              time.Duration // hold: how long a threshold must be crossed before acting
	Cooldown          time.Duration // cooldown: minimum time between two actions on one appliance
	HostCPUPercent    float64       // host_cpu_percent: budget of host CPU for all appliances
	HostMemoryPercent float64       // host_memory_percent: budget of host memory for all appliances
}

// Appliance kinds.
const (
	KindHeader = "header" // speaks the source-route header
	KindWire   = "wire"   // plain bump in the wire; the DM strips and restores the header
)

// What the DM does with a chain step whose appliance has no healthy instance.
const (
	FailureBlock  = "block"
	FailureBypass = "bypass"
)

// Appliance is one [[appliance]]: a VSA type and its template.
type Appliance struct {
	Name     string // name; instances are named vsa-<name>-<n>
	Template string // template, as written: relative to the declaring file
	// TemplatePath is where the template was read from: an absolute path
	// when loaded from the file system, the path inside the fs.FS otherwise.
	TemplatePath string
	// TemplateXML is the template's content, read and validated at load
	// time so that a later reload cannot change it behind the agent's back.
	TemplateXML  string
	Kind         string // kind: header|wire
	VCPUs        int    // vcpus
	MaxVCPUs     int    // max_vcpus >= vcpus
	MemoryKiB    uint64 // memory
	MaxMemoryKiB uint64 // max_memory >= memory
	MaxInstances int    // max_instances
	OnFailure    string // on_failure: block|bypass
	Position     Position
}

// What happens to the source guest when an appliance does not return a frame
// in time or sends a drop notice.
const (
	OnTimeoutAlert = "alert"
	OnTimeoutBlock = "block"
)

// Policy is one [[policy]].
type Policy struct {
	Name string // name; what a guest's metadata binding refers to
	// Chain is the ordered appliances for traffic no classifier matches;
	// empty means no inspection, but the guest is still managed.
	Chain       []string
	Match       Match        // [policy.match]
	Classifiers []Classifier // [[policy.classifier]], first match wins
	Symmetric   bool         // symmetric: replies take the reverse chain
	OnTimeout   string       // on_timeout: alert|block
	BlockFor    time.Duration
	Position    Position
}

// MatchesDomain reports whether one of the policy's domain globs matches a
// domain name. A metadata binding takes precedence over globs; that is the
// caller's concern.
func (p *Policy) MatchesDomain(name string) bool { return p.MatchingGlob(name) != "" }

// MatchingGlob returns the first of the policy's domain globs that matches
// name, or "" — which glob matched is what an operator asks "why?" about.
func (p *Policy) MatchingGlob(name string) string {
	for _, g := range p.Match.Domains {
		if ok, _ := path.Match(g, name); ok {
			return g
		}
	}
	return ""
}

// Match is [policy.match].
type Match struct {
	Domains []string // domains: path.Match globs on domain names
}

// Traffic directions, seen from the guest.
const (
	DirectionEgress  = "egress"
	DirectionIngress = "ingress"
	DirectionBoth    = "both"
)

// Classifier is one [[policy.classifier]]: traffic it matches takes its
// chain instead of the policy's. Empty Ports or CIDRs match everything.
type Classifier struct {
	Direction string   // direction: egress|ingress|both
	Protocol  string   // protocol as written: any, a name or a number
	Ports     []string // ports: remote ports and ranges, as written
	CIDRs     []string // cidrs: remote prefixes, as written
	Chain     []string // chain; empty means no inspection for this traffic

	ProtocolNumber int // IP protocol number, or AnyProtocol
	PortRanges     []PortRange
	Prefixes       []netip.Prefix
}

// Position is where something was declared.
type Position struct {
	File string
	Line int
}

func (p Position) String() string { return fmt.Sprintf("%s:%d", p.File, p.Line) }

// defaults returns the configuration an empty main file yields.
func defaults() *Config {
	return &Config{
		Agent: Agent{
			LibvirtURI:     "qemu:///system",
			GateTimeout:    2 * time.Minute,
			ResyncInterval: 5 * time.Minute,
			StateDir:       "/var/lib/vsagent",
			Socket:         "/run/vsagent/vsagent.sock",
			LogLevel:       "info",
			HookFailure:    "closed",
		},
		Dataplane: Dataplane{
			EtherType:       0x88B5,
			MaxHops:         16,
			ReturnTimeout:   250 * time.Millisecond,
			FlowIdleTimeout: 60 * time.Second,
			MaxFlows:        1_000_000,
			Workers:         0,
			Port:            "vsa-dm0",
			FastPath:        true,
			FastPathAfter:   8,
			ProbeInterval:   time.Second,
			ProbeTimeout:    500 * time.Millisecond,
			ProbeMisses:     3,
		},
		Intercept: Intercept{Backend: "tc-redirect"},
		Scaling: Scaling{
			PollInterval:      10 * time.Second,
			UpperCPU:          80,
			LowerCPU:          20,
			Hold:              30 * time.Second,
			Cooldown:          2 * time.Minute,
			HostCPUPercent:    10,
			HostMemoryPercent: 10,
		},
	}
}

// Policy returns the policy with the given name.
func (c *Config) Policy(name string) (*Policy, bool) {
	for i := range c.Policies {
		if c.Policies[i].Name == name {
			return &c.Policies[i], true
		}
	}
	return nil, false
}

// Appliance returns the appliance with the given name.
func (c *Config) Appliance(name string) (*Appliance, bool) {
	for i := range c.Appliances {
		if c.Appliances[i].Name == name {
			return &c.Appliances[i], true
		}
	}
	return nil, false
}

// Summary describes the configuration in one line, for logs and
// check-config.
func (c *Config) Summary() string {
	return fmt.Sprintf("%s, %s, backend %s, from %s",
		plural(len(c.Appliances), "appliance", "appliances"),
		plural(len(c.Policies), "policy", "policies"),
		c.Intercept.Backend,
		plural(len(c.Files), "file", "files"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
