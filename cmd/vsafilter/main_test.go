package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vsagent/vsagent/internal/version"
)

func TestRunCheck(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[interface]\nname = \"eth0\"\nnmae = \"x\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmdline := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(cmdline, []byte("console=ttyS0 vsafilter.iface=eth1 vsafilter.rules=W1tydWxlXV0KYWN0aW9uID0gImRlbnkiCg==\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		args      []string
		code      int
		stdout    string
		stderrHas string
	}{
		{"example", []string{"-c", "testdata/example.toml", "check"}, exitOK,
			"testdata/example.toml: ok: 5 rules (default allow), 3 signatures (52 automaton states)\n", ""},
		{"bad file", []string{"-c", bad, "check"}, exitFailed, "", bad + ":3: interface.nmae: unknown key"},
		{"kernel command line", []string{"-config-from-cmdline", "-cmdline", cmdline, "check"}, exitOK,
			"vsafilter.rules: ok: 1 rules (default allow), 0 signatures (0 automaton states)\n", ""},
		{"missing file", []string{"-c", filepath.Join(dir, "none.toml"), "check"}, exitFailed, "", "no such file"},
		{"bad flag value", []string{"-mac", "nope", "check"}, exitFailed, "", `flag mac: "nope" is not a MAC address`},
		{"unknown command", []string{"frobnicate"}, exitUsage, "", `unknown command "frobnicate"`},
		{"unknown flag", []string{"-frobnicate"}, exitUsage, "", "flag provided but not defined"},
		{"run without an interface", []string{"run"}, exitUsage, "", "no interface"},
		{"version", []string{"-version"}, exitOK, "vsafilter " + version.Version + "\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.code, stderr.String())
			}
			if stdout.String() != tt.stdout {
				t.Errorf("stdout %q, want %q", stdout.String(), tt.stdout)
			}
			if !strings.Contains(stderr.String(), tt.stderrHas) {
				t.Errorf("stderr %q, want it to contain %q", stderr.String(), tt.stderrHas)
			}
		})
	}
}
