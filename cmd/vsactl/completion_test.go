package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/internal/api/apitest"
)

// fakeVsactl stands in for vsactl on PATH inside the shells: it answers
// __names like an agent with two guests and one appliance, and records the
// socket it was given.
const fakeVsactl = `#!/bin/sh
sock=
while [ $# -gt 0 ]; do
    case $1 in
        --socket) sock=$2; shift 2 ;;
        __names) shift; break ;;
        *) shift ;;
    esac
done
[ -n "$sock" ] && echo "$sock" > "$(dirname "$0")/socket-seen"
case $1 in
    guests) printf 'web-1\nweb-2\n' ;;
    domains) printf 'vsa-fw-1\nweb-1\nweb-2\n' ;;
esac
`

func script(t *testing.T, shell string) string {
	t.Helper()
	var out bytes.Buffer
	var stderr apitest.Buffer
	code := run(context.Background(), []string{"completion", shell}, env{stdout: &out, stderr: &stderr, getenv: func(string) string { return "" }})
	if code != exitOK {
		t.Fatalf("completion %s: exit %d: %s", shell, code, stderr.String())
	}
	return out.String()
}

func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "vsactl"), []byte(fakeVsactl), 0o755); err != nil {
		t.Fatal(err)
	}
	scriptPath := filepath.Join(dir, "vsactl.bash")
	if err := os.WriteFile(scriptPath, []byte(script(t, "bash")), 0o644); err != nil {
		t.Fatal(err)
	}

	// complete runs the completion function for a command line whose last
	// word is being completed, and returns the candidates.
	complete := func(line string) []string {
		t.Helper()
		words := strings.Split(line, " ")
		prog := `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _vsactl; printf '%s\n' "${COMPREPLY[@]}"`
		cmd := exec.Command(bash, append([]string{"--norc", "--noprofile", "-c", prog, "bash", scriptPath}, words...)...)
		cmd.Env = []string{"PATH=" + dir + ":/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bash completion of %q: %v\n%s", line, err, out)
		}
		var got []string
		for _, w := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if w != "" {
				got = append(got, w)
			}
		}
		return got
	}

	tests := []struct {
		line string
		want []string
	}{
		{"vsactl st", []string{"status"}},
		{"vsactl --json e", []string{"events", "explain"}},
		{"vsactl events --f", []string{"--follow"}},
		{"vsactl flows --guest w", []string{"web-1", "web-2"}},
		{"vsactl explain ", []string{"vsa-fw-1", "web-1", "web-2"}},
		{"vsactl --timeout 5s explain v", []string{"vsa-fw-1"}},
		{"vsactl completion ", []string{"bash", "zsh", "fish"}},
		{"vsactl help ap", []string{"appliances"}},
		{"vsactl status ", nil},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, complete(tt.line)); diff != "" {
			t.Errorf("completing %q (-want +got):\n%s", tt.line, diff)
		}
	}

	// The names come from the agent the command line points at.
	complete("vsactl --socket /run/other.sock explain w")
	seen, err := os.ReadFile(filepath.Join(dir, "socket-seen"))
	if err != nil || strings.TrimSpace(string(seen)) != "/run/other.sock" {
		t.Errorf("names were asked of socket %q (%v), want /run/other.sock", seen, err)
	}
}

// TestCompletionSyntax has each installed shell parse its script without
// running it; the golden files pin the content.
func TestCompletionSyntax(t *testing.T) {
	for _, tt := range []struct{ shell, flag string }{{"bash", "-n"}, {"zsh", "-n"}, {"fish", "--no-execute"}} {
		t.Run(tt.shell, func(t *testing.T) {
			path, err := exec.LookPath(tt.shell)
			if err != nil {
				t.Skipf("%s is not installed", tt.shell)
			}
			f := filepath.Join(t.TempDir(), "completion")
			if err := os.WriteFile(f, []byte(script(t, tt.shell)), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(path, tt.flag, f).CombinedOutput(); err != nil {
				t.Errorf("%s %s: %v\n%s", tt.shell, tt.flag, err, out)
			}
		})
	}
}

func TestFishCompletion(t *testing.T) {
	fish, err := exec.LookPath("fish")
	if err != nil {
		t.Skip("fish is not installed")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "vsactl"), []byte(fakeVsactl), 0o755); err != nil {
		t.Fatal(err)
	}
	scriptPath := filepath.Join(dir, "vsactl.fish")
	if err := os.WriteFile(scriptPath, []byte(script(t, "fish")), 0o644); err != nil {
		t.Fatal(err)
	}
	complete := func(line string) []string {
		t.Helper()
		cmd := exec.Command(fish, "--no-config", "-c", `source $argv[1]; complete -C $argv[2]`, scriptPath, line)
		cmd.Env = []string{"PATH=" + dir + ":/usr/bin:/bin", "HOME=" + dir}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("fish completion of %q: %v\n%s", line, err, out)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if l != "" {
				got = append(got, strings.SplitN(l, "\t", 2)[0])
			}
		}
		return got
	}
	tests := []struct {
		line string
		want []string
	}{
		{"vsactl ex", []string{"explain"}},
		{"vsactl explain w", []string{"web-1", "web-2"}},
		{"vsactl flows --guest ", []string{"web-1", "web-2"}},
		{"vsactl events --fo", []string{"--follow"}},
		{"vsactl completion z", []string{"zsh"}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, complete(tt.line)); diff != "" {
			t.Errorf("completing %q (-want +got):\n%s", tt.line, diff)
		}
	}
}
