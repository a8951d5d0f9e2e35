package libvirtlab

import (
	"encoding/base64"
	"os/exec"
	"strings"
	"testing"
)

func TestGuestBridgeInterface(t *testing.T) {
	dom, err := GuestDomain("g", Image{}, GuestOptions{Interfaces: []GuestInterface{{Type: "bridge", Source: "br0", Target: "gtap0"}}})
	if err != nil {
		t.Fatal(err)
	}
	iface := dom.Devices.Interfaces[0]
	if iface.Source == nil || iface.Source.Bridge == nil || iface.Source.Bridge.Bridge != "br0" {
		t.Fatalf("source = %+v, want bridge br0", iface.Source)
	}
	if _, err := GuestDomain("g", Image{}, GuestOptions{Interfaces: []GuestInterface{{Type: "bridge"}}}); err == nil {
		t.Error("a bridge interface without a bridge was accepted")
	}
}

func TestGuestRun(t *testing.T) {
	script := "echo 'a b'; wget -q -O - http://10.0.0.2/\n"
	param := GuestRun(script)
	if strings.ContainsAny(param, " \t\n") {
		t.Fatalf("%q would be split by the kernel", param)
	}
	got, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(param, "guestrun="))
	if err != nil || string(got) != script {
		t.Fatalf("decoded %q, %v; want %q", got, err, script)
	}
	dom, err := GuestDomain("g", Image{}, GuestOptions{Cmdline: param})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(dom.OS.Cmdline, " "+param) {
		t.Errorf("cmdline %q does not end with the script", dom.OS.Cmdline)
	}
}

// The init script must at least parse; busybox sh is what runs it.
func TestGuestInitParses(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("skipping: busybox not installed")
	}
	cmd := exec.Command(bb, "sh", "-n")
	cmd.Stdin = strings.NewReader(GuestInit)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox sh -n: %v\n%s", err, out)
	}
}
