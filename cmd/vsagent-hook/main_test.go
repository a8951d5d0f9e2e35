package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vsagent/vsagent/internal/hookapi"
)

const guestXML = `<domain type='qemu'><name>%s</name><uuid>6f1b3f0e-1c1d-4b51-9a53-0d1e6f3c2a11</uuid>` +
	`<devices><interface type='ethernet'><mac address='52:54:00:12:34:56'/><target dev='vnet7'/></interface></devices></domain>`

// writeConfig writes a configuration whose policy "web" covers web-* and
// returns its path and the agent's hook socket.
func writeConfig(t *testing.T, failure string) (path, socket string) {
	t.Helper()
	dir := t.TempDir()
	tmpl, err := os.ReadFile(filepath.Join("testdata", "appliance.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "appliance.xml"), tmpl, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "vsagent.sock")
	cfg := `[agent]
socket = "` + sock + `"
hook_failure = "` + failure + `"

[[appliance]]
name = "fw"
template = "appliance.xml"

[[policy]]
name = "web"
chain = ["fw"]
[policy.match]
domains = ["web-*"]
`
	path = filepath.Join(dir, "vsagent.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, sock + ".hook"
}

// fakeAgent serves the hook socket with a fixed answer and records the
// requests.
func fakeAgent(t *testing.T, socket string, ans hookapi.Answer) *[]hookapi.Request {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the hook socket answers root only; run as root")
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	var got []hookapi.Request
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- hookapi.Serve(ctx, ln, func(_ context.Context, r hookapi.Request) hookapi.Answer {
			got = append(got, r)
			return ans
		}, nil)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return &got
}

type result struct {
	code           int
	stdout, stderr string
	notified       []string
}

func runHook(t *testing.T, cfgPath string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	var notified []string
	h := hook{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut, configPath: cfgPath,
		notify: func(msg string, _ hookapi.Request) { notified = append(notified, msg) }}
	code := h.run(context.Background(), args)
	return result{code: code, stdout: out.String(), stderr: errOut.String(), notified: notified}
}

func xmlOf(name string) string { return strings.Replace(guestXML, "%s", name, 1) }

func TestHookWithoutAgent(t *testing.T) {
	for _, tc := range []struct {
		name, failure, dom, op, sub string
		want                        int
		wantErr                     string
		wantNotified                bool
	}{
		{name: "needs inspection, closed", failure: "closed", dom: "web-1", op: "start", sub: "begin", want: 1,
			wantErr: `vsagent: refusing start of guest web-1: it needs inspection (policy "web"`},
		{name: "needs inspection, closed, prepare", failure: "closed", dom: "web-1", op: "prepare", sub: "begin", want: 1, wantErr: "is vsagent running?"},
		{name: "needs inspection, open", failure: "open", dom: "web-1", op: "start", sub: "begin", want: 0, wantErr: "UNINSPECTED", wantNotified: true},
		{name: "no policy", failure: "closed", dom: "db-1", op: "start", sub: "begin", want: 0},
		{name: "phase not forwarded", failure: "closed", dom: "web-1", op: "started", sub: "begin", want: 0},
		{name: "release", failure: "closed", dom: "web-1", op: "release", sub: "end", want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := writeConfig(t, tc.failure)
			r := runHook(t, cfg, xmlOf(tc.dom), tc.dom, tc.op, tc.sub, "-")
			if r.code != tc.want || !strings.Contains(r.stderr, tc.wantErr) || (tc.wantErr == "") != (r.stderr == "") {
				t.Errorf("exit %d, stderr %q; want %d with %q", r.code, r.stderr, tc.want, tc.wantErr)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing (libvirt keeps the XML)", r.stdout)
			}
			if (len(r.notified) > 0) != tc.wantNotified {
				t.Errorf("journal notices %q, want one: %v", r.notified, tc.wantNotified)
			}
		})
	}
}

func TestHookConfiguration(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent.toml")
	if r := runHook(t, missing, xmlOf("web-1"), "web-1", "start", "begin", "-"); r.code != 0 || !strings.Contains(r.stderr, "no configuration") {
		t.Errorf("no configuration: exit %d, %q; want 0 saying so", r.code, r.stderr)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[agent]\nhook_failure = \"maybe\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := runHook(t, bad, xmlOf("web-1"), "web-1", "start", "begin", "-"); r.code != 1 || !strings.Contains(r.stderr, "hook_failure") {
		t.Errorf("invalid configuration: exit %d, %q; want 1 naming the error", r.code, r.stderr)
	}
	if r := runHook(t, missing, "", "web-1"); r.code != 2 || !strings.Contains(r.stderr, "usage") {
		t.Errorf("too few arguments: exit %d, %q; want 2 with usage", r.code, r.stderr)
	}
}

func TestHookAsksAgent(t *testing.T) {
	cfg, sock := writeConfig(t, "open")
	got := fakeAgent(t, sock, hookapi.Answer{Verdict: hookapi.Refuse, Message: "vsagent: no hold for you"})
	r := runHook(t, cfg, xmlOf("web-1"), "web-1", "start", "begin", "-")
	if r.code != 1 || r.stderr != "vsagent: no hold for you\n" {
		t.Errorf("refused: exit %d, stderr %q; want 1 with the agent's message", r.code, r.stderr)
	}
	if len(*got) != 1 || (*got)[0].Domain != "web-1" || (*got)[0].Op != "start" || (*got)[0].XML != xmlOf("web-1") || (*got)[0].Extra != "-" {
		t.Errorf("agent received %+v, want the start of web-1 with its XML", *got)
	}
	// hook_failure is "open", but the agent answered: its refusal stands.
	if len(r.notified) != 0 {
		t.Errorf("fail-open notice %q for an answered request", r.notified)
	}
}

func TestHookMigrateRewritesXML(t *testing.T) {
	cfg, sock := writeConfig(t, "closed")
	rewritten := xmlOf("web-1") + "<!-- rewritten -->"
	fakeAgent(t, sock, hookapi.Answer{Verdict: hookapi.Allow, XML: rewritten})
	if r := runHook(t, cfg, xmlOf("web-1"), "web-1", "migrate", "begin", "-"); r.code != 0 || r.stdout != rewritten {
		t.Errorf("migrate: exit %d, stdout %q; want 0 and the rewritten XML", r.code, r.stdout)
	}
	// At start libvirt reads no XML back: an answer's XML is not printed.
	if r := runHook(t, cfg, xmlOf("web-1"), "web-1", "start", "begin", "-"); r.code != 0 || r.stdout != "" {
		t.Errorf("start: exit %d, stdout %q; want 0 and nothing on stdout", r.code, r.stdout)
	}
}

// TestHookAgentFailsOpen: an agent that lets a guest through although it
// could not serve it (hook_failure "open") gets its warning logged like the
// hook's own fail-open decision, and libvirt keeps its XML.
func TestHookAgentFailsOpen(t *testing.T) {
	cfg, sock := writeConfig(t, "open")
	const msg = `vsagent: guest web-1 proceeds to restore although it needs inspection (policy "web") and its interfaces cannot be wired`
	fakeAgent(t, sock, hookapi.Answer{Verdict: hookapi.Allow, Message: msg})
	r := runHook(t, cfg, xmlOf("web-1"), "web-1", "restore", "begin", "-")
	if r.code != 0 || r.stderr != msg+"\n" || r.stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0, nothing, the agent's warning", r.code, r.stdout, r.stderr)
	}
	if len(r.notified) != 1 || r.notified[0] != msg {
		t.Errorf("journal notices %q, want the agent's warning", r.notified)
	}
}
