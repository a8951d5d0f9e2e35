package packaging

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A throwaway Debian 12 root, bootstrapped once from the Debian mirror this
// machine's apt uses and cached as a tarball, so later runs only unpack it.

const (
	rootSuite = "bookworm"
	// rootRecipe changes whenever the way the root is made changes, so an
	// old tarball is not reused.
	rootRecipe = "minbase-1"
	cacheEnv   = "VSAGENT_PACKAGING_CACHE"
	// actionLog is where the root's recording systemctl and policy-rc.d
	// write what the maintainer scripts asked of systemd.
	actionLog = "/var/log/vsagent-test-actions"
)

// rootPackages are installed into the root besides minbase: the .deb's
// dependencies (so dpkg -i needs no network; TestDebManifest checks the
// list covers them) and systemd, for systemd-analyze and a real host's
// layout.
var rootPackages = []string{"libvirt0", "iproute2", "procps", "systemd"}

// packagingCacheDir is $VSAGENT_PACKAGING_CACHE, else vsagent-packaging in
// the user's cache folder; without a home, in the temporary folder.
func packagingCacheDir() string {
	if d := os.Getenv(cacheEnv); d != "" {
		return d
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "vsagent-packaging")
}

// requireRootTools skips the test unless it can build and enter a root.
func requireRootTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: debootstrap, chroot and mount namespaces")
	}
	for _, tool := range []string{"debootstrap", "unshare", "chroot", "tar", "gzip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps installs it)", tool)
		}
	}
}

// rootTarball returns the cached root tarball, bootstrapping it first if
// needed. A lock file serialises test binaries that race to make it.
func rootTarball(ctx context.Context, t *testing.T) (string, error) {
	mirror, err := debianMirror("/etc/apt", rootSuite)
	if err != nil {
		return "", err
	}
	dir := packagingCacheDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(strings.Join(append([]string{rootRecipe, rootSuite, mirror}, rootPackages...), "\n")))
	tarball := filepath.Join(dir, fmt.Sprintf("debian-%s-%s.tar.gz", rootSuite, hex.EncodeToString(sum[:6])))
	if _, err := os.Stat(tarball); err == nil {
		return tarball, nil
	}

	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(tarball); err == nil {
		return tarball, nil
	}

	work, err := os.MkdirTemp(dir, "bootstrap-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	start := time.Now()
	t.Logf("bootstrapping Debian %s from %s into the cache (once; a few minutes)", rootSuite, mirror)
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", "--merged-usr",
		"--include="+strings.Join(rootPackages, ","), rootSuite, root, mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(root, "debootstrap", "debootstrap.log"))
		return "", fmt.Errorf("debootstrap: %w\n%s\n%s", err, tail(out, 2000), tail(log, 2000))
	}
	// Downloaded .debs and package lists are not needed to install ours.
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"} {
		files, _ := filepath.Glob(filepath.Join(root, pattern))
		for _, f := range files {
			os.Remove(f)
		}
	}
	partial := tarball + ".partial"
	if out, err := exec.CommandContext(ctx, "tar", "--numeric-owner", "-C", root, "-czf", partial, ".").CombinedOutput(); err != nil {
		os.Remove(partial)
		return "", fmt.Errorf("tar: %w\n%s", err, out)
	}
	if err := os.Rename(partial, tarball); err != nil {
		return "", err
	}
	// Roots of an older recipe or another mirror are not used again.
	stale, _ := filepath.Glob(filepath.Join(dir, "debian-*.tar.gz"))
	for _, f := range stale {
		if f != tarball {
			os.Remove(f)
		}
	}
	t.Logf("cached %s (%s)", tarball, time.Since(start).Round(time.Second))
	return tarball, nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// debRoot is an unpacked Debian root. Commands run in it through chroot in
// a private mount namespace, so the /proc (and /run) mounted for them
// vanish with the command and nothing is left mounted if a test dies.
type debRoot struct {
	t   *testing.T
	dir string
}

// newDebRoot unpacks a fresh root from the cache and installs the
// recording systemctl and policy-rc.d.
func newDebRoot(ctx context.Context, t *testing.T, tarball string) *debRoot {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.CommandContext(ctx, "tar", "--numeric-owner", "-C", dir, "-xpzf", tarball).CombinedOutput(); err != nil {
		t.Fatalf("unpack %s: %v\n%s", tarball, err, out)
	}
	r := &debRoot{t: t, dir: dir}
	// policy-rc.d answering 101 is Debian's way to forbid maintainer
	// scripts to act on services (invoke-rc.d and deb-systemd-invoke ask
	// it first); this one also writes down what was asked. The systemctl
	// in /usr/local/sbin comes first in PATH: it records requests to the
	// (pretended) running systemd instead of acting, and passes offline
	// requests (--root=, as deb-systemd-helper's preset) to the real one,
	// whose effects on /etc the tests check.
	r.writeFile("/usr/sbin/policy-rc.d", "#!/bin/sh\necho \"policy-rc.d $*\" >>"+actionLog+"\nexit 101\n", 0o755)
	r.writeFile("/usr/local/sbin/systemctl", `#!/bin/sh
case " $* " in
*" --root="*) exec /usr/bin/systemctl "$@" ;;
esac
echo "systemctl $*" >>`+actionLog+`
exit 0
`, 0o755)
	return r
}

func (r *debRoot) path(p string) string { return filepath.Join(r.dir, p) }

func (r *debRoot) writeFile(p, data string, mode os.FileMode) {
	r.t.Helper()
	if err := os.MkdirAll(filepath.Dir(r.path(p)), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(r.path(p), []byte(data), mode); err != nil {
		r.t.Fatal(err)
	}
}

func (r *debRoot) readFile(p string) string {
	r.t.Helper()
	data, err := os.ReadFile(r.path(p))
	if err != nil {
		r.t.Fatal(err)
	}
	return string(data)
}

func (r *debRoot) exists(p string) bool {
	_, err := os.Lstat(r.path(p))
	return err == nil
}

// readlink returns a symlink's target, "" when p is not a symlink.
func (r *debRoot) readlink(p string) string {
	target, _ := os.Readlink(r.path(p))
	return target
}

// chrootScript mounts /proc, and with "1" as second argument a tmpfs /run
// holding /run/systemd/system, the directory maintainer scripts test to
// learn that systemd is running. Then it runs the command inside the root.
const chrootScript = `set -e
root=$1 systemd=$2
shift 2
mount -t proc proc "$root/proc"
if [ "$systemd" = 1 ]; then
	mount -t tmpfs -o mode=0755 tmpfs "$root/run"
	mkdir -p "$root/run/systemd/system"
fi
exec chroot "$root" "$@"`

// run runs a command in the root; systemd says whether it should look as
// if systemd were running. It returns standard output and error together.
func (r *debRoot) run(ctx context.Context, systemd bool, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	flag := "0"
	if systemd {
		flag = "1"
	}
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--mount", "--propagation", "private", "--",
		"sh", "-c", chrootScript, "sh", r.dir, flag}, args...)...)
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive",
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return out.String(), err
}

// mustRun is run that fails the test on a non-zero exit.
func (r *debRoot) mustRun(ctx context.Context, systemd bool, args ...string) string {
	r.t.Helper()
	out, err := r.run(ctx, systemd, args...)
	if err != nil {
		r.t.Fatalf("in the root: %v\n%s", err, out)
	}
	return out
}

// actions returns what was asked of systemd since the last call, one
// request a line, and forgets it.
func (r *debRoot) actions() []string {
	r.t.Helper()
	data, err := os.ReadFile(r.path(actionLog))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		r.t.Fatal(err)
	}
	if err := os.Remove(r.path(actionLog)); err != nil {
		r.t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}
