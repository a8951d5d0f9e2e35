package e2elab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vsagent/vsagent/internal/vmimage"
)

// probeFile caches, beside the image, which domain type boots it on this
// host: the probe boots a VM and can take its whole timeout, and the answer
// is a fact of the host that does not change between runs.
const probeFile = "domain-type"

// ProbeTimeout bounds the KVM boot probe.
const ProbeTimeout = 20 * time.Second

// DomainType returns the domain type the appliance templates get on this
// host — "kvm" where a guest really boots under KVM, "qemu" (TCG) otherwise
// — and why. The answer is cached in the image's directory.
func DomainType(ctx context.Context, kernel, initrd string) (vmimage.ProbeResult, error) {
	cache := filepath.Join(filepath.Dir(kernel), probeFile)
	if b, err := os.ReadFile(cache); err == nil {
		typ, reason, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		if typ == vmimage.DomainKVM || typ == vmimage.DomainQEMU {
			return vmimage.ProbeResult{DomainType: typ, Reason: reason + " (cached)"}, nil
		}
	}
	res, err := vmimage.ProbeKVM(ctx, kernel, initrd, ProbeTimeout)
	if err != nil {
		return vmimage.ProbeResult{}, fmt.Errorf("e2elab: KVM probe: %w", err)
	}
	_ = os.WriteFile(cache, []byte(res.DomainType+"\n"+res.Reason+"\n"), 0o644)
	return res, nil
}
