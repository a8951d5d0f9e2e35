// Package systemd holds vsagent's systemd integration: the unit file,
// sd_notify readiness, status and watchdog pings, and journald logging glue.
//
// It must not decide anything about the agent's work; it only reports it.
package systemd
