package sourceroute

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// The distribution manager (DM) forwarding engine: guest frames in, flows
// classified once, frames source-routed through their chain of appliances
// and delivered to their original destination. docs/distribution-manager.md
// describes the behaviour; this file holds the public API.

// Port is one network endpoint of the DM: the shared intercept port, a
// guest's tap or VF representor, the uplink, or an appliance's link.
//
// ReadBatch blocks until at least one frame is available or ctx ends, fills
// out with views of received frames and returns how many; the views stay
// valid until Release. WriteBatch sends frame i as heads[i] followed by
// bodies[i] (heads[i] may be empty) and returns how many frames it sent.
//
// The engine calls ReadBatch and Release from one goroutine per port, and
// WriteBatch from one goroutine at a time per port (it serialises writers),
// but reads and writes of one port may overlap. A Port that also implements
// io.Closer is closed when the engine no longer needs it, and one with an
// `MTU() int` method has frames larger than that MTU dropped before sending
// instead of refused by the kernel.
type Port interface {
	Name() string
	ReadBatch(ctx context.Context, out [][]byte) (int, error)
	Release()
	WriteBatch(heads, bodies [][]byte) (int, error)
}

// PortOpener opens the named port in the DM's network namespace.
type PortOpener func(name string) (Port, error)

// Errors of the engine's control path.
var (
	ErrBadEngineConfig = errors.New("sourceroute: invalid engine configuration")
	ErrBadSnapshot     = errors.New("sourceroute: invalid snapshot")
	// ErrPortUnavailable is wrapped by Update when some ports could not be
	// opened. The rest of the snapshot is in force regardless: instances
	// whose ports are missing count as unhealthy and guests whose ports are
	// missing as not ready, so nothing fails open. Call Update again to
	// retry them.
	ErrPortUnavailable = errors.New("sourceroute: port unavailable")
	ErrEngineRunning   = errors.New("sourceroute: engine already running")
	ErrEngineClosed    = errors.New("sourceroute: engine closed")
)

// Config configures NewEngine. Zero durations and sizes take the defaults
// of vsagent's [dataplane] table.
type Config struct {
	// Codec is the MSR header's EtherType and hop limit.
	Codec Codec
	// Self is the DM's own MAC: the last entry of every route, and the
	// destination of drop notices. Required.
	Self MAC
	// ReturnTimeout is how long frames of a flow may stay inside its chain
	// without any coming back before a timeout Event is raised. Default
	// 250ms.
	ReturnTimeout time.Duration
	// FlowIdleTimeout is how long a flow may go without packets before it
	// is forgotten. Default 60s.
	FlowIdleTimeout time.Duration
	// MaxFlows is the flow table's capacity. Default 1 000 000.
	MaxFlows int
	// MTU is the guests' MTU. Default 1500.
	MTU int
	// LinkMTU is the MTU of the links between the DM and its appliances;
	// default MTU + HeaderLen(Codec's MaxHops), what SOURCE-ROUTE.md asks
	// for. A port with an MTU() method reports its own. A frame whose
	// encapsulation would exceed it is dropped and counted as too_big,
	// never truncated.
	LinkMTU int
	// InterceptPort is where intercepted guest frames arrive (the target
	// of the tc mirred redirects). Optional when every guest interface is
	// Dedicated.
	InterceptPort string
	// UplinkPort is where frames for destinations that are not local
	// guests go, and where frames from such sources arrive. Optional:
	// without it those frames are dropped (no_destination).
	UplinkPort string
	// Open opens ports. Required.
	Open PortOpener
	// OpenTx, if set, opens ports the engine only writes to (guest ports
	// that are not Dedicated), so that they need no receive ring.
	OpenTx PortOpener
	// BatchSize is how many frames one ReadBatch may return. Default 64.
	BatchSize int
	// Logger receives control-path logs and rate-limited data-path errors.
	Logger *slog.Logger
	// Now is the clock; default time.Now. Tests replace it.
	Now func() time.Time
	// Events, if set, receives timeouts, drop notices, blocks, fail-closed
	// drops and bypasses. It is called from one goroutine of Run, never
	// from the data path: events are queued (EventBuffer of them) and
	// counted as lost when the queue is full.
	Events func(Event)
	// EventBuffer is the event queue's length. Default 1024.
	EventBuffer int
	// FastPath, if set, forwards established flows that take no chain in
	// the kernel (see dm_fastpath.go).
	FastPath FastPath
	// FastPathAfter is how many frames a flow direction takes on the
	// userspace path before it is offloaded (default 8). An offload costs
	// system calls (one map update per entry, three for a two-appliance
	// chain, and its counters are read back while it lives) that a flow of
	// a few frames never repays: offloaded on their first frame, a million
	// short flows made the fast path slower than the userspace path.
	FastPathAfter int
	// ProbeInterval is how often each appliance instance is sent a health
	// probe (default 1s; negative: never), ProbeTimeout how long its
	// answer may take (default 500ms), and ProbeMisses how many probes in
	// a row it may miss before EventApplianceSilent (default 3).
	ProbeInterval, ProbeTimeout time.Duration
	ProbeMisses                 int
}

// Defaults of Config.
const (
	DefaultReturnTimeout   = 250 * time.Millisecond
	DefaultFlowIdleTimeout = 60 * time.Second
	DefaultMaxFlows        = 1_000_000
	DefaultMTU             = 1500
	DefaultBatchSize       = 64
	DefaultEventBuffer     = 1024
)

// EventKind says what an Event reports.
type EventKind uint8

const (
	// EventReturnTimeout: frames of a flow went into its chain and none
	// came back within the return timeout. Raised once per episode.
	EventReturnTimeout EventKind = iota + 1
	// EventDropNotice: an appliance dropped a frame and said why.
	EventDropNotice
	// EventGuestBlocked: a guest's new flows are blocked until Until,
	// because its policy says on_timeout = block.
	EventGuestBlocked
	// EventFailClosed: frames of a guest are dropped because its chain is
	// not ready (rate limited: at most one per guest per second).
	EventFailClosed
	// EventBypass: a chain step was skipped because its appliance has no
	// healthy instance and on_failure = bypass (rate limited: at most one
	// per appliance per second).
	EventBypass
	// EventApplianceSilent: an instance that had answered health probes
	// missed Config.ProbeMisses of them in a row. Raised once per run of
	// misses.
	EventApplianceSilent
)

var eventKindNames = [...]string{
	EventReturnTimeout:   "return_timeout",
	EventDropNotice:      "drop_notice",
	EventGuestBlocked:    "guest_blocked",
	EventFailClosed:      "fail_closed",
	EventBypass:          "bypass",
	EventApplianceSilent: "appliance_silent",
}

func (k EventKind) String() string { return label(eventKindNames[:], k) }

// Event is something the operator should hear about.
type Event struct {
	Kind EventKind
	Time time.Time
	// Guest is the guest whose frames the event concerns (the sender of
	// the frame); empty when that is a remote host behind the uplink.
	Guest string
	// Policy is the policy that decides the action.
	Policy string
	// Flow is the flow, oriented as its first packet, and Direction the
	// direction of the frames concerned; HasFlow is false for events not
	// about one flow.
	Flow      FlowKey
	HasFlow   bool
	Direction Direction
	// Appliance and Instance name the appliance that dropped or holds the
	// frames, or (EventBypass, EventFailClosed) that is unavailable.
	Appliance, Instance string
	// Notice is the drop notice's reason.
	Notice NoticeReason
	// Reason is why frames are dropped (EventFailClosed).
	Reason DropReason
	// Until is when a block ends (EventGuestBlocked).
	Until time.Time
	// Suppressed counts events of this kind and subject that the rate
	// limit folded into this one.
	Suppressed uint64
}

// Engine is the DM's forwarding engine. Create it with NewEngine, give it
// its rules with Update, run it with Run, and Close it at the end.
type Engine struct {
	cfg           Config
	codec         Codec
	self          MAC
	log           *slog.Logger
	now           func() time.Time
	t0            time.Time
	linkMTU       int
	returnTimeout int64
	hashSeed      uint64

	table *FlowTable
	slab  *flowSlab

	state   atomic.Pointer[state]
	epoch   atomic.Uint64
	readers atomic.Pointer[[]*readerSlot]

	events     chan Event
	eventsLost atomic.Uint64

	uplink *endpoint // persistent: flows keep pointing at it across updates
	fast   *fastPath // nil without Config.FastPath

	updateMu sync.Mutex // serialises Update and Close; guards the registry
	reg      registry

	mu       sync.Mutex // guards the fields below
	workers  map[*openPort]*worker
	running  bool
	runCtx   context.Context
	runWG    sync.WaitGroup
	retired  *workerCounters // counters of workers that are gone
	maintCtr *workerCounters // the maintenance loop's own counters
	closed   bool
}

// NewEngine checks cfg, allocates the flow table and opens the intercept
// and uplink ports. The engine starts with an empty snapshot: every guest
// frame is dropped until Update says who the guests are.
func NewEngine(cfg Config) (*Engine, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:           cfg,
		codec:         cfg.Codec,
		self:          cfg.Self,
		log:           cfg.Logger,
		now:           cfg.Now,
		linkMTU:       cfg.LinkMTU,
		returnTimeout: int64(cfg.ReturnTimeout),
		hashSeed:      randomSeed(),
		events:        make(chan Event, cfg.EventBuffer),
		workers:       map[*openPort]*worker{},
		retired:       &workerCounters{},
		maintCtr:      &workerCounters{},
		uplink:        &endpoint{remote: true},
	}
	e.t0 = e.now()
	e.epoch.Store(1)
	e.readers.Store(&[]*readerSlot{})
	e.reg.init()
	e.slab = newFlowSlab(cfg.MaxFlows)
	e.table, err = NewFlowTable(FlowTableConfig{
		Capacity:    cfg.MaxFlows,
		IdleTimeout: cfg.FlowIdleTimeout,
		OnRemove:    e.flowRemoved,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEngineConfig, err)
	}
	if cfg.FastPath != nil {
		e.fast = newFastPath(cfg.FastPath, e.table)
		e.fast.after = uint64(cmp.Or(max(cfg.FastPathAfter, 0), defaultFastPathAfter))
	}
	st := e.emptyState()
	for _, name := range []string{cfg.InterceptPort, cfg.UplinkPort} {
		if name == "" {
			continue
		}
		p, err := e.reg.acquire(e, name, true)
		if err != nil {
			e.reg.closeAll()
			return nil, err
		}
		st.ports[name] = p
		e.reg.ports[name] = p
	}
	if cfg.UplinkPort != "" {
		e.uplink.port = st.ports[cfg.UplinkPort]
	}
	e.fillStatic(st)
	e.state.Store(st)
	e.syncWorkers(st)
	return e, nil
}

func (cfg Config) withDefaults() (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: %s", ErrBadEngineConfig, fmt.Sprintf(format, args...))
	}
	if !cfg.Self.isUnicast() {
		return bad("Self %s must be a unicast, non-zero MAC", cfg.Self)
	}
	if cfg.Open == nil {
		return bad("Open is required")
	}
	if cfg.Codec.EtherType != 0 {
		if _, err := NewCodec(cfg.Codec.EtherType, cfg.Codec.maxHops()); err != nil {
			return bad("%v", err)
		}
	}
	if cfg.Codec.maxHops() < 2 {
		return bad("MaxHops %d leaves no room for an appliance", cfg.Codec.maxHops())
	}
	if cfg.InterceptPort != "" && cfg.InterceptPort == cfg.UplinkPort {
		return bad("InterceptPort and UplinkPort are both %q", cfg.InterceptPort)
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
		key string
	}{{&cfg.ReturnTimeout, DefaultReturnTimeout, "ReturnTimeout"}, {&cfg.FlowIdleTimeout, DefaultFlowIdleTimeout, "FlowIdleTimeout"}} {
		switch {
		case *d.v == 0:
			*d.v = d.def
		case *d.v < 0:
			return bad("%s %v is negative", d.key, *d.v)
		}
	}
	for _, n := range []struct {
		v   *int
		def int
		key string
	}{{&cfg.MaxFlows, DefaultMaxFlows, "MaxFlows"}, {&cfg.MTU, DefaultMTU, "MTU"},
		{&cfg.BatchSize, DefaultBatchSize, "BatchSize"}, {&cfg.EventBuffer, DefaultEventBuffer, "EventBuffer"}} {
		switch {
		case *n.v == 0:
			*n.v = n.def
		case *n.v < 0:
			return bad("%s %d is negative", n.key, *n.v)
		}
	}
	if cfg.MTU < 68 {
		return bad("MTU %d is below the IPv4 minimum of 68", cfg.MTU)
	}
	if cfg.LinkMTU == 0 {
		cfg.LinkMTU = cfg.MTU + HeaderLen(cfg.Codec.maxHops())
	}
	if cfg.LinkMTU < cfg.MTU {
		return bad("LinkMTU %d is below the guests' MTU %d", cfg.LinkMTU, cfg.MTU)
	}
	if err := cfg.probeDefaults(); err != nil {
		return Config{}, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

// mono is the engine's monotonic clock: nanoseconds since NewEngine.
func (e *Engine) mono() int64 { return int64(e.now().Sub(e.t0)) }

func (e *Engine) wallOf(mono int64) time.Time { return e.t0.Add(time.Duration(mono)) }

// Run forwards frames until ctx ends: one goroutine per receiving port,
// plus one that expires flows, detects return timeouts and delivers
// events. It returns nil after ctx ends, or an error if the engine is
// already running or closed.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	switch {
	case e.closed:
		e.mu.Unlock()
		return ErrEngineClosed
	case e.running:
		e.mu.Unlock()
		return ErrEngineRunning
	}
	e.running, e.runCtx = true, ctx
	for _, w := range e.workers {
		e.startWorker(w)
	}
	e.mu.Unlock()

	var bg sync.WaitGroup
	bg.Add(2)
	go func() { defer bg.Done(); e.dispatchEvents(ctx) }()
	go func() { defer bg.Done(); e.maintain(ctx) }()
	<-ctx.Done()

	e.mu.Lock()
	e.running = false
	for _, w := range e.workers {
		w.stop()
	}
	e.mu.Unlock()
	e.runWG.Wait()
	bg.Wait()
	for _, w := range e.workerList() {
		w.fw.Flush()
	}
	return nil
}

// Close closes every port the engine opened. Call it after Run returned.
func (e *Engine) Close() error {
	e.updateMu.Lock()
	defer e.updateMu.Unlock()
	e.mu.Lock()
	if e.running {
		e.mu.Unlock()
		return ErrEngineRunning
	}
	e.closed = true
	e.mu.Unlock()
	return e.reg.closeAll()
}

func closePort(p Port) error {
	if c, ok := p.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
