// Package agent is vsagent's control loop: it turns typed libvirt events and
// configuration into desired state (which guests need which appliance
// chains), gates guests until their appliances run, reconciles appliance
// domains, intercept and distribution-manager rules, and garbage-collects
// what no guest needs any more. Its Autoscaler resizes, adds, drains and
// deletes appliance instances by their load within the host budget, and
// recreates from their templates instances that stopped, crashed or went
// silent (docs/elasticity.md). It
// also answers libvirt's qemu hook (through cmd/vsagent-hook) so that a
// starting or incoming guest is held before its vCPUs run (taps in the
// distribution manager, macvtaps in the kernel), an incoming guest's direct
// interfaces arrive already diverted, rewritten in its XML, and an
// incoming guest gets its chain attached while the migration still keeps
// it paused when its appliances are up in time
// (docs/hooks.md).
//
// It works level-triggered: every work item re-reads the domain from libvirt,
// so a lost event is harmless. It must never destroy, undefine or modify a
// domain it does not own beyond the documented gate (suspend/resume) and
// intercept rewiring, and it must never leave a guest paused by a gate whose
// reason is gone.
package agent
