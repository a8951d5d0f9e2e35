package vmimage_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vsagent/vsagent/internal/vmimage"
)

// TestProbe boots the appliance image with QEMU directly: under TCG it
// must reach init (so a failed KVM probe means KVM, not the probe, is
// broken), and ProbeKVM must decide, with a reason, whatever this host is.
func TestProbe(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("skipping: qemu-system-x86_64 is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img := buildImage(ctx, t)

	ok, detail, err := vmimage.ProbeBoot(ctx, "tcg", img.Kernel, img.Initrd, time.Minute)
	if err != nil || !ok {
		t.Fatalf("the image does not boot under TCG: %v, %v, %s", ok, err, detail)
	}
	t.Logf("tcg: %s", detail)

	ok, detail, err = vmimage.ProbeBoot(ctx, "no-such-accelerator", img.Kernel, img.Initrd, time.Minute)
	if err != nil || ok || !strings.Contains(detail, "QEMU exited") {
		t.Errorf("unknown accelerator: %v, %v, %q; want a failed boot that quotes QEMU", ok, err, detail)
	}

	if _, _, err := vmimage.ProbeBoot(ctx, "tcg", img.Kernel+".missing", img.Initrd, time.Minute); err == nil {
		t.Error("a missing kernel is not an error")
	}

	// Ten seconds is five times what a KVM boot takes where KVM works.
	res, err := vmimage.ProbeKVM(ctx, img.Kernel, img.Initrd, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probe-kvm: %s (%s)", res.DomainType, res.Reason)
	if res.Reason == "" {
		t.Error("no reason given")
	}
	f, openErr := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if openErr == nil {
		f.Close()
	}
	switch {
	case res.DomainType != vmimage.DomainKVM && res.DomainType != vmimage.DomainQEMU:
		t.Errorf("domain type %q", res.DomainType)
	case openErr != nil && (res.DomainType != vmimage.DomainQEMU || !strings.Contains(res.Reason, "/dev/kvm")):
		t.Errorf("without a usable /dev/kvm (%v): %+v", openErr, res)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		t.Error("the probe outlived the test's deadline")
	}
}
