// Package apitest provides a scriptable api.Provider and a helper that
// serves it on a real unix socket, for the tests of the API and of vsactl.
package apitest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/vsagent/vsagent/internal/api"
)

// Fake is an api.Provider whose answers the test sets. Its zero value
// answers empty lists; a nil Flows means "no dataplane".
type Fake struct {
	mu           sync.Mutex
	status       api.Status
	guests       []api.Guest
	appliances   []api.Appliance
	flows        []api.Flow
	dataplane    bool
	explanations map[string]api.Explanation
	failure      error
	events       []api.Event
	changed      chan struct{}
}

var _ api.Provider = (*Fake)(nil)

// NewFake returns an empty fake.
func NewFake() *Fake {
	return &Fake{explanations: make(map[string]api.Explanation), changed: make(chan struct{})}
}

// SetStatus sets the answer to Status.
func (f *Fake) SetStatus(s api.Status) { f.mu.Lock(); f.status = s; f.mu.Unlock() }

// SetGuests sets the answer to Guests.
func (f *Fake) SetGuests(g []api.Guest) { f.mu.Lock(); f.guests = g; f.mu.Unlock() }

// SetAppliances sets the answer to Appliances.
func (f *Fake) SetAppliances(a []api.Appliance) { f.mu.Lock(); f.appliances = a; f.mu.Unlock() }

// SetFlows makes the dataplane run with these flows.
func (f *Fake) SetFlows(fl []api.Flow) { f.mu.Lock(); f.flows, f.dataplane = fl, true; f.mu.Unlock() }

// SetExplanation sets the answer to Explain(domain).
func (f *Fake) SetExplanation(domain string, e api.Explanation) {
	f.mu.Lock()
	f.explanations[domain] = e
	f.mu.Unlock()
}

// Fail makes every method but Events return err (nil to stop).
func (f *Fake) Fail(err error) { f.mu.Lock(); f.failure = err; f.mu.Unlock() }

// AddEvent appends an event with the next sequence number and wakes
// followers.
func (f *Fake) AddEvent(e api.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e.Seq = uint64(len(f.events)) + 1
	f.events = append(f.events, e)
	close(f.changed)
	f.changed = make(chan struct{})
}

// Status implements api.Provider.
func (f *Fake) Status(ctx context.Context) (api.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status, f.failure
}

// Guests implements api.Provider.
func (f *Fake) Guests(ctx context.Context) ([]api.Guest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.guests), f.failure
}

// Appliances implements api.Provider.
func (f *Fake) Appliances(ctx context.Context) ([]api.Appliance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.appliances), f.failure
}

// Flows implements api.Provider: an unknown guest is api.ErrNotFound.
func (f *Fake) Flows(ctx context.Context, guest string) (api.FlowList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failure != nil {
		return api.FlowList{}, f.failure
	}
	if guest != "" && !slices.ContainsFunc(f.guests, func(g api.Guest) bool { return g.Name == guest }) {
		return api.FlowList{}, fmt.Errorf("%w: no guest named %q", api.ErrNotFound, guest)
	}
	if !f.dataplane {
		return api.FlowList{Note: "dataplane not running: there are no flows to show"}, nil
	}
	var out []api.Flow
	for _, fl := range f.flows {
		if guest == "" || fl.Guest == guest {
			out = append(out, fl)
		}
	}
	return api.FlowList{Flows: out}, nil
}

// Explain implements api.Provider: a domain without an explanation set is
// api.ErrNotFound.
func (f *Fake) Explain(ctx context.Context, domain string) (api.Explanation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failure != nil {
		return api.Explanation{}, f.failure
	}
	e, ok := f.explanations[domain]
	if !ok {
		return api.Explanation{}, fmt.Errorf("%w: libvirt has no domain named %q", api.ErrNotFound, domain)
	}
	return e, nil
}

// Events implements api.Provider.
func (f *Fake) Events(after uint64) ([]api.Event, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.Event
	for _, e := range f.events {
		if e.Seq > after {
			out = append(out, e)
		}
	}
	return out, f.changed
}

// Server is a running api.Server on a socket of its own.
type Server struct {
	Socket string
	stop   context.CancelFunc
	done   chan error
}

// Stop ends the server and waits for it; the test's cleanup calls it too.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.stop == nil {
		return
	}
	s.stop()
	s.stop = nil
	if err := <-s.done; err != nil {
		t.Errorf("api server: %v", err)
	}
}

// Serve runs an api.Server for p on a fresh socket. The socket lives in a
// short directory of its own, because t.TempDir paths can exceed the 107
// bytes a unix socket path may have; it is removed at cleanup.
func Serve(t testing.TB, p api.Provider, opts api.ServerOptions) *Server {
	t.Helper()
	dir, err := os.MkdirTemp("", "vsa-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return ServeAt(t, filepath.Join(dir, "vsagent.sock"), p, opts)
}

// ServeAt is Serve on a given socket path.
func ServeAt(t testing.TB, path string, p api.Provider, opts api.ServerOptions) *Server {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = Logger()
	}
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := api.Listen(ctx, path)
	if err != nil {
		cancel()
		t.Fatalf("listen: %v", err)
	}
	s := &Server{Socket: path, stop: cancel, done: make(chan error, 1)}
	srv := api.NewServer(p, opts)
	go func() { s.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { s.Stop(t) })
	return s
}

// Logger is quiet unless the test runs verbose.
func Logger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Buffer collects what a server or command writes from its own goroutines
// while the test reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logger logs as text into the buffer.
func (b *Buffer) Logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }
