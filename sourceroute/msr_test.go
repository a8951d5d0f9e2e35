package sourceroute

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestTwoVSAChainVectors(t *testing.T) {
	v := loadChainVectors(t)
	c := DefaultCodec()

	if got := HeaderLen(3); got != v.HeaderLength {
		t.Fatalf("HeaderLen(3) = %d, vector says %d", got, v.HeaderLength)
	}

	hdr := make([]byte, HeaderLen(DefaultMaxHops))
	n, err := c.BuildHeader(hdr, dm, []MAC{vsa1, vsa2, dm})
	if err != nil {
		t.Fatal(err)
	}
	if n != v.HeaderLength {
		t.Fatalf("BuildHeader wrote %d bytes, want %d", n, v.HeaderLength)
	}
	buf := make([]byte, 1500)
	n, r := Encapsulate(buf, hdr[:n], v.Original)
	if r != OK {
		t.Fatalf("Encapsulate: %v", r)
	}
	wire := buf[:n]
	if diff := cmp.Diff(v.ToVSA1, wire); diff != "" {
		t.Fatalf("DM encapsulation differs from vector (-want +got):\n%s", diff)
	}

	hops := []struct {
		self MAC
		want []byte
		name string
	}{
		{vsa1, v.VSA1ToVSA2, "vsa1_forwarded_to_vsa2"},
		{vsa2, v.VSA2ToDM, "vsa2_forwarded_to_dm"},
	}
	for _, h := range hops {
		f, r := c.Parse(wire)
		if r != OK {
			t.Fatalf("%s: Parse before advance: %v", h.name, r)
		}
		if f.HeaderLen() != v.HeaderLength {
			t.Errorf("%s: HeaderLen() = %d, want %d", h.name, f.HeaderLen(), v.HeaderLength)
		}
		if diff := cmp.Diff(v.Original, f.Inner()); diff != "" {
			t.Errorf("%s: inner frame (-want +got):\n%s", h.name, diff)
		}
		if r := c.Advance(f, h.self); r != OK {
			t.Fatalf("%s: Advance: %v", h.name, r)
		}
		if diff := cmp.Diff(h.want, wire); diff != "" {
			t.Fatalf("%s differs from vector (-want +got):\n%s", h.name, diff)
		}
	}

	if diff := cmp.Diff(v.Original, stripAtDM(t, c, wire)); diff != "" {
		t.Fatalf("stripped frame differs from original (-want +got):\n%s", diff)
	}
}

// stripAtDM is the DM's receive side of a frame back from its last VSA.
func stripAtDM(t *testing.T, c Codec, wire []byte) []byte {
	t.Helper()
	f, r := c.Parse(wire)
	if r != OK {
		t.Fatalf("Parse at DM: %v", r)
	}
	if !f.AtLastHop() {
		t.Fatal("frame returned to the DM is not at its last hop")
	}
	if r := c.Advance(f, dm); r != ReasonPastLastHop {
		t.Fatalf("Advance past the DM = %v, want %v", r, ReasonPastLastHop)
	}
	inner, r := c.Strip(f, dm)
	if r != OK {
		t.Fatalf("Strip: %v", r)
	}
	return inner
}

func TestParseInvalidVectors(t *testing.T) {
	want := map[string]Reason{
		"truncated_header_15_bytes":     ReasonTruncated,
		"wrong_ethertype":               ReasonEtherType,
		"num_zero":                      ReasonHopCount,
		"next_out_of_range":             ReasonNextOutOfRange,
		"route_array_truncated":         ReasonShortRoute,
		"missing_inner_ethernet_header": ReasonNoInnerFrame,
		"dst_not_route_next":            ReasonDstMismatch,
		"multicast_hop_in_route":        ReasonBadHopAddress,
	}
	keys, frames := loadInvalidVectors(t)
	seen := map[Reason]string{}
	for _, k := range keys {
		t.Run(k, func(t *testing.T) {
			exp, ok := want[k]
			if !ok {
				t.Fatalf("vector %q has no expected reason in this table", k)
			}
			f, r := DefaultCodec().Parse(frames[k])
			if r != exp {
				t.Fatalf("Parse = %v, want %v", r, exp)
			}
			if f.Bytes() != nil {
				t.Fatal("rejected frame returned a non-empty view")
			}
		})
		if prev, dup := seen[want[k]]; dup {
			t.Errorf("%q and %q share reason %v; each rule needs its own", prev, k, want[k])
		}
		seen[want[k]] = k
	}
	if len(keys) != len(want) {
		t.Errorf("file has %d vectors, table expects %d", len(keys), len(want))
	}
}

// msrFrame builds an MSR frame around inner for the given route and next
// index, with dst = route[next]; it does no validation so tests can make
// frames that break one rule at a time.
func msrFrame(etherType uint16, route []MAC, next int, inner []byte) []byte {
	b := make([]byte, HeaderLen(len(route)), HeaderLen(len(route))+len(inner))
	if next < len(route) {
		copy(b[0:6], route[next][:])
	}
	copy(b[6:12], dm[:])
	b[12], b[13] = byte(etherType>>8), byte(etherType)
	b[14], b[15] = byte(len(route)), byte(next)
	for i, h := range route {
		copy(b[hopOffset(i):], h[:])
	}
	return append(b, inner...)
}

func routeOf(n int) []MAC {
	r := make([]MAC, n)
	for i := range r {
		r[i] = MAC{0x02, 0, 0, 0, byte(i >> 8), byte(i + 1)}
	}
	return r
}

func TestParseVLANTaggedInner(t *testing.T) {
	v := loadChainVectors(t)
	orig := v.Original
	tag := func(tpid uint16, vid uint16) []byte {
		return []byte{byte(tpid >> 8), byte(tpid), byte(vid >> 8), byte(vid)}
	}
	// Tags go between the source MAC and the EtherType (offset 12).
	withTags := func(tags ...[]byte) []byte {
		out := append([]byte{}, orig[:12]...)
		for _, t := range tags {
			out = append(out, t...)
		}
		return append(out, orig[12:]...)
	}
	tests := []struct {
		name  string
		inner []byte
	}{
		{"untagged", orig},
		{"802.1Q vid 100", withTags(tag(0x8100, 100))},
		{"QinQ 802.1ad outer 10 inner 20", withTags(tag(0x88a8, 10), tag(0x8100, 20))},
		{"priority-tagged vid 0 pcp 5", withTags(tag(0x8100, 5<<13))},
		{"bare Ethernet header, no payload", orig[:EthernetHeaderLen]},
	}
	c := DefaultCodec()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := make([]byte, HeaderLen(3))
			n, err := c.BuildHeader(hdr, dm, []MAC{vsa1, vsa2, dm})
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2048)
			m, r := Encapsulate(buf, hdr[:n], tt.inner)
			if r != OK {
				t.Fatalf("Encapsulate: %v", r)
			}
			wire := buf[:m]
			for _, self := range []MAC{vsa1, vsa2} {
				f, r := c.Parse(wire)
				if r != OK {
					t.Fatalf("Parse: %v", r)
				}
				if r := c.Advance(f, self); r != OK {
					t.Fatalf("Advance(%s): %v", self, r)
				}
			}
			if diff := cmp.Diff(tt.inner, stripAtDM(t, c, wire)); diff != "" {
				t.Fatalf("inner frame changed (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseMaxHops(t *testing.T) {
	inner := loadChainVectors(t).Original
	tests := []struct {
		codec Codec
		hops  int
		want  Reason
	}{
		{DefaultCodec(), 1, OK},
		{DefaultCodec(), 16, OK},
		{DefaultCodec(), 17, ReasonHopCount},
		{Codec{}, 16, OK}, // zero codec means the defaults
		{Codec{}, 17, ReasonHopCount},
		{Codec{EtherType: DefaultEtherType, MaxHops: 4}, 4, OK},
		{Codec{EtherType: DefaultEtherType, MaxHops: 4}, 5, ReasonHopCount},
		{Codec{EtherType: DefaultEtherType, MaxHops: 255}, 255, OK},
		{Codec{EtherType: DefaultEtherType, MaxHops: 1000}, 255, OK}, // capped by the num octet
		{Codec{EtherType: DefaultEtherType, MaxHops: -1}, 17, ReasonHopCount},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("max%d/hops%d", tt.codec.MaxHops, tt.hops), func(t *testing.T) {
			route := routeOf(tt.hops)
			for _, next := range []int{0, tt.hops - 1} {
				if _, r := tt.codec.Parse(msrFrame(DefaultEtherType, route, next, inner)); r != tt.want {
					t.Errorf("next=%d: Parse = %v, want %v", next, r, tt.want)
				}
			}
			hdr := make([]byte, HeaderLen(tt.hops))
			_, err := tt.codec.BuildHeader(hdr, route[len(route)-1], route)
			if (tt.want == OK) != (err == nil) {
				t.Errorf("BuildHeader err = %v, want ok=%v", err, tt.want == OK)
			}
			if err != nil && !errors.Is(err, ErrRouteTooLong) {
				t.Errorf("BuildHeader err = %v, want ErrRouteTooLong", err)
			}
		})
	}
}

func TestParseCustomEtherType(t *testing.T) {
	inner := loadChainVectors(t).Original
	c := Codec{EtherType: 0x88B7, MaxHops: 8}
	frame := msrFrame(0x88B7, []MAC{vsa1, dm}, 0, inner)
	if _, r := c.Parse(frame); r != OK {
		t.Fatalf("custom EtherType: Parse = %v", r)
	}
	if _, r := DefaultCodec().Parse(frame); r != ReasonEtherType {
		t.Fatalf("default codec on custom EtherType: Parse = %v, want %v", r, ReasonEtherType)
	}
	hdr := make([]byte, HeaderLen(2))
	n, err := c.BuildHeader(hdr, dm, []MAC{vsa1, dm})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(frame[:HeaderLen(2)], hdr[:n]); diff != "" {
		t.Fatalf("BuildHeader with custom EtherType (-want +got):\n%s", diff)
	}
}

func TestNewCodec(t *testing.T) {
	tests := []struct {
		etherType uint16
		maxHops   int
		ok        bool
	}{
		{DefaultEtherType, DefaultMaxHops, true},
		{0x88B7, 1, true},
		{0x88B7, 255, true},
		{0, 16, false},
		{0x05DC, 16, false}, // an 802.3 length
		{DropNoticeEtherType, 16, false},
		{DefaultEtherType, 0, false},
		{DefaultEtherType, 256, false},
	}
	for _, tt := range tests {
		c, err := NewCodec(tt.etherType, tt.maxHops)
		if tt.ok {
			if err != nil {
				t.Errorf("NewCodec(%#x, %d): %v", tt.etherType, tt.maxHops, err)
			} else if c.EtherType != tt.etherType || c.MaxHops != tt.maxHops {
				t.Errorf("NewCodec(%#x, %d) = %+v", tt.etherType, tt.maxHops, c)
			}
			continue
		}
		if !errors.Is(err, ErrBadCodec) {
			t.Errorf("NewCodec(%#x, %d) err = %v, want ErrBadCodec", tt.etherType, tt.maxHops, err)
		}
	}
}

func TestParseRuleOrder(t *testing.T) {
	inner := loadChainVectors(t).Original
	good := []MAC{vsa1, vsa2, dm}
	zero := []MAC{vsa1, {}, dm}
	bcast := []MAC{vsa1, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, dm}
	tests := []struct {
		name  string
		frame []byte
		want  Reason
	}{
		{"empty", nil, ReasonTruncated},
		{"ok at hop 1", msrFrame(DefaultEtherType, good, 1, inner), OK},
		{"zero hop", msrFrame(DefaultEtherType, zero, 0, inner), ReasonBadHopAddress},
		{"broadcast hop", msrFrame(DefaultEtherType, bcast, 0, inner), ReasonBadHopAddress},
		// dst == route[next] is checked before the hop addresses, so a
		// zero current hop with a zero dst is still a bad hop address.
		{"zero current hop", msrFrame(DefaultEtherType, zero, 1, inner), ReasonBadHopAddress},
		// Truncation in the route wins over a dst mismatch that cannot be judged.
		{"short route, next beyond data", msrFrame(DefaultEtherType, good, 2, inner)[:HeaderLen(3)-1], ReasonShortRoute},
		{"exact header, no inner", msrFrame(DefaultEtherType, good, 0, nil), ReasonNoInnerFrame},
		{"inner 13 bytes", msrFrame(DefaultEtherType, good, 0, inner[:13]), ReasonNoInnerFrame},
		{"inner 14 bytes", msrFrame(DefaultEtherType, good, 0, inner[:14]), OK},
		{"num 255 next 254 short", msrFrame(DefaultEtherType, routeOf(255), 254, inner), ReasonHopCount},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, r := DefaultCodec().Parse(tt.frame); r != tt.want {
				t.Fatalf("Parse = %v, want %v", r, tt.want)
			}
		})
	}
}

func TestBuildHeaderErrors(t *testing.T) {
	mcast := MAC{0x01, 0x00, 0x5e, 0, 0, 1}
	tests := []struct {
		name  string
		self  MAC
		route []MAC
		buf   int
		want  error
	}{
		{"empty route", dm, nil, 64, ErrEmptyRoute},
		{"too long", routeOf(17)[16], routeOf(17), 256, ErrRouteTooLong},
		{"multicast hop", dm, []MAC{mcast, dm}, 64, ErrBadHopAddress},
		{"zero hop", dm, []MAC{{}, dm}, 64, ErrBadHopAddress},
		{"zero self", MAC{}, []MAC{vsa1, {}}, 64, ErrBadHopAddress},
		{"route not ending at self", dm, []MAC{vsa1, vsa2}, 64, ErrRouteNotToSelf},
		{"short buffer", dm, []MAC{vsa1, vsa2, dm}, HeaderLen(3) - 1, ErrShortBuffer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := bytes.Repeat([]byte{0xee}, tt.buf)
			n, err := DefaultCodec().BuildHeader(buf, tt.self, tt.route)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if n != 0 || !bytes.Equal(buf, bytes.Repeat([]byte{0xee}, tt.buf)) {
				t.Fatal("a failed BuildHeader wrote into the buffer")
			}
		})
	}
}

func TestEncapsulateNeverTruncates(t *testing.T) {
	v := loadChainVectors(t)
	hdr := v.ToVSA1[:v.HeaderLength]
	need := len(hdr) + len(v.Original)
	tests := []struct {
		name  string
		dst   int
		inner []byte
		want  Reason
	}{
		{"exact fit", need, v.Original, OK},
		{"one byte short", need - 1, v.Original, ReasonTooBig},
		{"no room at all", 0, v.Original, ReasonTooBig},
		{"inner without Ethernet header", need, v.Original[:13], ReasonNoInnerFrame},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := bytes.Repeat([]byte{0xee}, tt.dst)
			n, r := Encapsulate(dst, hdr, tt.inner)
			if r != tt.want {
				t.Fatalf("Encapsulate = %v, want %v", r, tt.want)
			}
			if r != OK {
				if n != 0 || !bytes.Equal(dst, bytes.Repeat([]byte{0xee}, tt.dst)) {
					t.Fatal("a rejected encapsulation wrote into the buffer")
				}
				return
			}
			if diff := cmp.Diff(v.ToVSA1, dst[:n]); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestAdvanceAndStripRejections(t *testing.T) {
	v := loadChainVectors(t)
	c := DefaultCodec()
	parse := func(b []byte) Frame {
		t.Helper()
		f, r := c.Parse(append([]byte{}, b...))
		if r != OK {
			t.Fatalf("Parse: %v", r)
		}
		return f
	}
	if r := c.Advance(Frame{}, vsa1); r == OK {
		t.Error("Advance on the zero Frame succeeded")
	}
	if _, r := c.Strip(Frame{}, dm); r == OK {
		t.Error("Strip on the zero Frame succeeded")
	}

	f := parse(v.ToVSA1)
	if r := c.Advance(f, vsa2); r != ReasonDstMismatch {
		t.Errorf("Advance by a VSA the frame is not addressed to = %v, want %v", r, ReasonDstMismatch)
	}
	if diff := cmp.Diff(v.ToVSA1, f.Bytes()); diff != "" {
		t.Errorf("rejected Advance modified the frame:\n%s", diff)
	}
	if _, r := c.Strip(f, dm); r != ReasonNotLastHop {
		t.Errorf("Strip at first hop = %v, want %v", r, ReasonNotLastHop)
	}

	f = parse(v.VSA2ToDM)
	if _, r := c.Strip(f, vsa2); r != ReasonNotLastHop {
		t.Errorf("Strip by a non-DM = %v, want %v", r, ReasonNotLastHop)
	}
	// A last hop that is not the DM (route ends at a VSA): the DM may not
	// strip a frame it did not route.
	odd := msrFrame(DefaultEtherType, []MAC{vsa1, vsa2}, 1, v.Original)
	f = parse(odd)
	if _, r := c.Strip(f, dm); r != ReasonNotLastHop {
		t.Errorf("Strip of a route not ending at the DM = %v, want %v", r, ReasonNotLastHop)
	}
	if r := c.Advance(f, vsa2); r != ReasonPastLastHop {
		t.Errorf("Advance at the last entry = %v, want %v", r, ReasonPastLastHop)
	}

	// Changing the num octet after Parse must not widen the view.
	f = parse(v.ToVSA1)
	f.Bytes()[14] = 200
	f.Bytes()[15] = 150
	if r := c.Advance(f, vsa1); r != ReasonNextOutOfRange {
		t.Errorf("Advance after next was corrupted = %v, want %v", r, ReasonNextOutOfRange)
	}
	if f.Num() != 3 || f.HeaderLen() != 34 {
		t.Errorf("view changed with the buffer: Num %d HeaderLen %d", f.Num(), f.HeaderLen())
	}
}

func TestFrameAccessors(t *testing.T) {
	v := loadChainVectors(t)
	f, r := DefaultCodec().Parse(v.VSA1ToVSA2)
	if r != OK {
		t.Fatal(r)
	}
	got := struct {
		Dst, Src, Hop0, Hop1, Hop2, Last MAC
		Num, Next, HeaderLen             int
		AtLast                           bool
	}{f.Dst(), f.Src(), f.Hop(0), f.Hop(1), f.Hop(2), f.LastHop(), f.Num(), f.Next(), f.HeaderLen(), f.AtLastHop()}
	want := got
	want.Dst, want.Src, want.Hop0, want.Hop1, want.Hop2, want.Last = vsa2, vsa1, vsa1, vsa2, dm, dm
	want.Num, want.Next, want.HeaderLen, want.AtLast = 3, 1, 34, false
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("Hop(3) on a 3-hop route did not panic")
		}
	}()
	f.Hop(3)
}

func TestMAC(t *testing.T) {
	tests := []struct {
		in      string
		want    MAC
		wantErr bool
	}{
		{"02:00:00:00:10:01", vsa1, false},
		{"02-00-00-00-0D-01", dm, false},
		{"ff:ff:ff:ff:ff:ff", MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, false},
		{"02:00:00:00:10", MAC{}, true},
		{"02:00:00:00:10:01:02:03", MAC{}, true},
		{"02:00-00:00:10:01", MAC{}, true},
		{"02.00.00.00.10.01", MAC{}, true},
		{"0g:00:00:00:10:01", MAC{}, true},
		{"", MAC{}, true},
	}
	for _, tt := range tests {
		got, err := ParseMAC(tt.in)
		if tt.wantErr {
			if !errors.Is(err, ErrBadMAC) {
				t.Errorf("ParseMAC(%q) err = %v, want ErrBadMAC", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseMAC(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	if s := dm.String(); s != "02:00:00:00:0d:01" {
		t.Errorf("String() = %q", s)
	}
	props := []struct {
		m               MAC
		zero, multicast bool
	}{
		{MAC{}, true, false},
		{vsa1, false, false},
		{MAC{0x01, 0, 0x5e, 0, 0, 1}, false, true},
		{MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, false, true},
		{MAC{0, 0, 0, 0, 0, 1}, false, false},
	}
	for _, p := range props {
		if p.m.IsZero() != p.zero || p.m.IsMulticast() != p.multicast {
			t.Errorf("%s: IsZero %v IsMulticast %v", p.m, p.m.IsZero(), p.m.IsMulticast())
		}
	}
	var m MAC
	if err := m.UnmarshalText([]byte("02:00:00:00:10:02")); err != nil || m != vsa2 {
		t.Errorf("UnmarshalText = %v, %v", m, err)
	}
}

func FuzzParseMAC(f *testing.F) {
	for _, s := range []string{"02:00:00:00:10:01", "02-00-00-00-0D-01", "", "zz:zz:zz:zz:zz:zz", "02:00-00:00:10:01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMAC(s)
		if err != nil {
			return
		}
		again, err := ParseMAC(m.String())
		if err != nil || again != m {
			t.Fatalf("%q -> %s does not round-trip: %v %v", s, m, again, err)
		}
	})
}

func TestReasonNames(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	seen := map[string]Reason{}
	for r := OK; r < NumReasons; r++ {
		s := r.String()
		if !snake.MatchString(s) || s == "unknown" {
			t.Errorf("Reason(%d).String() = %q, want a distinct snake_case label", r, s)
		}
		if prev, dup := seen[s]; dup {
			t.Errorf("Reason %d and %d share label %q", prev, r, s)
		}
		seen[s] = r
	}
	if NumReasons.String() != "unknown" {
		t.Errorf("NumReasons.String() = %q", NumReasons.String())
	}
}
