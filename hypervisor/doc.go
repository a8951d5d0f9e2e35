// Package hypervisor owns everything libvirt: the one connection and its
// event loop, reconnection with backoff and re-registration of callbacks,
// typed lifecycle events, the domain operations the agent needs, domain XML
// through libvirtxml and vsagent's metadata namespaces.
//
// Connect registers libvirt's default event implementation (once per
// process, before any connection) and keeps the Conn connected until Close:
// a restarted libvirtd forgets every client's registrations, so after each
// reconnect the Conn registers its callbacks again and emits EventResync.
//
// Callbacks registered with libvirt copy what they need out of the event and
// never block or call back into libvirt: they hand the consumer an Event by
// a non-blocking send, and when the consumer falls behind they drop it and
// owe an EventResync instead. Consumers are level-triggered (re-read the
// domain on any event, re-list everything on a resync), so nothing is lost.
//
// Operations are idempotent where the agent needs them to be (start,
// suspend, resume, destroy, undefine), fail fast with ErrDisconnected while
// reconnecting, and translate libvirt's error codes into the sentinels of
// this package while keeping the libvirt.Error reachable through errors.As.
// docs/hypervisor.md has the event mapping table and the behaviour in full.
//
// This package makes no policy decisions: it reports and executes, the agent
// decides.
package hypervisor
