package sourceroute

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// twoVSASnapshot is guest a, whose policy chains [ips, fw], and unmanaged
// guest b, with one instance of each appliance: the setting of
// SOURCE-ROUTE.md's test vectors.
func twoVSASnapshot() Snapshot {
	return Snapshot{
		Guests:     []GuestRule{dmGuest("a", gMAC(1), dmPolicy("protected", "ips", "fw")), dmGuest("b", gMAC(2), nil)},
		Appliances: []ApplianceRule{dmHeaderInst("ips", "ips-1", ipsMAC), dmHeaderInst("fw", "fw-1", fwMAC)},
	}
}

func TestDMTwoVSAChainVectors(t *testing.T) {
	v := loadChainVectors(t)
	h := newDMHarness(t, Config{})
	h.update(twoVSASnapshot())
	steps := []struct {
		name, in, out string
		frame, want   []byte
	}{
		{"the guest's frame goes to VSA1 with the flow's header", dmIntercept, "vsa-ips-1", v.Original, v.ToVSA1},
		{"VSA1's frame is switched to VSA2 unchanged", "vsa-ips-1", "vsa-fw-1", v.VSA1ToVSA2, v.VSA1ToVSA2},
		{"VSA2's frame is stripped and delivered byte for byte", "vsa-fw-1", "tap-b", v.VSA2ToDM, v.Original},
	}
	for _, s := range steps {
		h.inject(s.in, s.frame)
		if diff := cmp.Diff([][]byte{s.want}, h.sent(s.out)); diff != "" {
			t.Fatalf("%s (-want +got):\n%s", s.name, diff)
		}
		h.quiet()
	}
	c := h.e.Counters()
	if diff := cmp.Diff(GuestCounters{FramesOut: 1, BytesOut: uint64(len(v.Original)), Drops: map[string]uint64{}}, c.Guests["a"]); diff != "" {
		t.Errorf("guest a counters (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(GuestCounters{FramesIn: 1, BytesIn: uint64(len(v.Original)), Drops: map[string]uint64{}}, c.Guests["b"]); diff != "" {
		t.Errorf("guest b counters (-want +got):\n%s", diff)
	}
	wantInst := map[string]InstanceCounters{
		"ips-1": {Appliance: "ips", Sent: 1, SentBytes: uint64(len(v.ToVSA1)), Returned: 1, ReturnedBytes: uint64(len(v.VSA1ToVSA2))},
		"fw-1":  {Appliance: "fw", Sent: 1, SentBytes: uint64(len(v.VSA1ToVSA2)), Returned: 1, ReturnedBytes: uint64(len(v.VSA2ToDM))},
	}
	if diff := cmp.Diff(wantInst, c.Instances); diff != "" {
		t.Errorf("instance counters (-want +got):\n%s", diff)
	}
	if len(c.Drops) != 0 {
		t.Errorf("drops %v, want none", c.Drops)
	}
}

// dmTracer injects frames and records every frame in and out, in order,
// for golden files.
type dmTracer struct {
	h *dmHarness
	b strings.Builder
}

func (tr *dmTracer) note(format string, args ...any) { fmt.Fprintf(&tr.b, format+"\n", args...) }

// in injects frame on port and returns what came out, by port.
func (tr *dmTracer) in(port string, frame []byte) map[string][][]byte {
	tr.note("in  %-10s %x", port, frame)
	tr.h.inject(port, frame)
	out := map[string][][]byte{}
	tr.h.mu.Lock()
	var names []string
	for name := range tr.h.ports {
		names = append(names, name)
	}
	tr.h.mu.Unlock()
	sort.Strings(names)
	for _, name := range names {
		for _, f := range tr.h.sent(name) {
			tr.note("out %-10s %x", name, f)
			out[name] = append(out[name], f)
		}
	}
	return out
}

// hop plays the header appliance self on port: exactly one frame must
// have arrived there; it is advanced and handed back.
func (tr *dmTracer) hop(out map[string][][]byte, port string, self MAC) map[string][][]byte {
	tr.h.t.Helper()
	if len(out) != 1 || len(out[port]) != 1 {
		tr.h.t.Fatalf("want one frame on %s, got %v", port, keysOf(out))
	}
	f := append([]byte(nil), out[port][0]...)
	fr, r := tr.h.e.codec.Parse(f)
	if r == OK {
		r = tr.h.e.codec.Advance(fr, self)
	}
	if r != OK {
		tr.h.t.Fatalf("%s cannot forward: %v", port, r)
	}
	return tr.in(port, f)
}

func keysOf(m map[string][][]byte) []string {
	var k []string
	for name, fs := range m {
		k = append(k, fmt.Sprintf("%s×%d", name, len(fs)))
	}
	sort.Strings(k)
	return k
}

// TestDMProtocolsRoundTrip sends a request from a to b and b's reply, for
// UDP, TCP, ICMP echo and UDP over IPv6: the request passes ips then fw,
// the reply fw then ips (symmetric), and both arrive byte for byte. Every
// frame on every port is recorded in a golden file.
func TestDMProtocolsRoundTrip(t *testing.T) {
	ip4 := func(proto uint8, src, dst string, l4 []byte) []byte { return dmIP4(proto, src, dst, l4) }
	cases := []struct {
		name       string
		etherType  uint16
		req, reply []byte
	}{
		{"udp", etherTypeIPv4, ip4(protoUDP, "10.0.0.1", "10.0.0.2", dmUDP(40000, 53, "query")), ip4(protoUDP, "10.0.0.2", "10.0.0.1", dmUDP(53, 40000, "answer"))},
		{"tcp", etherTypeIPv4, ip4(protoTCP, "10.0.0.1", "10.0.0.2", dmTCP(41000, 443, 0x02, "")), ip4(protoTCP, "10.0.0.2", "10.0.0.1", dmTCP(443, 41000, 0x12, ""))},
		{"icmp", etherTypeIPv4, ip4(protoICMP, "10.0.0.1", "10.0.0.2", dmICMP(8, 7, 1)), ip4(protoICMP, "10.0.0.2", "10.0.0.1", dmICMP(0, 7, 1))},
		{"udp6", etherTypeIPv6, dmIP6(protoUDP, "fd00::1", "fd00::2", dmUDP(40000, 53, "query")), dmIP6(protoUDP, "fd00::2", "fd00::1", dmUDP(53, 40000, "answer"))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newDMHarness(t, Config{})
			h.update(twoVSASnapshot())
			tr := &dmTracer{h: h}
			req := dmEth(gMAC(2), gMAC(1), tc.etherType, tc.req)
			reply := dmEth(gMAC(1), gMAC(2), tc.etherType, tc.reply)

			tr.note("# request a -> b: ips, fw")
			out := tr.in(dmIntercept, req)
			if got := h.view(out["vsa-ips-1"][0]); !cmp.Equal(got.Route, []MAC{ipsMAC, fwMAC, dmSelf}) || got.Next != 0 || got.Src != dmSelf {
				t.Errorf("request header %+v", got)
			}
			out = tr.hop(out, "vsa-ips-1", ipsMAC)
			out = tr.hop(out, "vsa-fw-1", fwMAC)
			if diff := cmp.Diff(map[string][][]byte{"tap-b": {req}}, out); diff != "" {
				t.Fatalf("request delivery (-want +got):\n%s", diff)
			}

			tr.note("# reply b -> a: fw, ips")
			out = tr.in(dmIntercept, reply)
			if got := h.view(out["vsa-fw-1"][0]); !cmp.Equal(got.Route, []MAC{fwMAC, ipsMAC, dmSelf}) || got.Next != 0 {
				t.Errorf("reply header %+v", got)
			}
			out = tr.hop(out, "vsa-fw-1", fwMAC)
			out = tr.hop(out, "vsa-ips-1", ipsMAC)
			if diff := cmp.Diff(map[string][][]byte{"tap-a": {reply}}, out); diff != "" {
				t.Fatalf("reply delivery (-want +got):\n%s", diff)
			}
			dmGolden(t, "roundtrip-"+tc.name+".golden", tr.b.String())

			flows := h.e.Flows("a")
			if len(flows) != 1 {
				t.Fatalf("flows of a: %+v", flows)
			}
			f := flows[0]
			want := FlowInfo{Key: f.Key, Initiator: "a", Responder: "b", Verdict: "chain",
				Forward: []string{"ips-1", "fw-1"}, Reverse: []string{"fw-1", "ips-1"},
				Packets: [2]uint64{1, 1}, Bytes: [2]uint64{uint64(len(req)), uint64(len(reply))}, Idle: f.Idle}
			if diff := cmp.Diff(want, f, dmKeys); diff != "" {
				t.Errorf("flow (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDMUnmanagedDirect(t *testing.T) {
	h := newDMHarness(t, Config{})
	s := twoVSASnapshot()
	s.Guests = append(s.Guests, dmGuest("c", gMAC(3), nil), dmGuest("d", gMAC(4), &PolicyRule{Name: "watched-only"}))
	h.update(s)
	for i, tc := range []struct {
		name     string
		src, dst MAC
		to       string
	}{
		{"unmanaged to unmanaged", gMAC(3), gMAC(2), "tap-b"},
		{"unmanaged to a managed guest with an empty chain", gMAC(3), gMAC(4), "tap-d"},
		{"a managed guest with an empty chain", gMAC(4), gMAC(2), "tap-b"},
	} {
		frame := dmUDPFrame(tc.src, tc.dst, "10.0.0.3", "10.0.0.4", uint16(1000+i), 2000, tc.name)
		h.inject(dmIntercept, frame)
		if diff := cmp.Diff([][]byte{frame}, h.sent(tc.to)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
		h.quiet()
	}
	for _, f := range h.e.Flows("") {
		if f.Verdict != "direct" || len(f.Forward)+len(f.Reverse) != 0 {
			t.Errorf("flow %v: %s %v %v, want direct", f.Key, f.Verdict, f.Forward, f.Reverse)
		}
	}
}

func TestDMNotReadyFailsClosed(t *testing.T) {
	h := newDMHarness(t, Config{})
	s := twoVSASnapshot()
	s.Guests[0].Ready = false
	h.update(s)
	arp := dmEth(MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, gMAC(1), etherTypeARP, make([]byte, 28))
	h.inject(dmIntercept,
		dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 1, 2, "from a"),
		arp,
		dmUDPFrame(gMAC(2), gMAC(1), "10.0.0.2", "10.0.0.1", 2, 1, "to a"),
		dmEth(gMAC(1), gMAC(2), etherTypeARP, make([]byte, 28)))
	h.quiet()
	if diff := cmp.Diff(map[string]uint64{"chain_not_ready": 4}, h.dropsOf("a")); diff != "" {
		t.Errorf("a's drops (-want +got):\n%s", diff)
	}
	// One event for the four frames: the rest are folded into the next.
	evs := h.events()
	if len(evs) != 1 || evs[0].Kind != EventFailClosed || evs[0].Guest != "a" || evs[0].Policy != "protected" {
		t.Errorf("events %+v, want one fail_closed for a", evs)
	}
	h.clock.Advance(2 * time.Second)
	h.inject(dmIntercept, arp)
	if evs := h.events(); len(evs) != 1 || evs[0].Suppressed != 3 {
		t.Errorf("events %+v, want one folding 3 suppressed", evs)
	}

	// The appliances appear but fw has no instance: a's chain is still
	// not ready, for new flows.
	s.Guests[0].Ready = true
	s.Appliances = s.Appliances[:1]
	h.update(s)
	h.inject(dmIntercept, dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 1, 2, "from a"))
	h.quiet()
	if got := h.dropsOf("a")["chain_not_ready"]; got != 6 {
		t.Errorf("chain_not_ready drops of a: %d, want 6", got)
	}
	if evs := h.events(); len(evs) != 0 {
		t.Errorf("events %+v within the rate limit", evs)
	}
	// Once fw has an instance, the same flow is decided again.
	h.update(twoVSASnapshot())
	h.inject(dmIntercept, dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 1, 2, "from a"))
	if got := h.sent("vsa-ips-1"); len(got) != 1 {
		t.Errorf("after the chain became ready: %d frames to ips, want 1", len(got))
	}
}

// blockingSnapshot is twoVSASnapshot with a policy that blocks a for 30s
// after a timeout or drop notice.
func blockingSnapshot() Snapshot {
	s := twoVSASnapshot()
	s.Guests[0].Policy.OnTimeout = OnTimeoutBlock
	s.Guests[0].Policy.BlockFor = 30 * time.Second
	return s
}

func TestDMDropNoticeBlocks(t *testing.T) {
	h := newDMHarness(t, Config{})
	h.update(blockingSnapshot())
	first := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 9, "discard me")
	h.inject(dmIntercept, first)
	h.vsa("vsa-ips-1", ipsMAC)
	atFW := h.sent("vsa-fw-1")
	if len(atFW) != 1 {
		t.Fatalf("%d frames reached fw", len(atFW))
	}
	notice := make([]byte, 512)
	n, err := BuildDropNotice(notice, dmSelf, fwMAC, NoticePolicyDeny, atFW[0])
	if err != nil {
		t.Fatal(err)
	}
	h.inject("vsa-fw-1", notice[:n])
	h.quiet()
	key, _ := ExtractKey(first, 0)
	want := []Event{
		{Kind: EventDropNotice, Guest: "a", Policy: "protected", Flow: key, HasFlow: true, Direction: Forward,
			Appliance: "fw", Instance: "fw-1", Notice: NoticePolicyDeny},
		{Kind: EventGuestBlocked, Guest: "a", Policy: "protected", Until: h.clock.Now().Add(30 * time.Second)},
	}
	if diff := cmp.Diff(want, h.events(), cmpopts.IgnoreFields(Event{}, "Time"), dmKeys); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if got := h.e.Counters().Instances["fw-1"].Notices; got != 1 {
		t.Errorf("fw-1 notices %d, want 1", got)
	}
	if got := h.e.Flows("a")[0].Notices; got != 1 {
		t.Errorf("flow notices %d, want 1", got)
	}
	// The notice accounts for the frame: it does not time out as well.
	h.clock.Advance(time.Second)
	h.e.scanTimeouts(h.e.mono())
	if evs := h.events(); len(evs) != 0 {
		t.Errorf("events after the notice: %+v", evs)
	}

	// Blocked: a's new flows are dropped; its existing flow, and a new
	// flow b starts (through a's chain, in order), still pass.
	newFlow := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40001, 53, "new")
	h.inject(dmIntercept, newFlow, first, dmUDPFrame(gMAC(2), gMAC(1), "10.0.0.2", "10.0.0.1", 5353, 53, "from b"))
	if got := len(h.sent("vsa-ips-1")); got != 2 {
		t.Errorf("%d frames of the existing flow and of b's new one went to ips, want 2", got)
	}
	if diff := cmp.Diff(map[string]uint64{"blocked": 1, "notice": 1}, h.dropsOf("a")); diff != "" {
		t.Errorf("a's drops (-want +got):\n%s", diff)
	}
	// After block_for the blocked flow is decided again.
	h.clock.Advance(31 * time.Second)
	h.inject(dmIntercept, newFlow)
	if got := len(h.sent("vsa-ips-1")); got != 1 {
		t.Errorf("after the block: %d frames to ips, want 1", got)
	}
}

func TestDMReturnTimeout(t *testing.T) {
	for _, tc := range []struct {
		name    string
		passing []string // appliances that forward; the next one holds the frames
		blamed  string
	}{
		{"first hop silent", nil, "ips-1"},
		{"second hop silent", []string{"ips"}, "fw-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newDMHarness(t, Config{ReturnTimeout: 250 * time.Millisecond})
			h.update(blockingSnapshot())
			frame := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, "hello")
			h.inject(dmIntercept, frame)
			for _, app := range tc.passing {
				h.vsa("vsa-"+app+"-1", map[string]MAC{"ips": ipsMAC, "fw": fwMAC}[app])
			}
			h.sent("vsa-" + strings.TrimSuffix(tc.blamed, "-1") + "-1") // swallowed

			h.clock.Advance(200 * time.Millisecond)
			h.e.scanTimeouts(h.e.mono())
			if evs := h.events(); len(evs) != 0 {
				t.Fatalf("events before the timeout: %+v", evs)
			}
			h.clock.Advance(100 * time.Millisecond)
			h.e.scanTimeouts(h.e.mono())
			h.e.scanTimeouts(h.e.mono()) // once per episode
			evs := h.events()
			if len(evs) != 2 || evs[0].Kind != EventReturnTimeout || evs[0].Instance != tc.blamed || evs[0].Guest != "a" ||
				!evs[0].HasFlow || evs[1].Kind != EventGuestBlocked {
				t.Fatalf("events %+v, want a timeout blaming %s and a block", evs, tc.blamed)
			}
			if got := h.e.Counters().Instances[tc.blamed].Timeouts; got != 1 {
				t.Errorf("%s timeouts %d, want 1", tc.blamed, got)
			}
			h.inject(dmIntercept, dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40002, 53, "new flow"))
			if got := h.dropsOf("a")["blocked"]; got != 1 {
				t.Errorf("new flow while blocked: %d blocked drops, want 1", got)
			}
			h.quiet()

			// A frame that makes it back ends the episode; the next
			// silent one starts a new episode and a new event.
			h.inject(dmIntercept, frame)
			h.vsa("vsa-ips-1", ipsMAC)
			h.vsa("vsa-fw-1", fwMAC)
			if got := h.sent("tap-b"); len(got) != 1 {
				t.Fatalf("%d frames delivered, want 1", len(got))
			}
			h.e.scanTimeouts(h.e.mono())
			h.inject(dmIntercept, frame)
			h.sent("vsa-ips-1")
			h.clock.Advance(time.Second)
			h.e.scanTimeouts(h.e.mono())
			if evs := h.events(); len(evs) != 1 || evs[0].Kind != EventReturnTimeout || evs[0].Instance != "ips-1" {
				t.Errorf("second episode: %+v", evs)
			}
		})
	}
}

func TestDMWireAppliance(t *testing.T) {
	h := newDMHarness(t, Config{})
	s := twoVSASnapshot()
	s.Guests[0].Policy.Chain = []string{"ips", "bump", "fw"}
	s.Appliances = append(s.Appliances, dmWireInst("bump", "bump-1", wireM))
	h.update(s)
	req := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, "via the wire")
	tr := &dmTracer{h: h}
	out := tr.in(dmIntercept, req)
	if got := h.view(out["vsa-ips-1"][0]).Route; !cmp.Equal(got, []MAC{ipsMAC, wireM, fwMAC, dmSelf}) {
		t.Errorf("route %v", got)
	}
	out = tr.hop(out, "vsa-ips-1", ipsMAC)
	// The wire appliance gets the bare inner frame on its in-port.
	if diff := cmp.Diff(map[string][][]byte{"bump-1-in": {req}}, out); diff != "" {
		t.Fatalf("into the wire (-want +got):\n%s", diff)
	}
	out = tr.in("bump-1-out", req)
	// The DM restores the header as the wire appliance would have
	// forwarded it had it understood the header.
	atIPS := encapsulated(t, h, []MAC{ipsMAC, wireM, fwMAC, dmSelf}, req)
	wantAtFW := advanced(t, h, advanced(t, h, atIPS, ipsMAC), wireM)
	if diff := cmp.Diff(map[string][][]byte{"vsa-fw-1": {wantAtFW}}, out); diff != "" {
		t.Fatalf("out of the wire (-want +got):\n%s", diff)
	}
	out = tr.hop(out, "vsa-fw-1", fwMAC)
	if diff := cmp.Diff(map[string][][]byte{"tap-b": {req}}, out); diff != "" {
		t.Fatalf("delivery (-want +got):\n%s", diff)
	}

	// The reply crosses the wire appliance the other way: in by the
	// out-port, back by the in-port.
	reply := dmUDPFrame(gMAC(2), gMAC(1), "10.0.0.2", "10.0.0.1", 53, 40000, "back")
	out = tr.hop(tr.in(dmIntercept, reply), "vsa-fw-1", fwMAC)
	if diff := cmp.Diff(map[string][][]byte{"bump-1-out": {reply}}, out); diff != "" {
		t.Fatalf("reply into the wire (-want +got):\n%s", diff)
	}
	out = tr.hop(tr.in("bump-1-in", reply), "vsa-ips-1", ipsMAC)
	if diff := cmp.Diff(map[string][][]byte{"tap-a": {reply}}, out); diff != "" {
		t.Fatalf("reply delivery (-want +got):\n%s", diff)
	}
	// A frame coming out of the wrong side of the appliance belongs to no
	// route.
	h.inject("bump-1-in", req)
	h.quiet()
	if got := h.e.Counters().Drops["no_flow"]; got != 1 {
		t.Errorf("no_flow drops %d, want 1", got)
	}
	dmGolden(t, "wire.golden", tr.b.String())

	// A wire appliance alone: the frame enters and leaves it unchanged.
	s.Guests[0].Policy.Chain = []string{"bump"}
	h.update(s)
	other := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40001, 53, "only the wire")
	h.inject(dmIntercept, other)
	h.wire("bump-1-in", "bump-1-out")
	if diff := cmp.Diff([][]byte{other}, h.sent("tap-b")); diff != "" {
		t.Errorf("wire-only chain (-want +got):\n%s", diff)
	}
	h.quiet()
}

func encapsulated(t *testing.T, h *dmHarness, route []MAC, inner []byte) []byte {
	t.Helper()
	hdr := make([]byte, HeaderLen(len(route)))
	if _, err := h.e.codec.BuildHeader(hdr, dmSelf, route); err != nil {
		t.Fatal(err)
	}
	return append(hdr, inner...)
}

func advanced(t *testing.T, h *dmHarness, frame []byte, self MAC) []byte {
	t.Helper()
	out := append([]byte(nil), frame...)
	f, r := h.e.codec.Parse(out)
	if r == OK {
		r = h.e.codec.Advance(f, self)
	}
	if r != OK {
		t.Fatal(r)
	}
	return out
}

// fwPair is guest a behind appliance fw with two instances.
func fwPair() Snapshot {
	return Snapshot{
		Guests:     []GuestRule{dmGuest("a", gMAC(1), dmPolicy("p", "fw")), dmGuest("b", gMAC(2), nil)},
		Appliances: []ApplianceRule{dmHeaderInst("fw", "fw-1", fwMAC), dmHeaderInst("fw", "fw-2", fw2MAC)},
	}
}

// instanceOf sends one frame of flow i and reports which fw instance got it.
func instanceOf(t *testing.T, h *dmHarness, i int, reply bool) string {
	t.Helper()
	f := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", uint16(20000+i), 53, "x")
	if reply {
		f = dmUDPFrame(gMAC(2), gMAC(1), "10.0.0.2", "10.0.0.1", 53, uint16(20000+i), "y")
	}
	h.inject(dmIntercept, f)
	got := ""
	for _, name := range []string{"fw-1", "fw-2", "fw-3"} {
		if n := len(h.sent("vsa-" + name)); n > 0 {
			if got != "" || n != 1 {
				t.Fatalf("flow %d went to several instances", i)
			}
			got = name
		}
	}
	if got == "" {
		t.Fatalf("flow %d reached no instance; drops %v", i, h.e.Counters().Drops)
	}
	return got
}

func TestDMPinningAndHashing(t *testing.T) {
	h := newDMHarness(t, Config{})
	h.update(fwPair())
	const flows = 200
	first := map[int]string{}
	spread := map[string]int{}
	for i := range flows {
		first[i] = instanceOf(t, h, i, false)
		spread[first[i]]++
	}
	if spread["fw-1"] == 0 || spread["fw-2"] == 0 {
		t.Fatalf("200 flows all hashed to one instance: %v", spread)
	}
	for i := range flows {
		if got := instanceOf(t, h, i, false); got != first[i] {
			t.Errorf("flow %d moved from %s to %s", i, first[i], got)
		}
		if got := instanceOf(t, h, i, true); got != first[i] {
			t.Errorf("reply of flow %d went to %s, its request to %s", i, got, first[i])
		}
	}
	// A third instance takes new flows but moves no existing one.
	s := fwPair()
	s.Appliances = append(s.Appliances, dmHeaderInst("fw", "fw-3", fw3MAC))
	h.update(s)
	for i := range flows {
		if got := instanceOf(t, h, i, false); got != first[i] {
			t.Errorf("after scaling out, flow %d moved from %s to %s", i, first[i], got)
		}
	}
	newSpread := map[string]int{}
	for i := flows; i < 2*flows; i++ {
		newSpread[instanceOf(t, h, i, false)]++
	}
	if newSpread["fw-3"] == 0 {
		t.Errorf("new flows ignore the new instance: %v", newSpread)
	}
}

func TestDMFailover(t *testing.T) {
	h := newDMHarness(t, Config{})
	h.update(fwPair())
	on := map[string]int{} // a flow pinned to each instance
	for i := 0; len(on) < 2; i++ {
		on[instanceOf(t, h, i, false)] = i
	}
	s := fwPair()
	s.Appliances[0].Healthy = false
	h.update(s)
	if got := instanceOf(t, h, on["fw-1"], false); got != "fw-2" {
		t.Errorf("flow of unhealthy fw-1 went to %s, want its twin fw-2", got)
	}
	if got := instanceOf(t, h, on["fw-2"], true); got != "fw-2" {
		t.Errorf("flow of fw-2 moved to %s", got)
	}

	// No healthy instance: block (the default) drops, bypass skips the
	// step with an event.
	s.Appliances[1].Healthy = false
	h.update(s)
	h.events()
	frame := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 30000, 53, "x")
	h.inject(dmIntercept, frame)
	h.quiet()
	if got := h.dropsOf("a")["chain_not_ready"]; got != 1 {
		t.Errorf("chain_not_ready drops %d, want 1", got)
	}
	if evs := h.events(); len(evs) != 1 || evs[0].Kind != EventFailClosed || evs[0].Appliance != "fw" {
		t.Errorf("events %+v, want fail_closed naming fw", evs)
	}
	for i := range s.Appliances {
		s.Appliances[i].OnFailure = FailBypass
	}
	s.Guests[0].Policy.Chain = []string{"ips", "fw"}
	s.Appliances = append(s.Appliances, dmHeaderInst("ips", "ips-1", ipsMAC))
	h.update(s)
	h.inject(dmIntercept, frame)
	out := h.sent("vsa-ips-1")
	if len(out) != 1 || !cmp.Equal(h.view(out[0]).Route, []MAC{ipsMAC, dmSelf}) {
		t.Fatalf("with fw bypassed: %x", out)
	}
	evs := h.events()
	if len(evs) != 1 || evs[0].Kind != EventBypass || evs[0].Appliance != "fw" || evs[0].Guest != "a" {
		t.Errorf("events %+v, want one bypass of fw", evs)
	}
	if got := h.e.Counters().Bypassed["fw"]; got != 1 {
		t.Errorf("bypassed %d, want 1", got)
	}
	if f := h.e.Flows("a"); len(f) != 1 || !cmp.Equal(f[0].Bypassed, []string{"fw"}) {
		t.Errorf("flows %+v", f)
	}
	// fw recovers: the bypassing flow is decided again and passes it.
	s.Appliances[0].Healthy = true
	h.update(s)
	h.inject(dmIntercept, frame)
	if out := h.sent("vsa-ips-1"); len(out) != 1 || !cmp.Equal(h.view(out[0]).Route, []MAC{ipsMAC, fwMAC, dmSelf}) {
		t.Errorf("after fw recovered: %x", out)
	}
}

func TestDMUpdateChangesChain(t *testing.T) {
	h := newDMHarness(t, Config{})
	s := twoVSASnapshot()
	s.Guests[0].Policy.Chain = []string{"ips"}
	h.update(s)
	frame := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, "x")
	h.inject(dmIntercept, frame)
	inFlight := h.sent("vsa-ips-1")
	if len(inFlight) != 1 {
		t.Fatalf("%d frames to ips", len(inFlight))
	}
	s.Guests[0].Policy.Chain = []string{"fw"}
	h.update(s)
	h.inject(dmIntercept, frame)
	out := h.sent("vsa-fw-1")
	if len(out) != 1 || !cmp.Equal(h.view(out[0]).Route, []MAC{fwMAC, dmSelf}) {
		t.Fatalf("after the update the flow's next frame went %x, want to fw", out)
	}
	h.quiet()
	// The frame that was inside ips when the chain changed comes back
	// under the old route: it is not delivered.
	h.inject("vsa-ips-1", advanced(t, h, inFlight[0], ipsMAC))
	h.quiet()
	if got := h.e.Counters().Drops["no_flow"]; got != 1 {
		t.Errorf("no_flow drops %d, want 1", got)
	}
	// An update that changes nothing keeps the flow.
	before := h.e.table.Stats().Inserts
	h.update(s)
	h.inject(dmIntercept, frame)
	if got := h.e.table.Stats().Inserts; got != before {
		t.Errorf("an identical snapshot re-created flows: %d inserts, had %d", got, before)
	}
}

func TestDMTooBig(t *testing.T) {
	h := newDMHarness(t, Config{MTU: 1500})
	h.mtus["vsa-ips-1"] = 1500 // misconfigured: no room for the header
	h.update(twoVSASnapshot())
	big := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, strings.Repeat("x", 1500-28))
	small := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, strings.Repeat("x", 1500-28-34))
	h.inject(dmIntercept, big)
	h.quiet()
	if got := h.dropsOf("a")["too_big"]; got != 1 {
		t.Errorf("too_big drops %d, want 1", got)
	}
	// Nothing entered the chain, so nothing can time out.
	h.clock.Advance(time.Second)
	h.e.scanTimeouts(h.e.mono())
	if evs := h.events(); len(evs) != 0 {
		t.Errorf("events after a too_big drop: %+v", evs)
	}
	h.inject(dmIntercept, small)
	if out := h.sent("vsa-ips-1"); len(out) != 1 || len(out[0]) != 1514 {
		t.Errorf("the largest frame that fits: %d frames", len(out))
	}
	// With the default link MTU (guest MTU + the largest header) it fits.
	h2 := newDMHarness(t, Config{MTU: 1500})
	h2.update(twoVSASnapshot())
	h2.inject(dmIntercept, big)
	if out := h2.sent("vsa-ips-1"); len(out) != 1 || len(out[0]) != len(big)+34 {
		t.Errorf("default link MTU: %d frames", len(out))
	}
}

func TestDMMalformedCounted(t *testing.T) {
	h := newDMHarness(t, Config{})
	h.update(twoVSASnapshot())
	good := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, "ok")
	truncIP := append([]byte(nil), good[:30]...)
	h.inject(dmIntercept, good[:10], truncIP)
	_, invalid := loadInvalidVectors(t)
	var fromVSA [][]byte
	for _, f := range invalid {
		fromVSA = append(fromVSA, f)
	}
	// From the right appliance but not something it may send.
	notForwarded := encapsulated(t, h, []MAC{ipsMAC, dmSelf}, good) // next = 0: never forwarded
	foreign := dmEth(dmSelf, ipsMAC, 0x0806, make([]byte, 28))
	badNotice := dmEth(dmSelf, ipsMAC, DropNoticeEtherType, nil)
	h.inject("vsa-ips-1", append(fromVSA, notForwarded, foreign, badNotice, good[:5])...)
	h.quiet()
	c := h.e.Counters()
	if diff := cmp.Diff(map[string]uint64{"truncated_ethernet": 1, "truncated_ip": 1}, c.Unparsable); diff != "" {
		t.Errorf("unparsable (-want +got):\n%s", diff)
	}
	// The vectors' wrong-EtherType frame is not MSR at all: unexpected.
	wantInvalid := map[string]uint64{"truncated": 3, "hop_count": 1, "next_out_of_range": 1, "short_route": 1,
		"no_inner_frame": 1, "dst_mismatch": 1, "bad_hop_address": 1}
	if diff := cmp.Diff(wantInvalid, c.Invalid); diff != "" {
		t.Errorf("invalid (-want +got):\n%s", diff)
	}
	wantDrops := map[string]uint64{"malformed": 11, "unexpected": 3}
	if diff := cmp.Diff(wantDrops, c.Drops); diff != "" {
		t.Errorf("drops (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]uint64{"malformed": 1}, c.Guests["a"].Drops); diff != "" {
		t.Errorf("a's drops (-want +got):\n%s", diff)
	}
}

func TestDMBroadcastAndARP(t *testing.T) {
	h := newDMHarness(t, Config{UplinkPort: "up0"})
	s := twoVSASnapshot()
	s.Guests = append(s.Guests, dmGuest("c", gMAC(3), nil))
	s.Guests[2].Interfaces[0].Network = "other"
	h.update(s)
	bcast := MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	arpReq := dmEth(bcast, gMAC(1), etherTypeARP, make([]byte, 28))
	h.inject(dmIntercept, arpReq)
	want := map[string][][]byte{"tap-b": {arpReq}, "up0": {arpReq}}
	got := map[string][][]byte{}
	for _, port := range []string{"tap-a", "tap-b", "tap-c", "up0"} {
		if f := h.sent(port); len(f) > 0 {
			got[port] = f
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("broadcast from a (-want +got):\n%s", diff)
	}
	// A unicast ARP reply takes no chain either, though a has one.
	arpReply := dmEth(gMAC(1), gMAC(2), etherTypeARP, make([]byte, 28))
	h.inject(dmIntercept, arpReply)
	if diff := cmp.Diff([][]byte{arpReply}, h.sent("tap-a")); diff != "" {
		t.Errorf("ARP reply (-want +got):\n%s", diff)
	}
	// A broadcast from the uplink reaches every guest.
	fromOutside := dmEth(bcast, MAC{0x02, 0xaa, 0, 0, 0, 1}, etherTypeARP, make([]byte, 28))
	h.inject("up0", fromOutside)
	for _, tap := range []string{"tap-a", "tap-b", "tap-c"} {
		if diff := cmp.Diff([][]byte{fromOutside}, h.sent(tap)); diff != "" {
			t.Errorf("uplink broadcast at %s (-want +got):\n%s", tap, diff)
		}
	}
	h.quiet()
	if got := h.e.Counters().Guests["a"].Flooded; got != 1 {
		t.Errorf("a flooded %d, want 1", got)
	}
}

// TestDMBroadcastOnSharedPort: guests reached through one shared port (the
// DM's end of the parent of macvtap guests in VEPA mode) get a broadcast
// from one of them through that same port, once; the macvlan layer hands
// it to every macvtap but the sender's. A port that holds only the sender
// never gets its own broadcast back.
func TestDMBroadcastOnSharedPort(t *testing.T) {
	h := newDMHarness(t, Config{})
	s := twoVSASnapshot()
	s.Guests = append(s.Guests, dmGuest("c", gMAC(3), nil))
	for i := range 2 { // a and b behind the intercept port, c on its tap
		s.Guests[i].Interfaces[0].Port = dmIntercept
	}
	h.update(s)
	bcast := MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	arpReq := dmEth(bcast, gMAC(1), etherTypeARP, make([]byte, 28))
	h.inject(dmIntercept, arpReq)
	want := map[string][][]byte{dmIntercept: {arpReq}, "tap-c": {arpReq}}
	got := map[string][][]byte{}
	for _, port := range []string{dmIntercept, "tap-a", "tap-b", "tap-c"} {
		if f := h.sent(port); len(f) > 0 {
			got[port] = f
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("broadcast from a (-want +got):\n%s", diff)
	}
	fromC := dmEth(bcast, gMAC(3), etherTypeARP, make([]byte, 28))
	h.inject(dmIntercept, fromC)
	if diff := cmp.Diff([][]byte{fromC}, h.sent(dmIntercept)); diff != "" {
		t.Errorf("broadcast from c at the shared port (-want +got):\n%s", diff)
	}
	if f := h.sent("tap-c"); len(f) != 0 {
		t.Errorf("c got its own broadcast back: %d frames", len(f))
	}
}

func TestDMUplinkClassifiers(t *testing.T) {
	h := newDMHarness(t, Config{UplinkPort: "up0"})
	pol := &PolicyRule{Name: "web", Symmetric: true, Classifiers: []ClassifierRule{
		{Direction: Ingress, Protocol: protoTCP, Ports: [][2]uint16{{22, 22}}, Chain: []string{"ips"}},
		{Direction: Egress, Protocol: AnyProtocol, Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}, Chain: []string{"fw"}},
	}}
	s := twoVSASnapshot()
	s.Guests[0].Policy = pol
	h.update(s)
	router := MAC{0x02, 0xaa, 0, 0, 0, 1}
	tcp := func(src, dst MAC, sip, dip string, sp, dp uint16) []byte {
		return dmEth(dst, src, etherTypeIPv4, dmIP4(protoTCP, sip, dip, dmTCP(sp, dp, 0x02, "")))
	}
	for _, tc := range []struct {
		name, in string
		frame    []byte
		out      string
	}{
		{"ingress ssh takes ips", "up0", tcp(router, gMAC(1), "203.0.113.9", "10.0.0.1", 50000, 22), "vsa-ips-1"},
		{"ingress http takes the empty default chain", "up0", tcp(router, gMAC(1), "203.0.113.9", "10.0.0.1", 50000, 80), "tap-a"},
		{"egress to 198.51.100.0/24 takes fw", dmIntercept, tcp(gMAC(1), router, "10.0.0.1", "198.51.100.7", 50000, 22), "vsa-fw-1"},
		{"egress elsewhere goes straight out", dmIntercept, tcp(gMAC(1), router, "10.0.0.1", "203.0.113.1", 50000, 22), "up0"},
	} {
		h.inject(tc.in, tc.frame)
		out := h.sent(tc.out)
		if len(out) != 1 {
			t.Errorf("%s: %d frames on %s", tc.name, len(out), tc.out)
		}
		h.quiet()
	}
	// Frames from the uplink for no local guest, or claiming a guest's
	// address, go nowhere.
	h.inject("up0", tcp(router, MAC{0x02, 0xbb, 0, 0, 0, 9}, "203.0.113.9", "10.0.0.99", 1, 2),
		tcp(gMAC(2), gMAC(1), "10.0.0.2", "10.0.0.1", 1, 2))
	h.quiet()
	if diff := cmp.Diff(map[string]uint64{"not_local": 1, "spoofed_source": 1}, h.e.Counters().Drops); diff != "" {
		t.Errorf("drops (-want +got):\n%s", diff)
	}
}

func TestDMBothEndsManaged(t *testing.T) {
	h := newDMHarness(t, Config{})
	s := twoVSASnapshot()
	s.Guests[0].Policy.Chain = []string{"ips"}
	s.Guests[1].Policy = dmPolicy("db", "fw", "ips")
	h.update(s)
	h.inject(dmIntercept, dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 5432, "q"))
	out := h.sent("vsa-ips-1")
	if len(out) != 1 || !cmp.Equal(h.view(out[0]).Route, []MAC{ipsMAC, fwMAC, dmSelf}) {
		t.Fatalf("a's egress chain then b's ingress chain, ips once: got %x", out)
	}
	h.inject(dmIntercept, dmUDPFrame(gMAC(2), gMAC(1), "10.0.0.2", "10.0.0.1", 5432, 40000, "r"))
	out = h.sent("vsa-fw-1")
	if len(out) != 1 || !cmp.Equal(h.view(out[0]).Route, []MAC{fwMAC, ipsMAC, dmSelf}) {
		t.Fatalf("reply: got %x", out)
	}
	h.quiet()
}

func TestDMSpoofing(t *testing.T) {
	h := newDMHarness(t, Config{})
	s := twoVSASnapshot()
	s.Guests = append(s.Guests, dmGuest("c", gMAC(3), nil), dmGuest("d", gMAC(4), nil))
	s.Guests[3].Interfaces[0].Dedicated = true
	h.update(s)
	ab := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, "a to b")
	h.inject(dmIntercept, ab)
	h.sent("vsa-ips-1")
	for _, tc := range []struct {
		name, port string
		frame      []byte
		guest      string
		reason     string
	}{
		{"another MAC on a dedicated port", "tap-d", dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.4", "10.0.0.2", 1, 2, ""), "d", "spoofed_source"},
		{"a dedicated interface's MAC on the shared port", dmIntercept, dmUDPFrame(gMAC(4), gMAC(2), "10.0.0.4", "10.0.0.2", 1, 2, ""), "d", "spoofed_source"},
		{"a MAC no guest has", dmIntercept, dmUDPFrame(MAC{0x52, 0x54, 0, 0, 0, 0x99}, gMAC(2), "10.0.0.9", "10.0.0.2", 1, 2, ""), "", "unknown_source"},
		{"c posing as b in a's flow", dmIntercept, dmUDPFrame(gMAC(3), gMAC(1), "10.0.0.2", "10.0.0.1", 53, 40000, "fake reply"), "c", "flow_mismatch"},
	} {
		before := h.e.Counters()
		h.inject(tc.port, tc.frame)
		h.quiet()
		after := h.e.Counters()
		if after.Drops[tc.reason] != before.Drops[tc.reason]+1 {
			t.Errorf("%s: %s drops %d -> %d", tc.name, tc.reason, before.Drops[tc.reason], after.Drops[tc.reason])
		}
		if tc.guest != "" && after.Guests[tc.guest].Drops[tc.reason] != before.Guests[tc.guest].Drops[tc.reason]+1 {
			t.Errorf("%s: not counted against %s", tc.name, tc.guest)
		}
	}
	// d's own frames on its own port pass.
	dd := dmUDPFrame(gMAC(4), gMAC(2), "10.0.0.4", "10.0.0.2", 1, 2, "mine")
	h.inject("tap-d", dd)
	if diff := cmp.Diff([][]byte{dd}, h.sent("tap-b")); diff != "" {
		t.Errorf("dedicated port (-want +got):\n%s", diff)
	}
}

func TestDMSnapshotValidation(t *testing.T) {
	h := newDMHarness(t, Config{UplinkPort: "up0"})
	good := twoVSASnapshot()
	h.update(good)
	cases := map[string]func(s *Snapshot){
		"duplicate guest":          func(s *Snapshot) { s.Guests = append(s.Guests, s.Guests[0]) },
		"multicast guest MAC":      func(s *Snapshot) { s.Guests[0].Interfaces[0].MAC = MAC{1, 0, 0, 0, 0, 1} },
		"guest MAC of an instance": func(s *Snapshot) { s.Guests[0].Interfaces[0].MAC = ipsMAC },
		"guest with the DM's MAC":  func(s *Snapshot) { s.Guests[1].Interfaces[0].MAC = dmSelf },
		"appliance port as a tap":  func(s *Snapshot) { s.Guests[1].Interfaces[0].Port = "vsa-ips-1" },
		"dedicated intercept": func(s *Snapshot) {
			s.Guests[1].Interfaces[0].Port, s.Guests[1].Interfaces[0].Dedicated = dmIntercept, true
		},
		"uplink as a tap":         func(s *Snapshot) { s.Guests[1].Interfaces[0].Port = "up0" },
		"chain too long":          func(s *Snapshot) { s.Guests[0].Policy.Chain = make([]string, 16) },
		"appliance twice":         func(s *Snapshot) { s.Guests[0].Policy.Chain = []string{"ips", "ips"} },
		"block without block_for": func(s *Snapshot) { s.Guests[0].Policy.OnTimeout = OnTimeoutBlock },
		"ports without a protocol": func(s *Snapshot) {
			s.Guests[0].Policy.Classifiers = []ClassifierRule{{Protocol: AnyProtocol, Ports: [][2]uint16{{1, 2}}}}
		},
		"empty port range": func(s *Snapshot) {
			s.Guests[0].Policy.Classifiers = []ClassifierRule{{Protocol: protoTCP, Ports: [][2]uint16{{9, 2}}}}
		},
		"duplicate instance":       func(s *Snapshot) { s.Appliances[1].Instance = "ips-1" },
		"wire without an out-port": func(s *Snapshot) { s.Appliances[1].Kind = WireAppliance },
		"header with an out-port":  func(s *Snapshot) { s.Appliances[1].OutPort = "x" },
		"instances disagree": func(s *Snapshot) {
			s.Appliances = append(s.Appliances, dmHeaderInst("fw", "fw-2", fw2MAC))
			s.Appliances[2].OnFailure = FailBypass
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			s := twoVSASnapshot()
			mutate(&s)
			err := h.e.Update(context.Background(), s)
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("Update: %v, want ErrBadSnapshot", err)
			}
			// Nothing changed: the good snapshot's chain still applies.
			h.inject(dmIntercept, dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, name))
			if got := len(h.sent("vsa-ips-1")); got != 1 {
				t.Errorf("after a rejected update: %d frames to ips", got)
			}
			h.quiet()
		})
	}

	// A port that cannot be opened degrades only what needs it.
	s := twoVSASnapshot()
	s.Guests[0].Policy.Chain = []string{"fw"}
	s.Appliances = append(s.Appliances, dmHeaderInst("fw", "fw-2", fw2MAC))
	s.Appliances[2].Port = "missing0"
	s.Guests = append(s.Guests, dmGuest("c", gMAC(3), nil))
	s.Guests[2].Interfaces[0].Port = "missing1"
	err := h.e.Update(context.Background(), s)
	if !errors.Is(err, ErrPortUnavailable) || !strings.Contains(err.Error(), "missing0") || !strings.Contains(err.Error(), "missing1") {
		t.Fatalf("Update: %v, want ErrPortUnavailable naming both ports", err)
	}
	for i := range 20 {
		if got := instanceOf(t, h, i, false); got != "fw-1" {
			t.Fatalf("a flow went to %s, whose port is missing", got)
		}
	}
	h.inject(dmIntercept, dmUDPFrame(gMAC(3), gMAC(2), "10.0.0.3", "10.0.0.2", 1, 2, "c is not ready"))
	h.quiet()
	if got := h.dropsOf("c")["chain_not_ready"]; got != 1 {
		t.Errorf("c's chain_not_ready drops %d, want 1", got)
	}
}

func TestDMPortsOpenedAndClosed(t *testing.T) {
	h := newDMHarness(t, Config{})
	h.update(twoVSASnapshot())
	ips := h.port("vsa-ips-1")
	s := twoVSASnapshot()
	s.Guests[0].Policy.Chain = []string{"fw"}
	s.Appliances = s.Appliances[1:]
	h.update(s)
	if !ips.closed.Load() {
		t.Error("the port of a removed instance stayed open")
	}
	h.e.mu.Lock()
	nWorkers := len(h.e.workers)
	h.e.mu.Unlock()
	if nWorkers != 2 { // the intercept port and fw's
		t.Errorf("%d workers, want 2", nWorkers)
	}
	h.update(Snapshot{})
	for _, name := range []string{"vsa-fw-1", "tap-a", "tap-b"} {
		if !h.port(name).closed.Load() {
			t.Errorf("%s stayed open after its owner left", name)
		}
	}
	if h.port(dmIntercept).closed.Load() {
		t.Error("the intercept port was closed")
	}
	// Counters of a removed guest do not reappear under a new one that
	// reuses its slot.
	h.update(Snapshot{Guests: []GuestRule{dmGuest("z", gMAC(9), nil)}})
	if diff := cmp.Diff(GuestCounters{Drops: map[string]uint64{}}, h.e.Counters().Guests["z"]); diff != "" {
		t.Errorf("new guest's counters (-want +got):\n%s", diff)
	}
}

func TestDMEngineConfig(t *testing.T) {
	open := func(string) (Port, error) { return newMemPort("x"), nil }
	for name, cfg := range map[string]Config{
		"no self":            {Open: open},
		"multicast self":     {Open: open, Self: MAC{1, 2, 3, 4, 5, 6}},
		"no opener":          {Self: dmSelf},
		"negative timeout":   {Open: open, Self: dmSelf, ReturnTimeout: -time.Second},
		"same two ports":     {Open: open, Self: dmSelf, InterceptPort: "p", UplinkPort: "p"},
		"link below guests":  {Open: open, Self: dmSelf, MTU: 1500, LinkMTU: 1400},
		"drop-notice type":   {Open: open, Self: dmSelf, Codec: Codec{EtherType: DropNoticeEtherType}},
		"no room for a hop":  {Open: open, Self: dmSelf, Codec: Codec{MaxHops: 1}},
		"tiny MTU":           {Open: open, Self: dmSelf, MTU: 60},
		"negative max flows": {Open: open, Self: dmSelf, MaxFlows: -1},
	} {
		if _, err := NewEngine(cfg); !errors.Is(err, ErrBadEngineConfig) {
			t.Errorf("%s: %v, want ErrBadEngineConfig", name, err)
		}
	}
	_, err := NewEngine(Config{Self: dmSelf, InterceptPort: "gone", Open: func(string) (Port, error) { return nil, errors.New("no such device") }})
	if !errors.Is(err, ErrPortUnavailable) {
		t.Errorf("unopenable intercept port: %v", err)
	}
}

func TestDMDeliveredFramesAreUnchanged(t *testing.T) {
	// VLAN-tagged and padded frames come out as they went in.
	h := newDMHarness(t, Config{})
	h.update(twoVSASnapshot())
	inner := dmIP4(protoUDP, "10.0.0.1", "10.0.0.2", dmUDP(1, 2, "tagged"))
	dst, src := gMAC(2), gMAC(1)
	tagged := append(append(append([]byte(nil), dst[:]...), src[:]...), 0x81, 0x00, 0x00, 0x64, 0x08, 0x00)
	tagged = append(append(tagged, inner...), make([]byte, 10)...)
	h.inject(dmIntercept, tagged)
	h.vsa("vsa-ips-1", ipsMAC)
	h.vsa("vsa-fw-1", fwMAC)
	if got := h.sent("tap-b"); len(got) != 1 || !bytes.Equal(got[0], tagged) {
		t.Errorf("delivered %x, want %x", got, tagged)
	}
}

// TestDMRemotePeerBecomesLocal: a flow to a host behind the uplink keeps
// working when that host turns out to be (or becomes) a local guest: the
// sender's next frame re-decides its own flow instead of being dropped.
func TestDMRemotePeerBecomesLocal(t *testing.T) {
	h := newDMHarness(t, Config{UplinkPort: "up0"})
	s := twoVSASnapshot()
	h.update(s)
	toX := dmUDPFrame(gMAC(1), gMAC(7), "10.0.0.1", "10.0.0.7", 40000, 53, "to x")
	h.inject(dmIntercept, toX)
	h.vsa("vsa-ips-1", ipsMAC)
	h.vsa("vsa-fw-1", fwMAC)
	if got := h.sent("up0"); len(got) != 1 {
		t.Fatalf("%d frames out of the uplink, want 1", len(got))
	}
	s.Guests = append(s.Guests, dmGuest("x", gMAC(7), nil))
	h.update(s)
	h.inject(dmIntercept, toX)
	h.vsa("vsa-ips-1", ipsMAC)
	h.vsa("vsa-fw-1", fwMAC)
	if diff := cmp.Diff([][]byte{toX}, h.sent("tap-x")); diff != "" {
		t.Errorf("after x appeared locally (-want +got):\n%s", diff)
	}
	h.quiet()
	if got := h.e.Counters().Drops; len(got) != 0 {
		t.Errorf("drops %v", got)
	}
	// Someone else's frame with the flow's addresses still rides nothing.
	h.inject(dmIntercept, dmUDPFrame(gMAC(2), gMAC(7), "10.0.0.1", "10.0.0.7", 40000, 53, "b posing as a"))
	h.quiet()
	if got := h.e.Counters().Drops["flow_mismatch"]; got != 1 {
		t.Errorf("flow_mismatch drops %d, want 1", got)
	}
}

// TestDMNoticeOfALargeFrame: a notice carries at most 256 bytes of the
// dropped frame, so the inner IP header claims more than is there; the
// notice must still be attributed to its flow, for IPv4 and IPv6.
func TestDMNoticeOfALargeFrame(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"ipv4", dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 40000, 53, strings.Repeat("x", 1200))},
		{"ipv6", dmEth(gMAC(2), gMAC(1), etherTypeIPv6, dmIP6(protoUDP, "fd00::1", "fd00::2", dmUDP(40000, 53, strings.Repeat("x", 1200))))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newDMHarness(t, Config{})
			h.update(twoVSASnapshot())
			h.inject(dmIntercept, tc.frame)
			atIPS := h.sent("vsa-ips-1")
			notice := make([]byte, 512)
			n, err := BuildDropNotice(notice, dmSelf, ipsMAC, NoticeSignature, atIPS[0])
			if err != nil {
				t.Fatal(err)
			}
			h.inject("vsa-ips-1", notice[:n])
			evs := h.events()
			if len(evs) != 1 || !evs[0].HasFlow || evs[0].Flow.DstPort() != 53 || evs[0].Guest != "a" || evs[0].Notice != NoticeSignature {
				t.Errorf("events %+v, want a signature notice for a's flow", evs)
			}
			if f := h.e.Flows("a"); len(f) != 1 || f[0].Notices != 1 {
				t.Errorf("flows %+v", f)
			}
		})
	}
}
