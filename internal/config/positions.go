package config

import (
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// keyLines returns, for every key, table, array-of-tables element and array
// element of a TOML document, the 1-based line where it is defined, keyed by
// its path as formatted by joinKey and indexKey ("policy[1].classifier[0].ports[2]").
//
// It is meant for documents the TOML library has already accepted: it skips
// values without interpreting them and only follows the structure. On other
// input it returns whatever it found before getting lost, never panics and
// always terminates.
func keyLines(doc string) map[string]int {
	sc := &keyScanner{
		s:      doc,
		lines:  make(map[string]int),
		arrays: make(map[string]int),
	}
	for i := 0; i < len(doc); i++ {
		if doc[i] == '\n' {
			sc.lineStarts = append(sc.lineStarts, i+1)
		}
	}
	sc.document()
	return sc.lines
}

type keyScanner struct {
	s          string
	i          int
	lineStarts []int // offsets of the first byte of lines 2, 3, …

	depth int // nesting of inline arrays and tables around the current value

	current string         // path of the table that key/value lines belong to
	arrays  map[string]int // path of each array of tables → elements seen so far
	lines   map[string]int
}

func (sc *keyScanner) lineAt(off int) int {
	return 1 + sort.SearchInts(sc.lineStarts, off+1)
}

// record keeps the first definition of a path: a table implied by a dotted
// key or header is defined where it first appears.
func (sc *keyScanner) record(path string, off int) {
	if _, ok := sc.lines[path]; !ok {
		sc.lines[path] = sc.lineAt(off)
	}
}

func (sc *keyScanner) eof() bool { return sc.i >= len(sc.s) }

func (sc *keyScanner) peek(prefix string) bool { return strings.HasPrefix(sc.s[sc.i:], prefix) }

// skipBlank skips spaces and tabs, and also newlines and comments when
// multiline is set.
func (sc *keyScanner) skipBlank(multiline bool) {
	for !sc.eof() {
		switch sc.s[sc.i] {
		case ' ', '\t', '\r':
			sc.i++
		case '\n':
			if !multiline {
				return
			}
			sc.i++
		case '#':
			if !multiline {
				return
			}
			sc.skipLine()
		default:
			return
		}
	}
}

// skipLine moves past the next newline (or to the end).
func (sc *keyScanner) skipLine() {
	if n := strings.IndexByte(sc.s[sc.i:], '\n'); n >= 0 {
		sc.i += n + 1
	} else {
		sc.i = len(sc.s)
	}
}

func (sc *keyScanner) document() {
	for {
		sc.skipBlank(true)
		if sc.eof() {
			return
		}
		start := sc.i
		if sc.s[sc.i] == '[' {
			sc.header()
		} else {
			parts := sc.key()
			sc.skipBlank(false)
			if len(parts) == 0 || sc.eof() || sc.s[sc.i] != '=' {
				sc.skipLine() // not TOML we understand; resynchronise on the next line
				continue
			}
			sc.i++
			sc.value(sc.dotted(sc.current, parts, start))
		}
		if sc.i == start { // guarantee progress on any input
			sc.i++
		}
	}
}

func (sc *keyScanner) header() {
	start := sc.i
	isArray := sc.peek("[[")
	if isArray {
		sc.i += 2
	} else {
		sc.i++
	}
	parts := sc.key()
	sc.skipBlank(false)
	if isArray && sc.peek("]]") {
		sc.i += 2
	} else if !isArray && sc.peek("]") {
		sc.i++
	} else {
		sc.skipLine()
		return
	}
	if len(parts) == 0 {
		return
	}
	parent := sc.resolve(parts[:len(parts)-1], start)
	path := joinKey(parent, parts[len(parts)-1])
	if isArray {
		n := sc.arrays[path]
		sc.arrays[path] = n + 1
		sc.record(path, start)
		path = indexKey(path, n)
	}
	sc.record(path, start)
	sc.current = path
}

// resolve turns the key parts of a table header into a path, descending into
// the last element of every array of tables on the way, as TOML does.
func (sc *keyScanner) resolve(parts []string, off int) string {
	path := ""
	for _, p := range parts {
		path = joinKey(path, p)
		sc.record(path, off)
		if n, ok := sc.arrays[path]; ok && n > 0 {
			path = indexKey(path, n-1)
		}
	}
	return path
}

// dotted records every prefix of a dotted key below base and returns the
// full path.
func (sc *keyScanner) dotted(base string, parts []string, off int) string {
	path := base
	for _, p := range parts {
		path = joinKey(path, p)
		sc.record(path, off)
	}
	return path
}

// key reads a possibly dotted key; it returns nil if none starts here.
func (sc *keyScanner) key() []string {
	var parts []string
	for {
		sc.skipBlank(false)
		if sc.eof() {
			return parts
		}
		var part string
		switch c := sc.s[sc.i]; {
		case c == '"':
			raw, ok := sc.basicString()
			if !ok {
				return nil
			}
			part = unescapeBasic(raw)
		case c == '\'':
			raw, ok := sc.literalString()
			if !ok {
				return nil
			}
			part = raw
		case isBareKeyByte(c):
			j := sc.i
			for j < len(sc.s) && isBareKeyByte(sc.s[j]) {
				j++
			}
			part = sc.s[sc.i:j]
			sc.i = j
		default:
			return parts
		}
		parts = append(parts, part)
		sc.skipBlank(false)
		if sc.eof() || sc.s[sc.i] != '.' {
			return parts
		}
		sc.i++
	}
}

// value skips one value, recording the elements of arrays and the keys of
// inline tables below path.
func (sc *keyScanner) value(path string) {
	sc.skipBlank(false)
	if sc.eof() {
		return
	}
	switch sc.s[sc.i] {
	case '"':
		if sc.peek(`"""`) {
			sc.multilineString(`"""`)
		} else {
			sc.basicString()
		}
	case '\'':
		if sc.peek("'''") {
			sc.multilineString("'''")
		} else {
			sc.literalString()
		}
	case '[', '{':
		if sc.depth >= maxInlineDepth {
			sc.skipNested()
			return
		}
		sc.depth++
		if sc.s[sc.i] == '[' {
			sc.array(path)
		} else {
			sc.inlineTable(path)
		}
		sc.depth--
	default:
		// Numbers, booleans and dates (which may contain a space) end at a
		// delimiter of the enclosing structure.
		for !sc.eof() && !strings.ContainsRune(",]}#\n", rune(sc.s[sc.i])) {
			sc.i++
		}
	}
}

// maxInlineDepth bounds the nesting of inline arrays and tables the scanner
// records. Configuration never comes close; deeper values are skipped
// without recursion, so that a pathological file costs linear time and a
// bounded stack instead of quadratic time in path strings.
const maxInlineDepth = 16

// skipNested skips an inline array or table, whatever its depth, up to the
// bracket that closes the one it starts at.
func (sc *keyScanner) skipNested() {
	depth := 0
	for !sc.eof() {
		switch sc.s[sc.i] {
		case '[', '{':
			depth++
			sc.i++
		case ']', '}':
			depth--
			sc.i++
			if depth == 0 {
				return
			}
		case '"':
			if sc.peek(`"""`) {
				sc.multilineString(`"""`)
			} else if _, ok := sc.basicString(); !ok && !sc.eof() {
				sc.i++
			}
		case '\'':
			if sc.peek("'''") {
				sc.multilineString("'''")
			} else if _, ok := sc.literalString(); !ok && !sc.eof() {
				sc.i++
			}
		case '#':
			sc.skipLine()
		default:
			sc.i++
		}
	}
}

func (sc *keyScanner) array(path string) {
	sc.i++ // '['
	for n := 0; ; n++ {
		sc.skipBlank(true)
		if sc.eof() {
			return
		}
		if sc.s[sc.i] == ']' {
			sc.i++
			return
		}
		start := sc.i
		elem := indexKey(path, n)
		sc.record(elem, start)
		sc.value(elem)
		sc.skipBlank(true)
		if !sc.eof() && sc.s[sc.i] == ',' {
			sc.i++
		} else if sc.i == start {
			sc.i++ // unexpected byte: skip it rather than loop
		}
	}
}

func (sc *keyScanner) inlineTable(path string) {
	sc.i++ // '{'
	for {
		sc.skipBlank(true)
		if sc.eof() {
			return
		}
		if sc.s[sc.i] == '}' {
			sc.i++
			return
		}
		start := sc.i
		parts := sc.key()
		sc.skipBlank(false)
		if len(parts) > 0 && !sc.eof() && sc.s[sc.i] == '=' {
			sc.i++
			sc.value(sc.dotted(path, parts, start))
		}
		sc.skipBlank(true)
		if !sc.eof() && sc.s[sc.i] == ',' {
			sc.i++
		} else if sc.i == start {
			sc.i++
		}
	}
}

// basicString consumes a "…" string and returns its raw (still escaped)
// content.
func (sc *keyScanner) basicString() (string, bool) { return sc.quoted('"', true) }

// literalString consumes a '…' string and returns its content.
func (sc *keyScanner) literalString() (string, bool) { return sc.quoted('\'', false) }

// quoted consumes a single-line string delimited by quote. On a newline or
// the end of input (not valid TOML) it stops there and reports false.
func (sc *keyScanner) quoted(quote byte, escapes bool) (string, bool) {
	start := sc.i + 1
	for j := start; j < len(sc.s); j++ {
		switch sc.s[j] {
		case '\\':
			if escapes {
				j++
			}
		case quote:
			sc.i = j + 1
			return sc.s[start:j], true
		case '\n':
			sc.i = j
			return "", false
		}
	}
	sc.i = len(sc.s)
	return "", false
}

func (sc *keyScanner) multilineString(delim string) {
	sc.i += len(delim)
	for !sc.eof() {
		if delim == `"""` && sc.s[sc.i] == '\\' {
			sc.i += 2
			continue
		}
		if sc.peek(delim) {
			sc.i += len(delim)
			// Up to two quotes may directly precede the closing delimiter.
			for k := 0; k < 2 && !sc.eof() && sc.s[sc.i] == delim[0]; k++ {
				sc.i++
			}
			return
		}
		sc.i++
	}
}

func isBareKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func isBareKey(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isBareKeyByte(s[i]) {
			return false
		}
	}
	return true
}

// joinKey appends one key to a path, quoting keys that are not bare so a
// dot inside a quoted key cannot be mistaken for a separator.
func joinKey(parent, key string) string {
	if !isBareKey(key) {
		key = strconv.Quote(key)
	}
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func indexKey(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// unescapeBasic decodes the escapes of a TOML basic string. Keys with
// escapes are rare, so it favours simplicity; an invalid escape (which the
// TOML parser would have rejected already) is kept as written.
func unescapeBasic(raw string) string {
	if !strings.Contains(raw, `\`) {
		return raw
	}
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' || i+1 >= len(raw) {
			b.WriteByte(c)
			continue
		}
		i++
		switch raw[i] {
		case 'b':
			b.WriteByte('\b')
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'f':
			b.WriteByte('\f')
		case 'r':
			b.WriteByte('\r')
		case 'e':
			b.WriteByte(0x1b)
		case '"', '\\':
			b.WriteByte(raw[i])
		case 'x', 'u', 'U':
			width := map[byte]int{'x': 2, 'u': 4, 'U': 8}[raw[i]]
			if i+1+width > len(raw) {
				b.WriteByte('\\')
				b.WriteByte(raw[i])
				continue
			}
			r, err := strconv.ParseUint(raw[i+1:i+1+width], 16, 32)
			if err != nil || !utf8.ValidRune(rune(r)) {
				b.WriteByte('\\')
				b.WriteByte(raw[i])
				continue
			}
			b.WriteRune(rune(r))
			i += width
		default:
			b.WriteByte('\\')
			b.WriteByte(raw[i])
		}
	}
	return b.String()
}
