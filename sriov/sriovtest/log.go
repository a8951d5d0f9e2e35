package sriovtest

import (
	"log/slog"
	"strings"
	"testing"
)

// Logger logs through tb.Log, so a test's output shows what the code under
// test did next to its own failures.
func Logger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type logWriter struct{ tb testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
