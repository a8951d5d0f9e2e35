package systemd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// JournalSender delivers one entry to journald. journal.Send is the real one.
type JournalSender func(message string, priority journal.Priority, fields map[string]string) error

// JournalOptions configures a JournalHandler.
type JournalOptions struct {
	// Level is the minimum level logged; nil means slog.LevelInfo.
	Level slog.Leveler
	// Identifier becomes SYSLOG_IDENTIFIER, what journalctl shows as the
	// source and filters with -t; empty means the program's base name.
	Identifier string
	// Send delivers entries; nil means journal.Send.
	Send JournalSender
	// Fallback, if set, gets every record journald refuses (journald
	// restarting, socket buffer full), so no log line is silently lost.
	Fallback slog.Handler
}

// JournalHandler is a slog.Handler that writes native journald entries: the
// record's message becomes MESSAGE, its level PRIORITY, and every attribute a
// field of its own, named by upper-casing the key (groups join with "_":
// slog.Group("flow", "id", 7) becomes FLOW_ID=7). Operators can then filter
// with e.g. `journalctl GUEST=web1`. CODE_FILE, CODE_LINE and CODE_FUNC carry
// the call site.
type JournalHandler struct {
	level      slog.Leveler
	identifier string
	send       JournalSender
	fallback   slog.Handler
	prefix     string            // field name prefix from WithGroup, "" or ending in "_"
	fields     map[string]string // from WithAttrs, already named and formatted
}

// NewJournalHandler returns a handler configured by opts.
func NewJournalHandler(opts JournalOptions) *JournalHandler {
	h := &JournalHandler{
		level:      opts.Level,
		identifier: opts.Identifier,
		send:       opts.Send,
		fallback:   opts.Fallback,
		fields:     map[string]string{},
	}
	if h.level == nil {
		h.level = slog.LevelInfo
	}
	if h.identifier == "" {
		h.identifier = filepath.Base(os.Args[0])
	}
	if h.send == nil {
		h.send = journal.Send
	}
	return h
}

// Enabled implements slog.Handler.
func (h *JournalHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.level.Level()
}

// Handle implements slog.Handler.
func (h *JournalHandler) Handle(ctx context.Context, r slog.Record) error {
	fields := make(map[string]string, len(h.fields)+r.NumAttrs()+4)
	maps.Copy(fields, h.fields)
	r.Attrs(func(a slog.Attr) bool {
		addField(fields, h.prefix, a)
		return true
	})
	fields["SYSLOG_IDENTIFIER"] = h.identifier
	if r.PC != 0 {
		frame, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		fields["CODE_FILE"] = frame.File
		fields["CODE_LINE"] = strconv.Itoa(frame.Line)
		fields["CODE_FUNC"] = frame.Function
	}
	err := h.send(r.Message, journalPriority(r.Level), fields)
	if err == nil {
		return nil
	}
	err = fmt.Errorf("send to journald: %w", err)
	if h.fallback != nil {
		return errors.Join(err, h.fallback.Handle(ctx, r))
	}
	return err
}

// WithAttrs implements slog.Handler.
func (h *JournalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	c := h.clone()
	c.fields = maps.Clone(h.fields)
	for _, a := range attrs {
		addField(c.fields, c.prefix, a)
	}
	if c.fallback != nil {
		c.fallback = c.fallback.WithAttrs(attrs)
	}
	return c
}

// WithGroup implements slog.Handler.
func (h *JournalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := h.clone()
	c.prefix = h.prefix + name + "_"
	if c.fallback != nil {
		c.fallback = c.fallback.WithGroup(name)
	}
	return c
}

func (h *JournalHandler) clone() *JournalHandler {
	c := *h
	return &c
}

// addField adds a (resolved, with groups flattened) under prefix.
func addField(fields map[string]string, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		group := a.Value.Group()
		if a.Key != "" {
			prefix += a.Key + "_"
		}
		for _, member := range group {
			addField(fields, prefix, member)
		}
		return
	}
	name := journalFieldName(prefix + a.Key)
	if name == "" {
		return
	}
	fields[name] = formatValue(a.Value)
}

func formatValue(v slog.Value) string {
	switch v.Kind() {
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return err.Error()
		}
	}
	return v.String()
}

// reservedFields are set by the handler itself; attributes that would map
// onto them are prefixed with "ATTR_" instead of silently overwriting them.
var reservedFields = map[string]bool{
	"MESSAGE": true, "PRIORITY": true, "SYSLOG_IDENTIFIER": true,
	"CODE_FILE": true, "CODE_LINE": true, "CODE_FUNC": true,
}

// maxFieldNameLen is journald's limit on field names.
const maxFieldNameLen = 64

// journalFieldName turns an slog key into a journald field name: letters are
// upper-cased, a lower-to-upper case change becomes "_" (domainUUID →
// DOMAIN_UUID), every other character outside [A-Za-z0-9] becomes "_", runs
// of "_" collapse, and leading and trailing "_" go (journald reserves leading
// underscores for trusted fields). Names journald would reject for starting
// with a digit get an "F_" prefix; names the handler sets itself get "ATTR_".
// The result is at most 64 characters; "" means there was nothing to keep.
func journalFieldName(key string) string {
	var b strings.Builder
	b.Grow(len(key) + 4)
	underscore := func() {
		if s := b.String(); s != "" && s[len(s)-1] != '_' {
			b.WriteByte('_')
		}
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'A' && c <= 'Z':
			if i > 0 && isLowerOrDigit(key[i-1]) {
				underscore()
			}
			b.WriteByte(c)
		case c >= 'a' && c <= 'z':
			b.WriteByte(c - 'a' + 'A')
		case c >= '0' && c <= '9':
			b.WriteByte(c)
		default:
			underscore()
		}
	}
	name := strings.Trim(b.String(), "_")
	switch {
	case name == "":
		return ""
	case name[0] >= '0' && name[0] <= '9':
		name = "F_" + name
	case reservedFields[name]:
		name = "ATTR_" + name
	}
	if len(name) > maxFieldNameLen {
		name = strings.TrimRight(name[:maxFieldNameLen], "_")
	}
	return name
}

func isLowerOrDigit(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
}

// journalPriority maps slog levels onto syslog priorities. slog has no
// notice/critical levels; levels between the named ones round down.
func journalPriority(level slog.Level) journal.Priority {
	switch {
	case level >= slog.LevelError:
		return journal.PriErr
	case level >= slog.LevelWarn:
		return journal.PriWarning
	case level >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}

// NewLogger returns vsagent's logger. Under systemd it writes native journald
// entries with structured fields (GUEST, DOMAIN_UUID, APPLIANCE, FLOW,
// EVENT_KIND, ... from the slog attributes) and falls back to w for entries
// journald refuses; anywhere else it writes slog's text format to w.
// "Under systemd" means journald's socket is reachable and either stderr is
// the journal stream systemd set up ($JOURNAL_STREAM) or the process runs in
// a systemd unit ($INVOCATION_ID).
func NewLogger(level slog.Level, w io.Writer) *slog.Logger {
	text := slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	if !useJournal(os.Getenv, journal.StderrIsJournalStream, journal.Enabled) {
		return slog.New(text)
	}
	return slog.New(NewJournalHandler(JournalOptions{Level: level, Fallback: text}))
}

func useJournal(getenv func(string) string, stderrIsJournal func() (bool, error), journalReachable func() bool) bool {
	if getenv("JOURNAL_STREAM") == "" && getenv("INVOCATION_ID") == "" {
		return false
	}
	if !journalReachable() {
		return false
	}
	if ok, err := stderrIsJournal(); err == nil && ok {
		return true
	}
	return getenv("INVOCATION_ID") != ""
}
