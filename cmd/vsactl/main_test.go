package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/api/apitest"
	"github.com/vsagent/vsagent/internal/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// t0 is when the fixture's agent started; the command runs an hour later.
var (
	t0  = time.Date(2025, 3, 4, 10, 0, 0, 0, time.UTC)
	now = t0.Add(time.Hour)
)

// fixture is an agent with a little of everything: guests in each state,
// a stopped appliance instance, events of several kinds, and explanations
// computed from testdata/vsagent.toml.
func fixture(t testing.TB) *apitest.Fake {
	t.Helper()
	cfg, err := config.Load("testdata/vsagent.toml")
	if err != nil {
		t.Fatalf("fixture config: %v", err)
	}
	f := apitest.NewFake()
	f.SetStatus(api.Status{
		AgentVersion: "1.4.0", StartedAt: t0, Health: api.HealthOK, Ready: true,
		Libvirt:   api.LibvirtStatus{URI: "qemu:///system", Connected: true, Reconnects: 1, DroppedEvents: 0},
		Dataplane: api.Dataplane{Note: "dataplane not running: there are no flows to show"},
		Counts:    api.Counts{Guests: 3, GuestsInspected: 1, GuestsGated: 1, GuestsUnmanaged: 1, GuestsWithErrors: 1, Appliances: 3, AppliancesRunning: 2},
		Config:    api.ConfigStatus{Summary: "2 appliances, 2 policies, backend tc-redirect, from 2 files", Files: []string{"/etc/vsagent/vsagent.toml", "/etc/vsagent/conf.d/web.toml"}},
	})
	guests := []api.Guest{
		{Name: "app-7", UUID: "8d4c2f40-0000-4000-8000-000000000007", State: api.GuestGated, Policy: "everything", Chain: []string{"fw"},
			Reason: `domain name matches "app-*" of policy "everything"`, LastError: "appliance provisioning failed: start vsa-fw-2: out of memory", Since: t0.Add(50 * time.Minute)},
		{Name: "idle-1", UUID: "8d4c2f40-0000-4000-8000-000000000001", State: api.GuestUnmanaged,
			Reason: "no binding and no policy's domain globs match", Since: t0.Add(2 * time.Minute)},
		{Name: "web-1", UUID: "8d4c2f40-0000-4000-8000-000000000101", State: api.GuestInspected, Policy: "protected", Chain: []string{"ips", "fw"},
			Reason: `domain name matches "web-*" of policy "protected"`, Since: t0.Add(3*time.Minute + 12*time.Second)},
	}
	f.SetGuests(guests)
	busy := 0.625
	f.SetAppliances([]api.Appliance{
		{Appliance: "fw", Index: 1, Name: "vsa-fw-1", UUID: "5e1f0000-0000-4000-8000-0000000000f1", State: "running", Health: api.HealthOK,
			MACs: []string{"52:54:00:5a:00:01", "52:54:00:5a:00:02"}, Guests: 2, CPUUtilisation: &busy},
		{Appliance: "fw", Index: 2, Name: "vsa-fw-2", UUID: "5e1f0000-0000-4000-8000-0000000000f2", State: "shut off", Health: api.HealthDown,
			MACs: []string{"52:54:00:5a:00:03"}, Guests: 2},
		{Appliance: "ips", Index: 1, Name: "vsa-ips-1", UUID: "5e1f0000-0000-4000-8000-0000000000a1", State: "running", Health: api.HealthOK,
			MACs: []string{"52:54:00:5a:00:11"}, Guests: 1},
	})
	for _, e := range []api.Event{
		{Time: t0.Add(3 * time.Minute), Kind: "gated", Guest: "web-1", Message: "waiting for ips,fw"},
		{Time: t0.Add(3*time.Minute + 5*time.Second), Kind: "appliance-defined", Appliance: "vsa-ips-1"},
		{Time: t0.Add(3*time.Minute + 6*time.Second), Kind: "appliance-started", Appliance: "vsa-ips-1"},
		{Time: t0.Add(3*time.Minute + 12*time.Second), Kind: "released", Guest: "web-1", Message: "held 12.004s"},
		{Time: t0.Add(53 * time.Minute), Kind: "gate-timeout", Guest: "app-7", Message: "appliance provisioning failed: start vsa-fw-2: out of memory"},
	} {
		f.AddEvent(e)
	}
	for _, g := range guests {
		e := api.Explain(cfg, g.Name, "", nil)
		e.UUID = g.UUID
		e.Agent = &g
		f.SetExplanation(g.Name, e)
	}
	odd := api.Explain(cfg, "odd-1", "nonesuch", nil)
	odd.UUID = "8d4c2f40-0000-4000-8000-0000000000dd"
	f.SetExplanation("odd-1", odd)
	f.SetExplanation("vsa-fw-1", api.Explanation{
		Domain: "vsa-fw-1", UUID: "5e1f0000-0000-4000-8000-0000000000f1", Appliance: "fw", Matched: api.MatchedNone,
		Reason:     `instance 1 of appliance "fw", which vsagent owns: policies never apply to appliances`,
		Candidates: []api.Candidate{}, Default: []api.ChainStep{}, Classifiers: []api.Classified{},
	})
	return f
}

func withFlows(f *apitest.Fake) *apitest.Fake {
	f.SetFlows([]api.Flow{
		{Guest: "web-1", Protocol: "tcp", Src: "10.0.0.11:40522", Dst: "198.51.100.7:443", Chain: []string{"ips", "fw"},
			Instances: []string{"vsa-ips-1", "vsa-fw-1"}, Verdict: "chain", Frames: 1832, Bytes: 2318004, IdleSeconds: 0.4},
		{Guest: "web-1", Protocol: "udp", Src: "10.0.0.11:53311", Dst: "10.0.0.2:53", Chain: []string{"fw"},
			Instances: []string{"vsa-fw-1"}, Verdict: "chain", Frames: 2, Bytes: 164, IdleSeconds: 31},
		{Guest: "app-7", Protocol: "tcp", Src: "10.0.0.70:51000", Dst: "10.0.0.11:8080", Verdict: "drop", Frames: 3, Bytes: 222, IdleSeconds: 75},
	})
	return f
}

type result struct {
	code           int
	stdout, stderr string
}

func testEnv(socket string, stdout, stderr *apitest.Buffer) env {
	return env{
		stdout: stdout, stderr: stderr,
		getenv: func(k string) string {
			if k == socketEnv {
				return socket
			}
			return ""
		},
		now: func() time.Time { return now },
		loc: time.UTC,
	}
}

func runCtl(ctx context.Context, socket string, args ...string) result {
	var stdout, stderr apitest.Buffer
	code := run(ctx, args, testEnv(socket, &stdout, &stderr))
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func self() api.ServerOptions {
	return api.ServerOptions{AllowedUIDs: []uint32{uint32(os.Geteuid())}}
}

// TestGolden runs vsactl against a fake agent behind a real socket and
// compares everything it prints, and its exit status, with testdata/golden.
// Regenerate with: go test ./cmd/vsactl -run TestGolden -update
func TestGolden(t *testing.T) {
	plain := apitest.Serve(t, fixture(t), self())
	flowing := apitest.Serve(t, withFlows(fixture(t)), self())
	refusing := apitest.Serve(t, fixture(t), api.ServerOptions{AllowedUIDs: []uint32{uint32(os.Geteuid()) + 1}})
	failing := fixture(t)
	failing.Fail(fmt.Errorf("list domains: %w", api.ErrUnavailable))
	unavailable := apitest.Serve(t, failing, self())
	missing := filepath.Join(t.TempDir(), "absent.sock")

	tests := []struct {
		name   string
		socket string
		args   []string
	}{
		{"status", plain.Socket, []string{"status"}},
		{"status-json", plain.Socket, []string{"status", "--json"}},
		{"guests", plain.Socket, []string{"guests"}},
		{"guests-json", plain.Socket, []string{"--json", "guests"}},
		{"appliances", plain.Socket, []string{"appliances"}},
		{"appliances-json", plain.Socket, []string{"appliances", "-json"}},
		{"flows-no-dataplane", plain.Socket, []string{"flows"}},
		{"flows-no-dataplane-json", plain.Socket, []string{"flows", "--json"}},
		{"flows", flowing.Socket, []string{"flows"}},
		{"flows-guest", flowing.Socket, []string{"flows", "--guest", "web-1"}},
		{"flows-guest-json", flowing.Socket, []string{"flows", "--guest=web-1", "--json"}},
		{"flows-unknown-guest", flowing.Socket, []string{"flows", "--guest", "nosuch"}},
		{"events", plain.Socket, []string{"events"}},
		{"events-after", plain.Socket, []string{"events", "--after", "3"}},
		{"events-json", plain.Socket, []string{"events", "--json", "--after=4"}},
		{"explain-glob", plain.Socket, []string{"explain", "web-1"}},
		{"explain-glob-json", plain.Socket, []string{"explain", "web-1", "--json"}},
		{"explain-later-policy", plain.Socket, []string{"explain", "app-7"}},
		{"explain-unmanaged", plain.Socket, []string{"explain", "idle-1"}},
		{"explain-unknown-binding", plain.Socket, []string{"explain", "odd-1"}},
		{"explain-appliance", plain.Socket, []string{"explain", "--", "vsa-fw-1"}},
		{"explain-unknown-domain", plain.Socket, []string{"explain", "nosuch"}},
		{"names-domains", plain.Socket, []string{"__names", "domains"}},
		{"names-unreachable", missing, []string{"__names", "guests"}},
		{"unavailable", unavailable.Socket, []string{"guests"}},
		{"unreachable", missing, []string{"status"}},
		{"refused", refusing.Socket, []string{"status"}},
		{"socket-flag-beats-env", plain.Socket, []string{"--socket", missing, "status"}},
		{"usage-no-command", plain.Socket, nil},
		{"usage-unknown-command", plain.Socket, []string{"frobnicate"}},
		{"usage-unknown-flag", plain.Socket, []string{"guests", "--verbose"}},
		{"usage-missing-argument", plain.Socket, []string{"explain"}},
		{"usage-extra-argument", plain.Socket, []string{"status", "now"}},
		{"usage-bad-timeout", plain.Socket, []string{"status", "--timeout", "0s"}},
		{"usage-flag-needs-value", plain.Socket, []string{"flows", "--guest"}},
		{"help", plain.Socket, []string{"help"}},
		{"help-command", plain.Socket, []string{"help", "events"}},
		{"help-flag", plain.Socket, []string{"explain", "-h"}},
		{"completion-bash", plain.Socket, []string{"completion", "bash"}},
		{"completion-zsh", plain.Socket, []string{"completion", "zsh"}},
		{"completion-fish", plain.Socket, []string{"completion", "fish"}},
		{"completion-unknown-shell", plain.Socket, []string{"completion", "tcsh"}},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		if seen[tt.name] {
			t.Fatalf("duplicate golden name %s", tt.name)
		}
		seen[tt.name] = true
		t.Run(tt.name, func(t *testing.T) {
			r := runCtl(testContext(t), tt.socket, tt.args...)
			got := transcript(tt.args, r, map[string]string{
				plain.Socket: "$SOCKET", flowing.Socket: "$SOCKET", refusing.Socket: "$SOCKET",
				unavailable.Socket: "$SOCKET", missing: "$MISSING",
			})
			golden(t, filepath.Join("testdata", "golden", tt.name+".txt"), got)
		})
	}
}

// transcript is what a golden file holds: the command, its exit status
// and both outputs, with per-run paths replaced by placeholders.
func transcript(args []string, r result, placeholders map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "$ vsactl %s\nexit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	out := b.String()
	for path, ph := range placeholders {
		out = strings.ReplaceAll(out, path, ph)
	}
	return out
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

// TestExitStatusContract pins the documented exit statuses, which the
// golden files also show, in one place a reader can check.
func TestExitStatusContract(t *testing.T) {
	plain := apitest.Serve(t, fixture(t), self())
	missing := filepath.Join(t.TempDir(), "absent.sock")
	tests := []struct {
		socket string
		args   []string
		want   int
	}{
		{plain.Socket, []string{"status"}, 0},
		{plain.Socket, []string{"explain", "nosuch"}, 1},
		{plain.Socket, []string{"flows", "--guest", "nosuch"}, 1},
		{plain.Socket, []string{"nosuch"}, 2},
		{missing, []string{"guests"}, 3},
	}
	for _, tt := range tests {
		if r := runCtl(testContext(t), tt.socket, tt.args...); r.code != tt.want {
			t.Errorf("vsactl %s: exit %d, want %d\n%s", strings.Join(tt.args, " "), r.code, tt.want, r.stderr)
		}
	}
}

func TestDefaultSocket(t *testing.T) {
	var stdout, stderr apitest.Buffer
	e := testEnv("", &stdout, &stderr)
	code := run(testContext(t), []string{"status"}, e)
	if code == exitUnreachable && !strings.Contains(stderr.String(), api.DefaultSocket) {
		t.Errorf("without --socket or $%s the message names %q, want the default %s", socketEnv, stderr.String(), api.DefaultSocket)
	}
}

func TestEventsFollow(t *testing.T) {
	for _, asJSON := range []bool{false, true} {
		t.Run(fmt.Sprintf("json=%v", asJSON), func(t *testing.T) {
			f := fixture(t)
			srv := apitest.Serve(t, f, self())
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			args := []string{"events", "--follow", "--after", "4"}
			if asJSON {
				args = append(args, "--json")
			}
			var stdout, stderr apitest.Buffer
			done := make(chan int, 1)
			go func() { done <- run(ctx, args, testEnv(srv.Socket, &stdout, &stderr)) }()

			waitFor(t, &stdout, "gate-timeout")
			f.AddEvent(api.Event{Time: now, Kind: "appliance-deleted", Appliance: "vsa-fw-2"})
			waitFor(t, &stdout, "appliance-deleted")
			cancel()
			if code := <-done; code != exitOK {
				t.Errorf("interrupted follow exited %d, want 0; stderr: %s", code, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
			want := 3 // header and two events
			if asJSON {
				want = 2
				for _, l := range lines {
					if !strings.HasPrefix(l, `{"seq":`) {
						t.Errorf("not a JSON line: %q", l)
					}
				}
			}
			if len(lines) != want {
				t.Errorf("followed output has %d lines, want %d:\n%s", len(lines), want, stdout.String())
			}
		})
	}
}

func TestEventsFollowLosesTheAgent(t *testing.T) {
	srv := apitest.Serve(t, fixture(t), self())
	var stdout, stderr apitest.Buffer
	done := make(chan int, 1)
	go func() { done <- run(testContext(t), []string{"events", "-f"}, testEnv(srv.Socket, &stdout, &stderr)) }()
	waitFor(t, &stdout, "gate-timeout")
	srv.Stop(t)
	if code := <-done; code != exitUnreachable {
		t.Errorf("follow whose agent stopped exited %d, want %d; stderr: %s", code, exitUnreachable, stderr.String())
	}
	if !strings.Contains(stderr.String(), "event stream ended") {
		t.Errorf("stderr %q does not say the stream ended", stderr.String())
	}
}

// waitFor waits until the output contains s; the bound catches a hung
// command and is not a speed assertion.
func waitFor(t *testing.T, w *apitest.Buffer, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(w.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("output never contained %q:\n%s", s, w.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		args       []string
		cmd        string
		positional []string
		json       bool
		guest      string
		socket     string
		usage      bool
	}{
		{args: []string{"--json", "guests"}, cmd: "guests", json: true},
		{args: []string{"guests", "--json"}, cmd: "guests", json: true},
		{args: []string{"-socket", "/s", "flows", "-guest", "web-1"}, cmd: "flows", socket: "/s", guest: "web-1"},
		{args: []string{"flows", "--guest=web-1", "--socket=/s"}, cmd: "flows", socket: "/s", guest: "web-1"},
		{args: []string{"explain", "web-1", "--json"}, cmd: "explain", positional: []string{"web-1"}, json: true},
		{args: []string{"explain", "--", "-odd-name"}, cmd: "explain", positional: []string{"-odd-name"}},
		{args: []string{"explain", "--json", "--", "--json"}, cmd: "explain", positional: []string{"--json"}, json: true},
		{args: []string{"explain", "a", "b"}, usage: true},
		{args: []string{"--guest", "x", "flows"}, usage: true}, // a command's flag before the command
		{args: []string{"events", "--after", "x"}, usage: true},
		{args: []string{"-"}, usage: true},
		{args: []string{}, usage: true},
	}
	for _, tt := range tests {
		cmd, o, pos, err := parseArgs(tt.args)
		var ue *usageError
		if tt.usage {
			if !errors.As(err, &ue) {
				t.Errorf("parseArgs(%q) = %v, want a usage error", tt.args, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseArgs(%q): %v", tt.args, err)
			continue
		}
		if cmd.name != tt.cmd || o.json != tt.json || o.guest != tt.guest || o.socket != tt.socket || !cmp.Equal(pos, tt.positional, cmpopts.EquateEmpty()) {
			t.Errorf("parseArgs(%q) = %s %+v %q; want %s json=%v guest=%q socket=%q %q", tt.args, cmd.name, o, pos, tt.cmd, tt.json, tt.guest, tt.socket, tt.positional)
		}
	}
}

// FuzzParseArgs: any command line parses to a command with the right
// number of arguments and a positive timeout, a usage error, or a help
// request; never a panic.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{"status", "guests --json", "flows --guest web-1", "explain web-1", "explain -- -x",
		"events -f --after 3", "--socket /s status", "help events", "completion bash", "--timeout 1s guests", "-h", "explain -h", "flows --guest"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, " ")
		cmd, o, pos, err := parseArgs(args)
		var ue *usageError
		var hr *helpRequest
		switch {
		case err == nil:
			if cmd == nil || o.timeout <= 0 || cmd.nargs >= 0 && len(pos) != cmd.nargs {
				t.Fatalf("parseArgs(%q) accepted %v %+v %q", args, cmd, o, pos)
			}
		case errors.As(err, &ue), errors.As(err, &hr):
		default:
			t.Fatalf("parseArgs(%q): unexpected error type %T: %v", args, err, err)
		}
	})
}

// A non-root user is usually stopped by the socket file's mode before the
// agent sees it; the hint must say why rather than suggest the agent is
// down.
func TestPermissionDeniedHint(t *testing.T) {
	var stderr apitest.Buffer
	c := &cli{env: env{stderr: &stderr}}
	code := c.report(fmt.Errorf("%w: /run/vsagent/vsagent.sock: dial unix: %w", api.ErrUnreachable, syscall.EACCES))
	if code != exitUnreachable || !strings.Contains(stderr.String(), "run vsactl as root") {
		t.Errorf("exit %d, stderr %q; want %d and the root hint", code, stderr.String(), exitUnreachable)
	}
}
