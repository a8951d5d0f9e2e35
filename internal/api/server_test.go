package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/api/apitest"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// self admits the uid the tests run as, root or not.
func self() api.ServerOptions {
	return api.ServerOptions{AllowedUIDs: []uint32{uint32(os.Geteuid())}}
}

// testCtx bounds a test against a hung server; it asserts nothing about
// speed.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func populated() *apitest.Fake {
	f := apitest.NewFake()
	f.SetStatus(api.Status{AgentVersion: "1.2.3", StartedAt: t0, Health: api.HealthOK, Ready: true,
		Libvirt: api.LibvirtStatus{URI: "test:///default", Connected: true, Reconnects: 2},
		Counts:  api.Counts{Guests: 1, GuestsInspected: 1}})
	f.SetGuests([]api.Guest{{Name: "web-1", UUID: "u1", State: api.GuestInspected, Policy: "web", Chain: []string{"ips", "fw"}, Reason: "glob", Since: t0}})
	u := 0.25
	f.SetAppliances([]api.Appliance{{Appliance: "fw", Index: 1, Name: "vsa-fw-1", UUID: "a1", State: "running", Health: api.HealthOK, MACs: []string{"52:54:00:00:00:01"}, Guests: 1, CPUUtilisation: &u}})
	f.SetExplanation("web-1", api.Explanation{Domain: "web-1", Matched: api.MatchedGlob, Policy: "web", Reason: "glob",
		Candidates: []api.Candidate{}, Default: []api.ChainStep{}, Classifiers: []api.Classified{}})
	return f
}

func TestClientServerRoundTrip(t *testing.T) {
	ctx := testCtx(t)
	f := populated()
	srv := apitest.Serve(t, f, self())
	c := api.NewClient(srv.Socket)
	defer c.Close()

	wantSt, _ := f.Status(ctx)
	wantSt.APIVersion = api.Version
	same(t, "Status", wantSt)(c.Status(ctx))
	same(t, "Guests", must(f.Guests(ctx)))(c.Guests(ctx))
	same(t, "Appliances", must(f.Appliances(ctx)))(c.Appliances(ctx))
	same(t, "Explain", must(f.Explain(ctx, "web-1")))(c.Explain(ctx, "web-1"))

	fl, err := c.Flows(ctx, "")
	if err != nil {
		t.Fatalf("Flows: %v", err)
	}
	if len(fl.Flows) != 0 || !strings.Contains(fl.Note, "dataplane not running") {
		t.Errorf("Flows without a dataplane = %+v, want none and a note", fl)
	}
	f.SetFlows([]api.Flow{{Guest: "web-1", Protocol: "tcp", Src: "10.0.0.1:1234", Dst: "10.0.0.2:80", Verdict: "chain", Frames: 3}, {Guest: "db-1", Protocol: "udp"}})
	fl, err = c.Flows(ctx, "web-1")
	if err != nil {
		t.Fatalf("Flows(web-1): %v", err)
	}
	if len(fl.Flows) != 1 || fl.Flows[0].Dst != "10.0.0.2:80" || fl.Note != "" {
		t.Errorf("Flows(web-1) = %+v, want the one flow of web-1", fl)
	}

	f.AddEvent(api.Event{Time: t0, Kind: "gated", Guest: "web-1"})
	f.AddEvent(api.Event{Time: t0, Kind: "released", Guest: "web-1"})
	evs, err := c.Events(ctx, 1)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	if diff := cmp.Diff([]api.Event{{Seq: 2, Time: t0, Kind: "released", Guest: "web-1"}}, evs); diff != "" {
		t.Errorf("Events(after 1) mismatch (-want +got):\n%s", diff)
	}
}

// same returns a check that a client call answered want without error;
// it is curried so that the call's two results can be passed straight in.
func same[T any](t *testing.T, what string, want T) func(T, error) {
	return func(got T, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s mismatch (-want +got):\n%s", what, diff)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestEmptyListsAreArrays(t *testing.T) {
	srv := apitest.Serve(t, apitest.NewFake(), self())
	for _, path := range []string{"/v1/guests", "/v1/appliances", "/v1/events", "/v1/flows"} {
		status, body := rawGet(t, srv.Socket, "GET", path)
		if status != http.StatusOK {
			t.Errorf("%s: HTTP %d %s", path, status, body)
			continue
		}
		if strings.Contains(body, "null") || !strings.Contains(body, "[]") {
			t.Errorf("%s = %s, want an empty array, not null", path, body)
		}
	}
}

func TestErrorAnswers(t *testing.T) {
	ctx := testCtx(t)
	f := populated()
	srv := apitest.Serve(t, f, self())
	c := api.NewClient(srv.Socket)
	defer c.Close()

	_, err := c.Explain(ctx, "nonesuch")
	var ae *api.Error
	if !errors.Is(err, api.ErrNotFound) || !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("Explain(nonesuch) = %v, want a 404 matching ErrNotFound", err)
	}
	_, err = c.Flows(ctx, "nonesuch")
	if !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Flows(nonesuch) = %v, want ErrNotFound", err)
	}

	f.Fail(fmt.Errorf("list domains: %w", api.ErrUnavailable))
	_, err = c.Guests(ctx)
	if !errors.Is(err, api.ErrUnavailable) || !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Errorf("Guests while unavailable = %v, want a 503 matching ErrUnavailable", err)
	}

	f.Fail(errors.New("disk on fire"))
	_, err = c.Status(ctx)
	if !errors.As(err, &ae) || ae.Code != api.CodeInternal || !strings.Contains(ae.Message, "disk on fire") {
		t.Errorf("Status on failure = %v, want an internal error carrying the cause", err)
	}
	if errors.Is(err, api.ErrUnreachable) || errors.Is(err, api.ErrNotFound) {
		t.Errorf("an internal error must not look like %v", err)
	}
}

// rawGet sends one request over the socket without the client, to see the
// server's answers to requests the client never makes.
func rawGet(t *testing.T, socket, method, target string) (int, string) {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: vsagent\r\nConnection: close\r\n\r\n", method, target)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	bufio.NewReader(resp.Body).WriteTo(&b)
	return resp.StatusCode, b.String()
}

func TestBadRequests(t *testing.T) {
	srv := apitest.Serve(t, populated(), self())
	tests := []struct {
		method, target string
		status         int
		code, mention  string
	}{
		{"POST", "/v1/status", http.StatusMethodNotAllowed, api.CodeBadRequest, "read-only"},
		{"DELETE", "/v1/events", http.StatusMethodNotAllowed, api.CodeBadRequest, "read-only"},
		{"GET", "/v1/status?verbose=1", http.StatusBadRequest, api.CodeBadRequest, `"verbose"`},
		{"GET", "/v1/flows?guest=a&guest=b", http.StatusBadRequest, api.CodeBadRequest, "2 times"},
		{"GET", "/v1/events?after=abc", http.StatusBadRequest, api.CodeBadRequest, "sequence number"},
		{"GET", "/v1/events?after=-1", http.StatusBadRequest, api.CodeBadRequest, "sequence number"},
		{"GET", "/v1/events?follow=maybe", http.StatusBadRequest, api.CodeBadRequest, "true or false"},
		{"GET", "/v1/events?%zz", http.StatusBadRequest, api.CodeBadRequest, "malformed query"},
		{"GET", "/v2/status", http.StatusNotFound, api.CodeNotFound, "v1"},
		{"GET", "/v1/explain/", http.StatusNotFound, api.CodeNotFound, "no such endpoint"},
		{"GET", "/v1/explain/nonesuch", http.StatusNotFound, api.CodeNotFound, "nonesuch"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			status, body := rawGet(t, srv.Socket, tt.method, tt.target)
			if status != tt.status {
				t.Errorf("HTTP %d, want %d (%s)", status, tt.status, body)
			}
			var eb api.ErrorBody
			if err := json.Unmarshal([]byte(body), &eb); err != nil {
				t.Fatalf("error answer is not JSON: %v: %s", err, body)
			}
			if eb.Error.Code != tt.code || !strings.Contains(eb.Error.Message, tt.mention) {
				t.Errorf("error %+v, want code %s mentioning %s", eb.Error, tt.code, tt.mention)
			}
		})
	}
}

func TestFollowEvents(t *testing.T) {
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	f := apitest.NewFake()
	f.AddEvent(api.Event{Time: t0, Kind: "gated", Guest: "web-1"})
	f.AddEvent(api.Event{Time: t0, Kind: "appliance-started", Appliance: "vsa-fw-1"})
	srv := apitest.Serve(t, f, self())
	c := api.NewClient(srv.Socket)
	defer c.Close()

	got := make(chan api.Event, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.FollowEvents(ctx, 1, func(e api.Event) error { got <- e; return nil })
	}()
	if e := <-got; e.Seq != 2 || e.Kind != "appliance-started" {
		t.Fatalf("first followed event %+v, want seq 2 (after 1)", e)
	}
	// The stream is now waiting; a new event must arrive without polling.
	f.AddEvent(api.Event{Time: t0, Kind: "released", Guest: "web-1"})
	if e := <-got; e.Seq != 3 || e.Kind != "released" {
		t.Fatalf("second followed event %+v, want seq 3", e)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("FollowEvents after cancel = %v, want nil", err)
	}
}

// oneEvent serves an agent that has logged one event, and a client of it.
func oneEvent(t *testing.T) (*apitest.Server, *api.Client) {
	f := apitest.NewFake()
	f.AddEvent(api.Event{Time: t0, Kind: "gated"})
	srv := apitest.Serve(t, f, self())
	c := api.NewClient(srv.Socket)
	t.Cleanup(c.Close)
	return srv, c
}

func TestFollowEndsWhenTheAgentStops(t *testing.T) {
	ctx := testCtx(t)
	srv, c := oneEvent(t)
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- c.FollowEvents(ctx, 0, func(api.Event) error { close(started); return nil })
	}()
	<-started
	srv.Stop(t)
	if err := <-done; !errors.Is(err, api.ErrUnreachable) {
		t.Errorf("FollowEvents when the server stops = %v, want ErrUnreachable", err)
	}
}

func TestFollowStopsOnCallbackError(t *testing.T) {
	ctx := testCtx(t)
	_, c := oneEvent(t)
	stop := errors.New("enough")
	if err := c.FollowEvents(ctx, 0, func(api.Event) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("FollowEvents = %v, want the callback's error", err)
	}
}

func TestUnreachable(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	c := api.NewClient(filepath.Join(dir, "nobody-here.sock"))
	_, err := c.Status(ctx)
	if !errors.Is(err, api.ErrUnreachable) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("Status without a socket = %v, want ErrUnreachable wrapping ENOENT", err)
	}
	if strings.Contains(err.Error(), "http://") {
		t.Errorf("error %q leaks the fake URL", err)
	}
}

func TestUnreadableAnswerIsProtocolError(t *testing.T) {
	ctx := testCtx(t)
	dir, err := os.MkdirTemp("", "vsa-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/guests" {
			w.WriteHeader(http.StatusTeapot)
		}
		fmt.Fprint(w, "<html>not the agent</html>")
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	c := api.NewClient(sock)
	defer c.Close()
	if _, err := c.Status(ctx); !errors.Is(err, api.ErrProtocol) {
		t.Errorf("Status from a stranger = %v, want ErrProtocol", err)
	}
	if _, err := c.Guests(ctx); !errors.Is(err, api.ErrProtocol) {
		t.Errorf("Guests from a stranger = %v, want ErrProtocol", err)
	}
}

func TestRefusedUID(t *testing.T) {
	ctx := testCtx(t)
	var logs apitest.Buffer
	opts := api.ServerOptions{AllowedUIDs: []uint32{uint32(os.Geteuid()) + 1}, Logger: logs.Logger()}
	srv := apitest.Serve(t, populated(), opts)
	c := api.NewClient(srv.Socket)
	defer c.Close()
	_, err := c.Status(ctx)
	if !errors.Is(err, api.ErrRefused) {
		t.Fatalf("Status from a uid that is not allowed = %v, want ErrRefused", err)
	}
	if want := fmt.Sprintf("uid %d", os.Geteuid()); !strings.Contains(err.Error(), want) {
		t.Errorf("refusal %q does not name %s", err, want)
	}
	if want := fmt.Sprintf("peer_uid=%d", os.Geteuid()); !strings.Contains(logs.String(), want) {
		t.Errorf("refusal not logged with %s; log:\n%s", want, logs.String())
	}
}

func TestHandlerOutsideServeFailsClosed(t *testing.T) {
	h := api.NewServer(populated(), api.ServerOptions{Logger: apitest.Logger()})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/status", nil))
	if rec.Code != http.StatusForbidden {
		t.Errorf("a request without peer credentials got HTTP %d, want 403", rec.Code)
	}
}
