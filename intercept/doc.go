// Package intercept diverts a guest's frames to the distribution manager and
// reverts the diversion exactly to the prior wiring.
//
// InterfacesOf lists a guest's interfaces (Iface) from its live domain XML.
// New returns the Backend called by a name; ForHost returns what a host runs
// for its [intercept] backend setting, which for tc-redirect and macvtap
// routes each interface by its type (taps to tc-redirect, direct interfaces
// to macvtap), since a host has both kinds of guest. Every backend answers
// the same four questions, all idempotent:
//
//	Apply(ctx, ifc, port)    divert ifc to port
//	Revert(ctx, ifc)         restore what was there before the first Apply
//	Applied(ctx, ifc, port)  is ifc diverted to port right now?
//	Stale(ctx, keep)         which diversions exist that are not in keep?
//
// DeliveryOf says where the DM writes frames for a diverted interface and
// where its frames arrive (a Deliverer backend knows; otherwise the
// interface's own netdev).
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
//     never changed. Before a guest runs, when libvirt holds its job and
//     nothing may call libvirt about it, DivertDomainXML wires its direct
//     interfaces in its incoming XML (migration, restore) as Apply would,
//     with the same Diverted element and record, and HoldAtStart keeps a
//     macvtap libvirt just created from carrying any frame (a clsact
//     redirect to the DM's port, node FilterNodeHold) until Apply replaces
//     it.
//   - switchdev (guests on SR-IOV VFs, NIC eswitch in switchdev mode) makes
//     the VF's representor the DM's dedicated port (its Delivery): it
//     takes the representor out of its bridge and brings it up, recording
//     what it changed in the representor's alias (RepresentorMarker).
//   - sriov-vlan (guests on SR-IOV VFs, eswitch in legacy mode) gives the
//     guest's VF its own port VLAN (InterceptVLAN) and makes the DM's VF
//     trusted and promiscuous, recording the VFs' prior settings in the
//     guest's metadata under SRIOVNamespace.
//
// VFOf finds the VF behind a hostdev or direct interface; VFParent picks
// the VF a macvtap on a PF moves onto, for the macvtap backend. Both read
// the host through package sriov (Deps.SRIOV).
//
// DumpLink renders a link's attributes, qdiscs and filters canonically, so
// that two states can be compared byte for byte.
//
// The package decides nothing about policy, and of vsagent's packages it
// imports only sriov: libvirt is reached through the consumer-declared
// Domains, which the hypervisor package's Conn implements. docs/intercept.md has the
// details, the marker values and the limits.
package intercept
