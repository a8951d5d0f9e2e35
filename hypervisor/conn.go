package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"libvirt.org/go/libvirt"
)

// Options tune a Conn. The zero value is usable.
type Options struct {
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the delay between reconnect attempts
	// (defaults 250ms and 30s); each failure doubles it, with jitter.
	MinBackoff, MaxBackoff time.Duration
	// EventBuffer is the capacity of the Events channel (default 4096).
	EventBuffer int
	// KeepaliveInterval (seconds) and KeepaliveCount make libvirt close a
	// connection to a daemon that stops answering (defaults 5 and 3). The
	// same interval paces a liveness check of the connection.
	KeepaliveInterval int
	KeepaliveCount    uint
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 250 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = 4096
	}
	if o.KeepaliveInterval <= 0 {
		o.KeepaliveInterval = 5
	}
	if o.KeepaliveCount == 0 {
		o.KeepaliveCount = 3
	}
	return o
}

var eventLoop struct {
	once sync.Once
	err  error
}

// InitEventLoop registers libvirt's default event implementation and runs it
// in a goroutine for the rest of the process. libvirt requires this before
// the process opens its first connection (keepalive, close callbacks and
// domain events all depend on it), so anything that connects to libvirt
// without going through Connect must call it first. Safe to call repeatedly.
func InitEventLoop() error {
	eventLoop.once.Do(func() {
		if err := libvirt.EventRegisterDefaultImpl(); err != nil {
			eventLoop.err = fmt.Errorf("hypervisor: register libvirt event loop: %w", err)
			return
		}
		go func() {
			for {
				if err := libvirt.EventRunDefaultImpl(); err != nil {
					slog.Default().Error("libvirt event loop iteration failed", "err", err)
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	})
	return eventLoop.err
}

// Conn is one libvirt connection that survives restarts of libvirtd: it
// reconnects by itself, re-registers its callbacks and tells consumers to
// resync. Every method is safe for concurrent use.
type Conn struct {
	uri  string
	opts Options
	log  *slog.Logger

	// mu is held shared for the duration of every libvirt call and
	// exclusively while the connection is replaced, so no call ever runs on a
	// connection that is being closed.
	mu        sync.RWMutex
	virt      *libvirt.Connect
	callbacks []int
	gen       uint64 // generation of virt; stale close callbacks carry an older one
	closed    bool

	connected  atomic.Bool
	reconnects atomic.Uint64
	dropped    atomic.Uint64

	events chan Event
	// sendMu orders senders against close(events): senders hold it shared.
	sendMu       sync.RWMutex
	eventsClosed bool
	resyncOwed   atomic.Bool   // only to log the start of each overflow once
	owed         chan struct{} // a drop happened: wakes the resync pump
	broken       chan struct{} // wakes the supervisor
	done         chan struct{}
	wg           sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Connect opens uri (for example "qemu:///system" or "test:///abs/node.xml"),
// registers the lifecycle, metadata-change and close callbacks and emits
// EventResync. ctx bounds this first attempt only; its failure is returned so
// that a wrong URI fails fast. Afterwards the Conn keeps itself connected
// until Close: when libvirtd goes away (close callback, keepalive timeout, an
// operation finding the connection dead) it reconnects in the background
// with exponential backoff and jitter, re-registers every callback on the new
// connection and emits EventResync.
func Connect(ctx context.Context, uri string, opts Options) (*Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("hypervisor: connect %s: %w", uri, err)
	}
	if err := InitEventLoop(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	c := &Conn{
		uri:    uri,
		opts:   opts,
		log:    opts.Logger.With("uri", uri),
		events: make(chan Event, opts.EventBuffer),
		owed:   make(chan struct{}, 1),
		broken: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	if err := c.connect(ctx); err != nil {
		return nil, fmt.Errorf("hypervisor: connect %s: %w", uri, err)
	}
	c.wg.Add(2)
	go c.supervise()
	go c.pumpResyncs()
	return c, nil
}

// Events delivers domain events. It is closed after Close. When the consumer
// falls behind and the buffer fills up, events are dropped (see
// DroppedEvents) and an EventResync follows as soon as there is room, so a
// level-triggered consumer loses nothing.
func (c *Conn) Events() <-chan Event { return c.events }

// Connected reports whether a libvirt connection is established right now.
func (c *Conn) Connected() bool { return c.connected.Load() }

// Reconnects counts the connections re-established after a loss.
func (c *Conn) Reconnects() uint64 { return c.reconnects.Load() }

// DroppedEvents counts events dropped because the Events buffer was full.
func (c *Conn) DroppedEvents() uint64 { return c.dropped.Load() }

// URI is the libvirt URI this Conn connects to.
func (c *Conn) URI() string { return c.uri }

// Raw returns the current underlying connection, nil while disconnected. It
// is meant for tests that need libvirt calls this package does not wrap; the
// value is invalid after a reconnect or Close, and it must not be closed.
func (c *Conn) Raw() *libvirt.Connect {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.virt
}

// Close deregisters the callbacks and closes the connection; afterwards the
// Events channel is closed and every operation fails with ErrClosed. Calling
// it again returns the first result.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.wg.Wait()

		c.mu.Lock()
		c.closed = true
		c.closeErr = c.dropLocked()
		c.mu.Unlock()

		c.sendMu.Lock()
		c.eventsClosed = true
		close(c.events)
		c.sendMu.Unlock()
	})
	return c.closeErr
}

// connect opens a connection and installs it; ctx bounds the attempt.
func (c *Conn) connect(ctx context.Context) error {
	type result struct {
		virt *libvirt.Connect
		err  error
	}
	// Opening is a blocking C call that ignores ctx: run it aside and, if ctx
	// wins, close whatever it eventually returns.
	res := make(chan result, 1)
	go func() {
		virt, err := libvirt.NewConnect(c.uri)
		res <- result{virt, err}
	}()
	var r result
	select {
	case r = <-res:
	case <-ctx.Done():
		go func() {
			if r := <-res; r.virt != nil {
				r.virt.Close()
			}
		}()
		return ctx.Err()
	}
	if r.err != nil {
		return r.err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		r.virt.Close()
		return ErrClosed
	}
	gen := c.gen + 1
	callbacks, err := c.register(r.virt, gen)
	if err != nil {
		r.virt.Close()
		return err
	}
	c.virt, c.callbacks, c.gen = r.virt, callbacks, gen
	c.connected.Store(true)
	detail := "connected"
	if gen > 1 {
		detail = "reconnected"
	}
	c.emit(Event{Kind: EventResync, Detail: detail})
	return nil
}

// register installs every callback on virt. libvirt forgets registrations
// with the connection they were made on, so this runs on each reconnect.
func (c *Conn) register(virt *libvirt.Connect, gen uint64) ([]int, error) {
	var ids []int
	undo := func() {
		for _, id := range ids {
			virt.DomainEventDeregister(id)
		}
		virt.UnregisterCloseCallback()
	}
	id, err := virt.DomainEventLifecycleRegister(nil, c.onLifecycle)
	if err != nil {
		return nil, fmt.Errorf("register lifecycle events: %w", err)
	}
	ids = append(ids, id)
	id, err = virt.DomainEventMetadataChangeRegister(nil, c.onMetadataChange)
	if err != nil {
		undo()
		return nil, fmt.Errorf("register metadata events: %w", err)
	}
	ids = append(ids, id)
	// Only one close callback per connection exists. The generation is for
	// the log: a late callback of a replaced connection merely makes the
	// supervisor check the current one, which it finds alive.
	if err := virt.RegisterCloseCallback(func(_ *libvirt.Connect, reason libvirt.ConnectCloseReason) {
		c.onClose(gen, reason)
	}); err != nil {
		undo()
		return nil, fmt.Errorf("register close callback: %w", err)
	}
	if err := virt.SetKeepAlive(c.opts.KeepaliveInterval, c.opts.KeepaliveCount); err != nil && !hasCode(err, libvirt.ERR_NO_SUPPORT) {
		undo()
		return nil, fmt.Errorf("enable keepalive: %w", err)
	}
	return ids, nil
}

// dropLocked deregisters and closes the current connection. Errors from a
// connection that is already dead are expected and not reported.
func (c *Conn) dropLocked() error {
	virt := c.virt
	if virt == nil {
		return nil
	}
	alive, _ := virt.IsAlive()
	var errs []error
	for _, id := range c.callbacks {
		if err := virt.DomainEventDeregister(id); err != nil && alive {
			errs = append(errs, fmt.Errorf("deregister event callback: %w", err))
		}
	}
	if err := virt.UnregisterCloseCallback(); err != nil && alive {
		errs = append(errs, fmt.Errorf("unregister close callback: %w", err))
	}
	if _, err := virt.Close(); err != nil && alive {
		errs = append(errs, fmt.Errorf("close: %w", err))
	}
	c.virt, c.callbacks = nil, nil
	c.connected.Store(false)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hypervisor: close %s: %w", c.uri, err)
	}
	return nil
}

func (c *Conn) onLifecycle(_ *libvirt.Connect, d *libvirt.Domain, e *libvirt.DomainEventLifecycle) {
	kind, detail, ok := lifecycleKind(e.Event, e.Detail)
	if !ok {
		return
	}
	c.emit(eventFor(d, kind, detail))
}

func (c *Conn) onMetadataChange(_ *libvirt.Connect, d *libvirt.Domain, e *libvirt.DomainEventMetadataChange) {
	c.emit(eventFor(d, EventMetadataChanged, metadataDetail(e.Type, e.NSURI)))
}

// eventFor copies what an event needs out of d right away: the binding does
// not hold a reference on the Domain it passes to callbacks. UUID and name
// are cached in the object, so no call reaches the daemon.
func eventFor(d *libvirt.Domain, kind EventKind, detail string) Event {
	uuid, _ := d.GetUUIDString()
	name, _ := d.GetName()
	return Event{UUID: uuid, Name: name, Kind: kind, Detail: detail}
}

func (c *Conn) onClose(gen uint64, reason libvirt.ConnectCloseReason) {
	c.log.Warn("libvirt connection closed", "reason", closeReason(reason), "generation", gen)
	c.markBroken()
}

func closeReason(r libvirt.ConnectCloseReason) string {
	switch r {
	case libvirt.CONNECT_CLOSE_REASON_ERROR:
		return "error"
	case libvirt.CONNECT_CLOSE_REASON_EOF:
		return "eof"
	case libvirt.CONNECT_CLOSE_REASON_KEEPALIVE:
		return "keepalive"
	case libvirt.CONNECT_CLOSE_REASON_CLIENT:
		return "client"
	}
	return fmt.Sprintf("reason %d", r)
}

// markBroken asks the supervisor to check the connection. It never blocks:
// it runs on libvirt's event loop and on operation paths.
func (c *Conn) markBroken() {
	select {
	case c.broken <- struct{}{}:
	default:
	}
}

// emit hands an event to the consumer without ever blocking the libvirt
// event loop. A full buffer costs the event and owes the consumer a resync.
func (c *Conn) emit(ev Event) {
	c.sendMu.RLock()
	defer c.sendMu.RUnlock()
	if c.eventsClosed {
		return
	}
	select {
	case c.events <- ev:
		return
	default:
	}
	c.dropped.Add(1)
	if !c.resyncOwed.Swap(true) {
		c.log.Warn("event buffer full, dropping events until the consumer catches up", "capacity", cap(c.events))
	}
	select {
	case c.owed <- struct{}{}:
	default:
	}
}

// pumpResyncs delivers the EventResync owed for dropped events, waiting for
// room in the buffer as long as it takes. Drops that happen while a resync
// is still waiting to be delivered are covered by it: the consumer re-lists
// only after receiving it. Only a drop signalled after the delivery owes
// another one.
func (c *Conn) pumpResyncs() {
	defer c.wg.Done()
	for {
		select {
		case <-c.done:
			return
		case <-c.owed:
		}
		c.sendMu.RLock()
		if c.eventsClosed {
			c.sendMu.RUnlock()
			return
		}
		delivered := false
		for !delivered {
			select {
			case c.events <- Event{Kind: EventResync, Detail: "events dropped"}:
				delivered = true
			case <-c.owed:
			case <-c.done:
				c.sendMu.RUnlock()
				return
			}
		}
		c.resyncOwed.Store(false)
		c.sendMu.RUnlock()
	}
}

// supervise notices a dead connection (close callback, failed operation, or
// the periodic liveness check as a safety net) and replaces it.
func (c *Conn) supervise() {
	defer c.wg.Done()
	tick := time.NewTicker(time.Duration(c.opts.KeepaliveInterval) * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-c.broken:
		case <-tick.C:
		}
		if c.alive() {
			continue
		}
		c.reconnect()
	}
}

func (c *Conn) alive() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.virt == nil {
		return false
	}
	alive, err := c.virt.IsAlive()
	return err == nil && alive
}

// reconnect drops the dead connection and retries until a new one is up or
// the Conn is closed.
func (c *Conn) reconnect() {
	c.mu.Lock()
	if err := c.dropLocked(); err != nil {
		c.log.Debug("dropping dead connection", "err", err)
	}
	c.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.done:
			cancel()
		case <-ctx.Done():
		}
	}()

	for attempt := 0; ; attempt++ {
		delay := backoff(attempt, c.opts.MinBackoff, c.opts.MaxBackoff, rand.Float64())
		select {
		case <-c.done:
			return
		case <-time.After(delay):
		}
		err := c.connect(ctx)
		if err == nil {
			n := c.reconnects.Add(1)
			c.log.Info("reconnected to libvirt", "attempts", attempt+1, "reconnects", n)
			return
		}
		if errors.Is(err, ErrClosed) || ctx.Err() != nil {
			return
		}
		c.log.Warn("reconnecting to libvirt failed", "attempt", attempt+1, "err", err)
	}
}

// backoff is the delay before reconnect attempt n (from 0): min doubled n
// times, capped at max, then jittered into [d/2, d) by u in [0,1) so that
// many agents do not hammer a restarted libvirtd in lockstep.
func backoff(n int, min, max time.Duration, u float64) time.Duration {
	d := min
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d/2 + time.Duration(u*float64(d/2))
}

// do runs fn on the current connection. It fails fast with ErrDisconnected
// while reconnecting, and a failure that left the connection dead is reported
// as ErrDisconnected and wakes the supervisor.
func (c *Conn) do(ctx context.Context, op, subject string, fn func(*libvirt.Connect) error) error {
	wrap := func(err error) error {
		if subject == "" {
			return fmt.Errorf("hypervisor: %s: %w", op, err)
		}
		return fmt.Errorf("hypervisor: %s %s: %w", op, subject, err)
	}
	if err := ctx.Err(); err != nil {
		return wrap(err)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return wrap(ErrClosed)
	}
	if c.virt == nil {
		return wrap(ErrDisconnected)
	}
	err := fn(c.virt)
	if err == nil {
		return nil
	}
	if alive, aerr := c.virt.IsAlive(); aerr != nil || !alive {
		c.markBroken()
		if !errors.Is(err, ErrDisconnected) {
			err = fmt.Errorf("%w: %w", ErrDisconnected, err)
		}
	}
	return wrap(classify(err))
}

// withDomain runs fn on the domain with the given UUID, freeing it after.
func (c *Conn) withDomain(ctx context.Context, op, uuid string, fn func(*libvirt.Domain) error) error {
	return c.do(ctx, op, uuid, func(v *libvirt.Connect) error {
		d, err := v.LookupDomainByUUIDString(uuid)
		if err != nil {
			return err
		}
		defer d.Free()
		return fn(d)
	})
}
