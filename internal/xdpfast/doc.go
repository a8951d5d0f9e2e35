// Package xdpfast is the distribution manager's kernel fast path: an XDP
// program on the ports where guest frames arrive, and on the appliances'
// ports, that forwards the frames of flows userspace has already decided,
// so that they never reach the AF_PACKET ring.
//
// An entry either forwards a flow's frames as they are (a flow without a
// chain), pushes the flow's MSR header and sends the frames to its first
// appliance, switches the frames an appliance hands back to the next one,
// or strips the header from the frames back from the last appliance and
// delivers them. A frame coming back from an appliance is forwarded only if
// its whole header and inner frame are exactly what the entry expects.
//
// The engine (sourceroute) stays authoritative. It offloads a flow
// direction once it has classified it (Offload, OffloadPush,
// OffloadReturn), removes the entries when the flow is deleted, expires or
// is re-decided (Remove, then Barrier before it acknowledges a change),
// and reads the kernel's per-entry counters back (Visit) so that idle
// timeouts, return timeouts and counters see the frames the kernel
// forwarded. The program parses IPv4 UDP, TCP and ICMP echo requests and
// replies (keyed by type and identifier). Frames whose entry is not in
// the map, or that it does not parse (IPv6, VLAN tags, IPv4 options or
// fragments, TCP segments with SYN, FIN or RST, other ICMP messages, drop
// notices), take the userspace path as before. Before it redirects a frame
// it completes a TCP or UDP checksum its sender left to offload.
//
// Where native XDP cannot run on a port fed by the other end of a veth
// (the DM's jumbo-MTU intercept link), a tc variant of the program runs at
// that other end's egress instead (Config.Feeds).
//
// The programs are assembled in Go with github.com/cilium/ebpf/asm, so no
// C compiler is needed to build or run them.
package xdpfast
