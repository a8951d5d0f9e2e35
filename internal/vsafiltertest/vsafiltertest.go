// Package vsafiltertest builds the reference appliance and runs it in a test
// network namespace, reading its JSON counters.
package vsafiltertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vsagent/vsagent/internal/netnstest"
)

// Counters is the part of vsafilter's JSON lines that tests read.
type Counters struct {
	Type      string `json:"type"`
	Reason    string `json:"reason"`
	Appliance struct {
		Received    uint64 `json:"received"`
		Forwarded   uint64 `json:"forwarded"`
		Dropped     uint64 `json:"dropped"`
		NoticesSent uint64 `json:"notices_sent"`
	} `json:"appliance"`
}

// Run is one vsafilter process.
type Run struct {
	name   string
	cmd    *exec.Cmd
	lines  chan Counters
	stderr bytes.Buffer
}

// Build compiles cmd/vsafilter statically into a temporary directory; repo
// is the path from the test's package directory to the repository root.
func Build(t testing.TB, repo string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "vsafilter")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, filepath.Join(repo, "cmd", "vsafilter"))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build vsafilter: %v\n%s", err, out)
	}
	return bin
}

// Start runs bin in ns on iface with config (TOML), waits for its ready
// line, and stops it when the test ends.
func Start(t testing.TB, ctx context.Context, ns *netnstest.NS, bin, name, iface, config string) *Run {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	v := &Run{name: name, lines: make(chan Counters, 16)}
	v.cmd = ns.Command(ctx, bin, "-c", path, "-i", iface)
	v.cmd.Stderr = &v.stderr
	stdout, err := v.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l Counters
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				v.lines <- l
			}
		}
		close(v.lines)
	}()
	t.Cleanup(func() {
		_ = v.cmd.Process.Signal(syscall.SIGCONT)
		_ = v.cmd.Process.Signal(syscall.SIGTERM)
		for range v.lines {
		}
		_ = v.cmd.Wait()
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, v.stderr.String())
		}
	})
	if l := v.Next(t, "ready"); l.Type != "ready" {
		t.Fatalf("%s: %+v", name, l)
	}
	return v
}

// Next waits for the next line of type typ.
func (v *Run) Next(t testing.TB, typ string) Counters {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-v.lines:
			if !ok {
				t.Fatalf("%s exited while waiting for %s", v.name, typ)
			}
			if l.Type == typ {
				return l
			}
		case <-deadline:
			t.Fatalf("%s: no %s line", v.name, typ)
		}
	}
}

// Counters asks for the current counters (SIGUSR1) and returns them.
func (v *Run) Counters(t testing.TB) Counters {
	t.Helper()
	if err := v.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	return v.Next(t, "counters")
}

// Signal sends sig to the process (SIGSTOP makes a silent appliance).
func (v *Run) Signal(sig os.Signal) error { return v.cmd.Process.Signal(sig) }
