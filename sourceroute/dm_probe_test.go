package sourceroute

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseProbe(t *testing.T) {
	good := make([]byte, probeFrameLen)
	BuildProbe(good, dmSelf, 7, 0xfeedface)
	edit := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	tests := []struct {
		name  string
		frame []byte
		want  Probe
		ok    bool
	}{
		{"built", good, Probe{From: dmSelf, Seq: 7, Tag: 0xfeedface}, true},
		{"unpadded", good[:probeInnerLen], Probe{From: dmSelf, Seq: 7, Tag: 0xfeedface}, true},
		{"truncated", good[:probeInnerLen-1], Probe{}, false},
		{"other EtherType", edit(func(b []byte) { b[13] = 0x01 }), Probe{}, false},
		{"VLAN tagged", edit(func(b []byte) { b[12], b[13] = 0x81, 0x00 }), Probe{}, false},
		{"src differs from dst", edit(func(b []byte) { b[11] ^= 1 }), Probe{}, false},
		{"group address", edit(func(b []byte) { b[0] |= 1; b[6] |= 1 }), Probe{}, false},
		{"wrong magic", edit(func(b []byte) { b[probeOffMagic] = 'V' }), Probe{}, false},
		{"other version", edit(func(b []byte) { b[probeOffSeq-1] = 2 }), Probe{}, false},
		{"sequence 0", edit(func(b []byte) { clear(b[probeOffSeq : probeOffSeq+8]) }), Probe{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseProbe(tt.frame)
			if ok != tt.ok || got != tt.want {
				t.Errorf("ParseProbe = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func FuzzParseProbe(f *testing.F) {
	good := make([]byte, probeFrameLen)
	BuildProbe(good, dmSelf, 1, 42)
	f.Add(good)
	f.Add(good[:probeInnerLen])
	f.Fuzz(func(t *testing.T, data []byte) {
		p, ok := ParseProbe(data)
		if !ok {
			return
		}
		if !isProbeCandidate(data) || p.Seq == 0 || !p.From.isUnicast() {
			t.Fatalf("accepted %+v from %x", p, data)
		}
		// What ParseProbe reads, BuildProbe writes the same way (the ECTP
		// words between are not checked: an appliance may not touch them,
		// but they identify nothing).
		buf := make([]byte, probeFrameLen)
		BuildProbe(buf, p.From, p.Seq, p.Tag)
		for _, r := range [][2]int{{0, EthernetHeaderLen}, {probeOffMagic, probeInnerLen}} {
			if !bytes.Equal(buf[r[0]:r[1]], data[r[0]:r[1]]) {
				t.Fatalf("rebuilt probe %x differs from %x", buf[:probeInnerLen], data[:probeInnerLen])
			}
		}
	})
}

// probeLab is a harness with one header appliance (ips) and one wire
// appliance (wf), probed every second with a 300 ms timeout.
func probeLab(t *testing.T) *dmHarness {
	h := newDMHarness(t, Config{ProbeInterval: time.Second, ProbeTimeout: 300 * time.Millisecond, ProbeMisses: 3})
	h.update(Snapshot{Appliances: []ApplianceRule{dmHeaderInst("ips", "ips-1", ipsMAC), dmWireInst("wf", "wf-1", wireM)}})
	return h
}

func (h *dmHarness) probeTick() { h.e.probeTick(h.e.state.Load(), h.e.mono()) }

func (h *dmHarness) probeCounters(inst string) InstanceCounters {
	c := h.e.Counters().Instances[inst]
	c.Appliance, c.Sent, c.SentBytes, c.Returned, c.ReturnedBytes, c.Notices, c.Timeouts = "", 0, 0, 0, 0, 0, 0
	return c
}

// forwardAt plays header appliance self on frames taken from its port.
func (h *dmHarness) forwardAt(port string, self MAC, frames [][]byte) {
	for _, fr := range frames {
		f, _ := h.e.codec.Parse(fr)
		if r := h.e.codec.Advance(f, self); r != OK {
			h.t.Fatalf("cannot forward %x: %v", fr, r)
		}
	}
	h.inject(port, frames...)
}

func TestProbesOfAHeaderAppliance(t *testing.T) {
	h := probeLab(t)
	h.probeTick()
	sent := h.sent("vsa-ips-1")
	if len(sent) != 1 {
		t.Fatalf("%d frames to ips-1 at the first tick, want one probe", len(sent))
	}
	v := h.view(sent[0])
	if diff := cmp.Diff(hdrView{Dst: ipsMAC, Src: dmSelf, Route: []MAC{ipsMAC, dmSelf}, Next: 0, Inner: v.Inner}, v); diff != "" {
		t.Errorf("probe header (-want +got):\n%s", diff)
	}
	f, _ := h.e.codec.Parse(sent[0])
	if p, ok := ParseProbe(f.Inner()); !ok || p.Seq != 1 || p.From != dmSelf {
		t.Fatalf("inner frame is not probe 1 of the DM: %+v %v", p, ok)
	}

	// The appliance forwards it 40 ms later: answered, timed, not delivered.
	h.clock.Advance(40 * time.Millisecond)
	h.sent("wf-1-in") // the wire appliance's probe: not answered in this test
	h.forwardAt("vsa-ips-1", ipsMAC, sent)
	h.quiet()
	if got, want := h.probeCounters("ips-1"), (InstanceCounters{ProbesSent: 1, ProbesAnswered: 1, ProbeRTT: 40 * time.Millisecond,
		ProbeRTTTotal: 40 * time.Millisecond}); got != want {
		t.Errorf("after one answer: %+v, want %+v", got, want)
	}
	if c := h.e.Counters(); c.Instances["ips-1"].Returned != 0 || len(c.Drops) != 0 {
		t.Errorf("a probe answer counted as data: returned %d, drops %v", c.Instances["ips-1"].Returned, c.Drops)
	}

	// No probe before the interval is over, one after.
	h.clock.Advance(500 * time.Millisecond)
	h.probeTick()
	if n := len(h.sent("vsa-ips-1")); n != 0 {
		t.Fatalf("%d probes within the interval", n)
	}
	// Three probes go unanswered: EventApplianceSilent once, at the third,
	// for ips-1; wf-1 never answered (a VM still booting): not silent.
	for i := range 4 {
		h.clock.Advance(time.Second)
		h.probeTick()
		if n := len(h.sent("vsa-ips-1")); n != 1 {
			t.Fatalf("miss %d: %d probes sent, want 1", i, n)
		}
		h.clock.Advance(301 * time.Millisecond)
		h.probeTick()
	}
	var silent []string
	for _, ev := range h.events() {
		if ev.Kind == EventApplianceSilent {
			silent = append(silent, ev.Instance)
		}
	}
	if !cmp.Equal(silent, []string{"ips-1"}) {
		t.Errorf("silent events for %v, want ips-1 once", silent)
	}
	if c := h.probeCounters("ips-1"); c.ProbesSent != 5 || c.ProbesMissed != 4 || c.ProbeMissStreak != 4 {
		t.Errorf("ips-1 after four misses: %+v", c)
	}
	if c := h.probeCounters("wf-1"); c.ProbesMissed != 5 || c.ProbeMissStreak != 0 {
		t.Errorf("wf-1, which never answered, after five misses: %+v; want no streak", c)
	}

	// A late answer does not count; the next one in time ends the streak.
	h.clock.Advance(time.Second)
	h.probeTick()
	late := h.sent("vsa-ips-1")
	h.clock.Advance(301 * time.Millisecond)
	h.probeTick() // judged missed
	h.forwardAt("vsa-ips-1", ipsMAC, late)
	if c := h.probeCounters("ips-1"); c.ProbesAnswered != 1 || c.ProbeMissStreak != 5 {
		t.Errorf("a late answer was counted: %+v", c)
	}
	h.clock.Advance(time.Second)
	h.probeTick()
	h.clock.Advance(10 * time.Millisecond)
	h.vsa("vsa-ips-1", ipsMAC)
	if c := h.probeCounters("ips-1"); c.ProbesAnswered != 2 || c.ProbeMissStreak != 0 || c.ProbeRTTTotal != 50*time.Millisecond {
		t.Errorf("after an answer in time: %+v", c)
	}
	h.sent("wf-1-in")
	h.quiet()
}

func TestProbeAnsweredByADropNotice(t *testing.T) {
	h := probeLab(t)
	h.probeTick()
	probe := h.sent("vsa-ips-1")[0]
	notice := make([]byte, noticeHeaderLen+MaxNoticedBytes)
	n, err := BuildDropNotice(notice, dmSelf, ipsMAC, NoticePolicyDeny, probe)
	if err != nil {
		t.Fatal(err)
	}
	h.inject("vsa-ips-1", notice[:n])
	if c := h.e.Counters(); c.Instances["ips-1"].ProbesAnswered != 1 || c.Instances["ips-1"].Notices != 0 || len(c.Drops) != 0 {
		t.Errorf("a notice of a probe: %+v, drops %v; want it answered and nothing else", c.Instances["ips-1"], c.Drops)
	}
	for _, ev := range h.events() {
		t.Errorf("event %v for a probe's drop notice", ev.Kind)
	}
}

func TestProbesOfAWireAppliance(t *testing.T) {
	h := probeLab(t)
	h.probeTick()
	h.sent("vsa-ips-1")
	in := h.sent("wf-1-in")
	if len(in) != 1 {
		t.Fatalf("%d frames into the wire appliance, want one probe", len(in))
	}
	if _, ok := ParseProbe(in[0]); !ok {
		t.Fatalf("the wire appliance got %x, not a bare probe", in[0])
	}
	h.clock.Advance(5 * time.Millisecond)
	h.inject("wf-1-out", in...)
	h.quiet()
	if c := h.probeCounters("wf-1"); c.ProbesAnswered != 1 || c.ProbeRTT != 5*time.Millisecond {
		t.Errorf("wire appliance after passing the probe: %+v", c)
	}
}

// A guest's own ECTP frame with the probe's layout is not the DM's probe:
// it is forwarded like any frame, never swallowed.
func TestGuestFrameLikeAProbeIsForwarded(t *testing.T) {
	h := newDMHarness(t, Config{})
	h.update(Snapshot{
		Guests:     []GuestRule{dmGuest("a", gMAC(1), dmPolicy("p", "ips")), dmGuest("b", gMAC(2), nil)},
		Appliances: []ApplianceRule{dmHeaderInst("ips", "ips-1", ipsMAC)},
	})
	frame := make([]byte, probeFrameLen)
	BuildProbe(frame, gMAC(2), 1, 1)
	src := gMAC(1)
	copy(frame[6:12], src[:]) // from a, to b: not a probe to ParseProbe
	h.inject(dmIntercept, frame)
	if n := h.vsa("vsa-ips-1", ipsMAC); n != 1 {
		t.Fatalf("%d frames to ips, want the guest's frame", n)
	}
	if got := h.sent("tap-b"); len(got) != 1 || !bytes.Equal(got[0], frame) {
		t.Fatalf("b got %x, want the guest's frame", got)
	}
}

// TestProbesWhileRunning drives probes with the engine running on the real
// clock: an instance that answers is never called silent, one that stops
// answering is, once.
func TestProbesWhileRunning(t *testing.T) {
	// A generous timeout: the answering loop below must never be slow
	// enough to miss three in a row, even on a loaded machine.
	h := newDMHarness(t, Config{Now: time.Now, ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 200 * time.Millisecond, ProbeMisses: 3})
	h.update(Snapshot{Appliances: []ApplianceRule{dmHeaderInst("ips", "ips-1", ipsMAC), dmHeaderInst("ips", "ips-2", fw2MAC)}})
	runDM(t, h)
	ips1, ips2 := h.port("vsa-ips-1"), h.port("vsa-ips-2")
	answer := func(p *memPort, self MAC) {
		for _, f := range p.take() {
			fr, r := h.e.codec.Parse(f)
			if r == OK {
				r = h.e.codec.Advance(fr, self)
			}
			if r != OK {
				t.Fatalf("%s got a frame it cannot forward (%v): %x", p.name, r, f)
			}
			p.rx <- f
		}
	}
	deadline := time.Now().Add(20 * time.Second) // a hang guard, not an assertion
	var silent []string
	for {
		answer(ips1, ipsMAC)
		if h.e.Counters().Instances["ips-2"].ProbesAnswered < 2 {
			answer(ips2, fw2MAC) // alive first, then mute
		} else {
			ips2.take()
		}
	drain:
		for {
			select {
			case ev := <-h.evs:
				if ev.Kind == EventApplianceSilent {
					silent = append(silent, ev.Instance)
				}
			default:
				break drain
			}
		}
		c := h.e.Counters().Instances
		if c["ips-1"].ProbesAnswered >= 5 && c["ips-2"].ProbesMissed >= 4 && len(silent) > 0 {
			if !slices.Equal(silent, []string{"ips-2"}) {
				t.Errorf("silent events for %v, want ips-2 once", silent)
			}
			if c["ips-1"].ProbeRTTTotal <= 0 || c["ips-2"].ProbeMissStreak < 3 {
				t.Errorf("counters %+v", c)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20s: counters %+v, silent events %v", c, silent)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
