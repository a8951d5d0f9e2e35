package intercept

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/netnstest"
)

// testLogger sends a backend's logs to the test's log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// LoggerFor is testLogger for the package's external tests.
func LoggerFor(t testing.TB) *slog.Logger { return testLogger(t) }

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// nsPath is the file of a test namespace, as Deps.NetNS wants it.
func nsPath(ns *netnstest.NS) string { return filepath.Join("/run/netns", ns.Name()) }

// testEtherType marks the frames tests send, so that stray traffic (ARP,
// neighbour discovery) never counts.
const testEtherType = 0x88b5

// frameWait bounds every wait for a frame; it guards against hangs and
// asserts nothing about speed.
const frameWait = 5 * time.Second

func frame(dst, src net.HardwareAddr, payload string) []byte {
	b := make([]byte, 0, 60)
	b = append(b, dst...)
	b = append(b, src...)
	b = append(b, testEtherType>>8, testEtherType&0xff)
	b = append(b, payload...)
	for len(b) < 60 {
		b = append(b, 0)
	}
	return b
}

// payloadOf returns the test payload of a frame, or "" for other traffic.
func payloadOf(f []byte) string {
	if len(f) < 14 || f[12] != testEtherType>>8 || f[13] != testEtherType&0xff {
		return ""
	}
	return string(bytes.TrimRight(f[14:], "\x00"))
}

// tap is a real tap device whose queue the test holds: writing to it is the
// guest sending, reading from it is the guest receiving.
type tap struct {
	name string
	file *os.File
}

func newTap(t *testing.T, ns *netnstest.NS, name, bridge string) *tap {
	t.Helper()
	link := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_NO_PI,
		Queues:     1,
		NonPersist: true,
	}
	// The tap's namespace is the one of the thread that opens it.
	if err := ns.Do(func() error { return netlink.LinkAdd(link) }); err != nil {
		t.Fatalf("creating tap %s: %v", name, err)
	}
	tp := &tap{name: name, file: link.Fds[0]}
	t.Cleanup(func() { tp.file.Close() })
	nlh := ns.Netlink()
	l, err := nlh.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if bridge != "" {
		br, err := nlh.LinkByName(bridge)
		if err == nil {
			err = nlh.LinkSetMaster(l, br)
		}
		if err != nil {
			t.Fatalf("enslaving %s to %s: %v", name, bridge, err)
		}
	}
	if err := nlh.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	// A tap's operational state stays "unknown"; its carrier tells when the
	// kernel will pass frames.
	for i := 0; ; i++ {
		l, err := nlh.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			break
		}
		if i == 500 {
			t.Fatalf("tap %s has no carrier", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return tp
}

func (tp *tap) send(t *testing.T, f []byte) {
	t.Helper()
	if _, err := tp.file.Write(f); err != nil {
		t.Fatalf("guest sending on %s: %v", tp.name, err)
	}
}

// receive reads what reaches the guest until a frame with payload want
// arrives, and returns the test payloads seen before it.
func (tp *tap) receive(t *testing.T, want string) []string {
	t.Helper()
	return receiveUntil(t, "guest on "+tp.name, want, func(b []byte) (int, error) {
		if err := tp.file.SetReadDeadline(time.Now().Add(frameWait)); err != nil {
			return 0, err
		}
		return tp.file.Read(b)
	})
}

// sock is an AF_PACKET socket on one link of a namespace.
type sock struct {
	where string
	conn  *packet.Conn
}

func newSock(t *testing.T, ns *netnstest.NS, link string) *sock {
	t.Helper()
	var conn *packet.Conn
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Raw, testEtherType, nil)
		return err
	})
	if err != nil {
		t.Fatalf("packet socket on %s in %s: %v", link, ns.Name(), err)
	}
	t.Cleanup(func() { conn.Close() })
	return &sock{where: link + " in " + ns.Name(), conn: conn}
}

func (s *sock) send(t *testing.T, f []byte) {
	t.Helper()
	if _, err := s.conn.WriteTo(f, &packet.Addr{HardwareAddr: net.HardwareAddr(f[:6])}); err != nil {
		t.Fatalf("sending on %s: %v", s.where, err)
	}
}

func (s *sock) receive(t *testing.T, want string) []string {
	t.Helper()
	return receiveUntil(t, s.where, want, func(b []byte) (int, error) {
		if err := s.conn.SetReadDeadline(time.Now().Add(frameWait)); err != nil {
			return 0, err
		}
		n, _, err := s.conn.ReadFrom(b)
		return n, err
	})
}

// receiveUntil reads at most a bounded number of frames until one carries
// want, and returns the test payloads that came before it.
func receiveUntil(t *testing.T, where, want string, read func([]byte) (int, error)) []string {
	t.Helper()
	var before []string
	buf := make([]byte, 2048)
	for i := 0; i < 1000; i++ {
		n, err := read(buf)
		if err != nil {
			t.Fatalf("waiting on %s for %q (saw %q): %v", where, want, before, err)
		}
		p := payloadOf(buf[:n])
		if p == want {
			return before
		}
		if p != "" {
			before = append(before, p)
		}
	}
	t.Fatalf("%q never reached %s; saw %q", want, where, before)
	return nil
}

func mustNotContain(t *testing.T, where string, seen []string, unwanted string) {
	t.Helper()
	for _, s := range seen {
		if s == unwanted {
			t.Errorf("%q reached %s", unwanted, where)
		}
	}
}

func dump(t *testing.T, ns *netnstest.NS, link string) LinkDump {
	t.Helper()
	d, err := DumpLink(context.Background(), nsPath(ns), link)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// labelled makes payloads unique per test run, so that a frame from an
// earlier step can never be taken for a later one.
func labelled(t *testing.T) func(string) string {
	run := netnstest.UniqueName("")
	n := 0
	return func(what string) string {
		n++
		return fmt.Sprintf("%s %s #%d", run, what, n)
	}
}
