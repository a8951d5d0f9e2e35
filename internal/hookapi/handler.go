package hookapi

import (
	"context"
	"fmt"

	"github.com/vsagent/vsagent/internal/config"
)

// Agent is what the hook handler needs from the agent.
type Agent interface {
	Config() *config.Config
	// HookPrepare runs at "prepare begin" for a guest that needs
	// inspection: libvirt has not allocated anything yet. It starts what
	// takes long (provisioning appliances) and returns without waiting.
	HookPrepare(ctx context.Context, g Guest) error
	// HookStart runs at "start begin": the guest's taps exist, QEMU does not
	// run yet. When it returns nil, every frame the guest will send is
	// dropped until its chain is ready (fail closed).
	HookStart(ctx context.Context, g Guest) error
}

// NewHandler answers hook requests for ag.
//
// At migrate and restore begin the XML is returned unchanged: the guest's
// interfaces are diverted on the taps, which the destination's own start
// begin holds before QEMU runs, so nothing in the XML needs rewriting for
// the tc-redirect backend.
func NewHandler(ag Agent) HandlerFunc {
	return func(ctx context.Context, req Request) Answer {
		g, err := ResolveGuest(ag.Config(), req)
		if err != nil {
			return Answer{Verdict: Refuse, Message: fmt.Sprintf("vsagent: refusing %s of guest %s: %v", req.Op, req.Domain, err)}
		}
		if !g.NeedsInspection() {
			return Answer{Verdict: Allow}
		}
		switch req.Op {
		case OpPrepare:
			err = ag.HookPrepare(ctx, g)
		case OpStart:
			err = ag.HookStart(ctx, g)
		}
		if err != nil {
			return Answer{Verdict: Refuse, Message: fmt.Sprintf(
				"vsagent: refusing %s of guest %s, which needs inspection (policy %q): %v", req.Op, req.Domain, g.PolicyName(), err)}
		}
		return Answer{Verdict: Allow}
	}
}
