package systemd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// readWait bounds every wait for a datagram; it is a safety net against a
// hung test, not a speed assertion.
const readWait = 10 * time.Second

// fakeManager is the receiving end of $NOTIFY_SOCKET: a real unixgram socket.
type fakeManager struct {
	t    *testing.T
	conn *net.UnixConn
}

func newFakeManager(t *testing.T, name string) *fakeManager {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return &fakeManager{t: t, conn: conn}
}

// tempSocketPath returns a socket path in the test's temp dir.
func tempSocketPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "notify.sock")
}

func (m *fakeManager) next() string {
	m.t.Helper()
	msg, err := m.read(readWait)
	if err != nil {
		m.t.Fatalf("no notification: %v", err)
	}
	return msg
}

func (m *fakeManager) read(wait time.Duration) (string, error) {
	buf := make([]byte, 4096)
	if err := m.conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return "", err
	}
	n, err := m.conn.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

func TestNotifierProtocol(t *testing.T) {
	m := newFakeManager(t, tempSocketPath(t))
	n := NewNotifier()
	if !n.Enabled() {
		t.Fatal("Notifier not enabled with NOTIFY_SOCKET set")
	}
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"ready", n.Ready, "READY=1"},
		{"status", func() error { return n.Status("serving %d guests, %s", 3, "2 gated") }, "STATUS=serving 3 guests, 2 gated"},
		{"status newlines", func() error { return n.Status("a\nREADY=1\r\nb\rc") }, "STATUS=a READY=1 b c"},
		{"stopping", n.Stopping, "STOPPING=1"},
		{"watchdog", n.Watchdog, "WATCHDOG=1"},
		{"extend timeout", func() error { return n.ExtendTimeout(90 * time.Second) }, "EXTEND_TIMEOUT_USEC=90000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); err != nil {
				t.Fatal(err)
			}
			if got := m.next(); got != tt.want {
				t.Errorf("datagram %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("reloading", func(t *testing.T) {
		before := monotonicUsec(t)
		if err := n.Reloading(); err != nil {
			t.Fatal(err)
		}
		after := monotonicUsec(t)
		got := m.next()
		match := regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=([0-9]+)$`).FindStringSubmatch(got)
		if match == nil {
			t.Fatalf("datagram %q, want RELOADING=1 and MONOTONIC_USEC", got)
		}
		usec, _ := strconv.ParseInt(match[1], 10, 64)
		if usec < before || usec > after {
			t.Errorf("MONOTONIC_USEC=%d is not the CLOCK_MONOTONIC time of the call (%d..%d)", usec, before, after)
		}
	})
}

func TestNotifierAbstractSocket(t *testing.T) {
	var suffix [8]byte
	rand.Read(suffix[:])
	m := newFakeManager(t, "@vsagent-notify-test-"+hex.EncodeToString(suffix[:]))
	if err := NewNotifier().Ready(); err != nil {
		t.Fatal(err)
	}
	if got := m.next(); got != "READY=1" {
		t.Errorf("datagram %q, want READY=1", got)
	}
}

func TestNotifierWithoutManager(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	n := NewNotifier()
	if n.Enabled() {
		t.Error("enabled without NOTIFY_SOCKET")
	}
	for name, call := range map[string]func() error{
		"Ready": n.Ready, "Stopping": n.Stopping, "Reloading": n.Reloading, "Watchdog": n.Watchdog,
		"Status": func() error { return n.Status("x") },
	} {
		if err := call(); err != nil {
			t.Errorf("%s without a manager: %v", name, err)
		}
	}
	if d, ok := n.WatchdogInterval(); ok {
		t.Errorf("watchdog enabled (%v) without WATCHDOG_USEC", d)
	}
}

func TestNotifierUnreachableManager(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent.sock"))
	err := NewNotifier().Ready()
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error %v, want one wrapping ENOENT", err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	tests := []struct {
		name, usec, pid string
		want            time.Duration
		ok              bool
	}{
		{"unset", "", "", 0, false},
		{"for anyone", "30000000", "", 30 * time.Second, true},
		{"for us", "20000000", self, 20 * time.Second, true},
		{"for another process", "30000000", strconv.Itoa(os.Getpid() + 1), 0, false},
		{"garbage", "soon", "", 0, false},
		{"zero", "0", "", 0, false},
		{"negative", "-5", "", 0, false},
		{"bad pid", "30000000", "me", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", tt.usec)
			t.Setenv("WATCHDOG_PID", tt.pid)
			got, ok := NewNotifier().WatchdogInterval()
			if got != tt.want || ok != tt.ok {
				t.Errorf("WatchdogInterval() = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// TestRunWatchdog checks that pings flow while the main loop is alive and
// stop once it is not. It orders events by counting alive() calls instead of
// sleeping, so it holds on a loaded machine too.
func TestRunWatchdog(t *testing.T) {
	m := newFakeManager(t, tempSocketPath(t))
	t.Setenv("WATCHDOG_USEC", "20000") // a ping every 10ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	n := NewNotifier()

	var healthy atomic.Bool
	var calls atomic.Int64
	healthy.Store(true)
	alive := func() bool {
		calls.Add(1)
		return healthy.Load()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.RunWatchdog(ctx, alive)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	for range 3 {
		if got := m.next(); got != "WATCHDOG=1" {
			t.Fatalf("datagram %q while alive, want WATCHDOG=1", got)
		}
	}

	healthy.Store(false)
	// Every alive() call that could still have said true has index <= mark;
	// once call mark+1 has begun, its ping (if any) has been sent.
	mark := calls.Load()
	waitForCalls(t, &calls, mark+1)
	for {
		if _, err := m.read(10 * time.Millisecond); err != nil {
			break // drained
		}
	}
	waitForCalls(t, &calls, calls.Load()+3)
	if msg, err := m.read(50 * time.Millisecond); err == nil {
		t.Fatalf("got %q after alive() turned false", msg)
	}

	healthy.Store(true)
	if got := m.next(); got != "WATCHDOG=1" {
		t.Fatalf("datagram %q after recovery, want WATCHDOG=1", got)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(readWait):
		t.Fatal("RunWatchdog did not return after cancel")
	}
}

func waitForCalls(t *testing.T, calls *atomic.Int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(readWait)
	for calls.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("alive() called %d times, waited for %d", calls.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRunWatchdogDisabled(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "")
	done := make(chan struct{})
	go func() {
		defer close(done)
		NewNotifier().RunWatchdog(context.Background(), func() bool {
			t.Error("alive() called without a watchdog")
			return true
		})
	}()
	select {
	case <-done:
	case <-time.After(readWait):
		t.Fatal("RunWatchdog without a watchdog did not return")
	}
}

func TestHeartbeat(t *testing.T) {
	var h Heartbeat
	steps := []struct {
		beats int
		want  bool
	}{
		{0, false}, // nothing happened yet
		{1, true},
		{0, false}, // the previous beat was already reported
		{5, true},
		{0, false},
	}
	for i, s := range steps {
		for range s.beats {
			h.Beat()
		}
		if got := h.Alive(); got != s.want {
			t.Errorf("step %d (%d beats): Alive() = %v, want %v", i, s.beats, got, s.want)
		}
	}
}
