package sourceroute

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestDropNoticeRoundTrip(t *testing.T) {
	v := loadChainVectors(t)
	long := msrFrame(DefaultEtherType, []MAC{vsa1, vsa2, dm}, 0, append(append([]byte{}, v.Original...), bytes.Repeat([]byte{0xab}, 400)...))
	tests := []struct {
		name        string
		why         NoticeReason
		dropped     []byte
		wantDropped []byte
	}{
		{"policy deny, short frame", NoticePolicyDeny, v.ToVSA1, v.ToVSA1},
		{"signature, truncated to 256", NoticeSignature, long, long[:MaxNoticedBytes]},
		{"malformed, exactly 256", NoticeMalformed, long[:MaxNoticedBytes], long[:MaxNoticedBytes]},
		{"other, empty", NoticeOther, nil, []byte{}},
		{"undefined octet 7", NoticeReason(7), v.ToVSA1[:20], v.ToVSA1[:20]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := make([]byte, 1500)
			n, err := BuildDropNotice(buf, dm, vsa1, tt.why, tt.dropped)
			if err != nil {
				t.Fatal(err)
			}
			if want := noticeHeaderLen + len(tt.wantDropped); n != want {
				t.Fatalf("wrote %d bytes, want %d", n, want)
			}
			got, r := ParseDropNotice(buf[:n])
			if r != OK {
				t.Fatalf("ParseDropNotice: %v", r)
			}
			want := DropNotice{To: dm, From: vsa1, Why: tt.why, Dropped: tt.wantDropped}
			if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

// A notice about a frame with the longest default route still lets the DM
// parse the dropped frame and find its flow: that is why 256 bytes suffice.
func TestDropNoticeKeepsParsableFrame(t *testing.T) {
	inner := append(append([]byte{}, loadChainVectors(t).Original...), bytes.Repeat([]byte{1}, 1000)...)
	route := routeOf(DefaultMaxHops)
	dropped := msrFrame(DefaultEtherType, route, 3, inner)
	buf := make([]byte, 512)
	n, err := BuildDropNotice(buf, route[len(route)-1], route[3], NoticePolicyDeny, dropped)
	if err != nil {
		t.Fatal(err)
	}
	notice, r := ParseDropNotice(buf[:n])
	if r != OK {
		t.Fatal(r)
	}
	f, r := DefaultCodec().Parse(notice.Dropped)
	if r != OK {
		t.Fatalf("truncated dropped frame does not parse: %v", r)
	}
	if f.LastHop() != notice.To || f.Dst() != notice.From {
		t.Fatalf("notice To/From %s/%s, frame last hop/dst %s/%s", notice.To, notice.From, f.LastHop(), f.Dst())
	}
}

func TestBuildDropNoticeErrors(t *testing.T) {
	tests := []struct {
		name     string
		to, from MAC
		why      NoticeReason
		buf      int
		want     error
	}{
		{"multicast to", MAC{0x01, 0, 0x5e, 0, 0, 1}, vsa1, NoticeOther, 100, ErrBadHopAddress},
		{"zero from", dm, MAC{}, NoticeOther, 100, ErrBadHopAddress},
		{"reason 0", dm, vsa1, 0, 100, ErrBadNoticeReason},
		{"short buffer", dm, vsa1, NoticeOther, noticeHeaderLen + 9, ErrShortBuffer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := BuildDropNotice(make([]byte, tt.buf), tt.to, tt.from, tt.why, make([]byte, 10))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseDropNoticeRejects(t *testing.T) {
	ok := make([]byte, 1500)
	n, err := BuildDropNotice(ok, dm, vsa1, NoticeOther, make([]byte, MaxNoticedBytes))
	if err != nil {
		t.Fatal(err)
	}
	wrongType := append([]byte{}, ok[:n]...)
	wrongType[13] = 0xB5
	tests := []struct {
		name  string
		frame []byte
		want  Reason
	}{
		{"empty", nil, ReasonTruncated},
		{"no reason octet", ok[:EthernetHeaderLen], ReasonTruncated},
		{"reason only", ok[:noticeHeaderLen], OK},
		{"MSR EtherType", wrongType, ReasonEtherType},
		{"over 256 dropped bytes", ok[:n+1], ReasonTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, r := ParseDropNotice(tt.frame); r != tt.want {
				t.Fatalf("ParseDropNotice = %v, want %v", r, tt.want)
			}
		})
	}
}

func TestNoticeReasonNames(t *testing.T) {
	want := map[NoticeReason]string{1: "policy_deny", 2: "signature", 3: "malformed", 255: "other", 0: "unknown", 4: "unknown"}
	for r, s := range want {
		if r.String() != s {
			t.Errorf("NoticeReason(%d).String() = %q, want %q", r, r.String(), s)
		}
	}
}
