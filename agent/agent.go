package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
)

var (
	// ErrUnknownPolicy: a guest's binding names a policy the config lacks.
	ErrUnknownPolicy = config.ErrUnknownPolicy
	// ErrProvision: an appliance could not be defined or started.
	ErrProvision = errors.New("appliance provisioning failed")
)

// Hypervisor is what the agent needs from libvirt; *hypervisor.Conn is the
// real one.
type Hypervisor interface {
	Events() <-chan hypervisor.Event
	ListDomains(ctx context.Context) ([]hypervisor.Domain, error)
	Lookup(ctx context.Context, uuid string) (hypervisor.Domain, error)
	DomainXML(ctx context.Context, uuid string, inactive bool) (*libvirtxml.Domain, error)
	Define(ctx context.Context, dom *libvirtxml.Domain) (hypervisor.Domain, error)
	Start(ctx context.Context, uuid string) error
	Suspend(ctx context.Context, uuid string) error
	Resume(ctx context.Context, uuid string) error
	Destroy(ctx context.Context, uuid string) error
	Undefine(ctx context.Context, uuid string) error
	Metadata(ctx context.Context, uuid, namespace string) (string, error)
	SetMetadata(ctx context.Context, uuid, namespace, xml string) error
	HostUUID(ctx context.Context) (string, error)
}

// Dataplane is the seam where interception and the distribution manager's
// rules are installed for a guest whose appliances are running, and removed
// when the guest goes away. Both calls must be idempotent.
type Dataplane interface {
	Attach(ctx context.Context, g GuestPlan) error
	Detach(ctx context.Context, guestUUID string) error
}

// GuestPlan is everything the dataplane needs to wire one guest.
type GuestPlan struct {
	UUID       string
	Name       string
	Policy     *config.Policy
	Domain     *libvirtxml.Domain
	Appliances map[string][]Instance // appliance name → running instances
}

// Instance is one running appliance domain that vsagent owns.
type Instance struct {
	Appliance string
	Index     int
	UUID      string
	Name      string
	MACs      []string
	// Failed: stopped or crashed under guests that were already inspected.
	// It stays in their plan, unhealthy and without links, so that their
	// traffic meets the appliance's on_failure until it is recreated.
	Failed bool
}

// Options tunes the agent; zero values take sane defaults.
type Options struct {
	Logger     *slog.Logger
	Dataplane  Dataplane
	Workers    int
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// Now is the clock, replaceable in tests of the gate timeout.
	Now func() time.Time
	// Heartbeat, if set, is called at least every second from the loop
	// that dispatches libvirt events, so a watchdog can tell a hung agent
	// from an idle one.
	Heartbeat func()
}

// Agent is the control loop. Create it with New and drive it with Run.
type Agent struct {
	hv    Hypervisor
	dp    Dataplane
	log   *slog.Logger
	opts  Options
	queue *workQueue
	cfg   atomic.Pointer[config.Config]

	// provisionMu serialises appliance creation and garbage collection so
	// that two guests needing the same appliance share one instance and GC
	// never races a guest that is about to use an instance.
	provisionMu sync.Mutex
	hostID      string
	templates   templateCache
	owned       ownershipCache

	mu      sync.Mutex
	guests  map[string]*guestStatus // by UUID
	pending map[string]bool         // keys of the resync pass in progress
	synced  bool                    // the first full pass has completed
	readyCh chan struct{}
	events  *eventLog
}

const gcKey = "\x00gc"

// New prepares an agent; nothing touches libvirt until Run.
func New(hv Hypervisor, cfg *config.Config, opts Options) *Agent {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Dataplane == nil {
		opts.Dataplane = noDataplane{}
	}
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 500 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	a := &Agent{
		hv:      hv,
		dp:      opts.Dataplane,
		log:     opts.Logger,
		opts:    opts,
		queue:   newWorkQueue(opts.MinBackoff, opts.MaxBackoff),
		guests:  make(map[string]*guestStatus),
		pending: make(map[string]bool),
		readyCh: make(chan struct{}),
		events:  newEventLog(1024),
	}
	a.owned.init()
	a.cfg.Store(cfg)
	return a
}

// Config returns the configuration in force.
func (a *Agent) Config() *config.Config { return a.cfg.Load() }

// SetConfig applies a new, already validated configuration live: every
// domain is reconciled again against it, and appliances no policy needs any
// more are collected after that pass.
func (a *Agent) SetConfig(cfg *config.Config) {
	a.cfg.Store(cfg)
	a.templates.reset()
	a.recordEvent(Event{Kind: EventConfigApplied, Message: cfg.Summary()})
	a.log.Info("configuration applied", "summary", cfg.Summary())
	a.requeueAll(context.Background())
}

// Ready is closed once the first full resync has completed: every domain
// has been reconciled once and garbage collection has run.
func (a *Agent) Ready() <-chan struct{} { return a.readyCh }

// Run processes events and work until ctx ends. It never modifies guests'
// wiring on the way out: interception stays in place, fail closed, until the
// next start resyncs.
func (a *Agent) Run(ctx context.Context) error {
	hostID, err := a.hv.HostUUID(ctx)
	if err != nil {
		return fmt.Errorf("read host UUID: %w", err)
	}
	a.hostID = hostID

	var wg sync.WaitGroup
	for range a.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.worker(ctx)
		}()
	}
	a.requeueAll(ctx)

	err = a.dispatch(ctx)
	a.queue.close()
	wg.Wait()
	return err
}

// dispatch turns libvirt events into work items. It does no libvirt call
// itself, so it keeps up with bursts.
func (a *Agent) dispatch(ctx context.Context) error {
	events := a.hv.Events()
	beat := time.NewTicker(time.Second)
	defer beat.Stop()
	resyncEvery := a.Config().Agent.ResyncInterval
	if resyncEvery <= 0 {
		resyncEvery = 5 * time.Minute
	}
	resync := time.NewTicker(resyncEvery)
	defer resync.Stop()
	for {
		if a.opts.Heartbeat != nil {
			a.opts.Heartbeat()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-beat.C:
		case <-resync.C:
			// A periodic pass is the safety net under the events: whatever
			// was missed is found here.
			a.requeueAll(ctx)
		case ev, ok := <-events:
			if !ok {
				return errors.New("libvirt event stream closed")
			}
			a.log.Debug("libvirt event", "domain", ev.Name, "domain_uuid", ev.UUID, "event_kind", ev.Kind.String(), "detail", ev.Detail)
			if ev.Kind == hypervisor.EventResync {
				a.requeueAll(ctx)
				continue
			}
			a.queue.add(ev.UUID)
		}
	}
}

// requeueAll starts a resync pass: every domain libvirt knows is queued,
// and garbage collection waits until each has been reconciled once, so it
// never deletes an appliance that a not-yet-examined guest needs.
func (a *Agent) requeueAll(ctx context.Context) {
	doms, err := a.hv.ListDomains(ctx)
	if err != nil {
		a.log.Warn("resync: cannot list domains; will retry on the next resync", "error", err)
		return
	}
	a.mu.Lock()
	for _, d := range doms {
		a.pending[d.UUID] = true
	}
	// Guests we track but libvirt no longer lists (undefined while we were
	// disconnected, migrated away) must be examined too.
	for uuid := range a.guests {
		a.pending[uuid] = true
	}
	keys := make([]string, 0, len(a.pending))
	for k := range a.pending {
		keys = append(keys, k)
	}
	a.mu.Unlock()
	for _, k := range keys {
		a.queue.add(k)
	}
	a.queue.add(gcKey)
}

func (a *Agent) worker(ctx context.Context) {
	for {
		key, ok := a.queue.get()
		if !ok {
			return
		}
		var err error
		if key == gcKey {
			err = a.collectGarbage(ctx)
		} else {
			err = a.reconcile(ctx, key)
		}
		if ctx.Err() != nil {
			a.queue.done(key)
			return
		}
		if err != nil {
			delay := a.queue.retry(key)
			a.log.Warn("reconcile failed; will retry", "domain_uuid", key, "retry_in", delay, "error", err)
		} else {
			a.queue.forget(key)
		}
		a.finishPending(key)
		a.queue.done(key)
	}
}

// finishPending marks key done for the resync pass; the pass ends with a
// garbage collection, and the first pass's end makes the agent ready.
func (a *Agent) finishPending(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.pending[key] {
		return
	}
	delete(a.pending, key)
	if len(a.pending) == 0 {
		a.queue.add(gcKey)
	}
}

type noDataplane struct{}

func (noDataplane) Attach(context.Context, GuestPlan) error { return nil }
func (noDataplane) Detach(context.Context, string) error    { return nil }
