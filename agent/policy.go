package agent

import (
	"fmt"
	"path"
	"slices"

	"github.com/vsagent/vsagent/internal/config"
)

// resolution says which policy governs a guest and why; the "why" is what
// `vsactl explain` and the logs show an operator.
type resolution struct {
	Policy *config.Policy
	Reason string
	// Err is set when the guest asks for inspection that cannot be given
	// (a binding that names an unknown policy): such a guest is gated,
	// never let through uninspected.
	Err error
}

// resolvePolicy applies the documented order: the guest's metadata binding
// first, then the first policy in file order whose domain globs match.
func resolvePolicy(cfg *config.Config, name, boundPolicy string) resolution {
	if boundPolicy != "" {
		if p, ok := cfg.Policy(boundPolicy); ok {
			return resolution{Policy: p, Reason: fmt.Sprintf("metadata binding names policy %q", boundPolicy)}
		}
		return resolution{
			Reason: fmt.Sprintf("metadata binding names policy %q", boundPolicy),
			Err:    fmt.Errorf("%w: %q (bound in the guest's metadata)", ErrUnknownPolicy, boundPolicy),
		}
	}
	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		for _, glob := range p.Match.Domains {
			if ok, _ := path.Match(glob, name); ok {
				return resolution{Policy: p, Reason: fmt.Sprintf("domain name matches %q of policy %q", glob, p.Name)}
			}
		}
	}
	return resolution{Reason: "no binding and no policy's domain globs match"}
}

// chainAppliances lists, in first-use order and without repetition, every
// appliance that any of the policy's chains needs on this host.
func chainAppliances(p *config.Policy) []string {
	var out []string
	addAll := func(chain []string) {
		for _, a := range chain {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	addAll(p.Chain)
	for _, c := range p.Classifiers {
		addAll(c.Chain)
	}
	return out
}
