package main

import (
	"strconv"
	"strings"
)

// keyLines maps every key of a TOML document to the line (1-based) where
// it is defined, so that errors about values can name file:line. The TOML
// decoder knows positions only per dotted key, which is ambiguous for
// arrays of tables (every [[rule]] has an "action"); here each element gets
// its index: "rule[2].action". Table headers map too ("interface",
// "rule[2]"). Keys inside inline tables and arrays are not listed; lineOf
// falls back to their enclosing key.
//
// It is meant for documents the TOML decoder has accepted and does not
// validate them, but it never panics on arbitrary input.
func keyLines(data []byte) map[string]int {
	s := &keyScanner{data: data, line: 1, out: make(map[string]int), arrays: make(map[string]int)}
	s.run()
	return s.out
}

// lineOf returns the line of path, or of its nearest listed ancestor, or 0.
func lineOf(lines map[string]int, path string) int {
	for path != "" {
		if l, ok := lines[path]; ok {
			return l
		}
		cut := strings.LastIndexAny(path, ".[")
		if cut < 0 {
			break
		}
		path = path[:cut]
	}
	return 0
}

type keyScanner struct {
	data    []byte
	i       int
	line    int
	table   string // resolved path of the current table
	out     map[string]int
	arrays  map[string]int // resolved array-of-tables path → elements seen
	scratch []string
}

func (s *keyScanner) peek(off int) byte {
	if s.i+off < len(s.data) {
		return s.data[s.i+off]
	}
	return 0
}

func (s *keyScanner) record(path string, line int) {
	if _, ok := s.out[path]; !ok {
		s.out[path] = line
	}
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// resolve turns header key parts into a path, stepping into the latest
// element of every array of tables on the way ("rule.x" → "rule[3].x").
func (s *keyScanner) resolve(parts []string) string {
	path := ""
	for _, p := range parts {
		path = join(path, p)
		if n, ok := s.arrays[path]; ok {
			path += "[" + strconv.Itoa(n-1) + "]"
		}
	}
	return path
}

func (s *keyScanner) run() {
	for s.i < len(s.data) {
		switch c := s.data[s.i]; c {
		case '\n':
			s.line++
			s.i++
		case ' ', '\t', '\r':
			s.i++
		case '#':
			s.skipComment()
		case '[':
			line := s.line
			if s.peek(1) == '[' {
				s.i += 2
				parts := s.keyPath()
				if len(parts) == 0 {
					return
				}
				array := join(s.resolve(parts[:len(parts)-1]), parts[len(parts)-1])
				n := s.arrays[array]
				s.arrays[array] = n + 1
				s.table = array + "[" + strconv.Itoa(n) + "]"
				s.record(array, line)
			} else {
				s.i++
				parts := s.keyPath()
				if len(parts) == 0 {
					return
				}
				s.table = s.resolve(parts)
			}
			s.record(s.table, line)
			s.skipToLineEnd()
		default:
			line := s.line
			parts := s.keyPath()
			if len(parts) == 0 || s.peek(0) != '=' {
				// Not a key/value line: the decoder would have refused
				// it; give up rather than guess.
				return
			}
			s.i++
			path := s.table
			for _, p := range parts {
				path = join(path, p)
				s.record(path, line)
			}
			s.skipSpaces()
			s.skipValue()
		}
	}
}

func (s *keyScanner) skipSpaces() {
	for s.i < len(s.data) && (s.data[s.i] == ' ' || s.data[s.i] == '\t') {
		s.i++
	}
}

func (s *keyScanner) skipComment() {
	for s.i < len(s.data) && s.data[s.i] != '\n' {
		s.i++
	}
}

// skipToLineEnd skips a header's closing brackets and trailing comment.
func (s *keyScanner) skipToLineEnd() {
	for s.i < len(s.data) && s.data[s.i] != '\n' {
		if s.data[s.i] == '#' {
			s.skipComment()
			return
		}
		s.i++
	}
}

// keyPath reads a possibly dotted, possibly quoted key and the spaces after
// it. It reuses one slice, valid until the next call.
func (s *keyScanner) keyPath() []string {
	parts := s.scratch[:0]
	for {
		s.skipSpaces()
		start := s.i
		var key string
		switch s.peek(0) {
		case '"', '\'':
			q := s.data[s.i]
			s.i++
			for s.i < len(s.data) && s.data[s.i] != q && s.data[s.i] != '\n' {
				if q == '"' && s.data[s.i] == '\\' {
					s.i++
				}
				s.i++
			}
			if s.i >= len(s.data) || s.data[s.i] != q {
				return nil
			}
			s.i++
			key = string(s.data[start+1 : s.i-1])
		default:
			for s.i < len(s.data) && !strings.ContainsRune(" \t\r\n=.[]#\"'", rune(s.data[s.i])) {
				s.i++
			}
			if s.i == start {
				return nil
			}
			key = string(s.data[start:s.i])
		}
		parts = append(parts, key)
		s.skipSpaces()
		if s.peek(0) != '.' {
			s.scratch = parts
			return parts
		}
		s.i++
	}
}

// skipValue skips one value, counting the lines it spans.
func (s *keyScanner) skipValue() {
	switch s.peek(0) {
	case '"', '\'':
		s.skipString()
	case '[', '{':
		s.skipBracketed()
	default:
		for s.i < len(s.data) {
			c := s.data[s.i]
			if c == '\n' || c == '#' {
				return
			}
			s.i++
		}
	}
}

func (s *keyScanner) skipString() {
	q := s.data[s.i]
	multi := s.peek(1) == q && s.peek(2) == q
	if multi {
		s.i += 3
	} else {
		s.i++
	}
	for s.i < len(s.data) {
		c := s.data[s.i]
		switch {
		case c == '\\' && q == '"':
			s.i++
			if s.peek(0) == '\n' {
				s.line++
			}
		case c == '\n':
			if !multi {
				return
			}
			s.line++
		case c == q && !multi:
			s.i++
			return
		case c == q && s.peek(1) == q && s.peek(2) == q:
			s.i += 3
			// Up to two more quotes belong to the content.
			for extra := 0; extra < 2 && s.peek(0) == q; extra++ {
				s.i++
			}
			return
		}
		s.i++
	}
}

func (s *keyScanner) skipBracketed() {
	depth := 0
	for s.i < len(s.data) {
		switch c := s.data[s.i]; c {
		case '[', '{':
			depth++
			s.i++
		case ']', '}':
			depth--
			s.i++
			if depth <= 0 {
				return
			}
		case '"', '\'':
			s.skipString()
		case '#':
			s.skipComment()
		case '\n':
			s.line++
			s.i++
		default:
			s.i++
		}
	}
}
