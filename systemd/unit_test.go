package systemd

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"
)

const (
	unitFile   = "vsagent.service"
	shippedBin = "/usr/bin/vsagent"
	// maxExposure is the highest `systemd-analyze security` score the unit
	// may have, on the tool's --threshold scale (0-100, i.e. the displayed
	// 0.0-10.0 score times ten; the unit scores 2.8). It stops hardening
	// from being dropped unnoticed.
	maxExposure = "35"
)

// unitWithTempBinary copies the unit into a temp dir with ExecStart pointing
// at an executable there: systemd-analyze verify insists that the binary
// exists, and the test must not depend on vsagent being installed.
func unitWithTempBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "vsagent")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("ExecStart="+shippedBin+" ")) {
		t.Fatalf("%s: ExecStart does not start with %s", unitFile, shippedBin)
	}
	data = bytes.ReplaceAll(data, []byte("ExecStart="+shippedBin), []byte("ExecStart="+bin))
	path := filepath.Join(dir, unitFile)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func systemdAnalyze(t *testing.T, args ...string) (string, error) {
	t.Helper()
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package: systemd)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool, args...).CombinedOutput()
	return string(out), err
}

func TestUnitVerifies(t *testing.T) {
	path := unitWithTempBinary(t)
	out, err := systemdAnalyze(t, "verify", path)
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// verify also reports on other units it loads; only ours must be clean.
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, unitFile) {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}

func TestUnitExposure(t *testing.T) {
	path := unitWithTempBinary(t)
	out, err := systemdAnalyze(t, "security", "--offline=true", "--threshold="+maxExposure, path)
	if strings.Contains(out, "unrecognized option") {
		t.Skip("systemd-analyze too old for offline security analysis (needs systemd 250)")
	}
	if err != nil {
		t.Fatalf("exposure above %s or analysis failed: %v\n%s", maxExposure, err, out)
	}
	if !strings.Contains(out, "Overall exposure level for "+unitFile) {
		t.Fatalf("no exposure verdict in output:\n%s", out)
	}
}

// TestUnitDecisions pins the options whose values are design decisions (see
// docs/systemd.md), so that changing one is a conscious act.
func TestUnitDecisions(t *testing.T) {
	f, err := os.Open(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string][]string{}
	for _, o := range opts {
		key := o.Section + "." + o.Name
		values[key] = append(values[key], o.Value)
	}

	want := map[string]string{
		"Unit.Before":                     "libvirt-guests.service",
		"Service.Type":                    "notify",
		"Service.NotifyAccess":            "main",
		"Service.ExecStart":               "/usr/bin/vsagent run -c /etc/vsagent/vsagent.toml",
		"Service.ExecReload":              "/bin/kill -HUP $MAINPID",
		"Service.Restart":                 "on-failure",
		"Service.RestartSec":              "2s",
		"Service.WatchdogSec":             "30s",
		"Service.KillMode":                "mixed",
		"Service.RuntimeDirectory":        "vsagent",
		"Service.RuntimeDirectoryMode":    "0700",
		"Service.StateDirectory":          "vsagent",
		"Service.CapabilityBoundingSet":   "CAP_NET_ADMIN CAP_NET_RAW",
		"Service.NoNewPrivileges":         "yes",
		"Service.ProtectSystem":           "strict",
		"Service.RestrictAddressFamilies": "AF_UNIX AF_NETLINK AF_PACKET AF_INET AF_INET6",
		"Install.WantedBy":                "multi-user.target",
	}
	for key, v := range want {
		if got := values[key]; len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want exactly %q", key, got, v)
		}
	}
	after := strings.Fields(strings.Join(values["Unit.After"], " "))
	for _, daemon := range []string{"libvirtd.socket", "libvirtd.service", "virtproxyd.socket", "virtqemud.service"} {
		if !slices.Contains(after, daemon) {
			t.Errorf("After=%q does not order the agent after %s", after, daemon)
		}
	}

	// Options that must stay absent, and why:
	forbidden := map[string]string{
		"Unit.Wants":                     "libvirt is socket-activated; wanting libvirtd.service breaks modular-daemon hosts",
		"Unit.Requires":                  "a libvirtd restart would stop the agent",
		"Unit.BindsTo":                   "a libvirtd restart would stop the agent",
		"Unit.PartOf":                    "a libvirtd restart would restart the agent",
		"Service.ConfigurationDirectory": "the package owns /etc/vsagent and its mode",
		"Service.ProtectKernelTunables":  "SR-IOV setup writes sysfs and /proc/sys/net",
		"Service.PrivateDevices":         "the dataplane may need /dev/net/tun",
		"Service.PrivateNetwork":         "the agent manages the host's interfaces",
		"Service.DynamicUser":            "libvirt grants full access to root only",
		"Service.User":                   "libvirt grants full access to root only",
		"Service.AmbientCapabilities":    "root needs none; they would leak to children",
		"Service.ReadWritePaths":         "nothing outside the unit's own directories is written",
	}
	for key, why := range forbidden {
		if got, ok := values[key]; ok {
			t.Errorf("%s=%q is set, but must not be: %s", key, got, why)
		}
	}
	if strings.Contains(strings.Join(values["Service.CapabilityBoundingSet"], " "), "CAP_SYS_ADMIN") {
		t.Error("CapabilityBoundingSet grants CAP_SYS_ADMIN, which the agent does not need")
	}
}
