package api_test

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/config"
)

func explainConfig(t testing.TB) *config.Config {
	t.Helper()
	cfg, err := config.Load("testdata/explain/vsagent.toml")
	if err != nil {
		t.Fatalf("load test configuration: %v", err)
	}
	return cfg
}

func TestExplainGlobMatchInFull(t *testing.T) {
	cfg := explainConfig(t)
	got := api.Explain(cfg, "web-1", "", nil)
	fw := api.ChainStep{Appliance: "fw", Kind: "header", OnFailure: "block"}
	ips := api.ChainStep{Appliance: "ips", Kind: "wire", OnFailure: "bypass"}
	want := api.Explanation{
		Domain:  "web-1",
		Matched: api.MatchedGlob,
		Policy:  "web",
		Glob:    "web-*",
		Reason:  `no metadata binding; the domain name matches glob "web-*" of policy "web", the first matching policy in file order`,
		Candidates: []api.Candidate{
			{Policy: "web", Position: "testdata/explain/vsagent.toml:20", Glob: "web-*", Matches: true, Chosen: true},
			{Policy: "catch-all", Position: "testdata/explain/vsagent.toml:39", Glob: "*-1", Matches: true},
			{Policy: "db", Position: "testdata/explain/vsagent.toml:49"},
		},
		Default: []api.ChainStep{ips, fw},
		Classifiers: []api.Classified{
			{Index: 1, Direction: "egress", Protocol: "udp", Ports: []string{"53"}, Chain: []api.ChainStep{fw}},
			{Index: 2, Direction: "both", Protocol: "tcp", Ports: []string{"80", "8000-8999"}, CIDRs: []string{"10.0.0.0/8"}, Chain: []api.ChainStep{}},
		},
		Symmetric: true,
		OnTimeout: "alert",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Explain(web-1) mismatch (-want +got):\n%s", diff)
	}
}

// outcome is the part of an explanation that decides what happens to the
// guest.
type outcome struct {
	Matched, Policy, Glob string
	Chosen                []string
	HasError              bool
	Default               []string
	Symmetric             bool
}

func outcomeOf(e api.Explanation) outcome {
	o := outcome{Matched: e.Matched, Policy: e.Policy, Glob: e.Glob, HasError: e.Error != "", Symmetric: e.Symmetric}
	for _, c := range e.Candidates {
		if c.Chosen {
			o.Chosen = append(o.Chosen, c.Policy)
		}
	}
	for _, s := range e.Default {
		o.Default = append(o.Default, s.Appliance)
	}
	return o
}

func TestExplainResolutionOrder(t *testing.T) {
	cfg := explainConfig(t)
	tests := []struct {
		name, domain, bound string
		bindErr             error
		want                outcome
	}{
		{name: "second glob of the first policy", domain: "www-2",
			want: outcome{Matched: "glob", Policy: "web", Glob: "www-*", Chosen: []string{"web"}, Default: []string{"ips", "fw"}, Symmetric: true}},
		{name: "a later policy when the first does not match", domain: "app-1",
			want: outcome{Matched: "glob", Policy: "catch-all", Glob: "*-1", Chosen: []string{"catch-all"}, Default: []string{"fw"}}},
		{name: "binding to a policy without globs", domain: "db-7", bound: "db",
			want: outcome{Matched: "binding", Policy: "db", Chosen: []string{"db"}, Default: []string{"ips"}, Symmetric: true}},
		{name: "binding beats a matching glob", domain: "web-1", bound: "db",
			want: outcome{Matched: "binding", Policy: "db", Chosen: []string{"db"}, Default: []string{"ips"}, Symmetric: true}},
		{name: "binding to an unknown policy gates", domain: "web-1", bound: "nonesuch",
			want: outcome{Matched: "binding", HasError: true}},
		{name: "unreadable binding gates", domain: "web-1", bindErr: errors.New("decode policy binding: EOF"),
			want: outcome{Matched: "binding", HasError: true}},
		{name: "nothing matches", domain: "other",
			want: outcome{Matched: "none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := api.Explain(cfg, tt.domain, tt.bound, tt.bindErr)
			if diff := cmp.Diff(tt.want, outcomeOf(got)); diff != "" {
				t.Errorf("Explain(%q, bound %q) mismatch (-want +got):\n%s", tt.domain, tt.bound, diff)
			}
			if got.Reason == "" {
				t.Error("no reason given")
			}
			if got.Candidates == nil || got.Default == nil || got.Classifiers == nil {
				t.Error("nil lists would encode as null")
			}
		})
	}
}

func TestExplainWithoutPolicies(t *testing.T) {
	got := api.Explain(&config.Config{}, "web-1", "", nil)
	if got.Matched != api.MatchedNone || len(got.Candidates) != 0 {
		t.Errorf("got %+v, want no match and no candidates", got)
	}
}

// FuzzExplain checks Explain against the configuration's own matcher: the
// binding decides when there is one, else the first policy whose globs
// match, and exactly one candidate is chosen whenever a policy governs.
func FuzzExplain(f *testing.F) {
	cfg := explainConfig(f)
	for _, seed := range [][2]string{{"web-1", ""}, {"www-x", ""}, {"a-1", ""}, {"db-1", "db"}, {"x", "nonesuch"}, {"", ""}, {"[", "web"}} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, name, bound string) {
		e := api.Explain(cfg, name, bound, nil)
		var chosen []string
		for _, c := range e.Candidates {
			if c.Chosen {
				chosen = append(chosen, c.Policy)
			}
		}
		want := ""
		switch {
		case bound != "":
			if _, ok := cfg.Policy(bound); ok {
				want = bound
			} else if e.Error == "" {
				t.Fatalf("binding to unknown policy %q explained without an error", bound)
			}
		default:
			for i := range cfg.Policies {
				if cfg.Policies[i].MatchesDomain(name) {
					want = cfg.Policies[i].Name
					break
				}
			}
		}
		if e.Policy != want {
			t.Fatalf("Explain(%q, %q) chose %q, want %q", name, bound, e.Policy, want)
		}
		if want != "" && (len(chosen) != 1 || chosen[0] != want) {
			t.Fatalf("chosen candidates %v, want [%s]", chosen, want)
		}
		if want == "" && len(chosen) != 0 {
			t.Fatalf("no policy governs but candidates %v are chosen", chosen)
		}
	})
}
