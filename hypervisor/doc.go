// Package hypervisor owns everything libvirt: the one connection and its
// event loop, reconnection with backoff and re-registration of callbacks,
// typed lifecycle events, the domain operations the agent needs, domain XML
// through libvirtxml and vsagent's metadata namespace.
//
// Callbacks registered with libvirt copy what they need out of the event and
// never block or call back into libvirt. This package makes no policy
// decisions: it reports and executes, the agent decides.
package hypervisor
