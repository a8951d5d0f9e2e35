package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCheckConfig(t *testing.T) {
	bad := t.TempDir()
	badFile := filepath.Join(bad, "vsagent.toml")
	if err := os.WriteFile(badFile, []byte("[agent]\nlog_level = \"loud\"\ncolour = 1\n\n[dataplane]\nmax_hops = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string // exact, or a prefix when it ends with "…"
	}{
		{
			name:       "valid example with conf.d",
			args:       []string{"-c", "../../testdata/config/vsagent.toml"},
			wantCode:   0,
			wantStdout: "configuration OK: 3 appliances, 2 policies, backend tc-redirect, from 2 files\n",
		},
		{
			name:     "every error, one per line",
			args:     []string{"-c", badFile},
			wantCode: 1,
			wantStderr: badFile + `:2: agent.log_level: "loud" is not one of "debug", "info", "warn" or "error"` + "\n" +
				badFile + ":3: agent.colour: unknown key\n" +
				badFile + ":6: dataplane.max_hops: 1 is out of range 2..64\n",
		},
		{
			name:       "missing file",
			args:       []string{"-c", filepath.Join(bad, "nope.toml")},
			wantCode:   1,
			wantStderr: filepath.Join(bad, "nope.toml") + ": cannot read configuration: no such file or directory\n",
		},
		{name: "unknown flag", args: []string{"-x"}, wantCode: 2, wantStderr: "flag provided but not defined: -x\nusage: vsagent check-config [-c FILE]\n…"},
		{name: "stray argument", args: []string{"-c", badFile, "more"}, wantCode: 2, wantStderr: "check-config: unexpected argument \"more\"\nusage: vsagent check-config [-c FILE]\n…"},
		{name: "help", args: []string{"-h"}, wantCode: 0, wantStderr: "usage: vsagent check-config [-c FILE]\n…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := checkConfig(tt.args, &stdout, &stderr); code != tt.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			if diff := cmp.Diff(tt.wantStdout, stdout.String()); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			gotErr := stderr.String()
			if prefix, ok := strings.CutSuffix(tt.wantStderr, "…"); ok {
				if !strings.HasPrefix(gotErr, prefix) {
					t.Errorf("stderr %q does not start with %q", gotErr, prefix)
				}
			} else if diff := cmp.Diff(tt.wantStderr, gotErr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}
