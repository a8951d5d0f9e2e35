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
// The forwarding engine (Engine) is the DM itself: it reads guest and
// appliance ports, classifies each new flow against the guests' policies
// (a Snapshot the agent replaces atomically with Update), pins it to
// healthy appliance instances, source-routes its frames through them with
// headers built once per decision, and delivers them byte for byte; it
// fails closed, reports drop notices and return timeouts as Events, and
// counts every drop by reason. Given a FastPath (the agent wires an XDP
// one), it offloads established flows to the kernel: those that take no
// chain and, with a ChainFastPath, those whose chain is all header
// appliances (push, switch, strip); it keeps the kernel's entries in step
// with its flow table and feeds their counters into its own. It also
// probes every appliance instance (BuildProbe, ParseProbe: a vsagent
// convention, docs/source-route.md) and reports one that stops answering.
// docs/distribution-manager.md describes it.
//
// It imports nothing else of vsagent's. The codec and flow table are hot
// paths: they work in caller-owned buffers and allocate nothing per frame.
package sourceroute
