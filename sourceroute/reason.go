package sourceroute

// Reason says why a frame was rejected. The zero value, OK, means accepted.
// Reasons index per-reason counter arrays ([NumReasons]atomic.Uint64), so
// they are small dense integers; String gives the metric label.
type Reason uint8

// The validation reasons follow the rule order of SOURCE-ROUTE.md, so the
// first broken rule is the one reported.
const (
	OK                   Reason = iota
	ReasonTruncated             // shorter than 16 bytes (or than an Ethernet header where one is required)
	ReasonEtherType             // type is not the configured EtherType
	ReasonHopCount              // num == 0 or num > MaxHops
	ReasonNextOutOfRange        // next >= num
	ReasonShortRoute            // shorter than 16+6N (route array truncated)
	ReasonNoInnerFrame          // shorter than 16+6N+14
	ReasonDstMismatch           // dst != route[next] (or, for Advance, dst != the VSA's own MAC)
	ReasonBadHopAddress         // a route entry is multicast/broadcast or all zeros
	ReasonPastLastHop           // a VSA would forward past the last entry
	ReasonNotLastHop            // DM asked to strip a frame that is not at its last hop / not addressed to the DM
	ReasonTooBig                // encapsulation would exceed the buffer/MTU
	NumReasons                  // keep last: sizes per-reason counter arrays
)

var reasonNames = [NumReasons]string{
	OK:                   "ok",
	ReasonTruncated:      "truncated",
	ReasonEtherType:      "ethertype",
	ReasonHopCount:       "hop_count",
	ReasonNextOutOfRange: "next_out_of_range",
	ReasonShortRoute:     "short_route",
	ReasonNoInnerFrame:   "no_inner_frame",
	ReasonDstMismatch:    "dst_mismatch",
	ReasonBadHopAddress:  "bad_hop_address",
	ReasonPastLastHop:    "past_last_hop",
	ReasonNotLastHop:     "not_last_hop",
	ReasonTooBig:         "too_big",
}

// String returns a stable snake_case name, safe to use as a metric label.
func (r Reason) String() string { return label(reasonNames[:], r) }

// label names a dense enum value from its table, without allocating.
func label[T ~uint8](names []string, v T) string {
	if int(v) < len(names) {
		return names[v]
	}
	return "unknown"
}
