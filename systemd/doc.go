// Package systemd holds vsagent's systemd integration: the unit file
// (vsagent.service, explained in docs/systemd.md), sd_notify readiness,
// reload, status and watchdog notifications (Notifier, with Heartbeat tying
// watchdog pings to main-loop progress), and a slog handler that writes
// native journald entries with one field per attribute (NewLogger).
//
// It must not decide anything about the agent's work; it only reports it.
// Outside systemd every part degrades to a no-op or to plain text logs.
package systemd
