package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireRoot skips t unless the test runs as root, which every helper of
// this package needs (namespaces, links and packet sockets all do).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces and links")
	}
}

// UniqueName returns prefix followed by 8 random hex digits. Kernel
// interface names are limited to 15 bytes, so keep prefix short when the
// result names a link.
func UniqueName(prefix string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("netnstest: reading random bytes: %v", err))
	}
	return prefix + hex.EncodeToString(b[:])
}

// NS is a named network namespace that exists for the duration of a test.
// It is visible to `ip netns` under Name.
type NS struct {
	name   string
	handle netns.NsHandle
	nl     *netlink.Handle
}

// New creates a fresh named network namespace with its loopback up, and
// deletes it when the test ends. Links inside it disappear with it; veth
// peers in other namespaces go too.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	name := UniqueName("nt-")
	handle, err := createNamed(name)
	if err != nil {
		t.Fatalf("netnstest: creating namespace %s: %v", name, err)
	}
	n := &NS{name: name, handle: handle}
	t.Cleanup(func() {
		if n.nl != nil {
			n.nl.Close()
		}
		n.handle.Close()
		if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("netnstest: deleting namespace %s: %v", name, err)
		}
	})
	nl, err := netlink.NewHandleAt(handle)
	if err != nil {
		t.Fatalf("netnstest: netlink handle in %s: %v", name, err)
	}
	n.nl = nl
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("netnstest: bringing up lo in %s: %v", name, err)
	}
	return n
}

// createNamed creates the namespace on a locked thread and moves the thread
// back before unlocking it. If moving back fails the thread stays locked, so
// the runtime discards it when the goroutine ends instead of reusing it.
func createNamed(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("current namespace: %w", err)
	}
	defer orig.Close()
	created, err := netns.NewNamed(name)
	if setErr := netns.Set(orig); setErr != nil {
		if err == nil {
			created.Close()
		}
		return netns.None(), fmt.Errorf("returning to the original namespace: %w", setErr)
	}
	runtime.UnlockOSThread()
	return created, err
}

// Name is the namespace's name as `ip netns` knows it.
func (n *NS) Name() string { return n.name }

// Handle is an open file descriptor of the namespace, valid until the test
// ends. It is suitable for netlink.NsFd and LinkAttrs.Namespace.
func (n *NS) Handle() netns.NsHandle { return n.handle }

// Netlink returns a netlink handle whose requests act inside the namespace.
// It is owned by NS; do not close it.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Do runs fn on a locked OS thread switched into the namespace, for code
// that opens sockets or files whose namespace is fixed at creation (packet
// sockets, /proc/sys/net). Sockets opened inside fn stay in the namespace
// after Do returns. Goroutines started by fn do NOT run in the namespace.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	// A dedicated goroutine whose thread is thrown away if it cannot be
	// restored keeps the caller's thread out of harm's way entirely.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netnstest: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netnstest: entering %s: %w", n.name, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(fnErr, fmt.Errorf("netnstest: leaving %s: %w", n.name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// Command prepares name with args to run inside the namespace through
// `ip netns exec`. The process gets its own process group, so Kill in
// cleanups can reach its children too.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Exec runs a command inside the namespace and returns its combined output;
// a failure's error includes that output.
func (n *NS) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.name, err, out)
	}
	return out, nil
}

// Sysctl writes value to the namespaced sysctl key ("net.ipv6.conf.all.disable_ipv6").
func (n *NS) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
}

// QuietIPv6 turns IPv6 off in the namespace, for links created after the
// call and existing ones, so router solicitations and neighbour discovery do
// not add frames a test did not send.
func (n *NS) QuietIPv6(t testing.TB) {
	t.Helper()
	for _, k := range []string{"net.ipv6.conf.default.disable_ipv6", "net.ipv6.conf.all.disable_ipv6"} {
		if err := n.Sysctl(k, "1"); err != nil {
			t.Fatalf("netnstest: %s in %s: %v", k, n.name, err)
		}
	}
}

// AddBridge creates a Linux bridge without STP (ports forward as soon as
// they are up) and with learning on, and brings it up.
func (n *NS) AddBridge(t testing.TB, name string) {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := n.nl.LinkAdd(br); err != nil {
		t.Fatalf("netnstest: adding bridge %s in %s: %v", name, n.name, err)
	}
	n.linkUp(t, name)
}

// MAC returns the hardware address of the link name in the namespace.
func (n *NS) MAC(t testing.TB, name string) net.HardwareAddr {
	t.Helper()
	l, err := n.nl.LinkByName(name)
	if err != nil {
		t.Fatalf("netnstest: link %s in %s: %v", name, n.name, err)
	}
	return l.Attrs().HardwareAddr
}

func (n *NS) linkUp(t testing.TB, name string) {
	t.Helper()
	l, err := n.nl.LinkByName(name)
	if err == nil {
		err = n.nl.LinkSetUp(l)
	}
	if err != nil {
		t.Fatalf("netnstest: bringing up %s in %s: %v", name, n.name, err)
	}
}

// End describes one end of a veth pair.
type End struct {
	NS     *NS
	Name   string           // interface name, at most 15 bytes
	MAC    net.HardwareAddr // nil keeps the kernel's random address
	MTU    int              // 0 keeps the default (1500)
	Master string           // bridge in the same namespace to enslave to, or ""
}

// Veth creates a veth pair between a and b, applies each end's settings and
// brings both ends up. The pair is created directly in the namespaces, never
// in the test process's own one, and vanishes with either namespace.
func Veth(t testing.TB, a, b End) {
	t.Helper()
	v := &netlink.Veth{
		// Both ends get the queue length a tap or a NIC has: the kernel
		// raises a zero one to 1000 as soon as any qdisc is attached, which
		// would make before/after comparisons of a link differ.
		LinkAttrs: netlink.LinkAttrs{Name: a.Name, MTU: a.MTU, HardwareAddr: a.MAC, TxQLen: 1000},
		PeerName:  b.Name, PeerHardwareAddr: b.MAC, PeerTxQLen: 1000,
		PeerNamespace: netlink.NsFd(int(b.NS.handle)),
	}
	if b.MTU > 0 {
		v.PeerMTU = uint32(b.MTU)
	}
	if err := a.NS.nl.LinkAdd(v); err != nil {
		t.Fatalf("netnstest: veth %s/%s <-> %s/%s: %v", a.NS.name, a.Name, b.NS.name, b.Name, err)
	}
	for _, e := range []End{a, b} {
		if e.Master != "" {
			link, err := e.NS.nl.LinkByName(e.Name)
			if err != nil {
				t.Fatalf("netnstest: link %s in %s: %v", e.Name, e.NS.name, err)
			}
			master, err := e.NS.nl.LinkByName(e.Master)
			if err == nil {
				err = e.NS.nl.LinkSetMaster(link, master)
			}
			if err != nil {
				t.Fatalf("netnstest: enslaving %s to %s in %s: %v", e.Name, e.Master, e.NS.name, err)
			}
		}
		e.NS.linkUp(t, e.Name)
	}
	for _, e := range []End{a, b} {
		e.NS.WaitOperUp(t, e.Name)
	}
}

// operUpTimeout bounds WaitOperUp. The kernel applies carrier changes from
// a deferred work item that may wait up to a second; ten leave headroom on
// a loaded machine.
const operUpTimeout = 10 * time.Second

// WaitOperUp waits until the link is operationally up. A link that is
// administratively up still drops every frame sent before the kernel's
// link watcher has noticed its carrier and attached a real queueing
// discipline, so tests that send right after creating links must wait.
func (n *NS) WaitOperUp(t testing.TB, name string) {
	t.Helper()
	deadline := time.Now().Add(operUpTimeout)
	for {
		l, err := n.nl.LinkByName(name)
		if err != nil {
			t.Fatalf("netnstest: link %s in %s: %v", name, n.name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("netnstest: %s in %s not operationally up after %v (state %v)", name, n.name, operUpTimeout, l.Attrs().OperState)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
