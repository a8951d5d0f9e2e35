package sourceroute

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The VLAN trunk of the tests: guests a and b sit behind port "dmvf" (the
// DM's VF) with port VLANs 3801 and 3802, guest c on an untagged tap, all
// on one network.
const (
	dmTrunk = "dmvf"
	vlanA   = 3801
	vlanB   = 3802
)

func vlanSnapshot(polA *PolicyRule) Snapshot {
	a := GuestRule{Name: "a", Ready: true, Policy: polA, Interfaces: []GuestInterface{{MAC: gMAC(1), Port: dmTrunk, VLAN: vlanA}}}
	b := GuestRule{Name: "b", Ready: true, Interfaces: []GuestInterface{{MAC: gMAC(2), Port: dmTrunk, VLAN: vlanB}}}
	return Snapshot{Guests: []GuestRule{a, b, dmGuest("c", gMAC(3), nil)},
		Appliances: []ApplianceRule{dmHeaderInst("ips", "ips-1", ipsMAC), dmHeaderInst("fw", "fw-1", fwMAC)}}
}

// tagged puts 802.1Q tags (outermost first) after frame's MAC addresses.
func tagged(frame []byte, tpid uint16, vids ...uint16) []byte {
	out := append([]byte(nil), frame[:12]...)
	for _, vid := range vids {
		out = binary.BigEndian.AppendUint16(out, tpid)
		out = binary.BigEndian.AppendUint16(out, vid)
		tpid = etherTypeVLAN
	}
	return append(out, frame[12:]...)
}

func TestDMVLANValidation(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Snapshot)
		want string // in the error; "" for a valid snapshot
	}{
		{"trunk shared by two VLANs", func(*Snapshot) {}, ""},
		{"two interfaces on one VLAN", func(s *Snapshot) { s.Guests[1].Interfaces[0].VLAN = vlanA }, ""},
		{"VLAN 4095", func(s *Snapshot) { s.Guests[0].Interfaces[0].VLAN = 4095 }, "VLAN 4095 outside 1..4094"},
		{"dedicated and tagged", func(s *Snapshot) { s.Guests[0].Interfaces[0].Dedicated = true },
			"a dedicated port carries one interface's frames untagged"},
		{"trunk is the uplink", func(s *Snapshot) { s.Guests[0].Interfaces[0].Port = "up0" }, `port "up0" is already used as the uplink`},
		{"trunk is an appliance's port", func(s *Snapshot) { s.Guests[0].Interfaces[0].Port = "vsa-ips-1" },
			`port "vsa-ips-1" is already used as guest delivery`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newDMHarness(t, Config{UplinkPort: "up0"})
			s := vlanSnapshot(nil)
			tt.edit(&s)
			err := h.e.Update(context.Background(), s)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Update: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Update: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// TestDMVLANStripsAndTags drives single frames through the trunk: what
// leaves each port, byte for byte, and what is dropped why.
func TestDMVLANStripsAndTags(t *testing.T) {
	ab := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 4000, 53, "a to b")
	ba := dmUDPFrame(gMAC(2), gMAC(1), "10.0.0.2", "10.0.0.1", 53, 4000, "b to a")
	ac := dmUDPFrame(gMAC(1), gMAC(3), "10.0.0.1", "10.0.0.3", 4000, 53, "a to c")
	ca := dmUDPFrame(gMAC(3), gMAC(1), "10.0.0.3", "10.0.0.1", 53, 4000, "c to a")
	aRemote := dmUDPFrame(gMAC(1), MAC{0x02, 0xee, 0, 0, 0, 1}, "10.0.0.1", "10.9.0.1", 4000, 53, "away")
	remoteB := dmUDPFrame(MAC{0x02, 0xee, 0, 0, 0, 1}, gMAC(2), "10.9.0.1", "10.0.0.2", 53, 4000, "home")
	arp := dmEth(MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, gMAC(1), etherTypeARP, make([]byte, 28))
	own := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 4001, 53, "a's own VLAN 100")
	tests := []struct {
		name   string
		port   string
		frame  []byte
		sent   map[string][][]byte
		drops  map[string]uint64
		ownerA bool // the drop is counted against guest a
	}{
		{"a to b: untagged in, b's tag out", dmTrunk, tagged(ab, etherTypeVLAN, vlanA),
			map[string][][]byte{dmTrunk: {tagged(ab, etherTypeVLAN, vlanB)}}, nil, false},
		{"b to a: b's tag popped, a's pushed", dmTrunk, tagged(ba, etherTypeVLAN, vlanB),
			map[string][][]byte{dmTrunk: {tagged(ba, etherTypeVLAN, vlanA)}}, nil, false},
		{"priority bits of the tag are ignored", dmTrunk, tagged(ab, etherTypeVLAN, 5<<13|vlanA),
			map[string][][]byte{dmTrunk: {tagged(ab, etherTypeVLAN, vlanB)}}, nil, false},
		{"a to an untagged guest", dmTrunk, tagged(ac, etherTypeVLAN, vlanA), map[string][][]byte{"tap-c": {ac}}, nil, false},
		{"an untagged guest to a", dmIntercept, ca, map[string][][]byte{dmTrunk: {tagged(ca, etherTypeVLAN, vlanA)}}, nil, false},
		{"a to the uplink leaves untagged", dmTrunk, tagged(aRemote, etherTypeVLAN, vlanA), map[string][][]byte{"up0": {aRemote}}, nil, false},
		{"the uplink to b", "up0", remoteB, map[string][][]byte{dmTrunk: {tagged(remoteB, etherTypeVLAN, vlanB)}}, nil, false},
		{"a's broadcast reaches b, c and the uplink, not a", dmTrunk, tagged(arp, etherTypeVLAN, vlanA),
			map[string][][]byte{dmTrunk: {tagged(arp, etherTypeVLAN, vlanB)}, "tap-c": {arp}, "up0": {arp}}, nil, false},
		{"a guest's own tag stays inside the port VLAN", dmTrunk, tagged(own, etherTypeVLAN, vlanA, 100),
			map[string][][]byte{dmTrunk: {tagged(own, etherTypeVLAN, vlanB, 100)}}, nil, false},
		{"a foreign VLAN", dmTrunk, tagged(ab, etherTypeVLAN, 3900), nil, map[string]uint64{"foreign_vlan": 1}, false},
		{"no tag on the trunk", dmTrunk, ab, nil, map[string]uint64{"foreign_vlan": 1}, false},
		{"an 802.1ad tag is not a port VLAN", dmTrunk, tagged(ab, etherTypeQinQ, vlanA), nil, map[string]uint64{"foreign_vlan": 1}, false},
		{"a's MAC in b's VLAN", dmTrunk, tagged(ab, etherTypeVLAN, vlanB), nil, map[string]uint64{"spoofed_source": 1}, true},
		{"a's MAC untagged on the intercept port", dmIntercept, ab, nil, map[string]uint64{"spoofed_source": 1}, true},
		{"c's MAC in a's VLAN", dmTrunk, tagged(ca, etherTypeVLAN, vlanA), nil, map[string]uint64{"spoofed_source": 1}, false},
		{"an unknown MAC in a's VLAN", dmTrunk, tagged(dmUDPFrame(gMAC(9), gMAC(2), "10.0.0.9", "10.0.0.2", 1, 2, ""), etherTypeVLAN, vlanA),
			nil, map[string]uint64{"unknown_source": 1}, false},
		{"a tag and nothing else", dmTrunk, tagged(ab, etherTypeVLAN, vlanA)[:18], nil, map[string]uint64{"malformed": 1}, true},
		{"shorter than a header", dmTrunk, ab[:10], nil, map[string]uint64{"malformed": 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newDMHarness(t, Config{UplinkPort: "up0"})
			h.update(vlanSnapshot(nil))
			h.inject(tt.port, tt.frame)
			for _, port := range []string{dmTrunk, "tap-c", "up0", dmIntercept} {
				if diff := cmp.Diff(tt.sent[port], h.sent(port)); diff != "" {
					t.Errorf("sent on %s (-want +got):\n%s", port, diff)
				}
			}
			if diff := cmp.Diff(tt.drops, h.e.Counters().Drops, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("drops (-want +got):\n%s", diff)
			}
			if got := len(h.dropsOf("a")) > 0; got != tt.ownerA {
				t.Errorf("drops of a: %v", h.dropsOf("a"))
			}
		})
	}
}

// TestDMVLANChain sends a's flow to b through ips and fw and the reply
// back: the appliances see the frames untagged, as the guests sent them,
// and each delivery carries its receiver's tag.
func TestDMVLANChain(t *testing.T) {
	for _, intercept := range []string{dmIntercept, dmTrunk} {
		t.Run("intercept port "+intercept, func(t *testing.T) {
			h := newDMHarness(t, Config{InterceptPort: intercept})
			h.update(vlanSnapshot(dmPolicy("protected", "ips", "fw")))
			ab := dmEth(gMAC(2), gMAC(1), etherTypeIPv4, dmIP4(protoTCP, "10.0.0.1", "10.0.0.2", dmTCP(4000, 80, 0x02, "")))
			ba := dmEth(gMAC(1), gMAC(2), etherTypeIPv4, dmIP4(protoTCP, "10.0.0.2", "10.0.0.1", dmTCP(80, 4000, 0x12, "")))
			for _, step := range []struct {
				frame, want []byte
				first, last string
			}{
				{tagged(ab, etherTypeVLAN, vlanA), tagged(ab, etherTypeVLAN, vlanB), "vsa-ips-1", "vsa-fw-1"},
				{tagged(ba, etherTypeVLAN, vlanB), tagged(ba, etherTypeVLAN, vlanA), "vsa-fw-1", "vsa-ips-1"},
			} {
				h.inject(dmTrunk, step.frame)
				toFirst := h.sent(step.first)
				if len(toFirst) != 1 || h.view(toFirst[0]).Inner != fmt.Sprintf("%x", step.want[:12])+fmt.Sprintf("%x", step.want[16:]) {
					t.Fatalf("to %s: %x, want the untagged frame inside", step.first, toFirst)
				}
				h.inject(step.first, h.advanced(toFirst[0], step.first))
				h.inject(step.last, h.advanced(h.only(step.last), step.last))
				if diff := cmp.Diff([][]byte{step.want}, h.sent(dmTrunk)); diff != "" {
					t.Fatalf("delivered (-want +got):\n%s", diff)
				}
				h.quiet()
			}
			if d := h.e.Counters().Drops; len(d) != 0 {
				t.Errorf("drops: %v", d)
			}
			if n := h.e.Counters().Guests["a"].FramesOut; n != 1 {
				t.Errorf("a sent %d frames, want 1", n)
			}
		})
	}
}

// only returns the one frame sent on port.
func (h *dmHarness) only(port string) []byte {
	h.t.Helper()
	got := h.sent(port)
	if len(got) != 1 {
		h.t.Fatalf("%d frames on %s, want 1", len(got), port)
	}
	return got[0]
}

// advanced is frame as the appliance on port forwards it.
func (h *dmHarness) advanced(frame []byte, port string) []byte {
	h.t.Helper()
	self := map[string]MAC{"vsa-ips-1": ipsMAC, "vsa-fw-1": fwMAC}[port]
	fr, r := h.e.codec.Parse(frame)
	if r == OK {
		r = h.e.codec.Advance(fr, self)
	}
	if r != OK {
		h.t.Fatalf("%s cannot forward %x: %v", port, frame, r)
	}
	return frame
}

// FuzzDMVLAN feeds arbitrary frames to the trunk, the intercept port and
// the uplink. Whatever the DM sends on the trunk must carry, as its outer
// tag, the VLAN of the guest it is for (any guest's for a group address);
// every frame it sends on an untagged port or inside a tag must be the
// frame it received, without the port VLAN's tag if it came in on the trunk.
func FuzzDMVLAN(f *testing.F) {
	h := newDMHarness(f, Config{UplinkPort: "up0", MaxFlows: 256})
	h.update(vlanSnapshot(nil))
	ports := []string{dmTrunk, dmIntercept, "up0"}
	ab := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 4000, 53, "x")
	for _, seed := range [][]byte{tagged(ab, etherTypeVLAN, vlanA), tagged(ab, etherTypeVLAN, vlanA, 7),
		tagged(dmUDPFrame(gMAC(3), gMAC(1), "10.0.0.3", "10.0.0.1", 1, 2, "y"), etherTypeVLAN, vlanA), ab,
		tagged(dmEth(MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, gMAC(2), etherTypeARP, make([]byte, 28)), etherTypeVLAN, vlanB)} {
		for p := range ports {
			f.Add(uint8(p), seed)
			f.Add(uint8(p), seed[:17])
		}
	}
	vlanOf := map[MAC]uint16{gMAC(1): vlanA, gMAC(2): vlanB}
	untag := func(b []byte) []byte { return append(append([]byte(nil), b[:12]...), b[taggedHeadLen:]...) }
	f.Fuzz(func(t *testing.T, which uint8, frame []byte) {
		h.t = t
		port := ports[int(which)%len(ports)]
		h.inject(port, frame)
		received := frame
		if port == dmTrunk && len(frame) >= taggedHeadLen {
			received = untag(frame)
		}
		for _, out := range h.sent(dmTrunk) {
			if len(out) < taggedHeadLen || binary.BigEndian.Uint16(out[12:14]) != etherTypeVLAN {
				t.Fatalf("untagged on the trunk: %x", out)
			}
			vid, dst := binary.BigEndian.Uint16(out[14:16]), MAC(out[0:6])
			if want, ok := vlanOf[dst]; ok && vid != want || !ok && !dst.IsMulticast() || vid != vlanA && vid != vlanB {
				t.Fatalf("sent with VLAN %d to %s: %x", vid, dst, out)
			}
			if !bytes.Equal(untag(out), received) {
				t.Fatalf("on the trunk %x, from %x", out, frame)
			}
		}
		for _, port := range []string{"tap-c", "up0"} {
			for _, out := range h.sent(port) {
				if !bytes.Equal(out, received) {
					t.Fatalf("on %s %x, from %x", port, out, frame)
				}
			}
		}
		h.e.reclaim(context.Background(), h.e.mono())
	})
}

// freshPort replays frames like benchPort, but hands out copies in buffers
// of its own: the DM pops tags in place, as it may in a receive ring.
type freshPort struct {
	*benchPort
	bufs [][]byte
}

func (p *freshPort) ReadBatch(_ context.Context, out [][]byte) (int, error) {
	for i := range out {
		f := p.frames[p.pos]
		out[i] = p.bufs[i][:copy(p.bufs[i], f)]
		if p.pos++; p.pos == len(p.frames) {
			p.pos = 0
		}
	}
	return len(out), nil
}

// vlanScenario is newDMScenario's engine with a and b behind the trunk,
// a's frames (to b, n flows) tagged with its VLAN.
func vlanScenario(tb testing.TB, n int, chain ...string) (*dmScenario, *freshPort) {
	tb.Helper()
	sc := &dmScenario{ports: map[string]*benchPort{}}
	var trunk *freshPort
	e, err := NewEngine(Config{Self: dmSelf, InterceptPort: dmIntercept, MaxFlows: 2 * n, BatchSize: dmBenchBatch,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Open: func(name string) (Port, error) {
			p := &benchPort{name: name}
			sc.ports[name] = p
			if name != dmTrunk {
				return p, nil
			}
			trunk = &freshPort{benchPort: p, bufs: make([][]byte, dmBenchBatch)}
			for i := range trunk.bufs {
				trunk.bufs[i] = make([]byte, 2048)
			}
			return trunk, nil
		}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	sc.e = e
	var pol *PolicyRule
	if len(chain) > 0 {
		pol = dmPolicy("p", chain...)
	}
	if err := e.Update(context.Background(), vlanSnapshot(pol)); err != nil {
		tb.Fatal(err)
	}
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = tagged(dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", uint16(1024+i), 53, "benchmark payload 0123456789"),
			etherTypeVLAN, vlanA)
	}
	trunk.frames = frames
	return sc, trunk
}

var vlanBenchCases = []struct {
	name, target string
	chain        []string
}{
	{"untag-tag", dmTrunk, nil},
	{"untag-encapsulate", "vsa-ips-1", []string{"ips", "fw"}},
}

// BenchmarkDMEngineVLAN is BenchmarkDMEngine for a guest behind a VLAN
// trunk: its tag popped, and b's pushed (untag-tag) or the frame
// encapsulated for the first appliance. One op is one frame.
func BenchmarkDMEngineVLAN(b *testing.B) {
	for _, c := range vlanBenchCases {
		b.Run(c.name, func(b *testing.B) {
			sc, _ := vlanScenario(b, 1000, c.chain...)
			target := sc.ports[c.target]
			for range 1000/dmBenchBatch + 1 {
				sc.poll(b, dmTrunk) // every flow created
			}
			target.sent = 0
			b.ReportAllocs()
			b.ResetTimer()
			frames := 0
			for frames < b.N {
				sc.poll(b, dmTrunk)
				frames += dmBenchBatch
			}
			b.StopTimer()
			if target.sent != frames {
				b.Fatalf("%d of %d frames reached %s; drops %v", target.sent, frames, c.target, sc.e.Counters().Drops)
			}
		})
	}
}

func TestDMVLANZeroAllocsPerFrame(t *testing.T) {
	for _, c := range vlanBenchCases {
		t.Run(c.name, func(t *testing.T) {
			sc, trunk := vlanScenario(t, 1000, c.chain...)
			target := sc.ports[c.target]
			if allocs := testing.AllocsPerRun(200, func() { sc.poll(t, dmTrunk) }); allocs != 0 {
				t.Errorf("%v allocations per batch of %d frames", allocs, dmBenchBatch)
			}
			if want := 201 * dmBenchBatch; target.sent != want {
				t.Errorf("%d frames reached %s, want %d; drops %v", target.sent, c.target, want, sc.e.Counters().Drops)
			}
			in := trunk.frames[(trunk.pos+len(trunk.frames)-1)%len(trunk.frames)]
			untagged := append(append([]byte(nil), in[:12]...), in[16:]...)
			want := tagged(untagged, etherTypeVLAN, vlanB)
			if c.chain != nil {
				hdr := make([]byte, HeaderLen(3))
				if _, err := sc.e.codec.BuildHeader(hdr, dmSelf, []MAC{ipsMAC, fwMAC, dmSelf}); err != nil {
					t.Fatal(err)
				}
				want = append(hdr, untagged...)
			}
			if got := target.last[:len(want)]; !bytes.Equal(got, want) {
				t.Errorf("last frame sent to %s:\n%x\nwant\n%x", c.target, got, want)
			}
		})
	}
}
