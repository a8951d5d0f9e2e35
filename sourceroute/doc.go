// Package sourceroute implements the MAC source-route header (MSR) codec,
// the streams database (flow table) and the distribution manager's
// forwarding engine.
//
// It imports nothing else of vsagent's. The codec and flow table are hot
// paths: they work in caller-owned buffers and allocate nothing per frame.
package sourceroute
