// Package hookapi is the protocol between libvirt's qemu hook client
// (vsagent-hook) and the agent, and the agent's side of it.
//
// libvirt runs its hooks synchronously while it holds the domain's job, so
// the hook never calls libvirt itself and the agent answers from what it
// already knows plus its own libvirt connection for other domains. One
// connection carries one exchange: the hook writes a Request as a JSON
// object, the agent answers with one Answer and closes. The agent listens on
// a root-only unix socket of its own (config Agent.HookSocket), separate
// from the control socket so that an operator's slow request never delays a
// guest's start.
//
// At migrate and restore begin an agent that is a Rewriter returns the
// incoming domain XML rewritten. When the agent does not answer, Fallback
// decides from the configuration alone: guests without a policy proceed;
// guests that need inspection follow [agent] hook_failure. An XML the agent
// cannot read or rewrite is answered by that same setting.
package hookapi
