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

const (
	unitPath    = "/lib/systemd/system/vsagent.service"
	wantsLink   = "/etc/systemd/system/multi-user.target.wants/vsagent.service"
	maskLink    = "/etc/systemd/system/vsagent.service"
	configPath  = "/etc/vsagent/vsagent.toml"
	examples    = "/usr/share/doc/vsagent/examples"
	hookLink    = "/etc/libvirt/hooks/qemu.d/vsagent"
	hookBinary  = "/usr/libexec/vsagent/vsagent-hook"
	inertConfig = "configuration OK: 0 appliances, 0 policies, backend tc-redirect, from 1 file\n"
	exampleConf = "configuration OK: 3 appliances, 2 policies, backend tc-redirect, from 2 files\n"
	daemonRel   = "systemctl --system daemon-reload"
	// helperReload is how deb-systemd-helper reloads after it changed
	// enablement links on a running system.
	helperReload = "systemctl daemon-reload"
)

// debianRoot returns a fresh Debian 12 root with both test builds' .debs
// copied into its /tmp. The root is bootstrapped (or taken from the cache)
// while the packages build.
func debianRoot(ctx context.Context, t *testing.T) *debRoot {
	t.Helper()
	requireRootTools(t)
	requireTool(t, "dpkg-deb", "dpkg")
	requireBuildTools(t)
	type result struct {
		tarball string
		err     error
	}
	done := make(chan result, 1)
	go func() {
		tarball, err := rootTarball(ctx, t)
		done <- result{tarball, err}
	}()
	built := make(chan struct{})
	for _, v := range []string{oldVersion, newVersion} {
		go func() {
			buildPackages(v)
			built <- struct{}{}
		}()
	}
	<-built
	<-built
	res := <-done
	if res.err != nil {
		t.Fatalf("Debian root: %v", res.err)
	}
	r := newDebRoot(ctx, t, res.tarball)
	for _, v := range []string{oldVersion, newVersion} {
		deb, rpm := packages(t, v)
		for _, p := range []string{deb, rpm} {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			r.writeFile(filepath.Join("/tmp", v, filepath.Base(p)), string(data), 0o644)
		}
	}
	return r
}

// inRoot is where debianRoot put a test build's package of the format.
func inRoot(t *testing.T, version, format string) string {
	t.Helper()
	deb, rpm := packages(t, version)
	if format == "deb" {
		return filepath.Join("/tmp", version, filepath.Base(deb))
	}
	return filepath.Join("/tmp", version, filepath.Base(rpm))
}

// TestDebLifecycle installs, configures, upgrades, removes and purges the
// .deb in a Debian 12 root, as dpkg does it on a host, with systemd looking
// as if it were running, and checks at each step the files, the
// configuration and what the maintainer scripts asked of systemd.
func TestDebLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	r := debianRoot(ctx, t)
	const systemd = true

	t.Log("install", oldVersion)
	out := r.mustRun(ctx, systemd, "dpkg", "-i", inRoot(t, oldVersion, "deb"))
	if !strings.Contains(out, "check them with 'vsagent check-config'") {
		t.Errorf("first install did not tell the operator what to do next:\n%s", out)
	}
	// Enabled (Debian's policy), unit files reloaded, but not started: a
	// start would have gone through policy-rc.d.
	if diff := cmp.Diff([]string{daemonRel}, r.actions()); diff != "" {
		t.Errorf("install asked systemd (-want +got):\n%s", diff)
	}
	if got := r.readlink(wantsLink); got != unitPath {
		t.Errorf("%s -> %q, want %s (enabled)", wantsLink, got, unitPath)
	}
	for prog, want := range map[string]string{
		"vsagent":   "vsagent " + oldVersion + "\n",
		"vsafilter": "vsafilter " + oldVersion + "\n",
		"vsactl":    "vsactl " + oldVersion + " (API v1)\n",
	} {
		arg := "version"
		if prog == "vsafilter" {
			arg = "-version"
		}
		if got := r.mustRun(ctx, !systemd, prog, arg); got != want {
			t.Errorf("%s %s = %q, want %q", prog, arg, got, want)
		}
	}
	if got := r.mustRun(ctx, !systemd, "vsagent", "check-config"); got != inertConfig {
		t.Errorf("check-config of the shipped configuration: %q, want %q", got, inertConfig)
	}
	if got := r.mustRun(ctx, !systemd, "dpkg", "--verify", "vsagent"); got != "" {
		t.Errorf("dpkg --verify after install:\n%s", got)
	}
	verifyUnit(ctx, t, r)
	for _, f := range []string{"/usr/share/man/man8/vsagent.8.gz", "/usr/share/man/man8/vsactl.8.gz", "/usr/share/man/man8/vsafilter.8.gz"} {
		r.mustRun(ctx, !systemd, "gzip", "-t", f)
	}
	if got := r.mustRun(ctx, !systemd, "bash", "-c", "source /usr/share/bash-completion/completions/vsactl && complete -p vsactl"); !strings.Contains(got, "vsactl") {
		t.Errorf("bash completion does not register for vsactl: %q", got)
	}

	// The hook libvirtd will run: on an unconfigured host it lets every
	// guest start, agent or not.
	if got := r.readlink(hookLink); got != hookBinary {
		t.Errorf("%s -> %q, want %s", hookLink, got, hookBinary)
	}
	if out, err := runHook(ctx, r, "demo-1", "prepare", "begin"); err != nil {
		t.Errorf("hook on an unconfigured host refused a guest: %v\n%s", err, out)
	}

	t.Log("configure: the operator installs the example configuration")
	r.mustRun(ctx, !systemd, "cp", examples+"/vsagent.toml", configPath)
	r.mustRun(ctx, !systemd, "cp", examples+"/conf.d/50-web.toml", "/etc/vsagent/conf.d/")
	edited := r.readFile(configPath)
	if got := r.mustRun(ctx, !systemd, "vsagent", "check-config"); got != exampleConf {
		t.Errorf("check-config of the example configuration: %q, want %q", got, exampleConf)
	}
	r.writeFile("/var/lib/vsagent/state", "kept until purge\n", 0o600)
	// Now demo-1 needs inspection and no agent runs: hook_failure "closed"
	// refuses it, while a guest without a policy still starts.
	if out, err := runHook(ctx, r, "demo-1", "prepare", "begin"); err == nil || !strings.Contains(out, "hook_failure is \"closed\"") {
		t.Errorf("hook let a guest that needs inspection start without the agent: %v\n%s", err, out)
	}
	if out, err := runHook(ctx, r, "plain-1", "prepare", "begin"); err != nil {
		t.Errorf("hook refused a guest without a policy: %v\n%s", err, out)
	}

	t.Log("upgrade to", newVersion)
	out = r.mustRun(ctx, systemd, "dpkg", "-i", "--force-confold", inRoot(t, newVersion, "deb"))
	if strings.Contains(out, "check-config") {
		t.Errorf("an upgrade repeated the first-install advice:\n%s", out)
	}
	if diff := cmp.Diff([]string{daemonRel, "policy-rc.d vsagent.service try-restart"}, r.actions()); diff != "" {
		t.Errorf("upgrade asked systemd (-want +got):\n%s", diff)
	}
	if got := r.mustRun(ctx, !systemd, "vsagent", "version"); got != "vsagent "+newVersion+"\n" {
		t.Errorf("after upgrade: vsagent version = %q", got)
	}
	if got := r.readFile(configPath); got != edited {
		t.Errorf("the upgrade replaced the edited %s", configPath)
	}
	shipped, err := os.ReadFile("etc/vsagent.toml")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.readFile(configPath + ".dpkg-dist"); got != string(shipped) {
		t.Errorf("%s.dpkg-dist is not the new package's configuration", configPath)
	}
	if got := r.mustRun(ctx, !systemd, "vsagent", "check-config"); got != exampleConf {
		t.Errorf("check-config after upgrade: %q, want %q", got, exampleConf)
	}
	if got := r.readlink(wantsLink); got != unitPath {
		t.Errorf("after upgrade %s -> %q, want %s", wantsLink, got, unitPath)
	}

	t.Log("remove")
	r.mustRun(ctx, systemd, "dpkg", "-r", "vsagent")
	// The last reload is deb-systemd-helper's, after it masked the unit.
	if diff := cmp.Diff([]string{"policy-rc.d vsagent.service stop", daemonRel, helperReload}, r.actions()); diff != "" {
		t.Errorf("remove asked systemd (-want +got):\n%s", diff)
	}
	for _, gone := range []string{"/usr/bin/vsagent", "/usr/bin/vsactl", "/usr/bin/vsafilter", unitPath, hookLink, hookBinary} {
		if r.exists(gone) {
			t.Errorf("%s survived remove", gone)
		}
	}
	if got := r.readFile(configPath); got != edited {
		t.Errorf("remove changed %s", configPath)
	}
	for _, kept := range []string{"/etc/vsagent/templates/ips.xml", "/etc/vsagent/conf.d/50-web.toml", "/var/lib/vsagent/state"} {
		if !r.exists(kept) {
			t.Errorf("remove deleted %s", kept)
		}
	}
	if got := r.readlink(maskLink); got != "/dev/null" {
		t.Errorf("after remove %s -> %q, want /dev/null (masked)", maskLink, got)
	}
	if got := r.mustRun(ctx, !systemd, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "vsagent"); got != "rc " {
		t.Errorf("status after remove %q, want \"rc \" (config files remain)", got)
	}

	t.Log("purge")
	r.mustRun(ctx, systemd, "dpkg", "-P", "vsagent")
	// deb-systemd-helper reloads after forgetting the enablement and
	// after unmasking; nothing is started or stopped.
	if diff := cmp.Diff([]string{helperReload, helperReload}, r.actions()); diff != "" {
		t.Errorf("purge asked systemd (-want +got):\n%s", diff)
	}
	for _, gone := range []string{"/etc/vsagent", "/var/lib/vsagent", maskLink, wantsLink} {
		if r.exists(gone) {
			t.Errorf("%s survived purge", gone)
		}
	}
	if out, err := r.run(ctx, !systemd, "dpkg-query", "-W", "vsagent"); err == nil {
		t.Errorf("dpkg still knows vsagent after purge: %s", out)
	}
}

// runHook runs the installed qemu hook as libvirtd would, with a minimal
// domain XML on its standard input.
func runHook(ctx context.Context, r *debRoot, domain, op, subOp string) (string, error) {
	xml := "<domain type='qemu'><name>" + domain + "</name><uuid>8d4c2f40-0000-4000-8000-000000000101</uuid></domain>"
	return r.run(ctx, false, "/bin/sh", "-c", `echo "$1" | "$2" "$3" "$4" "$5" -`, "hook", xml, hookLink, domain, op, subOp)
}

// verifyUnit runs the root's systemd-analyze verify on the installed unit,
// with the installed binary, and fails on anything it says about it.
func verifyUnit(ctx context.Context, t *testing.T, r *debRoot) {
	t.Helper()
	out, err := r.run(ctx, false, "systemd-analyze", "verify", unitPath)
	if err != nil {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitPath, err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "vsagent") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}
