// Package e2elab is the end-to-end lab shared by vsagent's end-to-end test
// and `vsagent demo`: a private libvirtd (internal/libvirtlab) with a Linux
// bridge, real QEMU guests on it, two header appliances built from the
// appliance image with different baked rules, and the agent with its
// distribution manager running in-process against that libvirtd, diverting
// the guests' taps with the tc-redirect backend inside the lab's network
// namespace.
//
// The guests start their own traffic (libvirtlab.GuestRun with
// TrafficScript), so what crosses the appliances really is guest-to-guest
// traffic; its outcome is read from the guests' serial consoles, the DM's
// counters and flows, and the agent's events.
package e2elab
