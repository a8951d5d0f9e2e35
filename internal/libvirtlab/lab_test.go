package libvirtlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLab runs one private libvirtd through its whole life with a real
// guest: isolation, a guest that boots and answers, a daemon killed and
// restarted under a running guest, and a Stop that leaves nothing behind.
func TestLab(t *testing.T) {
	hookRan := filepath.Join(t.TempDir(), "hook-ran")
	l := NewWith(t, Options{Hooks: map[string]string{
		"daemon": "#!/bin/sh\necho \"$@\" >> " + hookRan + "\n",
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if out, err := l.Exec(ctx, "hostname"); err != nil || strings.TrimSpace(string(out)) != l.Name {
		t.Fatalf("hostname in the lab = %q, %v; want %q", out, err, l.Name)
	}
	links, err := l.Exec(ctx, "ip", "-o", "link")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.TrimSpace(string(links)), "\n") + 1; n != 1 || !strings.Contains(string(links), "lo:") {
		t.Fatalf("a fresh lab should have only loopback:\n%s", links)
	}
	caps := virsh(ctx, t, l, "capabilities")
	if !strings.Contains(caps, "<uuid>"+l.HostUUID+"</uuid>") {
		t.Fatalf("capabilities do not carry the lab's host UUID %s", l.HostUUID)
	}
	if hook, err := os.ReadFile(hookRan); err != nil || !strings.Contains(string(hook), "start") {
		t.Errorf("daemon hook did not run at start: %q, %v", hook, err)
	}

	img, err := GuestImage(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(l.Dir, "g.console")
	dom, err := GuestDomain("g", img, GuestOptions{
		ConsoleLog: console,
		Interfaces: []GuestInterface{{Target: "vsltap0", Address: "10.78.0.2/24"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	xmlPath := filepath.Join(l.Dir, "g.xml")
	if err := os.WriteFile(xmlPath, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh(ctx, t, l, "define", xmlPath)
	virsh(ctx, t, l, "start", "g")
	if _, err := l.Exec(ctx, "ip", "addr", "add", "10.78.0.1/24", "dev", "vsltap0"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "guest answers ping", func() bool {
		_, err := l.Exec(ctx, "busybox", "ping", "-c", "1", "-W", "1", "10.78.0.2")
		return err == nil
	})
	waitFor(t, "the guest reports ready on its console", func() bool {
		out, _ := os.ReadFile(console)
		return strings.Contains(string(out), GuestReady)
	})
	if out, err := l.Exec(ctx, "busybox", "wget", "-q", "-O", "-", "http://10.78.0.2/"); err != nil || strings.TrimSpace(string(out)) != "g" {
		t.Fatalf("guest http = %q, %v; want its name", out, err)
	}
	if out, err := l.Exec(ctx, "sh", "-c", "echo vsagent | busybox nc -w 2 10.78.0.2 7"); err != nil || strings.TrimSpace(string(out)) != "vsagent" {
		t.Fatalf("guest echo = %q, %v", out, err)
	}
	pidText, err := l.Exec(ctx, "cat", "/run/libvirt/qemu/g.pid")
	if err != nil {
		t.Fatal(err)
	}
	qemuPid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil {
		t.Fatal(err)
	}

	if err := l.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Exec(ctx, "virsh", "-c", l.URI(), "list"); err == nil {
		t.Fatal("virsh still answered after Kill")
	}
	if _, err := l.Exec(ctx, "busybox", "ping", "-c", "1", "-W", "2", "10.78.0.2"); err != nil {
		t.Fatalf("guest died with libvirtd: %v", err)
	}
	if err := l.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if state := strings.TrimSpace(virsh(ctx, t, l, "domstate", "g")); state != "running" {
		t.Fatalf("after restart the guest is %q, want running", state)
	}

	if err := l.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := l.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := syscall.Kill(qemuPid, 0); err == nil && !isZombie(qemuPid) {
		t.Errorf("QEMU %d survived Stop", qemuPid)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", l.NetNS)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("network namespace %s survived Stop: %v", l.NetNS, err)
	}
	if _, err := os.Stat(l.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab directory survived Stop: %v", err)
	}
	if _, err := l.Exec(ctx, "true"); err == nil {
		t.Error("Exec worked after Stop")
	}
}

// TestLabListenTCP checks that a lab with ListenTCP answers qemu+tcp from
// inside its namespace, as another lab's libvirtd reaches it for
// peer-to-peer migration, and that one without it does not.
func TestLabListenTCP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, listen := range []bool{true, false} {
		l := NewWith(t, Options{ListenTCP: listen})
		uri := fmt.Sprintf("qemu+tcp://127.0.0.1:%d/system", TCPPort)
		out, err := l.Exec(ctx, "virsh", "-q", "-c", uri, "hostname")
		switch {
		case listen && (err != nil || strings.TrimSpace(string(out)) != l.Name):
			t.Errorf("with ListenTCP, virsh -c %s hostname = %q, %v; want %q", uri, out, err, l.Name)
		case !listen && err == nil:
			t.Errorf("without ListenTCP, virsh -c %s answered: %s", uri, out)
		}
	}
}

func TestStartRejectsTooLongDirectory(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if _, err := Start(context.Background(), dir, Options{}); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("Start with a %d-byte directory: %v", len(dir), err)
	}
}

func virsh(ctx context.Context, t *testing.T, l *Lab, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", l.URI()}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh %s: %v\n%s\n%s", strings.Join(args, " "), err, out, l.logTail())
	}
	return string(out)
}

// waitFor polls cond a bounded number of times; a guest takes about ten
// seconds to boot under TCG.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for attempt := 0; attempt < 90; attempt++ {
		if cond() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out waiting until %s", what)
}

func TestExitedState(t *testing.T) {
	tests := []struct {
		stat string
		want bool
	}{
		{"1234 (qemu-system-x86) S 1 1234 1234 0 -1", false},
		{"1234 (a) b) (c) R 1 2", false},
		{"1234 (qemu) Z 1 1234", true},
		{"1234 (qemu) X 1", true},
		{"1234 (qemu)", true},
		{"", true},
		{"1234 qemu S", true},
	}
	for _, tt := range tests {
		if got := exitedState([]byte(tt.stat)); got != tt.want {
			t.Errorf("exitedState(%q) = %v, want %v", tt.stat, got, tt.want)
		}
	}
}

func FuzzExitedState(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1"))
	f.Add([]byte("7 ()) Z"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, stat []byte) {
		exitedState(stat)
	})
}
