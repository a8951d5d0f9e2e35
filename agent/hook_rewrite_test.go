package agent

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/hookapi"
	"github.com/vsagent/vsagent/sourceroute"
)

// rewriteAgent is an agent whose DM diverts with the backend a host builds
// for backend name, on the test driver; nothing runs, the hook handler is
// called directly.
func rewriteAgent(t *testing.T, backend, hookFailure string, withLibvirt bool) *Agent {
	t.Helper()
	h := newHarness(t)
	cfg := h.config(`
[agent]
hook_failure = "` + hookFailure + `"

[intercept]
backend = "` + backend + `"

[[appliance]]
name = "fw"
template = "appliance.xml"

[[policy]]
name = "web"
chain = ["fw"]
[policy.match]
domains = ["web-*"]
`)
	deps := intercept.Deps{Logger: quietLogger()}
	if withLibvirt {
		deps.Domains = h.conn
	}
	b, err := intercept.ForHost(backend, deps)
	if err != nil {
		t.Fatal(err)
	}
	dm, err := NewDistributionManager(DMConfig{
		Config: cfg, HostID: "test-host", Backend: b, RedirectPort: "vsa-dm0", InterceptPort: "vsa-dm0-in",
		Open:   func(name string) (sourceroute.Port, error) { return idlePort(name), nil },
		Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return New(h.hv, cfg, Options{Logger: quietLogger(), Dataplane: dm})
}

// idlePort is a DM port that nothing ever arrives on: the engine opens its
// intercept port when it is built, and these tests never run it.
type idlePort string

func (p idlePort) Name() string { return string(p) }
func (p idlePort) ReadBatch(ctx context.Context, _ [][]byte) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}
func (p idlePort) Release()                                  {}
func (p idlePort) WriteBatch(heads, _ [][]byte) (int, error) { return len(heads), nil }

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestHookRewriteMigrateRestore asks the agent, through the hook handler,
// about incoming guests at migrate and restore begin: with macvtap diverting
// direct interfaces, a guest that needs inspection gets its XML back wired
// to the DM's port (golden file); everything else keeps its XML.
func TestHookRewriteMigrateRestore(t *testing.T) {
	in := readTestdata(t, "hook-restore-direct.xml")
	rewired := readTestdata(t, "hook-restore-direct.golden.xml")
	unbound := strings.ReplaceAll(strings.Replace(in, `<vsagent:binding xmlns:vsagent="https://vsagent.dev/xmlns/binding/1" policy="web"/>`, "", 1), "web-1", "db-1")
	tapsOnly := strings.Replace(strings.Replace(in, `<interface type='direct'>`, `<interface type='bridge'>`, 1), `<source dev='vp0' mode='bridge'/>`, `<source bridge='br0'/>`, 1)
	for _, tc := range []struct {
		name, backend string
		withLibvirt   bool
		op, domain    string
		doc           string
		wantXML       string
	}{
		{name: "macvtap, migrate", backend: intercept.BackendMacvtap, withLibvirt: true, op: hookapi.OpMigrate, domain: "web-1", doc: in, wantXML: rewired},
		{name: "macvtap, restore", backend: intercept.BackendMacvtap, withLibvirt: true, op: hookapi.OpRestore, domain: "web-1", doc: in, wantXML: rewired},
		{name: "tc-redirect dispatching direct to macvtap", backend: intercept.BackendTCRedirect, withLibvirt: true, op: hookapi.OpRestore, domain: "web-1", doc: in, wantXML: rewired},
		{name: "already wired", backend: intercept.BackendMacvtap, withLibvirt: true, op: hookapi.OpMigrate, domain: "web-1", doc: rewired},
		{name: "tc-redirect without libvirt diverts no direct interface", backend: intercept.BackendTCRedirect, op: hookapi.OpMigrate, domain: "web-1", doc: in},
		{name: "no inspection needed", backend: intercept.BackendMacvtap, withLibvirt: true, op: hookapi.OpRestore, domain: "db-1", doc: unbound},
		{name: "taps only", backend: intercept.BackendMacvtap, withLibvirt: true, op: hookapi.OpRestore, domain: "web-1", doc: tapsOnly},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ag := rewriteAgent(t, tc.backend, "closed", tc.withLibvirt)
			ans := hookapi.NewHandler(ag)(context.Background(), hookapi.Request{Domain: tc.domain, Op: tc.op, SubOp: "begin", XML: tc.doc})
			if ans.Verdict != hookapi.Allow || ans.Message != "" {
				t.Fatalf("answer %+v, want allow", ans)
			}
			if d := cmp.Diff(tc.wantXML, ans.XML); d != "" {
				t.Errorf("answer XML (-want +got):\n%s", d)
			}
			if got := hasEventFor(ag, EventHookRewired, tc.domain); got != (tc.wantXML != "") {
				t.Errorf("event %s: %v, want %v", EventHookRewired, got, tc.wantXML != "")
			}
		})
	}
}

// TestHookRewriteFailure: an incoming XML whose interfaces cannot be wired
// (here a record that cannot be read) refuses the migration or restore when
// hook_failure is "closed", and lets it proceed unchanged, with a warning,
// when it is "open".
func TestHookRewriteFailure(t *testing.T) {
	in := strings.Replace(readTestdata(t, "hook-restore-direct.xml"), "</metadata>",
		`<i:intercept xmlns:i="`+intercept.Namespace+`"><i:diverted mac="52:54:00:83:00:02">not an interface</i:diverted></i:intercept></metadata>`, 1)
	for _, tc := range []struct {
		failure string
		want    hookapi.Verdict
		msg     string
	}{
		{failure: "closed", want: hookapi.Refuse, msg: `vsagent: refusing migrate of guest web-1: it needs inspection (policy "web") and its interfaces cannot be wired to the intercept path in its XML: rewire web-1: direct interface 52:54:00:83:00:02: unreadable intercept record`},
		{failure: "open", want: hookapi.Allow, msg: `vsagent: guest web-1 proceeds to migrate although it needs inspection (policy "web") and its interfaces cannot be wired`},
	} {
		t.Run(tc.failure, func(t *testing.T) {
			ag := rewriteAgent(t, intercept.BackendMacvtap, tc.failure, true)
			ans := hookapi.NewHandler(ag)(context.Background(), hookapi.Request{Domain: "web-1", Op: hookapi.OpMigrate, SubOp: "begin", XML: in})
			if ans.Verdict != tc.want || !strings.HasPrefix(ans.Message, tc.msg) || ans.XML != "" {
				t.Errorf("answer %+v, want %s with a message starting %q and no XML", ans, tc.want, tc.msg)
			}
		})
	}
}
