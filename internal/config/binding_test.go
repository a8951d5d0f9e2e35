package config

import (
	"encoding/xml"
	"slices"
	"strings"
	"testing"
)

func TestParseBinding(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "", want: ""},
		{in: "   ", want: ""},
		{in: `<binding policy="web"/>`, want: "web"},
		{in: `<vsagent:binding xmlns:vsagent="https://vsagent.dev/xmlns/binding/1" policy=" web "/>`, want: "web"},
		{in: `<binding xmlns="https://vsagent.dev/xmlns/binding/1" policy="db"></binding>`, want: "db"},
		{in: `<binding/>`, want: ""},
		{in: `<binding policy="web"`, bad: true},
		{in: `not xml`, bad: true},
	}
	for _, tt := range tests {
		got, err := ParseBinding(tt.in)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("ParseBinding(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

// FuzzParseBinding checks that any policy name written the way libvirt
// stores it reads back, and that no input panics.
func FuzzParseBinding(f *testing.F) {
	for _, s := range []string{"web", " db ", "", "a&b", `"q"`, "<x>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, policy string) {
		var b struct {
			XMLName xml.Name `xml:"binding"`
			Policy  string   `xml:"policy,attr"`
		}
		b.Policy = policy
		raw, err := xml.Marshal(b)
		if err != nil {
			return
		}
		got, err := ParseBinding(string(raw))
		if err != nil {
			// Invalid XML characters are replaced on encoding, not
			// rejected; only those may fail to read back.
			if isXMLText(policy) {
				t.Fatalf("ParseBinding(%q): %v", raw, err)
			}
			return
		}
		if isXMLText(policy) && got != strings.TrimSpace(policy) {
			t.Fatalf("ParseBinding(%q) = %q, want %q", raw, got, strings.TrimSpace(policy))
		}
		ParseBinding(policy) // arbitrary input: must not panic
	})
}

func isXMLText(s string) bool {
	return !slices.ContainsFunc([]rune(s), func(r rune) bool {
		return r == 0xFFFD || r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r >= 0xD800 && r <= 0xDFFF || r == 0xFFFE || r == 0xFFFF
	})
}

func TestResolveOrder(t *testing.T) {
	cfg := &Config{Policies: []Policy{
		{Name: "first", Match: Match{Domains: []string{"web-*"}}},
		{Name: "second", Match: Match{Domains: []string{"web-1", "db-*"}}},
	}}
	tests := []struct {
		name, domain, bound, policy, glob string
		unknown                           bool
	}{
		{name: "first glob in file order wins", domain: "web-1", policy: "first", glob: "web-*"},
		{name: "later policy by glob", domain: "db-7", policy: "second", glob: "db-*"},
		{name: "binding beats globs", domain: "web-1", bound: "second", policy: "second"},
		{name: "binding to an unknown policy holds", domain: "web-1", bound: "gone", unknown: true},
		{name: "nothing matches", domain: "mail-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := cfg.Resolve(tt.domain, tt.bound)
			got := ""
			if r.Policy != nil {
				got = r.Policy.Name
			}
			if got != tt.policy || r.Glob != tt.glob || (r.Err != nil) != tt.unknown || r.Reason == "" {
				t.Errorf("Resolve(%q, %q) = %+v; want policy %q glob %q unknown %v", tt.domain, tt.bound, r, tt.policy, tt.glob, tt.unknown)
			}
		})
	}
}
