package libvirtlab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrUnavailable reports that this machine cannot run a private libvirtd:
// not root, or a required program is missing.
var ErrUnavailable = errors.New("libvirtlab: private libvirtd unavailable")

// requiredPrograms are what a lab runs; `make deps` installs them.
var requiredPrograms = []string{"libvirtd", "qemu-system-x86_64", "virsh", "ip", "unshare", "nsenter", "mount"}

// Available reports, as an error matching ErrUnavailable, why a lab cannot
// start here, or nil if it can.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root (namespaces, mounts, a system libvirtd)", ErrUnavailable)
	}
	var missing []string
	for _, p := range requiredPrograms {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s (run `make deps`)", ErrUnavailable, strings.Join(missing, ", "))
	}
	return nil
}

// Options tune a lab. The zero value is usable.
type Options struct {
	// Name names the network namespace and is the host name libvirtd
	// reports. Default "vslab-" and 8 random hex digits.
	Name string
	// HostUUID is libvirtd's host_uuid. Default: a fresh random UUID.
	HostUUID string
	// Hooks are libvirt hook scripts (file name under /etc/libvirt/hooks,
	// e.g. "qemu", to contents). libvirtd looks for hooks when it starts.
	Hooks map[string]string
	// StartTimeout bounds the wait for the daemon to answer (default 90s; a
	// fresh daemon probes QEMU's capabilities first).
	StartTimeout time.Duration
	// ListenTCP makes libvirtd also accept plain TCP connections (no TLS, no
	// authentication) on TCPPort of every address of the lab's namespace:
	// peer-to-peer migration needs the source daemon to reach the
	// destination's, and a socket-only URI counts as the same host. The
	// namespace is private to the lab, so only links the test adds reach it.
	ListenTCP bool
}

// TCPPort is the port libvirtd listens on with Options.ListenTCP, libvirt's
// default, so that qemu+tcp://ADDR/system needs no port.
const TCPPort = 16509

// Lab is one private libvirtd: a simulated hypervisor host.
type Lab struct {
	Name string
	// Dir holds the lab's configuration, state, logs and sockets.
	Dir string
	// NetNS is the network namespace libvirtd and its guests live in; `ip
	// netns exec NetNS` enters it (Exec enters the mount namespace too).
	NetNS      string
	SocketPath string
	HostUUID   string

	startTimeout time.Duration
	ownsDir      bool
	listenTCP    bool

	mu           sync.Mutex
	netnsCreated bool
	holder       *process
	daemon       *process
	stopped      bool
}

// process is a started command whose exit is awaited exactly once.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startProcess(cmd *exec.Cmd) (*process, error) {
	// The lab must not outlive a test binary that dies without cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) kill() {
	if p == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
}

// Start creates a lab in dir (a fresh temporary directory, removed by Stop,
// when dir is "") and returns once libvirtd answers on its socket.
func Start(ctx context.Context, dir string, opts Options) (*Lab, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if err := ensureQemuAccount(ctx); err != nil {
		return nil, err
	}
	l := &Lab{Name: opts.Name, HostUUID: opts.HostUUID, startTimeout: opts.StartTimeout, listenTCP: opts.ListenTCP}
	if l.Name == "" {
		l.Name = "vslab-" + randomHex(4)
	}
	if l.HostUUID == "" {
		l.HostUUID = randomUUID()
	}
	if l.startTimeout <= 0 {
		l.startTimeout = 90 * time.Second
	}
	l.NetNS = l.Name
	if dir == "" {
		d, err := os.MkdirTemp("", "vslab-")
		if err != nil {
			return nil, fmt.Errorf("libvirtlab: %w", err)
		}
		dir, l.ownsDir = d, true
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("libvirtlab: %w", err)
	}
	l.Dir = abs
	l.SocketPath = filepath.Join(l.Dir, "sock", "libvirt-sock")
	// sun_path holds 108 bytes; the admin socket has the longest name.
	if longest := filepath.Join(l.Dir, "sock", "libvirt-admin-sock"); len(longest) >= 108 {
		return nil, fmt.Errorf("libvirtlab: directory %s too long for unix socket paths", l.Dir)
	}

	ok := false
	defer func() {
		if !ok {
			l.Stop(context.Background())
		}
	}()
	if err := l.writeConfig(opts.Hooks); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", l.NetNS).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("libvirtlab: ip netns add %s: %w: %s", l.NetNS, err, bytes.TrimSpace(out))
	}
	l.netnsCreated = true
	if out, err := exec.CommandContext(ctx, "ip", "-n", l.NetNS, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("libvirtlab: loopback up in %s: %w: %s", l.NetNS, err, bytes.TrimSpace(out))
	}
	if err := l.startHolder(ctx); err != nil {
		return nil, err
	}
	if err := l.startDaemon(ctx); err != nil {
		return nil, err
	}
	ok = true
	return l, nil
}

// URI addresses the lab's libvirtd.
func (l *Lab) URI() string { return "qemu:///system?socket=" + l.SocketPath }

// HooksDir is where the lab's libvirt hook scripts live (seen by libvirtd as
// /etc/libvirt/hooks); add scripts before Start or Restart.
func (l *Lab) HooksDir() string { return filepath.Join(l.Dir, "etc", "hooks") }

// LogPath is libvirtd's log file, for diagnosing failed tests.
func (l *Lab) LogPath() string { return filepath.Join(l.Dir, "log", "libvirtd.log") }

func (l *Lab) writeConfig(hooks map[string]string) error {
	for _, sub := range []string{"etc", "etc/hooks", "lib", "log", "cache", "sock"} {
		if err := os.MkdirAll(filepath.Join(l.Dir, sub), 0o755); err != nil {
			return fmt.Errorf("libvirtlab: %w", err)
		}
	}
	daemonConf := fmt.Sprintf(`# Private libvirtd of lab %[1]s.
unix_sock_dir = %[2]q
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
host_uuid = %[3]q
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`, l.Name, filepath.Join(l.Dir, "sock"), l.HostUUID)
	if l.listenTCP {
		daemonConf += fmt.Sprintf("listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\ntcp_port = \"%d\"\nlisten_addr = \"0.0.0.0\"\n", TCPPort)
	}
	// QEMU runs as root without a security driver or cgroups so that several
	// daemons on one machine never touch each other's guests, and without a
	// per-guest mount namespace so that Stop finds every QEMU by namespace.
	const qemuConf = `user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
`
	files := map[string]string{"libvirtd.conf": daemonConf, "qemu.conf": qemuConf}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(l.Dir, "etc", name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("libvirtlab: %w", err)
		}
	}
	for name, body := range hooks {
		if name != filepath.Base(name) {
			return fmt.Errorf("libvirtlab: hook name %q must be a plain file name", name)
		}
		if err := os.WriteFile(filepath.Join(l.HooksDir(), name), []byte(body), 0o755); err != nil {
			return fmt.Errorf("libvirtlab: %w", err)
		}
	}
	return nil
}

// holderScript sets up the private mount and UTS namespace and then keeps it
// alive, so libvirtd can die and come back to the same /run.
const holderScript = `set -e
dir=$1
name=$2
mount -t tmpfs -o mode=0755 vslab-run /run
mkdir -p /run/libvirt /run/lock
for pair in etc:/etc/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt; do
	mkdir -p "${pair#*:}"
	mount --bind "$dir/${pair%%:*}" "${pair#*:}"
done
echo "$name" > /proc/sys/kernel/hostname
echo ready
exec sleep infinity
`

func (l *Lab) startHolder(ctx context.Context) error {
	cmd := exec.Command("ip", "netns", "exec", l.NetNS,
		"unshare", "--mount", "--uts", "--propagation", "private", "--",
		"/bin/sh", "-c", holderScript, "holder", l.Dir, l.Name)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("libvirtlab: %w", err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("libvirtlab: start namespace holder: %w", err)
	}
	l.holder = p
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.TrimSpace(line) == "ready"
	}()
	select {
	case ok := <-ready:
		if !ok {
			<-p.done
			return fmt.Errorf("libvirtlab: namespace setup failed: %v: %s", p.err, bytes.TrimSpace(stderr.Bytes()))
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("libvirtlab: namespace setup: %w", ctx.Err())
	}
}

// nsenter returns the arguments that run a command in the lab's namespaces.
func (l *Lab) nsenter(args ...string) []string {
	return append([]string{"-t", strconv.Itoa(l.holder.cmd.Process.Pid), "-m", "-u", "-n", "--"}, args...)
}

func (l *Lab) startDaemon(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return errors.New("libvirtlab: lab is stopped")
	}
	if l.daemon != nil && !l.daemon.exited() {
		return errors.New("libvirtlab: libvirtd already running")
	}
	// A killed daemon leaves its sockets behind.
	stale, _ := filepath.Glob(filepath.Join(l.Dir, "sock", "*"))
	for _, s := range stale {
		os.Remove(s)
	}
	out, err := os.OpenFile(filepath.Join(l.Dir, "libvirtd.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("libvirtlab: %w", err)
	}
	defer out.Close()
	args := []string{"libvirtd"}
	if l.listenTCP {
		args = append(args, "--listen")
	}
	cmd := exec.Command("nsenter", l.nsenter(args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LC_ALL=C"}
	cmd.Stdout, cmd.Stderr = out, out
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("libvirtlab: start libvirtd: %w", err)
	}
	l.daemon = p
	return l.waitReady(ctx, p)
}

// waitReady returns once a client can open a connection: the socket exists
// early, but libvirtd only answers once its drivers are initialised.
func (l *Lab) waitReady(ctx context.Context, p *process) error {
	ctx, cancel := context.WithTimeout(ctx, l.startTimeout)
	defer cancel()
	for {
		if p.exited() {
			return fmt.Errorf("libvirtlab: libvirtd exited: %v; log tail:\n%s", p.err, l.logTail())
		}
		if _, err := os.Stat(l.SocketPath); err == nil {
			probe := exec.CommandContext(ctx, "virsh", "-q", "-c", l.URI(), "uri")
			probe.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LC_ALL=C"}
			if probe.Run() == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("libvirtlab: libvirtd did not answer: %w; log tail:\n%s", ctx.Err(), l.logTail())
		case <-p.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (l *Lab) logTail() string {
	var b strings.Builder
	for _, f := range []string{filepath.Join(l.Dir, "libvirtd.out"), l.LogPath()} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if len(data) > 2048 {
			data = data[len(data)-2048:]
		}
		fmt.Fprintf(&b, "== %s\n%s\n", filepath.Base(f), data)
	}
	return b.String()
}

// Kill SIGKILLs libvirtd and nothing else: guests keep running, as after a
// crash of the daemon. Killing a dead daemon is fine.
func (l *Lab) Kill() error {
	l.mu.Lock()
	d := l.daemon
	l.mu.Unlock()
	d.kill()
	return nil
}

// Signal sends sig to libvirtd, for example SIGSTOP and SIGCONT to simulate
// a daemon that hangs and recovers.
func (l *Lab) Signal(sig syscall.Signal) error {
	l.mu.Lock()
	d := l.daemon
	l.mu.Unlock()
	if d == nil || d.exited() {
		return errors.New("libvirtlab: libvirtd is not running")
	}
	return d.cmd.Process.Signal(sig)
}

// Restart starts libvirtd again (killing it first if it runs) on the same
// configuration, state and namespaces; it reattaches to running guests.
func (l *Lab) Restart(ctx context.Context) error {
	if err := l.Kill(); err != nil {
		return err
	}
	return l.startDaemon(ctx)
}

// Exec runs a command inside the lab's network, mount and UTS namespaces and
// returns its combined output.
func (l *Lab) Exec(ctx context.Context, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, errors.New("libvirtlab: Exec needs a command")
	}
	l.mu.Lock()
	stopped := l.stopped
	l.mu.Unlock()
	if stopped || l.holder == nil {
		return nil, errors.New("libvirtlab: lab is stopped")
	}
	out, err := exec.CommandContext(ctx, "nsenter", l.nsenter(args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("libvirtlab: %s in %s: %w: %s", strings.Join(args, " "), l.Name, err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Stop kills libvirtd and every process left in the lab's namespaces (the
// guests' QEMUs included), lets the private mounts vanish with the mount
// namespace, deletes the network namespace and, if Start made it, the
// directory. Calling it again does nothing.
func (l *Lab) Stop(ctx context.Context) error {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return nil
	}
	l.stopped = true
	daemon := l.daemon
	l.mu.Unlock()

	var errs []error
	daemon.kill()
	if err := l.killNamespaceProcesses(ctx); err != nil {
		errs = append(errs, err)
	}
	l.holder.kill()
	if l.netnsCreated {
		if err := deleteNetNS(ctx, l.NetNS); err != nil {
			errs = append(errs, err)
		}
	}
	if l.ownsDir {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("libvirtlab: %w", err))
		}
	}
	return errors.Join(errs...)
}

// killNamespaceProcesses SIGKILLs every process in the lab's network or
// mount namespace except the holder, and waits until they are gone.
func (l *Lab) killNamespaceProcesses(ctx context.Context) error {
	var targets []string
	if l.netnsCreated {
		// The name is a bind mount of the namespace, so its inode is the
		// namespace's, as /proc/PID/ns/net shows it.
		if st, err := os.Stat(filepath.Join("/run/netns", l.NetNS)); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				targets = append(targets, fmt.Sprintf("net:[%d]", sys.Ino))
			}
		}
	}
	holderPid := 0
	if l.holder != nil && !l.holder.exited() {
		holderPid = l.holder.cmd.Process.Pid
		if mnt, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", holderPid)); err == nil {
			targets = append(targets, mnt)
		}
	}
	if len(targets) == 0 {
		return nil
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := processesIn(targets, holderPid)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("libvirtlab: processes %v of lab %s survive SIGKILL", pids, l.Name)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processesIn lists live (non-zombie) processes whose network or mount
// namespace is one of targets ("net:[inode]", "mnt:[inode]").
func processesIn(targets []string, except int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == except || pid == os.Getpid() {
			continue
		}
		match := false
		for _, ns := range []string{"net", "mnt"} {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
			if err != nil {
				continue
			}
			for _, t := range targets {
				if link == t {
					match = true
				}
			}
		}
		if match && !isZombie(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func isZombie(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err != nil || exitedState(stat)
}

// exitedState reads the state field of /proc/PID/stat: Z (zombie) or X
// (dead) mean the process is gone but for its entry. The state follows the
// parenthesised command name, which may itself contain spaces and
// parentheses; unreadable content counts as gone.
func exitedState(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return true
	}
	return stat[i+2] == 'Z' || stat[i+2] == 'X'
}

func deleteNetNS(ctx context.Context, name string) error {
	var out []byte
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		out, err = exec.CommandContext(ctx, "ip", "netns", "del", name).CombinedOutput()
		if err == nil {
			return nil
		}
		if _, serr := os.Stat(filepath.Join("/run/netns", name)); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("libvirtlab: ip netns del %s: %w: %s", name, err, bytes.TrimSpace(out))
}

// ensureQemuAccount creates the libvirt-qemu user and group that the QEMU
// driver looks up before it reads qemu.conf. Another test binary may create
// them at the same moment, so a failure counts only if they are still
// missing afterwards.
func ensureQemuAccount(ctx context.Context) error {
	const name = "libvirt-qemu"
	if _, err := user.LookupGroup(name); err != nil {
		exec.CommandContext(ctx, "groupadd", "-r", name).Run()
		if _, err := user.LookupGroup(name); err != nil {
			return fmt.Errorf("libvirtlab: creating group %s: %w", name, err)
		}
	}
	if _, err := user.Lookup(name); err != nil {
		exec.CommandContext(ctx, "useradd", "-r", "-M", "-g", name, "-d", "/var/lib/libvirt", "-s", "/usr/sbin/nologin", name).Run()
		if _, err := user.Lookup(name); err != nil {
			return fmt.Errorf("libvirtlab: creating user %s: %w", name, err)
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("libvirtlab: reading random bytes: %v", err))
	}
	return hex.EncodeToString(b)
}

// randomUUID returns a version 4 UUID; libvirt rejects host UUIDs made of one
// repeated digit, which a random one is not.
func randomUUID() string {
	h := randomHex(16)
	b := []byte(h)
	b[12] = '4'
	b[16] = "89ab"[int(b[16])%4]
	h = string(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
