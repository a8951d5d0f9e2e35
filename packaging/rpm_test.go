package packaging

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestRPMInstallUpgradeErase has Debian's rpm install the .rpm into an
// empty root, upgrade it over an edited configuration and erase it: the
// file side of %config(noreplace). Scriptlets are not run here (the root
// has no shell); TestRPMScriptlets runs them.
func TestRPMInstallUpgradeErase(t *testing.T) {
	requireTool(t, "rpm", "rpm")
	if os.Geteuid() != 0 {
		t.Skip("needs root: rpm --root chroots")
	}
	_, oldRPM := packages(t, oldVersion)
	_, newRPM := packages(t, newVersion)
	root := t.TempDir()
	rpm := func(args ...string) string {
		t.Helper()
		return string(command(t, "rpm", append([]string{"--root", root, "--dbpath", "/var/lib/rpm"}, args...)...))
	}
	inRoot := func(p string) string { return filepath.Join(root, p) }
	read := func(p string) string {
		t.Helper()
		data, err := os.ReadFile(inRoot(p))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	exists := func(p string) bool {
		_, err := os.Lstat(inRoot(p))
		return err == nil
	}

	rpm("--initdb")
	rpm("-i", "--nodeps", "--noscripts", oldRPM)
	if got := rpm("-q", "vsagent"); !strings.HasPrefix(got, "vsagent-1.0.0~rc.1-1.") {
		t.Errorf("rpm -q after install: %q", got)
	}
	if fi, err := os.Stat(inRoot("/usr/bin/vsagent")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("/usr/bin/vsagent: %v, %v", fi, err)
	}
	if got := rpm("-V", "--nodeps", "--noscripts", "vsagent"); got != "" {
		t.Errorf("rpm -V after install:\n%s", got)
	}

	edited := "# edited by the operator\n[agent]\nlog_level = \"debug\"\n"
	if err := os.WriteFile(inRoot(configPath), []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	rpm("-U", "--nodeps", "--noscripts", newRPM)
	if got := rpm("-q", "vsagent"); !strings.HasPrefix(got, "vsagent-1.0.0-1.") {
		t.Errorf("rpm -q after upgrade: %q", got)
	}
	if got := read(configPath); got != edited {
		t.Errorf("the upgrade replaced the edited %s", configPath)
	}
	shipped, err := os.ReadFile("etc/vsagent.toml")
	if err != nil {
		t.Fatal(err)
	}
	if got := read(configPath + ".rpmnew"); got != string(shipped) {
		t.Errorf("%s.rpmnew is not the new package's configuration", configPath)
	}

	rpm("-e", "--nodeps", "--noscripts", "vsagent")
	for _, gone := range []string{"/usr/bin/vsagent", "/usr/lib/systemd/system/vsagent.service", "/etc/vsagent/templates/ips.xml", configPath} {
		if exists(gone) {
			t.Errorf("%s survived erase", gone)
		}
	}
	if got := read(configPath + ".rpmsave"); got != edited {
		t.Errorf("erase did not keep the edited configuration as %s.rpmsave", configPath)
	}
}

// TestRPMScriptlets runs the .rpm's scriptlets, as rpm would (/bin/sh with
// the package count as $1), in the Debian root with systemd looking as if
// it were running, and checks what they ask of systemd.
func TestRPMScriptlets(t *testing.T) {
	requireTool(t, "rpm", "rpm")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := debianRoot(ctx, t)
	_, rpm := packages(t, newVersion)

	const (
		reload = "systemctl daemon-reload"
		unit   = "vsagent.service"
	)
	tests := []struct {
		name, tag, count string
		want             []string
	}{
		{"first install presets, does not start", "POSTIN", "1", []string{reload, "systemctl --no-reload preset " + unit}},
		{"upgrade: new package's post", "POSTIN", "2", []string{reload}},
		{"upgrade: old package's preun keeps it running", "PREUN", "1", nil},
		{"upgrade: old package's postun restarts if running", "POSTUN", "1", []string{reload, "systemctl try-restart " + unit}},
		{"erase stops and disables", "PREUN", "0", []string{"systemctl --no-reload disable --now " + unit}},
		{"erase: postun reloads", "POSTUN", "0", []string{reload}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			script := strings.Join(rpmQuery(t, rpm, "--qf", "%{"+tt.tag+"}"), "\n")
			out, err := r.run(ctx, true, "/bin/sh", "-c", script, "vsagent-"+strings.ToLower(tt.tag), tt.count)
			if err != nil {
				t.Fatalf("%%%s %s: %v\n%s", strings.ToLower(tt.tag), tt.count, err, out)
			}
			if diff := cmp.Diff(tt.want, r.actions()); diff != "" {
				t.Errorf("asked systemd (-want +got):\n%s", diff)
			}
		})
	}
}
