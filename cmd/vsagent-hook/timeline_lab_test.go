package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/libvirtlab"
)

// timelineHook records, for every phase libvirt runs the qemu hook at, the
// guest's taps and their state, and whether the QEMU vCPU threads exist and
// consume CPU (their utime+stime over 300 ms).
const timelineHook = `#!/bin/sh
out=%q
dom=$1; op=$2; sub=$3
xml=$(cat)
now=$(date +%%s.%%N)
taps=$(echo "$xml" | sed -n "s/.*<target dev='\([^']*\)'.*/\1/p" | tr '\n' ' ')
state=""
for t in $taps; do
	if [ -e /sys/class/net/$t ]; then
		state="$state $t:$(cat /sys/class/net/$t/operstate):flags=$(cat /sys/class/net/$t/flags):rx=$(cat /sys/class/net/$t/statistics/rx_packets):tx=$(cat /sys/class/net/$t/statistics/tx_packets)"
	else
		state="$state $t:absent"
	fi
done
pid=$(cat /run/libvirt/qemu/$dom.pid 2>/dev/null)
cpu() {
	s=0
	for task in /proc/$pid/task/*; do
		case "$(cat $task/comm 2>/dev/null)" in
		CPU*) set -- $(cut -d' ' -f14,15 $task/stat); s=$((s+$1+$2)) ;;
		esac
	done
	echo $s
}
vcpu=none
if [ -n "$pid" ] && [ -d /proc/$pid ]; then
	a=$(cpu); sleep 0.3; b=$(cpu)
	vcpu="ticks:$a->$b"
fi
echo "$now $op $sub pid=${pid:-none} vcpu=$vcpu taps:$state" >> "$out"
exit 0
`

// TestHookPhaseTimeline measures, on a real libvirtd with QEMU, what exists
// at each qemu hook phase of a start and a destroy: the facts docs/hooks.md
// builds on (the taps exist at start begin, before QEMU; vCPUs already run
// at started begin).
func TestHookPhaseTimeline(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "phases.log")
	lab := libvirtlab.NewWith(t, libvirtlab.Options{Hooks: map[string]string{"qemu": fmt.Sprintf(timelineHook, logPath)}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := lab.Exec(ctx, "sh", "-c", "ip link add br0 type bridge && ip link set br0 up"); err != nil {
		t.Fatal(err)
	}
	conn, uuid := startGuest(t, ctx, lab, libvirtlab.GuestInterface{Type: "bridge", Source: "br0", Target: "vsg1"}, libvirtlab.GuestInterface{Type: "ethernet", Target: "vsg1e"})
	if err := conn.Destroy(ctx, uuid); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("phases:\n%s", b)
	phases := map[string]string{}
	var order []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, " ", 4)
		if len(f) < 4 {
			t.Fatalf("malformed line %q", line)
		}
		phases[f[1]+" "+f[2]] = f[3]
		order = append(order, f[1]+" "+f[2])
	}
	if d := cmp.Diff([]string{"prepare begin", "start begin", "started begin", "stopped end", "release end"}, order); d != "" {
		t.Errorf("phases (-want +got):\n%s", d)
	}
	for _, c := range []struct{ phase, want string }{
		{"prepare begin", "pid=none vcpu=none taps: vsg1:absent vsg1e:absent"},
		// The taps exist, QEMU does not run: the moment to divert them.
		{"start begin", "pid=none vcpu=none taps: vsg1:unknown"},
		{"start begin", " vsg1e:unknown"},
		// QEMU runs; its vCPUs already do (the ticks show it, not asserted:
		// scheduling on a loaded machine varies).
		{"started begin", "vcpu=ticks:"},
	} {
		if !strings.Contains(phases[c.phase], c.want) {
			t.Errorf("%s: %q, want it to contain %q", c.phase, phases[c.phase], c.want)
		}
	}
}

// TestHookPhaseTimelineMigration measures the hook phases on both ends of
// a live migration between two private libvirtds.
func TestHookPhaseTimelineMigration(t *testing.T) {
	dir := t.TempDir()
	srcLog, dstLog := filepath.Join(dir, "src.log"), filepath.Join(dir, "dst.log")
	src := libvirtlab.NewWith(t, libvirtlab.Options{Hooks: map[string]string{"qemu": fmt.Sprintf(timelineHook, srcLog)}})
	dst := libvirtlab.NewWith(t, libvirtlab.Options{Hooks: map[string]string{"qemu": fmt.Sprintf(timelineHook, dstLog)}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	startGuest(t, ctx, src, libvirtlab.GuestInterface{Type: "ethernet", Target: "vsg1e"})
	mig := filepath.Join(dir, "mig.sock")
	out, err := exec.CommandContext(ctx, "virsh", "-c", src.URI(), "migrate", "--live", "--persistent", "--undefinesource",
		"g1", dst.URI(), "--migrateuri", "unix://"+mig).CombinedOutput()
	if err != nil {
		t.Fatalf("migrate: %v: %s", err, out)
	}
	sb, _ := os.ReadFile(srcLog)
	db, _ := os.ReadFile(dstLog)
	t.Logf("source phases:\n%s\ndestination phases:\n%s", sb, db)
	for _, want := range []string{" migrate begin ", " prepare begin ", " start begin pid=none vcpu=none taps: vsg1e:unknown", " started begin "} {
		if !strings.Contains(string(db), want) {
			t.Errorf("destination: no %q phase", want)
		}
	}
	if !strings.Contains(string(sb), " stopped end ") || !strings.Contains(string(sb), " release end ") {
		t.Errorf("source: want stopped end and release end")
	}
}

// startGuest defines and starts the guest g1 with nics on lab and lets it
// run for a moment, so that its vCPUs have done some work.
func startGuest(t *testing.T, ctx context.Context, lab *libvirtlab.Lab, nics ...libvirtlab.GuestInterface) (*hypervisor.Conn, string) {
	t.Helper()
	img, err := libvirtlab.GuestImage(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	dom, err := libvirtlab.GuestDomain("g1", img, libvirtlab.GuestOptions{Interfaces: nics})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := hypervisor.Connect(ctx, lab.URI(), hypervisor.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d, err := conn.Define(ctx, dom)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Start(ctx, d.UUID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	return conn, d.UUID
}
