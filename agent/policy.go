package agent

import (
	"slices"

	"github.com/vsagent/vsagent/internal/config"
)

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
