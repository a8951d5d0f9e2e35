// Package xdpfast is the distribution manager's kernel fast path: an XDP
// program on the ports where guest frames arrive that forwards the frames
// of flows userspace has already decided, so that they never reach the
// AF_PACKET ring.
//
// The engine (sourceroute) stays authoritative. It offloads a flow
// direction once it has classified it (Offload), removes the entry when
// the flow is deleted, expires or is re-decided (Remove), and reads the
// kernel's per-entry counters back (Visit) so that idle timeouts and
// counters see the frames the kernel forwarded. Frames whose entry is not
// in the map, or that the program does not parse (IPv6, VLAN tags, IPv4
// options or fragments, TCP segments with SYN, FIN or RST), take the
// userspace path as before (XDP_PASS).
//
// The program is assembled in Go with github.com/cilium/ebpf/asm, so no C
// compiler is needed to build or run it.
package xdpfast
