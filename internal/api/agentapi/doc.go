// Package agentapi serves the control API from the running daemon: it
// adapts the agent's snapshots, the libvirt connection and (once it exists)
// the distribution manager to the api.Provider that the control socket's
// server needs, and converts the agent's types to the API's versioned ones.
//
// It is separate from package api because it imports the agent and so
// libvirt (cgo); vsactl imports only package api and needs neither.
// Only the daemon's main imports this package.
//
// It also holds CPUSampler, which turns libvirt's cumulative CPU time of
// appliance instances into utilisation for `vsactl appliances` and the
// metrics, until the autoscaler keeps that figure itself.
package agentapi
