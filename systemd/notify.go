package systemd

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifyTimeout bounds one sd_notify datagram. The manager reads its notify
// socket promptly; if it does not, a stuck send must not stall the agent.
const notifyTimeout = 5 * time.Second

// Notifier speaks systemd's sd_notify protocol (sd_notify(3)): readiness,
// reload and stop bracketing, status text and watchdog pings. Outside
// systemd (no $NOTIFY_SOCKET) every method is a no-op returning nil, so
// callers never need to ask where they run.
type Notifier struct {
	addr     *net.UnixAddr // nil: not under a notify-aware service manager
	watchdog time.Duration // 0: the manager expects no watchdog pings
}

// NewNotifier reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID once.
// The variables are left in the environment; NotifyAccess=main in the unit
// makes the manager ignore any child that inherits them.
func NewNotifier() *Notifier {
	n := &Notifier{}
	if path := os.Getenv("NOTIFY_SOCKET"); path != "" {
		// A leading '@' names an abstract socket; the net package maps it
		// to the leading NUL the kernel expects.
		n.addr = &net.UnixAddr{Name: path, Net: "unixgram"}
	}
	// A malformed WATCHDOG_USEC or one meant for another PID disables the
	// pings rather than failing start-up: the manager then kills us, and a
	// restart is the right outcome for a misconfigured watchdog.
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		n.watchdog = interval
	}
	return n
}

// Enabled reports whether notifications reach a service manager.
func (n *Notifier) Enabled() bool { return n.addr != nil }

// Ready tells the manager that start-up, or a reload, is complete.
func (n *Notifier) Ready() error { return n.notify(daemon.SdNotifyReady) }

// Status sets the one-line status text `systemctl status` shows.
func (n *Notifier) Status(format string, args ...any) error {
	// A newline would end the STATUS assignment and start a new one.
	status := strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(fmt.Sprintf(format, args...))
	return n.notify("STATUS=" + status)
}

// Reloading tells the manager that a configuration reload has begun; call
// Ready when it is done. MONOTONIC_USEC lets newer managers match the
// reload to the request, as sd_notify(3) asks.
func (n *Notifier) Reloading() error {
	return n.notify(daemon.SdNotifyReloading + "\n" + strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"))
}

// Stopping tells the manager that shutdown has begun.
func (n *Notifier) Stopping() error { return n.notify(daemon.SdNotifyStopping) }

// ExtendTimeout asks the manager for d more time to finish the current
// start-up, reload or shutdown, for example while libvirtd is still
// starting.
func (n *Notifier) ExtendTimeout(d time.Duration) error {
	return n.notify("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(d.Microseconds(), 10))
}

// Watchdog sends one watchdog keep-alive ping.
func (n *Notifier) Watchdog() error { return n.notify(daemon.SdNotifyWatchdog) }

// WatchdogInterval returns the manager's watchdog timeout (WatchdogSec=) and
// whether it is enabled for this process. Pings must come more often than
// this; RunWatchdog pings at half of it.
func (n *Notifier) WatchdogInterval() (time.Duration, bool) {
	return n.watchdog, n.watchdog > 0
}

// RunWatchdog pings the watchdog every half interval until ctx is done, but
// only when alive reports that the main loop has made progress since the
// previous tick (see Heartbeat). A hung main loop therefore stops the pings
// and the manager restarts the service, which a free-running ticker goroutine
// would hide. Without a watchdog it returns at once.
func (n *Notifier) RunWatchdog(ctx context.Context, alive func() bool) {
	interval, ok := n.WatchdogInterval()
	if !ok {
		return
	}
	ticker := time.NewTicker(interval / 2)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if alive() {
				// A lost ping is not worth reporting: if pings keep failing
				// the manager restarts us, which is the point.
				_ = n.Watchdog()
			}
		}
	}
}

func (n *Notifier) notify(state string) error {
	if n.addr == nil {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify %s: %w", firstLine(state), err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(notifyTimeout)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", firstLine(state), err)
	}
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", firstLine(state), err)
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// Heartbeat connects a main loop to RunWatchdog: the loop calls Beat each
// time round (it must come round at least once per half watchdog interval,
// for example on a periodic resync tick), and Alive, passed to RunWatchdog,
// reports whether Beat was called since Alive last ran. The zero value is
// ready to use; Alive is meant for a single caller.
type Heartbeat struct {
	beats atomic.Uint64
	seen  atomic.Uint64
}

// Beat records progress of the main loop.
func (h *Heartbeat) Beat() { h.beats.Add(1) }

// Alive reports whether Beat was called since the previous call of Alive.
func (h *Heartbeat) Alive() bool {
	now := h.beats.Load()
	return h.seen.Swap(now) != now
}
