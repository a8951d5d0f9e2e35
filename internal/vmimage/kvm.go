package vmimage

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Domain types for appliance templates.
const (
	DomainKVM  = "kvm"  // hardware virtualisation
	DomainQEMU = "qemu" // TCG software emulation: slow, but runs everywhere
)

// DefaultProbeTimeout bounds a probe boot. Under working KVM the image
// reaches init in one or two seconds; a broken KVM never does.
const DefaultProbeTimeout = 20 * time.Second

// ProbeResult is the domain type appliance templates should use and why.
type ProbeResult struct {
	DomainType string
	Reason     string
}

// ProbeKVM decides between DomainKVM and DomainQEMU by booting the image
// (kernel, initrd) under KVM with the machine type of the templates (q35,
// the default CPU model) and ProbeParam, which makes init print ProbeOK and
// power off. Only a guest that actually reaches its init counts: /dev/kvm
// may open and answer KVM_CREATE_VM and KVM_CHECK_EXTENSION on hosts where
// ordinary guests never boot (a PVM host kernel, for one). The error is for
// a probe that could not run at all (no QEMU, no image); a KVM that does
// not work is a DomainQEMU result with the reason.
func ProbeKVM(ctx context.Context, kernel, initrd string, timeout time.Duration) (ProbeResult, error) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return ProbeResult{DomainType: DomainQEMU, Reason: fmt.Sprintf("cannot open /dev/kvm: %v", err)}, nil
	}
	f.Close()
	ok, detail, err := ProbeBoot(ctx, "kvm", kernel, initrd, timeout)
	if err != nil {
		return ProbeResult{}, err
	}
	if !ok {
		return ProbeResult{DomainType: DomainQEMU, Reason: "a guest does not boot under KVM: " + detail}, nil
	}
	return ProbeResult{DomainType: DomainKVM, Reason: "a guest boots under KVM: " + detail}, nil
}

// ProbeBoot boots the image once with QEMU's accelerator accel ("kvm" or
// "tcg") and reports whether its init ran, with a detail for people: how
// long the boot took, or what QEMU said, or that the guest showed no sign
// of life within timeout (default DefaultProbeTimeout). QEMU is killed if
// it is still running when ProbeBoot returns.
func ProbeBoot(ctx context.Context, accel, kernel, initrd string, timeout time.Duration) (ok bool, detail string, err error) {
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return false, "", fmt.Errorf("%w: qemu-system-x86_64 (install qemu-system-x86)", ErrMissingTool)
	}
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			return false, "", fmt.Errorf("vmimage: probe image: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-machine", "q35,accel="+accel, "-m", "128", "-nodefaults", "-no-user-config",
		"-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", BaseCmdline+" "+ProbeParam)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return false, "", fmt.Errorf("vmimage: %w", err)
	}
	// Read only after Wait, when exec's copying goroutine is done.
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return false, "", fmt.Errorf("vmimage: starting QEMU: %w", err)
	}
	seen := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), ProbeOK) {
				seen <- time.Since(start)
				break
			}
		}
		// Keep draining so that QEMU never blocks on a full pipe.
		for sc.Scan() {
		}
		close(seen)
	}()
	booted, got := <-seen
	if got {
		// The guest powers itself off; a QEMU that lingers is not waited for.
		stop := time.AfterFunc(5*time.Second, cancel)
		defer stop.Stop()
	}
	waitErr := cmd.Wait()
	switch {
	case got:
		return true, fmt.Sprintf("init ran %.1fs after QEMU started", booted.Seconds()), nil
	case ctx.Err() != nil && ctx.Err() == context.DeadlineExceeded:
		return false, fmt.Sprintf("no sign of life within %s", timeout), nil
	case ctx.Err() != nil:
		return false, "", fmt.Errorf("vmimage: probe: %w", ctx.Err())
	}
	msg := strings.TrimSpace(stderr.String())
	if len(msg) > 400 {
		msg = msg[len(msg)-400:]
	}
	return false, fmt.Sprintf("QEMU exited (%v) without the guest reaching init: %s", waitErr, msg), nil
}
