package sourceroute

import (
	"errors"
	"testing"
)

// An instance that is down has no link: given without ports and unhealthy,
// it still tells the engine its appliance's on_failure, so a crashed only
// instance meets on_failure instead of the default block.
func TestDMDownInstanceWithoutPorts(t *testing.T) {
	down := func(r ApplianceRule) ApplianceRule {
		r.Port, r.OutPort, r.Healthy = "", "", false
		return r
	}
	frame := dmUDPFrame(gMAC(1), gMAC(2), "10.0.0.1", "10.0.0.2", 30000, 53, "x")
	for _, tt := range []struct {
		name       string
		onFailure  FailureAction
		twin       bool
		wantTo     string // the port the frame leaves by, "" dropped
		wantReason string
	}{
		{"block", FailBlock, false, "", "chain_not_ready"},
		{"bypass", FailBypass, false, "tap-b", ""},
		{"twin", FailBlock, true, "vsa-fw-2", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newDMHarness(t, Config{})
			s := fwPair()
			s.Appliances[0] = down(s.Appliances[0])
			if !tt.twin {
				s.Appliances = s.Appliances[:1]
			}
			for i := range s.Appliances {
				s.Appliances[i].OnFailure = tt.onFailure
			}
			h.update(s)
			h.inject(dmIntercept, frame)
			for _, port := range []string{"tap-b", "vsa-fw-2"} {
				if n := len(h.sent(port)); (port == tt.wantTo) != (n == 1) {
					t.Errorf("%d frames on %s, want the frame on %q", n, port, tt.wantTo)
				}
			}
			if got := h.dropsOf("a")[tt.wantReason]; tt.wantReason != "" && got != 1 {
				t.Errorf("drops %v, want one %s", h.dropsOf("a"), tt.wantReason)
			}
		})
	}
}

func TestDMDownInstanceMustBeUnhealthy(t *testing.T) {
	h := newDMHarness(t, Config{})
	s := fwPair()
	s.Appliances[0].Port = ""
	if err := h.e.Update(t.Context(), s); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("a healthy instance without a port: %v, want ErrBadSnapshot", err)
	}
}
