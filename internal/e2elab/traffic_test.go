package e2elab

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/vmimage"
)

func TestTrafficScriptParsesAndFits(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("skipping: busybox not installed")
	}
	for _, full := range []bool{false, true} {
		script := TrafficScript("10.77.0.12", full)
		cmd := exec.Command(bb, "sh", "-n")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("full=%v: busybox sh -n: %v\n%s\n%s", full, err, out, script)
		}
		dom, err := libvirtlab.GuestDomain("web-1", libvirtlab.Image{}, libvirtlab.GuestOptions{
			Cmdline:    libvirtlab.GuestRun(script),
			Interfaces: []libvirtlab.GuestInterface{{Type: "bridge", Source: Bridge, MAC: GuestMAC(1), Address: GuestIP(1) + "/24"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(dom.OS.Cmdline); n > vmimage.MaxCmdline {
			t.Errorf("full=%v: command line of %d bytes, the kernel takes %d", full, n, vmimage.MaxCmdline)
		}
	}
}

func TestOutcomePassed(t *testing.T) {
	for _, tc := range []struct {
		mark, line string
		want       bool
	}{
		{MarkHTTP, "e2e: http ok web-2 after 3 retries", true},
		{MarkHTTP, "e2e: http failed: ", false},
		{MarkEcho, "e2e: echo " + EchoText, true},
		{MarkEcho, "e2e: echo ", false},
		{MarkClosed, "e2e: port24 rc=1 nc: can't connect to remote host (10.77.0.12): Connection refused", true},
		{MarkClosed, "e2e: port24 rc=1 nc: timed out", false},
		{MarkTelnet, "e2e: telnet rc=1 nc: timed out", true},
		{MarkTelnet, "e2e: telnet rc=1 nc: can't connect to remote host (10.77.0.12): Connection refused", false},
		{MarkTelnet, "", false},
		{MarkAttack, "e2e: attack echoed 0 bytes", true},
		{MarkAttack, "e2e: attack echoed 68 bytes", false},
		{MarkBulk, "e2e: bulk echoed 200000 bytes", true},
		{MarkBulk, "e2e: bulk echoed 2000000 bytes", false},
		{MarkBulk, "e2e: bulk echoed 131072 bytes", false},
		{"e2e: unknown ", "e2e: unknown", false},
	} {
		o := Outcome{Lines: map[string]string{tc.mark: tc.line}}
		if got := o.Passed(tc.mark); got != tc.want {
			t.Errorf("Passed(%q) on %q = %v, want %v", tc.mark, tc.line, got, tc.want)
		}
	}
}
