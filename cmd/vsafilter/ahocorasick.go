package main

import (
	"errors"
	"fmt"
)

// matcher finds every occurrence of many byte patterns in one pass over the
// input, in time linear in the input whatever the number of patterns: an
// Aho–Corasick automaton compiled into a dense DFA, so each input byte costs
// one table load and no failure-link chasing.
//
// Memory is states × classes × 4 bytes. Bytes that no pattern uses share
// one class, so text-like signature sets stay compact; a set using all 256
// byte values costs 1 KiB per pattern byte.
type matcher struct {
	class    [256]uint8 // input byte → column in trans
	nclasses int
	// trans[s*nclasses+c] is the next state t, stored premultiplied as
	// t*nclasses so the scan loop needs no multiply; a negative entry
	// ^(t*nclasses) marks a state where at least one pattern ends, which
	// keeps the common no-match step to one load and one sign test.
	trans []int32
	// firstOut[s] is the first pattern ending exactly at state s (index
	// into outPat/outNext), or -1; dict[s] is the nearest state on s's
	// failure chain where a pattern ends, or -1. Together they enumerate
	// every pattern that ends at s.
	firstOut []int32
	dict     []int32
	outPat   []int32
	outNext  []int32
	lens     []int // pattern lengths, to report start offsets
}

// maxAutomatonBytes bounds the transition table a signature set may need.
const maxAutomatonBytes = 256 << 20

var errEmptyPattern = errors.New("empty pattern")

// newMatcher compiles patterns; their indexes identify them in Scan.
func newMatcher(patterns [][]byte) (*matcher, error) {
	m := &matcher{lens: make([]int, len(patterns))}
	var used [256]bool
	total := 1
	for i, p := range patterns {
		if len(p) == 0 {
			return nil, fmt.Errorf("pattern %d: %w", i, errEmptyPattern)
		}
		m.lens[i] = len(p)
		total += len(p)
		for _, b := range p {
			used[b] = true
		}
	}
	m.nclasses = 1 // class 0: bytes no pattern contains
	for b := range used {
		if used[b] {
			m.class[b] = uint8(m.nclasses)
			m.nclasses++
		}
	}
	// 256 used bytes make 257 classes, one more than uint8 holds; then the
	// "unused" class is empty and class = byte value works instead.
	if m.nclasses > 256 {
		m.nclasses = 256
		for b := range m.class {
			m.class[b] = uint8(b)
		}
	}
	if size := int64(total) * int64(m.nclasses) * 4; size > maxAutomatonBytes {
		return nil, fmt.Errorf("signatures need a %d MiB automaton, over the %d MiB limit", size>>20, maxAutomatonBytes>>20)
	}

	nc := m.nclasses
	// Trie: states are allocated in insertion order, root is 0; -1 marks a
	// missing edge until the failure pass fills it in.
	trans := make([]int32, nc, total*nc)
	for i := range trans {
		trans[i] = -1
	}
	m.firstOut = append(make([]int32, 0, total), -1)
	for i, p := range patterns {
		s := int32(0)
		for _, b := range p {
			c := int32(m.class[b])
			next := trans[s*int32(nc)+c]
			if next < 0 {
				next = int32(len(m.firstOut))
				trans[s*int32(nc)+c] = next
				for range nc {
					trans = append(trans, -1)
				}
				m.firstOut = append(m.firstOut, -1)
			}
			s = next
		}
		m.outPat = append(m.outPat, int32(i))
		m.outNext = append(m.outNext, m.firstOut[s])
		m.firstOut[s] = int32(len(m.outPat) - 1)
	}
	states := len(m.firstOut)

	// Breadth-first, so a state's failure target is complete before the
	// state itself is: missing edges borrow the failure state's edges.
	fail := make([]int32, states)
	m.dict = make([]int32, states)
	m.dict[0] = -1
	queue := make([]int32, 0, states)
	for c := range nc {
		if t := trans[c]; t < 0 {
			trans[c] = 0
		} else {
			fail[t], m.dict[t] = 0, -1
			queue = append(queue, t)
		}
	}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		row := int(s) * nc
		frow := int(fail[s]) * nc
		for c := range nc {
			t := trans[row+c]
			if t < 0 {
				trans[row+c] = trans[frow+c]
				continue
			}
			f := trans[frow+c]
			fail[t] = f
			if m.firstOut[f] >= 0 {
				m.dict[t] = f
			} else {
				m.dict[t] = m.dict[f]
			}
			queue = append(queue, t)
		}
	}
	// Premultiply, and flag every transition into a state where something
	// ends.
	for i, t := range trans {
		off := t * int32(nc)
		if m.firstOut[t] >= 0 || m.dict[t] >= 0 {
			off = ^off
		}
		trans[i] = off
	}
	m.trans = trans
	return m, nil
}

// states is the automaton's size, for reports.
func (m *matcher) states() int { return len(m.firstOut) }

// scan calls visit for every occurrence of every pattern in data, in order
// of the occurrence's end; for one end, longer patterns come first. start
// and end are byte offsets (data[start:end] is the occurrence). visit
// returns false to stop the scan; scan reports whether it ran to the end.
func (m *matcher) scan(data []byte, visit func(pattern, start, end int) bool) bool {
	trans, class := m.trans, &m.class
	off := int32(0)
	for i, b := range data {
		off = trans[int(off)+int(class[b])]
		if off >= 0 {
			continue
		}
		off = ^off
		for t := off / int32(m.nclasses); t >= 0; t = m.dict[t] {
			for o := m.firstOut[t]; o >= 0; o = m.outNext[o] {
				p := int(m.outPat[o])
				if !visit(p, i+1-m.lens[p], i+1) {
					return false
				}
			}
		}
	}
	return true
}
