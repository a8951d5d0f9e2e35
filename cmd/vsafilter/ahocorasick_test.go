package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type occurrence struct{ Pattern, Start, End int }

// naiveFind is the obviously correct reference: every pattern at every
// offset.
func naiveFind(patterns [][]byte, data []byte) []occurrence {
	var out []occurrence
	for p, pat := range patterns {
		for i := 0; i+len(pat) <= len(data); i++ {
			if bytes.Equal(data[i:i+len(pat)], pat) {
				out = append(out, occurrence{p, i, i + len(pat)})
			}
		}
	}
	sortOccurrences(out)
	return out
}

func sortOccurrences(o []occurrence) {
	sort.Slice(o, func(i, j int) bool {
		if o[i].End != o[j].End {
			return o[i].End < o[j].End
		}
		return o[i].Pattern < o[j].Pattern
	})
}

func scanAll(t testing.TB, patterns [][]byte, data []byte) []occurrence {
	t.Helper()
	m, err := newMatcher(patterns)
	if err != nil {
		t.Fatal(err)
	}
	var out []occurrence
	lastEnd := 0
	m.scan(data, func(p, start, end int) bool {
		if end < lastEnd {
			t.Fatalf("occurrence ending at %d reported after one ending at %d", end, lastEnd)
		}
		lastEnd = end
		out = append(out, occurrence{p, start, end})
		return true
	})
	sortOccurrences(out)
	return out
}

func TestMatcherExamples(t *testing.T) {
	tests := []struct {
		name     string
		patterns []string
		data     string
		want     []occurrence
	}{
		{"classic he/she/his/hers", []string{"he", "she", "his", "hers"}, "ushers",
			[]occurrence{{1, 1, 4}, {0, 2, 4}, {3, 2, 6}}},
		{"overlapping repeats", []string{"aa"}, "aaaa", []occurrence{{0, 0, 2}, {0, 1, 3}, {0, 2, 4}}},
		{"pattern inside another", []string{"abcd", "bc"}, "xabcdx", []occurrence{{1, 2, 4}, {0, 1, 5}}},
		{"duplicates both reported", []string{"evil", "evil"}, "evil", []occurrence{{0, 0, 4}, {1, 0, 4}}},
		{"no match", []string{"evil"}, "good and kind", nil},
		{"binary with unused bytes", []string{"\xde\xad\xbe\xef"}, "\x00\xde\xad\xbe\xef\xff", []occurrence{{0, 1, 5}}},
		{"empty input", []string{"x"}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pats [][]byte
			for _, p := range tt.patterns {
				pats = append(pats, []byte(p))
			}
			sortOccurrences(tt.want)
			if diff := cmp.Diff(tt.want, scanAll(t, pats, []byte(tt.data))); diff != "" {
				t.Errorf("occurrences (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMatcherAllByteValues(t *testing.T) {
	// 256 distinct bytes leave no "unused" class; the byte-per-class
	// fallback must still be right.
	var pats [][]byte
	for b := range 256 {
		pats = append(pats, []byte{byte(b), byte(255 - b)})
	}
	data := make([]byte, 4096)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rnd.UintN(256))
	}
	m, err := newMatcher(pats)
	if err != nil {
		t.Fatal(err)
	}
	if m.nclasses != 256 {
		t.Fatalf("nclasses = %d, want 256", m.nclasses)
	}
	if diff := cmp.Diff(naiveFind(pats, data), scanAll(t, pats, data)); diff != "" {
		t.Errorf("occurrences (-want +got):\n%s", diff)
	}
}

// TestMatcherAgainstNaive is the property test: random pattern sets over a
// small alphabet (so that overlaps and shared prefixes and suffixes are
// common) against random texts.
func TestMatcherAgainstNaive(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 11))
	randBytes := func(n int, alphabet string) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rnd.IntN(len(alphabet))]
		}
		return b
	}
	for iter := range 500 {
		alphabet := "abc\x00\xff"[:2+rnd.IntN(4)]
		pats := make([][]byte, 1+rnd.IntN(12))
		for i := range pats {
			pats[i] = randBytes(1+rnd.IntN(6), alphabet)
		}
		data := randBytes(rnd.IntN(200), alphabet)
		if diff := cmp.Diff(naiveFind(pats, data), scanAll(t, pats, data)); diff != "" {
			t.Fatalf("iteration %d, patterns %q, data %q (-naive +matcher):\n%s", iter, pats, data, diff)
		}
	}
}

func TestMatcherStopsEarly(t *testing.T) {
	m, err := newMatcher([][]byte{[]byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	done := m.scan([]byte("aaaa"), func(_, _, _ int) bool { calls++; return calls < 2 })
	if done || calls != 2 {
		t.Errorf("scan ran to the end = %v after %d calls, want false after 2", done, calls)
	}
}

func TestMatcherRejects(t *testing.T) {
	if _, err := newMatcher([][]byte{[]byte("ok"), {}}); err == nil {
		t.Error("an empty pattern was accepted")
	}
	huge := make([][]byte, 0, 300)
	for i := range 300 {
		p := bytes.Repeat([]byte{byte(i)}, 1<<20)
		huge = append(huge, p)
	}
	if _, err := newMatcher(huge); err == nil {
		t.Error("a 300 MiB pattern set with 256 byte classes was accepted")
	}
}

// FuzzMatcher checks the automaton against the naive matcher on arbitrary
// inputs: the first bytes pick how the rest splits into patterns and text.
func FuzzMatcher(f *testing.F) {
	f.Add([]byte{2, 3, 'a', 'b', 'a', 'b', 'a', 'b', 'c'})
	f.Add([]byte{1, 4, 'e', 'v', 'i', 'l', 'x', 'e', 'v', 'i', 'l'})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 2 {
			return
		}
		npat, rest := int(in[0]%8)+1, in[1:]
		var pats [][]byte
		for range npat {
			if len(rest) < 2 {
				break
			}
			n := int(rest[0]%8) + 1
			rest = rest[1:]
			if n > len(rest) {
				n = len(rest)
			}
			pats = append(pats, rest[:n])
			rest = rest[n:]
		}
		if len(pats) == 0 {
			return
		}
		if diff := cmp.Diff(naiveFind(pats, rest), scanAll(t, pats, rest)); diff != "" {
			t.Fatalf("patterns %q data %q (-naive +matcher):\n%s", pats, rest, diff)
		}
	})
}

// BenchmarkMatcher measures signature throughput: 1000 signatures over
// 1500-byte payloads, text-like and binary.
func BenchmarkMatcher(b *testing.B) {
	rnd := rand.New(rand.NewPCG(3, 5))
	for _, kind := range []struct {
		name     string
		alphabet int
	}{{"text", 64}, {"binary", 256}} {
		pats := make([][]byte, 1000)
		for i := range pats {
			p := make([]byte, 8+rnd.IntN(25))
			for j := range p {
				p[j] = byte(' ' + rnd.IntN(kind.alphabet))
			}
			pats[i] = p
		}
		m, err := newMatcher(pats)
		if err != nil {
			b.Fatal(err)
		}
		payload := make([]byte, 1500)
		for j := range payload {
			payload[j] = byte(' ' + rnd.IntN(kind.alphabet))
		}
		b.Run(fmt.Sprintf("%s/1000sigs/%dstates", kind.name, m.states()), func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			hits := 0
			for b.Loop() {
				m.scan(payload, func(_, _, _ int) bool { hits++; return true })
			}
		})
	}
}
