package agent

import (
	"context"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
	"github.com/vsagent/vsagent/sourceroute"
)

// TestSilentInstanceFoundByProbesWithoutTrafficInNamespaces: an instance
// that stops answering while no guest sends anything — hung, or dropping
// everything without a notice — is found by the distribution manager's
// health probes alone, taken out of the flows' choices at once (new flows
// all go to its twin), recreated by the next poll, and trusted again once
// a probe went through it.
func TestSilentInstanceFoundByProbesWithoutTrafficInNamespaces(t *testing.T) {
	const plain = "[output]\nstats_interval = \"0s\"\n"
	for _, tt := range []struct {
		name    string
		silence func(t *testing.T, tl *twinLab)
	}{
		{"hung", func(t *testing.T, tl *twinLab) {
			if err := tl.runs["vsa-ips-2"].Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = tl.runs["vsa-ips-2"].Signal(syscall.SIGCONT) })
		}},
		{"drops everything without notice", func(t *testing.T, tl *twinLab) {
			if err := tl.runs["vsa-ips-2"].Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			tl.runs["vsa-ips-2"] = vsafiltertest.Start(t, context.Background(), tl.applNS["vsa-ips-2"], tl.bin, "vsa-ips-2-deny", "eth0",
				plain+"[filter]\ndefault = \"deny\"\nnotify = false\nmalformed = \"deny\"\n")
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tl := newTwinLab(t)
			l := tl.dpLab
			tl.waitProbed("vsa-ips-2")
			before := l.dm.Engine().Counters().Instances["vsa-ips-2"]
			stopped := time.Now()
			tt.silence(t, tl)
			uuid := l.byName("vsa-ips-2").UUID
			l.eventually("an appliance-silent event for vsa-ips-2 from its probes", func() bool {
				return l.hasEvent(EventApplianceSilent, "vsa-ips-2")
			})
			detected := time.Since(stopped)
			l.eventually("vsa-ips-2 out of the flows' choices", func() bool { return l.dm.markedUnhealthy(uuid) })
			// Measured for docs/performance.md, not asserted.
			t.Logf("silent (no traffic) to detected by probes: %s; to out of the flows' choices: %s", detected, time.Since(stopped))
			c := l.dm.Engine().Counters().Instances
			if got := c["vsa-ips-2"]; got.Sent != before.Sent || got.ProbesMissed < 3 {
				t.Errorf("vsa-ips-2 got %d data frames and missed %d probes; want no traffic and at least probe_misses (3) misses",
					got.Sent-before.Sent, got.ProbesMissed)
			}
			if c["vsa-ips-1"].ProbeMissStreak != 0 || l.hasEvent(EventApplianceSilent, "vsa-ips-1") {
				t.Errorf("vsa-ips-1, which answers, counts as missing probes: %+v", c["vsa-ips-1"])
			}

			sent, got := sendRound(t, l, tl.web1, tl.web2, 7400, flows, "after probe detection")
			if !slices.Equal(sent, got) {
				t.Fatalf("with vsa-ips-2 silent: sent %q, received %q", sent, got)
			}
			t.Logf("silent to %d new flows delivered through the twin: %s", flows, time.Since(stopped))
			if spread := firstHops(l); spread["vsa-ips-2"] != 0 {
				t.Fatalf("flows by instance %v: none may pass the silent vsa-ips-2", spread)
			}

			// The next poll recreates it; its appliance starts afresh in the
			// new domain, probes go through, and the poll after trusts it.
			tl.step(50)
			if !l.hasEvent(EventApplianceRecreated, "vsa-ips-2") {
				evs, _ := l.agent.Events(0)
				t.Fatalf("no appliance-recreated event for vsa-ips-2: %+v", evs)
			}
			if err := tl.runs["vsa-ips-2"].Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			tl.runs["vsa-ips-2"] = vsafiltertest.Start(t, context.Background(), tl.applNS["vsa-ips-2"], tl.bin, "vsa-ips-2-new", "eth0", plain)
			l.eventually("agent settled", l.agent.Settled)
			tl.waitProbed("vsa-ips-2")
			tl.step(50)
			sent, got = sendRound(t, l, tl.web1, tl.web2, 7401, flows, "after the recovery")
			if !slices.Equal(sent, got) {
				t.Fatalf("after the recovery: sent %q, received %q", sent, got)
			}
			if firstHops(l)["vsa-ips-2"] == 0 {
				t.Fatalf("flows by instance %v after the recovery: vsa-ips-2 gets none", firstHops(l))
			}
		})
	}
}

// TestCrashedOnlyInstanceMeetsOnFailureInNamespaces: the only instance of
// an appliance crashes mid-stream (its domain destroyed, its vsafilter
// killed). The guests keep running, inspected; the flow's frames meet
// on_failure — block drops and counts them, bypass delivers them without
// the appliance and says so — until the autoscaler has recreated the
// instance from its template; then the flow passes the appliance again.
func TestCrashedOnlyInstanceMeetsOnFailureInNamespaces(t *testing.T) {
	for _, onFailure := range []string{"block", "bypass"} {
		t.Run(onFailure, func(t *testing.T) {
			ol := newOnlyInstanceLab(t, onFailure)
			l, web1, web2, vsa, scaler := ol.dpLab, ol.web1, ol.web2, ol.runs, ol.scaler
			rx := udpListen(t, web2, 7500)
			tx := udpDial(t, web1, web2, 7500)
			send := func(msg string) []string {
				t.Helper()
				if _, err := tx.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				return receiveAll(rx, 1, 2*time.Second)
			}
			if got := send("before the crash"); len(got) != 1 {
				t.Fatalf("before the crash: received %q", got)
			}

			ips := l.byName("vsa-ips-1")
			if err := vsa["ips"].Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			crashed := time.Now()
			if err := l.conn.Destroy(context.Background(), ips.UUID); err != nil {
				t.Fatal(err)
			}
			l.eventually("vsa-ips-1 out of the DM's rules", func() bool {
				_, ok := l.dm.Engine().Counters().Instances["vsa-ips-1"]
				return !ok && l.agent.Settled()
			})
			t.Logf("crash to on_failure in force (stop event → reconcile → DM update): %s", time.Since(crashed))
			for _, g := range []string{"web-1", "web-2"} {
				if st := l.guestState(g); st != GuestInspected {
					t.Errorf("%s is %s after its appliance crashed, want still inspected (not gated)", g, st)
				}
				if d := l.byName(g); d.State != hypervisor.StateRunning {
					t.Errorf("%s is %s after its appliance crashed, want running", g, d.State)
				}
			}
			before := l.dm.Engine().Counters()
			ol.checkOnFailure(t, before, send("while ips is down"), "while ips is down")

			// The autoscaler recreates it from its template; its appliance
			// starts again; a probe goes through; the next poll trusts it.
			recreating := time.Now()
			if err := scaler.Step(context.Background()); err != nil {
				t.Fatal(err)
			}
			if !l.hasEvent(EventApplianceFailed, "vsa-ips-1") || !l.hasEvent(EventApplianceRecreated, "vsa-ips-1") {
				evs, _ := l.agent.Events(0)
				t.Fatalf("no appliance-failed and appliance-recreated events for vsa-ips-1: %+v", evs)
			}
			if again := l.byName("vsa-ips-1"); again.UUID == ips.UUID || again.State != hypervisor.StateRunning {
				t.Fatalf("vsa-ips-1 after the poll: %+v, want a new running domain", again)
			}
			l.startAppliances(t, nil)
			l.eventually("agent settled", l.agent.Settled)
			(&twinLab{dpLab: l}).waitProbed("vsa-ips-1")
			if err := scaler.Step(context.Background()); err != nil {
				t.Fatal(err)
			}
			l.eventually("agent settled", l.agent.Settled)
			t.Logf("recreating poll to the instance trusted again: %s", time.Since(recreating))
			before = l.dm.Engine().Counters()
			if got := send("after the recovery"); !slices.Equal(got, []string{"after the recovery"}) {
				t.Fatalf("after the recovery: received %q; DM drops %v", got, l.dm.Engine().Counters().Drops)
			}
			if sent := l.dm.Engine().Counters().Instances["vsa-ips-1"].Sent; sent <= before.Instances["vsa-ips-1"].Sent {
				t.Errorf("after the recovery the flow's frame did not pass vsa-ips-1 (sent %d before, %d after)",
					before.Instances["vsa-ips-1"].Sent, sent)
			}
		})
	}
}

// onlyInstanceLab is a dpLab whose appliance ips has one instance, a
// vsafilter process, and the given on_failure; web-1 and web-2 use it.
type onlyInstanceLab struct {
	*dpLab
	onFailure  string
	web1, web2 *dpGuest
	runs       map[string]*vsafiltertest.Run // by appliance
	scaler     *Autoscaler
}

func newOnlyInstanceLab(t *testing.T, onFailure string) *onlyInstanceLab {
	l := newDPLab(t)
	l.host.AddBridge(t, "br0")
	ol := &onlyInstanceLab{dpLab: l, onFailure: onFailure}
	ol.web1 = l.addGuest(t, "web-1", "br0", "10.9.0.1", 1)
	ol.web2 = l.addGuest(t, "web-2", "br0", "10.9.0.2", 2)
	l.start(t, strings.Replace(twinConfig, "max_instances = 2", "max_instances = 1\non_failure = \""+onFailure+"\"", 1))
	l.defineGuest(t, "web-1", "br0")
	l.defineGuest(t, "web-2", "br0")
	l.eventually("web guests inspected", func() bool {
		return l.guestState("web-1") == GuestInspected && l.guestState("web-2") == GuestInspected
	})
	ol.runs = l.startAppliances(t, nil)
	ol.scaler = NewAutoscaler(l.agent, AutoscalerOptions{Hypervisor: l.conn, Sampler: &scriptedLoad{cpu: 50}, Drainer: l.dm, Health: l.dm})
	if out, err := ol.web1.ns.Exec(context.Background(), "ping", "-c", "1", "-W", "5", ol.web2.ip); err != nil {
		t.Fatalf("ping through the chain: %v\n%s", err, out)
	}
	return ol
}

// checkOnFailure checks what became of one datagram (msg) sent while ips
// had no healthy instance: dropped and counted with block, delivered
// without ips and reported with bypass.
func (ol *onlyInstanceLab) checkOnFailure(t *testing.T, before sourceroute.Counters, got []string, msg string) {
	t.Helper()
	l := ol.dpLab
	c := l.dm.Engine().Counters()
	if sent := c.Instances["vsa-ips-1"].Sent; sent != before.Instances["vsa-ips-1"].Sent {
		t.Errorf("the DM sent %d more frames to the unhealthy vsa-ips-1", sent-before.Instances["vsa-ips-1"].Sent)
	}
	switch ol.onFailure {
	case "block":
		if len(got) != 0 {
			t.Fatalf("with on_failure = block a datagram arrived: %q", got)
		}
		if c.Drops["chain_not_ready"] <= before.Drops["chain_not_ready"] {
			t.Errorf("drops %v (before %v): the blocked datagram is not counted as chain_not_ready", c.Drops, before.Drops)
		}
		l.eventually("a fail-closed event naming ips", func() bool { return l.hasEvent(EventFailClosed, "ips") })
	case "bypass":
		if !slices.Equal(got, []string{msg}) {
			t.Fatalf("with on_failure = bypass: received %q; DM drops %v", got, c.Drops)
		}
		l.eventually("a bypass event", func() bool { return l.hasEvent(EventBypass, "ips") })
		if c.Bypassed["ips"] == 0 {
			t.Errorf("bypassed flows %v, want ips counted", c.Bypassed)
		}
	}
}
