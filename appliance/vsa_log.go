package appliance

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// NewRateLimitedHandler wraps next so that a flood of events (a frame
// storm matching a logged rule) cannot flood the log: it passes at most
// burst records at once, refilled at one record per every. Records over the
// limit are counted, not built — the check happens in Enabled, before slog
// formats anything — and the next record that passes carries the count as
// the attribute "suppressed". Handlers derived with WithAttrs and WithGroup
// share the limit.
func NewRateLimitedHandler(next slog.Handler, every time.Duration, burst int) slog.Handler {
	if burst < 1 {
		burst = 1
	}
	return &rateLimitedHandler{next: next, b: &bucket{every: every, burst: burst, tokens: float64(burst)}}
}

type rateLimitedHandler struct {
	next slog.Handler
	b    *bucket
}

type bucket struct {
	mu         sync.Mutex
	every      time.Duration
	burst      int
	tokens     float64
	last       time.Time
	suppressed uint64
}

// take consumes a token if one is available, refilling by elapsed time.
func (b *bucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() && b.every > 0 {
		b.tokens += float64(now.Sub(b.last)) / float64(b.every)
		if b.tokens > float64(b.burst) {
			b.tokens = float64(b.burst)
		}
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	b.suppressed++
	return false
}

func (b *bucket) takeSuppressed() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.suppressed
	b.suppressed = 0
	return n
}

func (h *rateLimitedHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level) && h.b.take(time.Now())
}

func (h *rateLimitedHandler) Handle(ctx context.Context, r slog.Record) error {
	if n := h.b.takeSuppressed(); n > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Uint64("suppressed", n))
	}
	return h.next.Handle(ctx, r)
}

func (h *rateLimitedHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &rateLimitedHandler{next: h.next.WithAttrs(attrs), b: h.b}
}

func (h *rateLimitedHandler) WithGroup(name string) slog.Handler {
	return &rateLimitedHandler{next: h.next.WithGroup(name), b: h.b}
}
