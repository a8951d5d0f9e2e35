package agent

import (
	"context"
	"log/slog"

	"github.com/vsagent/vsagent/hypervisor"
)

// chainBeforeRun waits for the appliances of a guest that the start hook
// holds and whose vCPUs libvirt has not started yet (above all a guest
// arriving by live migration: paused from "started begin" until the
// migration completes), so that its chain can be attached before it runs
// instead of pausing it once it does. It reports whether the appliances
// are ready; if not, the caller gates the guest as usual.
//
// Only appliance domains are touched here, never the guest: libvirt holds
// the guest's migration job, and pausing it or writing its gate record
// would wait for the migration to complete, which is exactly when the
// guest resumes. The start hook's hold keeps the guest's frames dropped
// (fail closed) if the migration completes before the appliances are up.
func (a *Agent) chainBeforeRun(ctx context.Context, dom hypervisor.Domain, needs []string, log *slog.Logger) (map[string][]Instance, bool) {
	if !dom.AboutToRun() || !a.startingUnderHook(dom.UUID) {
		return nil, false
	}
	ready, err := a.provision(ctx, needs, log)
	if err != nil {
		log.Info("appliances not ready before the held guest runs; gating it", "error", err)
		return nil, false
	}
	log.Info("appliances ready before the held guest runs: attaching its chain now", "state", dom.State.String())
	return ready, true
}
