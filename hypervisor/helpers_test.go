package hypervisor

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"
)

// eventWait bounds how long a test waits for an event; it guards against a
// hang and asserts nothing about speed.
const eventWait = 30 * time.Second

// testURI addresses a private test-driver host: every connection to it gets
// fresh state, so tests do not see each other's domains.
func testURI(t testing.TB) string {
	t.Helper()
	abs, err := filepath.Abs(filepath.Join("testdata", "node.xml"))
	if err != nil {
		t.Fatal(err)
	}
	return "test://" + abs
}

func connectTest(t testing.TB, opts Options) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventWait)
	defer cancel()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	c, err := Connect(ctx, testURI(t), opts)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if ev := nextEvent(t, c, func(Event) bool { return true }); ev.Kind != EventResync {
		t.Fatalf("first event = %+v, want a resync", ev)
	}
	return c
}

func randomSuffix() string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x", b)
}

func testDomainXML(name string) *libvirtxml.Domain {
	return &libvirtxml.Domain{
		Type:   "test",
		Name:   name,
		Memory: &libvirtxml.DomainMemory{Value: 65536, Unit: "KiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 2, Current: 1},
		OS:     &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm"}},
	}
}

func defineTest(t testing.TB, c *Conn, prefix string) Domain {
	t.Helper()
	d, err := c.Define(context.Background(), testDomainXML(prefix+"-"+randomSuffix()))
	if err != nil {
		t.Fatalf("Define: %v", err)
	}
	return d
}

// nextEvent returns the next event that match accepts, skipping others.
func nextEvent(t testing.TB, c *Conn, match func(Event) bool) Event {
	t.Helper()
	timeout := time.NewTimer(eventWait)
	defer timeout.Stop()
	for {
		select {
		case ev, ok := <-c.Events():
			if !ok {
				t.Fatal("event channel closed")
			}
			if match(ev) {
				return ev
			}
		case <-timeout.C:
			t.Fatalf("no matching event within %v", eventWait)
		}
	}
}

type kindDetail struct {
	Kind   EventKind
	Detail string
}

// expectLifecycle reads the next len(want) lifecycle events of one domain
// (metadata changes and other domains are skipped) and compares them.
func expectLifecycle(t testing.TB, c *Conn, uuid string, want ...kindDetail) {
	t.Helper()
	var got []kindDetail
	for len(got) < len(want) {
		ev := nextEvent(t, c, func(ev Event) bool {
			return ev.UUID == uuid && ev.Kind != EventMetadataChanged
		})
		got = append(got, kindDetail{ev.Kind, ev.Detail})
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("lifecycle events of %s (-want +got):\n%s", uuid, diff)
	}
}

// testLogger sends a Conn's logs to the test's log instead of stderr.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
