package intercept_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/netnsutil"
)

// startWindowHook records, at every phase, the macvtaps of the guest (by
// name in the XML libvirt hands the hook, and as links), their flags, and
// whether QEMU runs; at start begin, if sink is set, it puts a clsact qdisc
// on each macvtap whose egress (what the guest sends) and ingress (what
// is delivered to the guest) filters redirect every frame to sink.
const startWindowHook = `#!/bin/sh
out=%q
sink=%q
dom=$1; op=$2; sub=$3
xml=$(cat)
named=$(echo "$xml" | sed -n "s/.*<target dev='\([^']*\)'.*/\1/p" | tr '\n' ' ')
links=$(ip -o link show type macvtap | sed -n 's/^[0-9]*: \([^@:]*\).*/\1/p' | tr '\n' ' ')
pid=$(cat /run/libvirt/qemu/$dom.pid 2>/dev/null)
state=""
for d in $links; do state="$state $d:flags=$(cat /sys/class/net/$d/flags)"; done
echo "$op $sub pid=${pid:-none} named=[$named] links=[$links]$state" >> "$out"
if [ "$op $sub" = "start begin" ] && [ -n "$sink" ]; then
	for d in $links; do
		tc qdisc add dev $d clsact &&
		tc filter add dev $d egress protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev $sink &&
		tc filter add dev $d ingress protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev $sink &&
		echo "held $d" >> "$out" || echo "hold of $d failed" >> "$out"
	done
fi
exit 0
`

// countFrom counts the frames from mac that link receives, until the test
// ends.
func countFrom(t *testing.T, netNS, link string, mac net.HardwareAddr) *atomic.Int64 {
	t.Helper()
	var conn *packet.Conn
	if err := netnsutil.Do(netNS, func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	}); err != nil {
		t.Fatalf("packet socket on %s: %v", link, err)
	}
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			m, _, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			if m >= 12 && bytes.Equal(buf[6:12], mac) {
				n.Add(1)
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return &n
}

// TestMacvtapStartWindowHold measures what a qemu hook can do for a guest
// on a macvtap at start begin, with kernel means only: the macvtap exists
// (libvirt created it, down, before QEMU runs) and a clsact qdisc on it
// whose egress and ingress filters redirect every frame elsewhere keeps
// the running guest from reaching its parent's segment, and the segment
// from reaching it, although libvirt sets the macvtap up when the vCPUs
// start. Removing the qdisc shows that the guest was talking all along.
func TestMacvtapStartWindowHold(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "phases.log")
	lab := libvirtlab.NewWith(t, libvirtlab.Options{Hooks: map[string]string{"qemu": fmt.Sprintf(startWindowHook, logPath, "sk0")}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	labNS := filepath.Join("/run/netns", lab.NetNS)
	const hostIP, guestIP = "10.84.0.1", "10.84.0.2"
	labLinks(ctx, t, lab, hostIP, "sk0", "sk1")
	guestMAC, _ := net.ParseMAC("52:54:00:84:00:02")
	atParent := countFrom(t, labNS, "vp1", guestMAC)
	atSink := countFrom(t, labNS, "sk1", guestMAC)

	img, err := libvirtlab.GuestImage(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := hypervisor.Connect(ctx, lab.URI(), hypervisor.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	startLabGuestWith(ctx, t, lab, conn, img, libvirtlab.GuestOptions{
		Interfaces: []libvirtlab.GuestInterface{{Type: "direct", Source: "vp0", Mode: "bridge", MAC: guestMAC.String(), Address: guestIP + "/24"}},
		Cmdline:    libvirtlab.GuestRun("while :; do ping -c 1 -W 1 " + hostIP + " >/dev/null 2>&1; echo window-ping; sleep 0.2; done\n"),
	})
	console := filepath.Join(lab.Dir, "g.console")
	deadline := time.Now().Add(2 * time.Minute)
	for atSink.Load() < 20 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	t.Logf("phases:\n%s", b)
	if atSink.Load() < 20 {
		t.Fatalf("only %d frames of the guest at the sink\nconsole:\n%s", atSink.Load(), labConsole(lab))
	}
	phases := string(b)
	for _, want := range []string{"start begin pid=none named=[macvtap", "held macvtap", "started begin pid="} {
		if !strings.Contains(phases, want) {
			t.Errorf("phases: no %q", want)
		}
	}
	c, _ := os.ReadFile(console)
	t.Logf("held: %d frames of the guest at the sink, %d at its parent's peer; %d pings tried",
		atSink.Load(), atParent.Load(), bytes.Count(c, []byte("window-ping")))
	if n := atParent.Load(); n != 0 {
		t.Fatalf("%d frames of the held guest reached its parent's segment", n)
	}

	// The control: without the qdisc the same guest reaches the host.
	out, err := lab.Exec(ctx, "sh", "-c", "for d in $(ip -o link show type macvtap | sed -n 's/^[0-9]*: \\([^@:]*\\).*/\\1/p'); do tc qdisc del dev $d clsact; done")
	if err != nil {
		t.Fatalf("remove the hold: %v: %s", err, out)
	}
	for range 100 {
		if _, err = lab.Exec(ctx, "busybox", "ping", "-c", "1", "-W", "1", guestIP); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || atParent.Load() == 0 {
		t.Fatalf("without the hold the guest does not answer (%v, %d frames at its parent's peer): the test cannot tell a hold from a dead guest", err, atParent.Load())
	}
}
