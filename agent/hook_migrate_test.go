package agent

import (
	"context"
	"slices"
	"strings"
	"testing"

	"libvirt.org/go/libvirt"

	"github.com/vsagent/vsagent/hypervisor"
)

// TestChainBeforeRun: only a guest that the start hook holds and that
// libvirt has not let run yet gets its appliances provisioned ahead of
// the gate, and provisioning them touches the appliance domains, never
// the guest (whose migration job libvirt holds).
func TestChainBeforeRun(t *testing.T) {
	needs := []string{"ips", "fw"}
	for _, tc := range []struct {
		name   string
		held   bool
		state  hypervisor.State
		reason libvirt.DomainPausedReason
		want   bool
	}{
		{"incoming migration held by the start hook", true, hypervisor.StatePaused, libvirt.DOMAIN_PAUSED_MIGRATION, true},
		{"start held by the start hook, vCPUs not started", true, hypervisor.StatePaused, libvirt.DOMAIN_PAUSED_STARTING_UP, true},
		{"incoming migration the start hook did not hold", false, hypervisor.StatePaused, libvirt.DOMAIN_PAUSED_MIGRATION, false},
		{"held but already running", true, hypervisor.StateRunning, 0, false},
		{"held but paused by its operator", true, hypervisor.StatePaused, libvirt.DOMAIN_PAUSED_USER, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.start(h.config(baseConfig))
			h.hv.takeCalls()
			// The guest is not in this libvirt at all: chainBeforeRun must
			// not need to ask about it.
			dom := hypervisor.Domain{UUID: "6a0e3b52-2f0c-4d7e-9d35-1c0b7f4e8a11", Name: "web-1", State: tc.state, Reason: int(tc.reason)}
			h.agent.setNeeds(dom.UUID, needs)
			if tc.held {
				key := hookStartKey{h.agent, dom.UUID}
				hookStarts.Store(key, h.agent.opts.Now())
				t.Cleanup(func() { hookStarts.Delete(key) })
			}
			ready, ok := h.agent.chainBeforeRun(context.Background(), dom, needs, quietLogger())
			if ok != tc.want {
				t.Fatalf("chainBeforeRun = %v, want %v", ok, tc.want)
			}
			calls := h.hv.takeCalls()
			if !tc.want {
				if len(ready) != 0 || len(calls) != 0 {
					t.Errorf("nothing may be provisioned ahead of the gate; got ready %v, calls %v", ready, calls)
				}
				return
			}
			for _, name := range needs {
				if len(ready[name]) != 1 || ready[name][0].Failed {
					t.Errorf("ready[%s] = %+v, want one running instance", name, ready[name])
				}
			}
			for _, c := range calls {
				if strings.Contains(c, dom.Name) || strings.Contains(c, dom.UUID) {
					t.Errorf("call %q concerns the guest", c)
				}
			}
			for _, want := range []string{"define vsa-ips-1", "start vsa-ips-1", "define vsa-fw-1", "start vsa-fw-1"} {
				if !slices.Contains(calls, want) {
					t.Errorf("calls %v lack %q", calls, want)
				}
			}
		})
	}
}
