package config

import (
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
)

// ErrUnknownPolicy is returned when a guest's metadata binding names a
// policy the configuration lacks.
var ErrUnknownPolicy = errors.New("unknown policy")

// ParseBinding reads a guest's metadata binding, `<binding policy="NAME"/>`,
// as libvirt returns it (with or without the namespace declaration and
// prefix). An empty string means no binding.
func ParseBinding(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil
	}
	var b struct {
		XMLName xml.Name `xml:"binding"`
		Policy  string   `xml:"policy,attr"`
	}
	if err := xml.NewDecoder(strings.NewReader(s)).Decode(&b); err != nil {
		return "", fmt.Errorf("decode policy binding %q: %w", s, err)
	}
	return strings.TrimSpace(b.Policy), nil
}

// Resolution says which policy governs a domain and why.
type Resolution struct {
	Policy *Policy // nil: no policy applies (or Err is set)
	Bound  string  // the policy name the metadata binding gave, if any
	Glob   string  // the glob that matched, when resolved by name
	Reason string
	// Err is set when inspection is asked for but cannot be given (a
	// binding naming an unknown policy): such a guest must be held.
	Err error
}

// Resolve applies the documented order: the domain's metadata binding
// (bound, as ParseBinding returned it) first, then the first policy in file
// order whose domain globs match name.
func (c *Config) Resolve(name, bound string) Resolution {
	if bound != "" {
		r := Resolution{Bound: bound, Reason: fmt.Sprintf("metadata binding names policy %q", bound)}
		if p, ok := c.Policy(bound); ok {
			r.Policy = p
		} else {
			r.Err = fmt.Errorf("%w: %q (bound in the guest's metadata)", ErrUnknownPolicy, bound)
		}
		return r
	}
	for i := range c.Policies {
		p := &c.Policies[i]
		if g := p.MatchingGlob(name); g != "" {
			return Resolution{Policy: p, Glob: g, Reason: fmt.Sprintf("domain name matches %q of policy %q", g, p.Name)}
		}
	}
	return Resolution{Reason: "no binding and no policy's domain globs match"}
}
