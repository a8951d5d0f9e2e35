package sourceroute

import (
	"bytes"
	"testing"
)

// seedTruncations adds every frame and every prefix of it, which reaches
// each early-exit branch of a parser.
func seedTruncations(f *testing.F, frames [][]byte) {
	for _, fr := range frames {
		for i := 0; i <= len(fr); i++ {
			f.Add(append([]byte{}, fr[:i]...))
		}
	}
}

func FuzzParse(f *testing.F) {
	seedTruncations(f, allVectorFrames(f))
	c := DefaultCodec()
	f.Fuzz(func(t *testing.T, data []byte) {
		// Parse a copy with zero spare capacity, followed in memory by a
		// guard, so a write past the frame would show in the guard.
		backing := make([]byte, len(data)+8)
		copy(backing, data)
		for i := len(data); i < len(backing); i++ {
			backing[i] = 0xa5
		}
		frame := backing[:len(data):len(data)]
		fr, r := c.Parse(frame)
		if r >= NumReasons {
			t.Fatalf("reason %d out of range", r)
		}
		if r != OK {
			if fr.Bytes() != nil {
				t.Fatal("rejected frame has a view")
			}
			return
		}
		checkSpecRules(t, c, frame)
		if fr.Num() != int(frame[14]) || fr.Next() != int(frame[15]) || len(fr.Inner()) != len(frame)-HeaderLen(fr.Num()) {
			t.Fatal("view disagrees with the frame")
		}

		before := append([]byte{}, frame...)
		self := fr.Dst()
		ar := c.Advance(fr, self)
		switch {
		case before[15]+1 == before[14]:
			if ar != ReasonPastLastHop || !bytes.Equal(before, frame) {
				t.Fatalf("Advance at last hop = %v (frame changed: %v)", ar, !bytes.Equal(before, frame))
			}
			inner, sr := c.Strip(fr, self)
			if sr != OK || !bytes.Equal(inner, before[HeaderLen(fr.Num()):]) {
				t.Fatalf("Strip at last hop by its dst = %v", sr)
			}
		default:
			if ar != OK {
				t.Fatalf("Advance = %v", ar)
			}
			want := append([]byte{}, before...)
			want[15]++
			next := int(want[15])
			copy(want[0:6], before[16+6*next:16+6*next+6])
			copy(want[6:12], self[:])
			if !bytes.Equal(want, frame) {
				t.Fatal("Advance did something other than next++, dst=route[next], src=self")
			}
			if _, r := c.Parse(frame); r != OK {
				t.Fatalf("advanced frame no longer parses: %v", r)
			}
			if _, sr := c.Strip(fr, fr.LastHop()); sr != OK && fr.AtLastHop() {
				t.Fatalf("Strip after reaching last hop = %v", sr)
			}
		}
		for i := len(data); i < len(backing); i++ {
			if backing[i] != 0xa5 {
				t.Fatal("codec wrote past the end of the frame")
			}
		}
	})
}

// checkSpecRules restates SOURCE-ROUTE.md's validation rules directly, as an
// oracle independent of Parse's implementation.
func checkSpecRules(t *testing.T, c Codec, b []byte) {
	t.Helper()
	if len(b) < 16 || uint16(b[12])<<8|uint16(b[13]) != c.etherType() {
		t.Fatal("rule 1 broken")
	}
	n, next := int(b[14]), int(b[15])
	if n == 0 || n > c.maxHops() {
		t.Fatal("rule 2 broken")
	}
	if next >= n {
		t.Fatal("rule 3 broken")
	}
	if len(b) < 16+6*n+14 {
		t.Fatal("rule 4 broken")
	}
	if !bytes.Equal(b[0:6], b[16+6*next:16+6*next+6]) {
		t.Fatal("rule 5 broken")
	}
	for i := 0; i < n; i++ {
		hop := b[16+6*i : 16+6*i+6]
		if hop[0]&1 == 1 || bytes.Equal(hop, make([]byte, 6)) {
			t.Fatal("rule 6 broken")
		}
	}
}

func FuzzParseDropNotice(f *testing.F) {
	var frames [][]byte
	for _, fr := range allVectorFrames(f) {
		buf := make([]byte, noticeHeaderLen+MaxNoticedBytes)
		n, err := BuildDropNotice(buf, dm, vsa1, NoticePolicyDeny, fr)
		if err != nil {
			f.Fatal(err)
		}
		frames = append(frames, buf[:n])
	}
	seedTruncations(f, frames)
	f.Add(make([]byte, noticeHeaderLen+MaxNoticedBytes+1))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, r := ParseDropNotice(data)
		if r != OK {
			return
		}
		if len(n.Dropped) > MaxNoticedBytes || len(data) != noticeHeaderLen+len(n.Dropped) {
			t.Fatalf("dropped part %d bytes of a %d-byte notice", len(n.Dropped), len(data))
		}
		// Re-encoding a notice with a defined reason and unicast ends gives
		// the same bytes back.
		if n.Why == 0 || !n.To.isUnicast() || !n.From.isUnicast() {
			return
		}
		buf := make([]byte, len(data))
		m, err := BuildDropNotice(buf, n.To, n.From, n.Why, n.Dropped)
		if err != nil || !bytes.Equal(buf[:m], data) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}
