// Package metrics exposes vsagent's Prometheus metrics on an HTTP endpoint
// that is off by default ([metrics] listen).
//
// Most metrics are read from the agent, the libvirt connection and the
// dataplane at scrape time through small interfaces (a collector), rather
// than pushed by them: those components already keep the counters and
// snapshots, and reading them when Prometheus asks costs nothing between
// scrapes and cannot drift. Two things have no snapshot to read and are
// recorded as they happen: configuration reloads (the daemon calls
// RecordConfigReload) and the gate duration histogram, which FollowEvents
// builds by pairing the agent's "gated" and "released" events.
//
// Everything lives in a private registry, never the global default, so
// that tests and embedders see exactly vsagent's metrics. Names follow the
// Prometheus conventions: a vsagent_ prefix, base units (_seconds, _bytes),
// _total on counters, _ratio for fractions.
//
// The package sits above the agent (it reads agent types) and is imported
// only by the daemon's main.
package metrics
