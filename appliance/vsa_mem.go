package appliance

import (
	"context"
	"fmt"
	"sync"
)

// MemTransport is an in-memory Transport for tests and simulations: frames
// given to Inject are what the appliance reads, in order, and frames it
// writes come out of Sent. It copies every frame, so it is not for
// measuring the per-frame path.
type MemTransport struct {
	// MaxFrame, if positive, is the largest frame WriteFrame accepts, like
	// a link's MTU plus its Ethernet header; larger ones get ErrFrameTooBig.
	MaxFrame int

	in        chan []byte
	out       chan []byte
	closed    chan struct{}
	closeOnce sync.Once
}

// NewMemTransport returns a transport that buffers up to depth frames in
// each direction before Inject or the appliance's writes block.
func NewMemTransport(depth int) *MemTransport {
	return &MemTransport{
		in:     make(chan []byte, depth),
		out:    make(chan []byte, depth),
		closed: make(chan struct{}),
	}
}

// Inject queues a copy of frame for the appliance to read.
func (m *MemTransport) Inject(ctx context.Context, frame []byte) error {
	select {
	case m.in <- append([]byte(nil), frame...):
		return nil
	case <-m.closed:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Sent returns the next frame the appliance wrote.
func (m *MemTransport) Sent(ctx context.Context) ([]byte, error) {
	select {
	case f := <-m.out:
		return f, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close makes blocked and later reads and writes return ErrClosed.
func (m *MemTransport) Close() error {
	m.closeOnce.Do(func() { close(m.closed) })
	return nil
}

// ReadFrame implements Transport.
func (m *MemTransport) ReadFrame(ctx context.Context, buf []byte) (int, error) {
	select {
	case f := <-m.in:
		if len(f) > len(buf) {
			return 0, fmt.Errorf("appliance: %d-byte frame, %d-byte buffer: %w", len(f), len(buf), ErrFrameTooBig)
		}
		return copy(buf, f), nil
	case <-m.closed:
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// WriteFrame implements Transport.
func (m *MemTransport) WriteFrame(ctx context.Context, frame []byte) error {
	if m.MaxFrame > 0 && len(frame) > m.MaxFrame {
		return fmt.Errorf("appliance: %d-byte frame over %d: %w", len(frame), m.MaxFrame, ErrFrameTooBig)
	}
	select {
	case m.out <- append([]byte(nil), frame...):
		return nil
	case <-m.closed:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}
