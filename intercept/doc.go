// Package intercept diverts a guest's frames to the distribution manager and
// reverts the diversion exactly to the prior wiring.
//
// InterfacesOf lists a guest's interfaces (Iface) from its live domain XML.
// New returns the Backend the host's configuration names; every backend
// answers the same four questions, all idempotent:
//
//	Apply(ctx, ifc, port)    divert ifc to port
//	Revert(ctx, ifc)         restore what was there before the first Apply
//	Applied(ctx, ifc, port)  is ifc diverted to port right now?
//	Stale(ctx, keep)         which diversions exist that are not in keep?
//
// What a revert needs is kept where an agent that restarted finds it, never
// only in memory:
//
//   - tc-redirect (taps and bridge ports) adds, on the tap's ingress, a u32
//     filter that matches every frame with a mirred egress redirect to the
//     DM's port. The filter is recognised by its priority (FilterPriority)
//     and handle, whose node id (FilterNodeQdiscFound or
//     FilterNodeQdiscAdded) also records whether the ingress qdisc was there
//     before. Everything else on the tap is left as it is.
//   - macvtap (direct interfaces) hot-unplugs the interface and plugs in a
//     copy in VEPA mode, optionally on another parent such as a VF, through
//     libvirt (Domains); the original <interface> element is kept in the
//     guest's metadata under Namespace. The guest's persistent definition is
//     never changed.
//   - switchdev and sriov-vlan are not available yet (ErrUnavailable).
//
// DumpLink renders a link's attributes, qdiscs and filters canonically, so
// that two states can be compared byte for byte.
//
// The package decides nothing about policy, and it imports nothing of
// vsagent's: libvirt is reached through the consumer-declared Domains, which
// the hypervisor package's Conn implements. docs/intercept.md has the
// details, the marker values and the limits.
package intercept
