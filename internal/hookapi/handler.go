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

// Rewriter is implemented by an agent whose intercept backend wires
// interfaces in the domain XML (macvtap: libvirt cannot rewire a direct
// interface of a running guest without unplugging it).
type Rewriter interface {
	// HookRewrite runs at "migrate begin" and "restore begin" for a guest
	// that needs inspection, with the incoming domain XML; it returns the
	// XML libvirt must use instead, or "" to keep doc.
	HookRewrite(ctx context.Context, g Guest, doc string) (string, error)
}

// NewHandler answers hook requests for ag.
//
// At migrate and restore begin the XML is rewritten only by an agent that
// is a Rewriter: taps are diverted in the kernel, which the destination's
// own start begin holds before QEMU runs. A domain XML the agent cannot
// read or rewrite is answered as hook_failure says, as if the agent had
// not answered: the guest needs inspection, or may.
func NewHandler(ag Agent) HandlerFunc {
	return func(ctx context.Context, req Request) Answer {
		g, err := ResolveGuest(ag.Config(), req)
		if err != nil {
			return byHookFailure(ag.Config(), req, err.Error())
		}
		if !g.NeedsInspection() {
			return Answer{Verdict: Allow}
		}
		var rewritten string
		switch req.Op {
		case OpPrepare:
			err = ag.HookPrepare(ctx, g)
		case OpStart:
			err = ag.HookStart(ctx, g)
		case OpMigrate, OpRestore:
			if rw, ok := ag.(Rewriter); ok {
				if rewritten, err = rw.HookRewrite(ctx, g, req.XML); err != nil {
					return byHookFailure(ag.Config(), req, fmt.Sprintf(
						"it needs inspection (policy %q) and its interfaces cannot be wired to the intercept path in its XML: %v", g.PolicyName(), err))
				}
			}
		}
		if err != nil {
			return Answer{Verdict: Refuse, Message: fmt.Sprintf(
				"vsagent: refusing %s of guest %s, which needs inspection (policy %q): %v", req.Op, req.Domain, g.PolicyName(), err)}
		}
		return Answer{Verdict: Allow, XML: rewritten}
	}
}

// byHookFailure answers for a guest the agent cannot serve as it should
// (why says what went wrong): refused when hook_failure is "closed", let
// through with a warning the hook logs when it is "open".
func byHookFailure(cfg *config.Config, req Request, why string) Answer {
	if cfg.Agent.HookFailure == "open" {
		return Answer{Verdict: Allow, Message: fmt.Sprintf(
			"vsagent: guest %s proceeds to %s although %s, because hook_failure is \"open\"", req.Domain, req.Op, why)}
	}
	return Answer{Verdict: Refuse, Message: fmt.Sprintf(
		"vsagent: refusing %s of guest %s: %s; hook_failure is \"closed\"", req.Op, req.Domain, why)}
}
