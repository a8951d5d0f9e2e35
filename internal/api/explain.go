package api

import (
	"fmt"
	"slices"

	"github.com/vsagent/vsagent/internal/config"
)

// Explain resolves which policy of cfg governs the domain called name, in
// the agent's documented order: the policy its metadata binding names
// (bound, empty when it has none), else the first policy in file order with
// a domain glob matching the name, else none. bindErr reports a binding
// element that exists but cannot be read; like a binding to an unknown
// policy, it leaves the guest gated rather than uninspected.
//
// Only the configuration is consulted: the caller looks up the binding and
// fills in UUID, Appliance and Agent.
func Explain(cfg *config.Config, name, bound string, bindErr error) Explanation {
	e := Explanation{Domain: name, Binding: bound, Matched: MatchedNone}
	chosen := -1
	switch {
	case bindErr != nil:
		e.Matched = MatchedBinding
		e.BindingError = bindErr.Error()
		e.Reason = "the metadata binding cannot be read"
		e.Error = "inspection is asked for but the binding is unreadable: the guest stays gated until it is fixed"
	case bound != "":
		e.Matched = MatchedBinding
		e.Reason = fmt.Sprintf("metadata binding names policy %q; a binding takes precedence over domain globs", bound)
		if i := slices.IndexFunc(cfg.Policies, func(p config.Policy) bool { return p.Name == bound }); i >= 0 {
			chosen = i
		} else {
			e.Error = fmt.Sprintf("the binding names policy %q, which the configuration lacks: the guest stays gated until the policy exists or the binding changes", bound)
		}
	}

	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		c := Candidate{Policy: p.Name, Position: p.Position.String(), Glob: p.MatchingGlob(name)}
		c.Matches = c.Glob != ""
		if c.Matches && chosen < 0 && e.Matched == MatchedNone {
			chosen = i
			e.Matched = MatchedGlob
			e.Glob = c.Glob
			e.Reason = fmt.Sprintf("no metadata binding; the domain name matches glob %q of policy %q, the first matching policy in file order", c.Glob, p.Name)
		}
		c.Chosen = i == chosen
		e.Candidates = append(e.Candidates, c)
	}
	if e.Matched == MatchedNone {
		e.Reason = "no metadata binding and no policy's domain globs match: the guest is unmanaged and its traffic is not inspected"
	}
	e.Candidates = nonNil(e.Candidates)
	e.Default = []ChainStep{}
	e.Classifiers = []Classified{}
	if chosen < 0 {
		return e
	}

	p := &cfg.Policies[chosen]
	e.Policy = p.Name
	e.Symmetric = p.Symmetric
	e.OnTimeout = p.OnTimeout
	e.Default = chainSteps(cfg, p.Chain)
	for i, c := range p.Classifiers {
		e.Classifiers = append(e.Classifiers, Classified{
			Index:     i + 1,
			Direction: c.Direction,
			Protocol:  c.Protocol,
			Ports:     slices.Clone(c.Ports),
			CIDRs:     slices.Clone(c.CIDRs),
			Chain:     chainSteps(cfg, c.Chain),
		})
	}
	return e
}

func chainSteps(cfg *config.Config, chain []string) []ChainStep {
	out := make([]ChainStep, 0, len(chain))
	for _, name := range chain {
		step := ChainStep{Appliance: name, Kind: "unknown", OnFailure: config.FailureBlock}
		// A validated configuration never names an unknown appliance; if
		// one ever does, block is what the dataplane does, so say that.
		if a, ok := cfg.Appliance(name); ok {
			step.Kind, step.OnFailure = a.Kind, a.OnFailure
		}
		out = append(out, step)
	}
	return out
}
