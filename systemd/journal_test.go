package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

type journalEntry struct {
	Message  string
	Priority journal.Priority
	Fields   map[string]string
}

// recordingJournal stands in for journald.
type recordingJournal struct {
	entries []journalEntry
	err     error
}

func (j *recordingJournal) send(message string, priority journal.Priority, fields map[string]string) error {
	if j.err != nil {
		return j.err
	}
	j.entries = append(j.entries, journalEntry{message, priority, fields})
	return nil
}

type flowID uint64

func (f flowID) LogValue() slog.Value { return slog.StringValue(fmt.Sprintf("flow-%d", uint64(f))) }

// withoutCallSite drops the CODE_* fields, which TestJournalHandlerCallSite checks.
var withoutCallSite = cmpopts.IgnoreMapEntries(func(k, _ string) bool { return strings.HasPrefix(k, "CODE_") })

func TestJournalHandlerFields(t *testing.T) {
	when := time.Date(2025, 3, 1, 12, 30, 0, 5, time.UTC)
	tests := []struct {
		name string
		log  func(*slog.Logger)
		want journalEntry
	}{
		{
			"guest event",
			func(l *slog.Logger) {
				l.Info("guest gated", "guest", "web1", "domain_uuid", "6695eb01-f6a4-8304-79aa-97f2502e193f", "eventKind", "started")
			},
			journalEntry{"guest gated", journal.PriInfo, map[string]string{
				"GUEST": "web1", "DOMAIN_UUID": "6695eb01-f6a4-8304-79aa-97f2502e193f", "EVENT_KIND": "started",
			}},
		},
		{
			"value kinds",
			func(l *slog.Logger) {
				l.Warn("kinds", "n", 42, "ok", true, "ratio", 0.5, "wait", 1500*time.Millisecond,
					"at", when, "err", errors.New("boom"), "flow", flowID(7), "bytes", []byte("hi"))
			},
			journalEntry{"kinds", journal.PriWarning, map[string]string{
				"N": "42", "OK": "true", "RATIO": "0.5", "WAIT": "1.5s", "AT": "2025-03-01T12:30:00.000000005Z",
				"ERR": "boom", "FLOW": "flow-7", "BYTES": "[104 105]",
			}},
		},
		{
			"groups",
			func(l *slog.Logger) {
				l.WithGroup("flow").With("id", 9).Error("dropped",
					slog.Group("vsa", "name", "fw", slog.Group("port", "in", 1)),
					slog.Group("empty"),
					slog.Group("", "inline", "x"))
			},
			journalEntry{"dropped", journal.PriErr, map[string]string{
				"FLOW_ID": "9", "FLOW_VSA_NAME": "fw", "FLOW_VSA_PORT_IN": "1", "FLOW_INLINE": "x",
			}},
		},
		{
			"sanitized names",
			func(l *slog.Logger) {
				l.Info("names", "appliance-name", "fw", "_private", "p", "9lives", "cat", "mac.addr", "m",
					"über", "u", "a__b", "ab", "", "no key", "MESSAGE", "m2", "priority", "p2",
					"syslog_identifier", "s2", strings.Repeat("k", 70), "long", "___", "gone")
			},
			journalEntry{"names", journal.PriInfo, map[string]string{
				"APPLIANCE_NAME": "fw", "PRIVATE": "p", "F_9LIVES": "cat", "MAC_ADDR": "m",
				"BER": "u", "A_B": "ab", "ATTR_MESSAGE": "m2", "ATTR_PRIORITY": "p2",
				"ATTR_SYSLOG_IDENTIFIER": "s2", strings.Repeat("K", 64): "long",
			}},
		},
		{
			"debug priority",
			func(l *slog.Logger) { l.Debug("verbose") },
			journalEntry{"verbose", journal.PriDebug, map[string]string{}},
		},
		{
			"levels between names round down",
			func(l *slog.Logger) { l.Log(context.Background(), slog.LevelWarn+2, "almost an error") },
			journalEntry{"almost an error", journal.PriWarning, map[string]string{}},
		},
		{
			"above error",
			func(l *slog.Logger) { l.Log(context.Background(), slog.LevelError+4, "fatal") },
			journalEntry{"fatal", journal.PriErr, map[string]string{}},
		},
		{
			"multi-line message",
			func(l *slog.Logger) { l.Info("line one\nline two", "k", "v\nw") },
			journalEntry{"line one\nline two", journal.PriInfo, map[string]string{"K": "v\nw"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := &recordingJournal{}
			h := NewJournalHandler(JournalOptions{Level: slog.LevelDebug, Identifier: "vsagent", Send: j.send})
			tt.log(slog.New(h))
			if len(j.entries) != 1 {
				t.Fatalf("%d entries, want 1: %+v", len(j.entries), j.entries)
			}
			tt.want.Fields["SYSLOG_IDENTIFIER"] = "vsagent"
			if diff := cmp.Diff(tt.want, j.entries[0], withoutCallSite); diff != "" {
				t.Errorf("entry (-want +got):\n%s", diff)
			}
		})
	}
}

func TestJournalHandlerCallSite(t *testing.T) {
	j := &recordingJournal{}
	slog.New(NewJournalHandler(JournalOptions{Send: j.send})).Info("here")
	if len(j.entries) != 1 {
		t.Fatalf("%d entries", len(j.entries))
	}
	f := j.entries[0].Fields
	if !strings.HasSuffix(f["CODE_FUNC"], "TestJournalHandlerCallSite") ||
		!strings.HasSuffix(f["CODE_FILE"], "journal_test.go") || f["CODE_LINE"] == "" {
		t.Errorf("call site fields %q %q %q do not point at the test", f["CODE_FUNC"], f["CODE_FILE"], f["CODE_LINE"])
	}
}

func TestJournalHandlerLevel(t *testing.T) {
	j := &recordingJournal{}
	var level slog.LevelVar
	level.Set(slog.LevelWarn)
	l := slog.New(NewJournalHandler(JournalOptions{Level: &level, Send: j.send}))
	l.Info("filtered")
	l.Warn("kept")
	level.Set(slog.LevelDebug)
	l.Debug("kept after the level changed")
	var got []string
	for _, e := range j.entries {
		got = append(got, e.Message)
	}
	if diff := cmp.Diff([]string{"kept", "kept after the level changed"}, got); diff != "" {
		t.Errorf("messages (-want +got):\n%s", diff)
	}
}

func TestJournalHandlerDerivedHandlersAreIndependent(t *testing.T) {
	j := &recordingJournal{}
	base := slog.New(NewJournalHandler(JournalOptions{Identifier: "vsagent", Send: j.send}))
	web := base.With("guest", "web1")
	db := base.With("guest", "db1").WithGroup("flow")
	web.Info("a")
	db.Info("b", "id", 1)
	base.Info("c")
	want := []map[string]string{
		{"GUEST": "web1", "SYSLOG_IDENTIFIER": "vsagent"},
		{"GUEST": "db1", "FLOW_ID": "1", "SYSLOG_IDENTIFIER": "vsagent"},
		{"SYSLOG_IDENTIFIER": "vsagent"},
	}
	var got []map[string]string
	for _, e := range j.entries {
		got = append(got, e.Fields)
	}
	if diff := cmp.Diff(want, got, withoutCallSite); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
}

func TestJournalHandlerFallback(t *testing.T) {
	j := &recordingJournal{err: errors.New("journald restarting")}
	var buf bytes.Buffer
	text := slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})
	h := NewJournalHandler(JournalOptions{Send: j.send, Fallback: text})
	slog.New(h).With("guest", "web1").WithGroup("flow").Info("not lost", "id", 3)
	if got, want := buf.String(), "level=INFO msg=\"not lost\" guest=web1 flow.id=3\n"; got != want {
		t.Errorf("fallback wrote %q, want %q", got, want)
	}

	err := h.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "direct", 0))
	if err == nil || !strings.Contains(err.Error(), "journald restarting") {
		t.Errorf("Handle error %v, want the send failure reported", err)
	}

	noFallback := NewJournalHandler(JournalOptions{Send: j.send})
	if err := noFallback.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "x", 0)); err == nil {
		t.Error("send failure without a fallback was swallowed")
	}
}

func TestJournalFieldName(t *testing.T) {
	tests := []struct{ key, want string }{
		{"guest", "GUEST"},
		{"GUEST", "GUEST"},
		{"domainUUID", "DOMAIN_UUID"},
		{"domain_uuid", "DOMAIN_UUID"},
		{"eventKind", "EVENT_KIND"},
		{"event-kind", "EVENT_KIND"},
		{"vf2Mac", "VF2_MAC"},
		{"HTTPServer", "HTTPSERVER"},
		{"flow.id", "FLOW_ID"},
		{"_x", "X"},
		{"x_", "X"},
		{"--", ""},
		{"", ""},
		{"1st", "F_1ST"},
		{"message", "ATTR_MESSAGE"},
		{"code_line", "ATTR_CODE_LINE"},
		{"message_id", "MESSAGE_ID"},
		{strings.Repeat("a", 63) + "_b", strings.Repeat("A", 63)},
	}
	for _, tt := range tests {
		if got := journalFieldName(tt.key); got != tt.want {
			t.Errorf("journalFieldName(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
}

func FuzzJournalFieldName(f *testing.F) {
	for _, seed := range []string{"guest", "domainUUID", "_x", "1st", "message", "", "ü", strings.Repeat("z", 80)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, key string) {
		name := journalFieldName(key)
		if name == "" {
			return
		}
		// journald's own rules for a field name a client may set.
		if len(name) > maxFieldNameLen || name[0] == '_' || name[0] >= '0' && name[0] <= '9' {
			t.Fatalf("journalFieldName(%q) = %q breaks journald's rules", key, name)
		}
		for _, c := range name {
			if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				t.Fatalf("journalFieldName(%q) = %q contains %q", key, name, c)
			}
		}
		if reservedFields[name] {
			t.Fatalf("journalFieldName(%q) = reserved %q", key, name)
		}
	})
}

func TestUseJournal(t *testing.T) {
	tests := []struct {
		name            string
		env             map[string]string
		stderrIsJournal bool
		stderrErr       error
		reachable       bool
		want            bool
	}{
		{"terminal", nil, false, nil, true, false},
		{"stderr is the journal stream", map[string]string{"JOURNAL_STREAM": "8:123"}, true, nil, true, true},
		{"journal stream but journald gone", map[string]string{"JOURNAL_STREAM": "8:123"}, true, nil, false, false},
		{"inherited stale JOURNAL_STREAM", map[string]string{"JOURNAL_STREAM": "8:123"}, false, nil, true, false},
		{"unit with stderr elsewhere", map[string]string{"INVOCATION_ID": "abc"}, false, nil, true, true},
		{"unit without journald", map[string]string{"INVOCATION_ID": "abc"}, false, nil, false, false},
		{"unparsable JOURNAL_STREAM in a unit", map[string]string{"JOURNAL_STREAM": "x", "INVOCATION_ID": "abc"}, false, errors.New("parse"), true, true},
		{"unparsable JOURNAL_STREAM alone", map[string]string{"JOURNAL_STREAM": "x"}, false, errors.New("parse"), true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			stderr := func() (bool, error) { return tt.stderrIsJournal, tt.stderrErr }
			reachable := func() bool { return tt.reachable }
			if got := useJournal(getenv, stderr, reachable); got != tt.want {
				t.Errorf("useJournal = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNewLoggerOutsideSystemd(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	t.Setenv("INVOCATION_ID", "")
	var buf bytes.Buffer
	l := NewLogger(slog.LevelInfo, &buf)
	if _, ok := l.Handler().(*slog.TextHandler); !ok {
		t.Fatalf("handler %T outside systemd, want *slog.TextHandler", l.Handler())
	}
	l.Debug("hidden")
	l.Info("shown", "guest", "web1")
	out := buf.String()
	if strings.Contains(out, "hidden") || !strings.Contains(out, `msg=shown guest=web1`) {
		t.Errorf("text output %q", out)
	}
}
