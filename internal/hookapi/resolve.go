package hookapi

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/internal/config"
)

// BindingNamespace is the XML namespace of a guest's policy binding in its
// <metadata>. It equals hypervisor.BindingNamespace; the hook client does
// not link libvirt, so it cannot import that package.
const BindingNamespace = "https://vsagent.dev/xmlns/binding/1"

// Guest is what a hook request says about the guest: its parsed XML and
// which policy governs it.
type Guest struct {
	Domain     *libvirtxml.Domain
	Resolution config.Resolution
}

// NeedsInspection reports whether the guest must not run uninspected: it
// has a policy, or asked for one that cannot be given.
func (g Guest) NeedsInspection() bool {
	return g.Resolution.Policy != nil || g.Resolution.Err != nil
}

// PolicyName names the policy for messages, or what was asked for.
func (g Guest) PolicyName() string {
	if p := g.Resolution.Policy; p != nil {
		return p.Name
	}
	return g.Resolution.Bound
}

// ResolveGuest reads the request's domain XML and resolves its policy as
// the agent's reconcile does: metadata binding first, then name globs. An
// unreadable binding is an error in the resolution (the guest asked for
// something), not in the XML.
func ResolveGuest(cfg *config.Config, req Request) (Guest, error) {
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(req.XML); err != nil {
		return Guest{}, fmt.Errorf("%w: domain XML of %s: %w", ErrBadRequest, req.Domain, err)
	}
	name := dom.Name
	if name == "" {
		name = req.Domain
	}
	var res config.Resolution
	bound, err := BindingOf(&dom)
	if err != nil {
		res = config.Resolution{Reason: "unreadable metadata binding", Err: err}
	} else {
		res = cfg.Resolve(name, bound)
	}
	return Guest{Domain: &dom, Resolution: res}, nil
}

// BindingOf returns the policy named by the domain's metadata binding, or
// "" when it has none.
func BindingOf(dom *libvirtxml.Domain) (string, error) {
	if dom.Metadata == nil || strings.TrimSpace(dom.Metadata.XML) == "" {
		return "", nil
	}
	dec := xml.NewDecoder(strings.NewReader(dom.Metadata.XML))
	depth := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("decode domain metadata: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 1 && t.Name.Space == BindingNamespace && t.Name.Local == "binding" {
				for _, a := range t.Attr {
					if a.Name.Local == "policy" && a.Name.Space == "" {
						return strings.TrimSpace(a.Value), nil
					}
				}
				return "", nil
			}
		case xml.EndElement:
			depth--
		}
	}
}

// Fallback is the answer when the agent did not give one (cause says why):
// a guest without a policy proceeds; one that needs inspection is refused
// when hook_failure is "closed" and let through when it is "open". The
// Message of a fail-open answer is meant for the journal.
func Fallback(cfg *config.Config, req Request, cause error) Answer {
	if !Forwarded(req.Op, req.SubOp) {
		return Answer{Verdict: Allow}
	}
	g, err := ResolveGuest(cfg, req)
	if err != nil {
		return failAnswer(cfg, req, fmt.Sprintf("its XML cannot be read (%v)", err), cause)
	}
	if !g.NeedsInspection() {
		return Answer{Verdict: Allow}
	}
	return failAnswer(cfg, req, fmt.Sprintf("it needs inspection (policy %q: %s)", g.PolicyName(), g.Resolution.Reason), cause)
}

func failAnswer(cfg *config.Config, req Request, why string, cause error) Answer {
	if cfg.Agent.HookFailure == "open" {
		return Answer{Verdict: Allow, Message: fmt.Sprintf(
			"vsagent: guest %s proceeds UNINSPECTED to %s: %s but the agent did not answer (%v), and hook_failure is \"open\"",
			req.Domain, req.Op, why, cause)}
	}
	return Answer{Verdict: Refuse, Message: fmt.Sprintf(
		"vsagent: refusing %s of guest %s: %s and the agent did not answer (%v); hook_failure is \"closed\"",
		req.Op, req.Domain, why, cause)}
}
