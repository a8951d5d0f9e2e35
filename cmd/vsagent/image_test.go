package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/internal/vmimage"
)

func TestImageCommand(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.toml")
	rulesText := "[filter]\ndefault = \"deny\"\n"
	if err := os.WriteFile(rules, []byte(rulesText), 0o644); err != nil {
		t.Fatal(err)
	}
	withRules, err := vmimage.Cmdline(vmimage.CmdlineOptions{Rules: []byte(rulesText), StatsInterval: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	withDisk, err := vmimage.Cmdline(vmimage.CmdlineOptions{ConfigDisk: "/dev/vdb", Interface: "eth1", EtherType: 0x88b7, StatsInterval: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dynamic, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "config.img")

	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string // exact, or a prefix when it ends with "…"
		wantStderr string // likewise
	}{
		{name: "no command", args: nil, wantCode: 2, wantStderr: "usage: vsagent image COMMAND [flags]\n…"},
		{name: "unknown command", args: []string{"bake"}, wantCode: 2, wantStderr: "vsagent image: unknown command \"bake\"\nusage: vsagent image…"},
		{name: "help", args: []string{"help"}, wantCode: 0, wantStdout: "usage: vsagent image COMMAND [flags]\n…"},
		{name: "cmdline from rules", args: []string{"cmdline", "-rules", rules}, wantStdout: withRules + "\n"},
		{name: "cmdline with a config disk", args: []string{"cmdline", "-config-disk", "/dev/vdb", "-iface", "eth1", "-ethertype", "0x88b7", "-stats", "2s"}, wantStdout: withDisk + "\n"},
		{name: "cmdline needs one source", args: []string{"cmdline"}, wantCode: 2, wantStderr: "vsagent image cmdline: give exactly one of -rules and -config-disk\n"},
		{name: "cmdline with both sources", args: []string{"cmdline", "-rules", rules, "-config-disk", "/dev/vda"}, wantCode: 2, wantStderr: "vsagent image cmdline: give exactly one of -rules and -config-disk\n"},
		{name: "cmdline bad ethertype", args: []string{"cmdline", "-rules", rules, "-ethertype", "0x1_0000"}, wantCode: 2, wantStderr: "vsagent image cmdline: -ethertype \"0x1_0000\" is not a 16-bit number\n"},
		{name: "cmdline missing rules", args: []string{"cmdline", "-rules", filepath.Join(dir, "nope")}, wantCode: 1, wantStderr: "vsagent image cmdline: open " + filepath.Join(dir, "nope") + ": no such file or directory\n"},
		{name: "cmdline bad log level", args: []string{"cmdline", "-rules", rules, "-log", "loud"}, wantCode: 1, wantStderr: "vsagent image cmdline: vmimage: bad appliance command line: log level \"loud\" is not debug, info, warn or error\n"},
		{name: "config disk", args: []string{"config-disk", "-rules", rules, "-out", disk}, wantStdout: disk + ": 0.1 MB holding " + rules + "; attach it read-only as a virtio disk and use vsafilter.config=/dev/vdX\n"},
		{name: "config disk needs both flags", args: []string{"config-disk", "-rules", rules}, wantCode: 2, wantStderr: "vsagent image config-disk: -rules and -out are required\n"},
		{name: "build with a dynamic vsafilter", args: []string{"build", "-out", filepath.Join(dir, "img"), "-cache", filepath.Join(dir, "cache"), "-vsafilter", dynamic}, wantCode: 1,
			wantStdout: "vsagent image: vsafilter " + dynamic + "\n",
			wantStderr: "vsagent image build: vmimage: not a static x86-64 executable: " + dynamic + " is dynamically linked (build it with CGO_ENABLED=0)\n"},
		{name: "build stray argument", args: []string{"build", "now"}, wantCode: 2, wantStderr: "vsagent image build: unexpected argument \"now\"\nusage: vsagent image build [-out DIR]…"},
		{name: "check an empty folder", args: []string{"check", dir}, wantCode: 1, wantStderr: "vsagent image check: " + dir + ": vmimage: bad appliance image: kernel: open " + filepath.Join(dir, "vsa-kernel") + ": no such file or directory\n…"},
		{name: "check two folders", args: []string{"check", dir, dir}, wantCode: 2, wantStderr: "vsagent image check: unexpected argument…"},
		{name: "probe without an image", args: []string{"probe-kvm", "-dir", dir}, wantCode: 1, wantStderr: "vsagent image probe-kvm: …"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := dispatch(append([]string{"image"}, tt.args...), &stdout, &stderr); code != tt.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			matchOutput(t, "stdout", tt.wantStdout, stdout.String())
			matchOutput(t, "stderr", tt.wantStderr, stderr.String())
		})
	}
	if data, err := os.ReadFile(disk); err != nil || !bytes.HasPrefix(data, []byte(rulesText+"\x00")) {
		t.Errorf("config disk starts %q, %v", data[:min(len(data), 40)], err)
	}
}

// matchOutput compares exactly, or the prefix of a want ending in "…".
func matchOutput(t *testing.T, what, want, got string) {
	t.Helper()
	if prefix, ok := strings.CutSuffix(want, "…"); ok {
		if !strings.HasPrefix(got, prefix) {
			t.Errorf("%s = %q, want prefix %q", what, got, prefix)
		}
		return
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}
