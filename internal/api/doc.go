// Package api is vsagent's control API, version 1: the wire types that the
// daemon serves and vsactl reads, the server that exposes them as JSON over
// HTTP/1.1 on a root-only unix socket, and the client.
//
// Everything a script may rely on lives under the /v1/ prefix; the
// compatibility promise (fields are only ever added, never renamed, retyped
// or given a new meaning) is in docs/operations.md. The types here are the
// contract and deliberately not the agent's own structs, so that the agent
// can change its internals without breaking scripts.
//
// The package imports nothing that needs cgo or libvirt, so that vsactl
// needs neither libvirt nor cgo; the adapter from the running agent to the
// [Provider] the server needs lives in the agentapi subpackage.
//
// The socket is the only access control: it is created 0600 and owned by
// root, and every accepted connection's peer credentials (SO_PEERCRED) are
// checked against an allow list (root only by default), so that a socket
// file whose mode was loosened, or a descriptor passed to another process,
// still admits no one else.
package api
