package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem found in a configuration file. Its text is
// "file:line: key: message"; the line is omitted when it is not known and
// the key when the problem concerns the file as a whole.
type Error struct {
	File string
	Line int
	Key  string // dotted key path with array indexes, e.g. "appliance[1].max_vcpus"
	Msg  string
	// Err is the underlying cause, when there is one (a file system error, a
	// TOML syntax error), so callers can test it with errors.Is/As.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": ")
		b.WriteString(e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Errors is every problem found while loading a configuration, ordered by
// file (in the order the files were read) and then by line. Load and Parse
// return it as a value, so errors.As(err, &config.Errors{}) retrieves it.
type Errors []*Error

// Error joins the individual errors, one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes the individual errors to errors.Is and errors.As.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// sortErrors orders errors by the rank of their file (the read order) and
// then by line, keeping the discovery order for errors on the same line.
func sortErrors(es Errors, fileRank map[string]int) {
	slices.SortStableFunc(es, func(a, b *Error) int {
		if c := cmp.Compare(fileRank[a.File], fileRank[b.File]); c != 0 {
			return c
		}
		return cmp.Compare(a.Line, b.Line)
	})
}
