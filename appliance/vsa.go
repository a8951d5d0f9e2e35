package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/vsagent/vsagent/sourceroute"
)

// VerdictAction is what an Inspector decided to do with one frame.
type VerdictAction uint8

const (
	// ActionPass forwards the frame to the next hop unchanged.
	ActionPass VerdictAction = iota
	// ActionDrop discards the frame, optionally telling the DM why.
	ActionDrop
	// ActionRewrite forwards the inner frame the inspector changed in place.
	ActionRewrite
)

// Verdict is an Inspector's decision. Build it with Pass, Drop, DropNotify
// or Rewrite; any Action other than those three is treated as a silent drop
// so that an inspector bug fails closed.
type Verdict struct {
	Action VerdictAction
	// Notice, on a drop, is the reason octet of the drop notice to send to
	// the DM; 0 sends none. Notices are sent only if the appliance was
	// configured with NotifyDrops.
	Notice sourceroute.NoticeReason
	// Len, on a rewrite, is the new length of the inner frame, or 0 if the
	// length did not change. The inner frame may grow into the spare
	// capacity of the slice given to Inspect (cap(inner)); the link MTU is
	// enforced when the frame is sent.
	Len int
}

// Pass forwards the frame unchanged.
func Pass() Verdict { return Verdict{Action: ActionPass} }

// Drop discards the frame silently.
func Drop() Verdict { return Verdict{Action: ActionDrop} }

// DropNotify discards the frame and asks for a drop notice with reason why.
func DropNotify(why sourceroute.NoticeReason) Verdict {
	return Verdict{Action: ActionDrop, Notice: why}
}

// Rewrite forwards the inner frame after the inspector changed it in place;
// newLen is its new length, or 0 when the length is unchanged.
func Rewrite(newLen int) Verdict { return Verdict{Action: ActionRewrite, Len: newLen} }

// FrameMeta describes where an inspected frame is in its chain.
type FrameMeta struct {
	From sourceroute.MAC // previous hop: the DM or the VSA before this one
	DM   sourceroute.MAC // last route entry, where the frame ends and notices go
	Hop  int             // this appliance's index in the route
	Hops int             // number of route entries
}

// Inspector judges inner frames. inner is the original Ethernet frame
// (header included) inside the appliance's receive buffer: Inspect may
// change it in place, must not keep it after returning, and is called from
// one goroutine at a time.
type Inspector interface {
	Inspect(inner []byte, meta FrameMeta) Verdict
}

// InspectorFunc adapts a function to Inspector.
type InspectorFunc func(inner []byte, meta FrameMeta) Verdict

// Inspect calls f.
func (f InspectorFunc) Inspect(inner []byte, meta FrameMeta) Verdict { return f(inner, meta) }

// Transport moves whole Ethernet frames (from the destination MAC on, no
// FCS) for an appliance.
type Transport interface {
	// ReadFrame blocks until a frame arrives, copies it into buf and
	// returns its length. A frame longer than buf is discarded with an
	// error wrapping ErrFrameTooBig. When ctx ends it returns ctx's error.
	ReadFrame(ctx context.Context, buf []byte) (int, error)
	// WriteFrame sends one frame. A frame the link cannot carry gives an
	// error wrapping ErrFrameTooBig.
	WriteFrame(ctx context.Context, frame []byte) error
}

// ErrFrameTooBig reports a frame larger than the receive buffer or the
// link's MTU. It is dropped and counted, never truncated.
var ErrFrameTooBig = errors.New("appliance: frame too big")

// ErrClosed is returned by transports used after Close.
var ErrClosed = errors.New("appliance: transport closed")

// DefaultBufferSize holds the largest frame any Linux link can carry
// (64 KiB MTU plus an Ethernet header and two VLAN tags), so a received
// frame is never truncated by the buffer.
const DefaultBufferSize = 1<<16 + sourceroute.EthernetHeaderLen + 8

// ApplianceConfig configures NewAppliance.
type ApplianceConfig struct {
	Self      sourceroute.MAC   // this appliance's hop address; required
	Codec     sourceroute.Codec // EtherType and MaxHops; the zero value means the defaults
	Transport Transport         // required
	Inspector Inspector         // required
	// NotifyDrops sends a drop notice to the DM for every drop whose
	// verdict carries a reason.
	NotifyDrops bool
	// BufferSize is the receive buffer; 0 means DefaultBufferSize.
	BufferSize int
	// Logger receives lifecycle and transport error messages, never one
	// per frame; nil discards them.
	Logger *slog.Logger
}

// Counters is a snapshot of an appliance's frame accounting. Every frame
// read lands in exactly one of Ignored, Forwarded, Dropped, Invalid and
// SendErrors, so Received is their sum once the appliance is idle.
type Counters struct {
	Received  uint64 // frames read from the transport
	Ignored   uint64 // addressed to another MAC (seen on a shared segment)
	Forwarded uint64 // sent on to the next hop
	Rewritten uint64 // of Forwarded, those the inspector rewrote
	Dropped   uint64 // dropped by the inspector's verdict
	// Invalid counts frames dropped because they break SOURCE-ROUTE.md,
	// indexed by sourceroute.Reason: malformed headers, frames at their last
	// hop (ReasonPastLastHop), frames too big to receive or to send
	// (ReasonTooBig), rewrites that left no inner Ethernet header
	// (ReasonNoInnerFrame).
	Invalid      [sourceroute.NumReasons]uint64
	SendErrors   uint64 // forwards the transport failed to send
	NoticesSent  uint64 // drop notices sent to the DM
	NoticeErrors uint64 // drop notices that could not be built or sent
	RecvErrors   uint64 // transport read failures (not frames)
}

// InvalidTotal is the sum of Invalid.
func (c Counters) InvalidTotal() uint64 {
	var sum uint64
	for _, v := range c.Invalid {
		sum += v
	}
	return sum
}

// InvalidByReason returns the non-zero Invalid counters keyed by the
// reason's metric label, for reports and JSON.
func (c Counters) InvalidByReason() map[string]uint64 {
	m := make(map[string]uint64)
	for r, v := range c.Invalid {
		if v != 0 {
			m[sourceroute.Reason(r).String()] = v
		}
	}
	return m
}

type counters struct {
	received, ignored, forwarded, rewritten, dropped atomic.Uint64
	invalid                                          [sourceroute.NumReasons]atomic.Uint64
	sendErrors, noticesSent, noticeErrors            atomic.Uint64
	recvErrors                                       atomic.Uint64
}

// Appliance receives MSR frames addressed to it, has an Inspector judge
// the inner frames, and forwards what passes to the next hop.
type Appliance struct {
	self        sourceroute.MAC
	codec       sourceroute.Codec
	tr          Transport
	insp        Inspector
	notifyDrops bool
	log         *slog.Logger

	buf       []byte // receive buffer, reused for every frame
	noticeBuf []byte
	running   atomic.Bool
	c         counters
}

// NewAppliance checks cfg and returns an appliance ready to Run.
func NewAppliance(cfg ApplianceConfig) (*Appliance, error) {
	switch {
	case cfg.Self.IsZero() || cfg.Self.IsMulticast():
		return nil, fmt.Errorf("appliance: own address %s is not a unicast MAC", cfg.Self)
	case cfg.Transport == nil:
		return nil, errors.New("appliance: no transport")
	case cfg.Inspector == nil:
		return nil, errors.New("appliance: no inspector")
	}
	size := cfg.BufferSize
	if size == 0 {
		size = DefaultBufferSize
	}
	minSize := sourceroute.HeaderLen(1) + sourceroute.EthernetHeaderLen
	if size < minSize {
		return nil, fmt.Errorf("appliance: buffer size %d below the smallest MSR frame (%d bytes)", size, minSize)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Appliance{
		self:        cfg.Self,
		codec:       cfg.Codec,
		tr:          cfg.Transport,
		insp:        cfg.Inspector,
		notifyDrops: cfg.NotifyDrops,
		log:         log,
		buf:         make([]byte, size),
		noticeBuf:   make([]byte, sourceroute.EthernetHeaderLen+1+sourceroute.MaxNoticedBytes),
	}, nil
}

// Self is the appliance's hop address.
func (a *Appliance) Self() sourceroute.MAC { return a.self }

// Counters returns a snapshot of the counters; it is safe to call while Run
// is running. Each counter is read atomically, the set as a whole is not.
func (a *Appliance) Counters() Counters {
	c := &a.c
	s := Counters{
		Received:     c.received.Load(),
		Ignored:      c.ignored.Load(),
		Forwarded:    c.forwarded.Load(),
		Rewritten:    c.rewritten.Load(),
		Dropped:      c.dropped.Load(),
		SendErrors:   c.sendErrors.Load(),
		NoticesSent:  c.noticesSent.Load(),
		NoticeErrors: c.noticeErrors.Load(),
		RecvErrors:   c.recvErrors.Load(),
	}
	for i := range c.invalid {
		s.Invalid[i] = c.invalid[i].Load()
	}
	return s
}

// recvRetryDelay spaces out retries after transient read errors (a link
// going down reports ENETDOWN once) so a persistent failure cannot spin.
const recvRetryDelay = 50 * time.Millisecond

// Run reads, judges and forwards frames until ctx ends, then returns nil.
// It returns an error only if the transport is closed under it. Run must
// not be called twice at the same time; frames are handled one at a time in
// the calling goroutine, with no allocation per frame.
func (a *Appliance) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("appliance: Run is already running")
	}
	defer a.running.Store(false)
	a.log.Info("appliance running", "self", a.self)
	defer a.log.Info("appliance stopped", "self", a.self)
	for {
		n, err := a.tr.ReadFrame(ctx, a.buf)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrFrameTooBig) {
				a.c.received.Add(1)
				a.c.invalid[sourceroute.ReasonTooBig].Add(1)
				continue
			}
			if errors.Is(err, ErrClosed) {
				return err
			}
			// The first failure is worth a message; a link that keeps
			// failing shows in RecvErrors without a log line per retry.
			if a.c.recvErrors.Add(1) == 1 {
				a.log.Warn("appliance: receive failed; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(recvRetryDelay):
			}
			continue
		}
		a.handle(ctx, a.buf[:n])
	}
}

// handle judges one frame received into frame (whose capacity is the whole
// receive buffer, room a rewrite may grow into) and sends what results.
func (a *Appliance) handle(ctx context.Context, frame []byte) {
	c := &a.c
	c.received.Add(1)
	if len(frame) < 6 {
		c.invalid[sourceroute.ReasonTruncated].Add(1)
		return
	}
	if sourceroute.MAC(frame[:6]) != a.self {
		c.ignored.Add(1)
		return
	}
	f, reason := a.codec.Parse(frame)
	if reason != sourceroute.OK {
		c.invalid[reason].Add(1)
		return
	}
	if f.AtLastHop() {
		// Addressed to us as the final entry: forwarding would run past
		// the route, and we are not the DM.
		c.invalid[sourceroute.ReasonPastLastHop].Add(1)
		return
	}
	hdrLen := f.HeaderLen()
	inner := frame[hdrLen:len(frame):cap(frame)]
	meta := FrameMeta{From: f.Src(), DM: f.LastHop(), Hop: f.Next(), Hops: f.Num()}
	v := a.insp.Inspect(inner, meta)

	out := frame
	switch v.Action {
	case ActionPass:
	case ActionRewrite:
		if v.Len != 0 {
			if v.Len < sourceroute.EthernetHeaderLen {
				c.invalid[sourceroute.ReasonNoInnerFrame].Add(1)
				return
			}
			if v.Len > cap(inner) {
				c.invalid[sourceroute.ReasonTooBig].Add(1)
				return
			}
			out = frame[:hdrLen+v.Len]
		}
	default:
		c.dropped.Add(1)
		if v.Action == ActionDrop && v.Notice != 0 && a.notifyDrops {
			a.notify(ctx, meta.DM, v.Notice, frame)
		}
		return
	}

	if reason := a.codec.Advance(f, a.self); reason != sourceroute.OK {
		c.invalid[reason].Add(1)
		return
	}
	if err := a.tr.WriteFrame(ctx, out); err != nil {
		if errors.Is(err, ErrFrameTooBig) {
			c.invalid[sourceroute.ReasonTooBig].Add(1)
		} else if c.sendErrors.Add(1) == 1 {
			a.log.Warn("appliance: forwarding failed", "err", err)
		}
		return
	}
	c.forwarded.Add(1)
	if v.Action == ActionRewrite {
		c.rewritten.Add(1)
	}
}

// notify tells the DM that frame was dropped on purpose.
func (a *Appliance) notify(ctx context.Context, dm sourceroute.MAC, why sourceroute.NoticeReason, frame []byte) {
	n, err := sourceroute.BuildDropNotice(a.noticeBuf, dm, a.self, why, frame)
	if err == nil {
		err = a.tr.WriteFrame(ctx, a.noticeBuf[:n])
	}
	if err != nil {
		if a.c.noticeErrors.Add(1) == 1 {
			a.log.Warn("appliance: drop notice failed", "err", err)
		}
		return
	}
	a.c.noticesSent.Add(1)
}
