package sourceroute

import (
	"context"
	"testing"
)

// FuzzDMFrame feeds arbitrary frames to every kind of port the DM reads:
// the intercept port, the uplink, a dedicated guest port, header appliances
// and both sides of a wire appliance. The engine must not panic, and what
// it sends must be well-formed for its receiver: a valid MSR frame
// addressed to a header appliance, a frame for a guest's own MAC or a
// group address at a guest.
func FuzzDMFrame(f *testing.F) {
	h := newDMHarness(f, Config{UplinkPort: "up0", MaxFlows: 256})
	s := twoVSASnapshot()
	s.Guests[0].Policy.Chain = []string{"ips", "bump", "fw"}
	s.Guests = append(s.Guests, dmGuest("d", gMAC(4), dmPolicy("d", "fw")))
	s.Guests[2].Interfaces[0].Dedicated = true
	s.Appliances = append(s.Appliances, dmWireInst("bump", "bump-1", wireM))
	h.update(s)
	ports := []string{dmIntercept, "up0", "tap-d", "vsa-ips-1", "vsa-fw-1", "bump-1-in", "bump-1-out"}
	guestMAC := map[string]MAC{"tap-a": gMAC(1), "tap-b": gMAC(2), "tap-d": gMAC(4)}
	instMAC := map[string]MAC{"vsa-ips-1": ipsMAC, "vsa-fw-1": fwMAC}

	v := loadChainVectors(f)
	seeds := [][]byte{v.Original, v.ToVSA1, v.VSA1ToVSA2, v.VSA2ToDM,
		dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 1, 2, "x"),
		dmUDPFrame(gMAC(4), gMAC(2), "10.0.0.4", "10.0.0.2", 1, 2, "x"),
		dmEth(MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, gMAC(1), etherTypeARP, make([]byte, 28))}
	notice := make([]byte, 512)
	n, _ := BuildDropNotice(notice, dmSelf, fwMAC, NoticeSignature, v.VSA1ToVSA2)
	seeds = append(seeds, notice[:n])
	_, invalid := loadInvalidVectors(f)
	for _, fr := range invalid {
		seeds = append(seeds, fr)
	}
	for _, seed := range seeds {
		for p := range ports {
			f.Add(uint8(p), seed)
			for _, cut := range []int{1, 13, 14, 20, 34, 40} {
				if cut < len(seed) {
					f.Add(uint8(p), seed[:cut])
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, frame []byte) {
		h.t = t
		port := ports[int(which)%len(ports)]
		h.inject(port, frame)
		h.mu.Lock()
		sentBy := map[string][][]byte{}
		for name, p := range h.ports {
			sentBy[name] = p.take()
		}
		h.mu.Unlock()
		for name, frames := range sentBy {
			for _, out := range frames {
				switch {
				case instMAC[name] != MAC{}:
					fr, r := h.e.codec.Parse(out)
					if r != OK || fr.Dst() != instMAC[name] {
						t.Fatalf("sent to %s a frame it cannot take (%v): %x", name, r, out)
					}
				case guestMAC[name] != MAC{}:
					if dst := MAC(out[0:6]); dst != guestMAC[name] && !dst.IsMulticast() {
						t.Fatalf("delivered to %s a frame for %s: %x", name, dst, out)
					}
				}
			}
		}
		h.e.reclaim(context.Background(), h.e.mono())
	})
}
