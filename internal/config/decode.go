package config

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
)

// fileDecoder turns one parsed TOML document into typed values by hand
// instead of through reflection, so that a wrong type in one key is
// reported and decoding carries on with the next key: the library's
// reflective decoder stops at the first mismatch.
type fileDecoder struct {
	file  string
	lines map[string]int
	errs  *Errors
	// asked records every key the schema looked up, with array indexes
	// removed; tests use it to prove the documentation covers the schema.
	asked map[string]bool
}

func (d *fileDecoder) addError(line int, key string, cause error, format string, args ...any) {
	*d.errs = append(*d.errs, &Error{File: d.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...), Err: cause})
}

// table is one TOML table being decoded: it remembers which keys the schema
// consumed so the rest can be reported as unknown.
type table struct {
	d      *fileDecoder
	path   string // "" for the document root
	schema string // path without array indexes, for fileDecoder.asked
	line   int    // where the table starts; the fallback for keys without a line of their own
	m      map[string]any
	used   map[string]bool
}

func newTable(d *fileDecoder, path, schema string, line int, m map[string]any) *table {
	return &table{d: d, path: path, schema: schema, line: line, m: m, used: make(map[string]bool)}
}

func (t *table) keyPath(key string) string { return joinKey(t.path, key) }

func (t *table) lineOf(key string) int {
	if l, ok := t.d.lines[t.keyPath(key)]; ok {
		return l
	}
	return t.line
}

// elemLine is the line of element i of the array under key.
func (t *table) elemLine(key string, i int) int {
	if l, ok := t.d.lines[indexKey(t.keyPath(key), i)]; ok {
		return l
	}
	return t.lineOf(key)
}

// errorf reports a problem with key (or with the table itself if key is "").
func (t *table) errorf(key, format string, args ...any) {
	if key == "" {
		t.d.addError(t.line, t.path, nil, format, args...)
		return
	}
	t.d.addError(t.lineOf(key), t.keyPath(key), nil, format, args...)
}

// elemErrorf reports a problem with element i of the array under key.
func (t *table) elemErrorf(key string, i int, format string, args ...any) {
	t.d.addError(t.elemLine(key, i), indexKey(t.keyPath(key), i), nil, format, args...)
}

func (t *table) has(key string) bool {
	_, ok := t.m[key]
	return ok
}

// get returns the raw value of key and marks it as known.
func (t *table) get(key string) (any, bool) {
	t.used[key] = true
	if t.d.asked != nil {
		t.d.asked[joinKey(t.schema, key)] = true
	}
	v, ok := t.m[key]
	return v, ok
}

func (t *table) typeError(key, want string, v any) {
	t.errorf(key, "must be %s, not %s", want, tomlTypeName(v))
}

func (t *table) require(key string) bool {
	if _, ok := t.get(key); !ok {
		t.errorf("", "missing required key %q", key)
		return false
	}
	return true
}

// str decodes a string; it reports whether key was present and valid.
func (t *table) str(key string, dst *string) bool {
	return t.strAs(key, "a string", dst)
}

// strAs is str with the expected form spelled out in a type error.
func (t *table) strAs(key, want string, dst *string) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	s, ok := v.(string)
	if !ok {
		t.typeError(key, want, v)
		return false
	}
	*dst = s
	return true
}

// oneOf decodes a string that must be one of allowed.
func (t *table) oneOf(key string, dst *string, allowed ...string) bool {
	var s string
	if !t.str(key, &s) {
		return false
	}
	if !slices.Contains(allowed, s) {
		t.errorf(key, "%q is not one of %s", s, quoteList(allowed))
		return false
	}
	*dst = s
	return true
}

func (t *table) boolean(key string, dst *bool) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	b, ok := v.(bool)
	if !ok {
		t.typeError(key, "a boolean (true or false)", v)
		return false
	}
	*dst = b
	return true
}

// integer decodes an integer in [lo, hi].
func (t *table) integer(key string, dst *int64, lo, hi int64) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	n, ok := v.(int64)
	if !ok {
		t.typeError(key, "an integer", v)
		return false
	}
	if n < lo || n > hi {
		t.errorf(key, "%d is out of range %d..%d", n, lo, hi)
		return false
	}
	*dst = n
	return true
}

func (t *table) intField(key string, dst *int, lo, hi int) bool {
	var n int64
	if !t.integer(key, &n, int64(lo), int64(hi)) {
		return false
	}
	*dst = int(n)
	return true
}

// percent decodes a number (integer or float) in [lo, hi].
func (t *table) percent(key string, dst *float64, lo, hi float64) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	var f float64
	switch n := v.(type) {
	case int64:
		f = float64(n)
	case float64:
		f = n
	default:
		t.typeError(key, "a number", v)
		return false
	}
	if math.IsNaN(f) || f < lo || f > hi {
		t.errorf(key, "%v is out of range %v..%v", f, lo, hi)
		return false
	}
	*dst = f
	return true
}

// duration decodes a duration string of at least lo.
func (t *table) duration(key string, dst *time.Duration, lo time.Duration) bool {
	var s string
	if !t.strAs(key, `a duration string such as "30s"`, &s) {
		return false
	}
	d, err := ParseDuration(s)
	if err != nil {
		t.errorf(key, "%v", err)
		return false
	}
	if d < lo {
		t.errorf(key, "%s is shorter than the minimum %s", s, lo)
		return false
	}
	*dst = d
	return true
}

// size decodes a memory size string into KiB.
func (t *table) size(key string, dst *uint64) bool {
	var s string
	if !t.strAs(key, `a size string such as "256MiB"`, &s) {
		return false
	}
	kib, err := ParseSize(s)
	if err != nil {
		t.errorf(key, "%v", err)
		return false
	}
	*dst = kib
	return true
}

// strs decodes an array of strings. Elements of another type are reported
// one by one and left out.
func (t *table) strs(key string, dst *[]string) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	arr, ok := v.([]any)
	if !ok {
		t.typeError(key, "an array of strings", v)
		return false
	}
	out := make([]string, 0, len(arr))
	valid := true
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			t.elemErrorf(key, i, "must be a string, not %s", tomlTypeName(e))
			valid = false
			continue
		}
		out = append(out, s)
	}
	*dst = out
	return valid
}

// sub returns the sub-table under key, or nil if it is not a table.
func (t *table) sub(key string) *table {
	v, ok := t.get(key)
	if !ok {
		// An absent table decodes like an empty one, so its defaults apply
		// and its keys still count as part of the schema.
		return newTable(t.d, t.keyPath(key), joinKey(t.schema, key), t.line, map[string]any{})
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.typeError(key, fmt.Sprintf("a table ([%s])", joinKey(t.schema, key)), v)
		return nil
	}
	return newTable(t.d, t.keyPath(key), joinKey(t.schema, key), t.lineOf(key), m)
}

// tables returns the elements of the array of tables under key.
func (t *table) tables(key string) []*table {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	var elems []map[string]any
	switch a := v.(type) {
	case []map[string]any:
		elems = a
	case []any: // an inline array of inline tables
		for i, e := range a {
			m, ok := e.(map[string]any)
			if !ok {
				t.elemErrorf(key, i, "must be a table, not %s", tomlTypeName(e))
				continue
			}
			elems = append(elems, m)
		}
	default:
		t.typeError(key, fmt.Sprintf("an array of tables ([[%s]])", joinKey(t.schema, key)), v)
		return nil
	}
	out := make([]*table, len(elems))
	for i, m := range elems {
		out[i] = newTable(t.d, indexKey(t.keyPath(key), i), joinKey(t.schema, key), t.elemLine(key, i), m)
	}
	return out
}

// finish reports every key of the table the schema did not ask for.
func (t *table) finish() {
	for _, key := range slices.Sorted(maps.Keys(t.m)) {
		if t.used[key] {
			continue
		}
		known := slices.Collect(maps.Keys(t.used))
		if hint := closest(key, known); hint != "" {
			t.errorf(key, "unknown key (did you mean %s?)", hint)
		} else {
			t.errorf(key, "unknown key")
		}
	}
}

func tomlTypeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []any:
		return "an array"
	case []map[string]any:
		return "an array of tables"
	case map[string]any:
		return "a table"
	default:
		return fmt.Sprintf("a %T", v)
	}
}

func quoteList(items []string) string {
	s := ""
	for i, it := range items {
		switch {
		case i == 0:
		case i == len(items)-1:
			s += " or "
		default:
			s += ", "
		}
		s += fmt.Sprintf("%q", it)
	}
	return s
}

// closest suggests the known key nearest to an unknown one, if it is close
// enough to be a likely typo.
func closest(key string, known []string) string {
	// Within two edits, and fewer edits than the key has bytes: for short
	// names everything is "close" and a hint would be noise.
	best, bestDist := "", min(3, len(key))
	for _, k := range slices.Sorted(slices.Values(known)) {
		if d := editDistance(key, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
