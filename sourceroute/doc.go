// Package sourceroute implements the MAC source-route header (MSR) codec,
// the streams database (flow table) and the distribution manager's
// forwarding engine.
//
// The codec (Codec, Frame, BuildHeader, Encapsulate, Advance, Strip and the
// drop notices) is the wire contract of SOURCE-ROUTE.md, shared by the DM
// and header-aware appliances: it validates in place, reports the first
// broken rule as a Reason that doubles as a metric label, and never copies
// or truncates a frame.
//
// The streams database classifies frames into bidirectional flows
// (ExtractKey, FlowKey) and keeps one compact entry per flow (FlowTable),
// holding the caller's verdict and a handle to the caller's prebuilt
// headers. Both directions of a flow find the same entry and learn which
// direction they are.
//
// It imports nothing else of vsagent's. The codec and flow table are hot
// paths: they work in caller-owned buffers and allocate nothing per frame.
package sourceroute
