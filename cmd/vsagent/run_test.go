package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/netnstest"
)

const daemonConfig = `
[agent]
gate_timeout = "5s"
socket = "SOCKET"

[metrics]
listen = "METRICS"

[[appliance]]
name = "fw"
template = "fw.xml"

[[policy]]
name = "p"
chain = ["fw"]
[policy.match]
domains = ["web-*"]
`

const fwTemplate = `<domain type='test'><name>t</name><memory unit='KiB'>65536</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type></os><devices><interface type='ethernet'/></devices></domain>`

// syncBuffer collects a child's output while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestDaemonNotifyReloadAndStop runs the real binary against the libvirt
// test driver with NOTIFY_SOCKET pointing at a socket of the test's, the way
// systemd would, and drives it with signals.
func TestDaemonNotifyReloadAndStop(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "vsagent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "vsagent.toml")
	ctlSocket := filepath.Join(dir, "vsagent.sock")
	cfgText := strings.Replace(daemonConfig, "SOCKET", ctlSocket, 1)
	metricsAddr := freeLoopbackAddr(t)
	cfgText = strings.Replace(cfgText, "METRICS", metricsAddr, 1)
	writeFile(t, cfgPath, cfgText)
	writeFile(t, filepath.Join(dir, "fw.xml"), fwTemplate)
	node, _ := filepath.Abs("../../agent/testdata/node.xml")

	sockPath := filepath.Join(dir, "notify.sock")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	msgs := make(chan string, 256)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := sock.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()

	// The daemon creates the distribution manager's link: it runs in a
	// network namespace of the test's own.
	netnstest.RequireRoot(t)
	ns := netnstest.New(t)
	cmd := exec.Command("ip", "netns", "exec", ns.Name(), bin, "run", "-c", cfgPath, "-libvirt-uri", "test://"+node)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sockPath, "WATCHDOG_USEC=400000")
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	await := func(what string, match func(string) bool) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed waiting for %s", what)
				}
				if match(m) {
					return
				}
			case err := <-exited:
				t.Fatalf("daemon exited (%v) waiting for %s; log:\n%s", err, what, logs.String())
			case <-deadline:
				t.Fatalf("no %s; log:\n%s", what, logs.String())
			}
		}
	}
	has := func(s string) func(string) bool {
		return func(m string) bool { return strings.Contains(m, s) }
	}
	await("STATUS while starting", has("STATUS="))
	await("READY=1", has("READY=1"))
	await("watchdog pings", has("WATCHDOG=1"))
	await("a second watchdog ping", has("WATCHDOG=1"))

	// Operators reach it: the control socket answers, metrics are served.
	st, err := api.NewClient(ctlSocket).Status(context.Background())
	if err != nil || !st.Ready || st.Health != api.HealthOK {
		t.Fatalf("control socket status = %+v, %v", st, err)
	}
	waitLog(t, &logs, "metrics endpoint listening")
	// The endpoint listens on the namespace's loopback: dial from there.
	var body []byte
	if err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", metricsAddr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\nHost: vsagent\r\n\r\n"); err != nil {
			return err
		}
		body, err = io.ReadAll(c)
		return err
	}); err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	for _, want := range []string{"vsagent_build_info", "vsagent_dataplane_up 1", "vsagent_dataplane_flow_capacity 1e+06"} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("metrics lack %q:\n%s", want, body)
		}
	}

	// A valid change is applied.
	writeFile(t, cfgPath, strings.Replace(cfgText, `"web-*"`, `"db-*"`, 1))
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	await("RELOADING=1", has("RELOADING=1"))
	await("READY=1 after reload", has("READY=1"))
	waitLog(t, &logs, "configuration applied")

	// An invalid one is refused with its error, and the daemon keeps going.
	writeFile(t, cfgPath, cfgText+"\nbogus_key = 1\n")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	await("READY=1 after a refused reload", has("READY=1"))
	waitLog(t, &logs, "reload refused")
	waitLog(t, &logs, "bogus_key")
	await("watchdog still pinging", has("WATCHDOG=1"))

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	await("STOPPING=1", has("STOPPING=1"))
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("daemon exit: %v; log:\n%s", err, logs.String())
		}
		exited <- nil
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not exit on SIGTERM")
	}
}

func waitLog(t *testing.T, logs *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", want, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeLoopbackAddr picks a loopback port that is free right now; the
// configuration wants a real port, not :0.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
