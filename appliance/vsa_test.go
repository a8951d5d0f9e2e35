package appliance

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/sourceroute"
)

// The chain of SOURCE-ROUTE.md's test vectors.
var (
	vsa1 = mustMAC("02:00:00:00:10:01")
	vsa2 = mustMAC("02:00:00:00:10:02")
	dm   = mustMAC("02:00:00:00:0d:01")
)

func mustMAC(s string) sourceroute.MAC {
	m, err := sourceroute.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// loadVectors reads a JSON object of hex strings from testdata (a copy of
// the shared test vectors of SOURCE-ROUTE.md).
func loadVectors(t testing.TB, name string) map[string][]byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	out := make(map[string][]byte)
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			continue
		}
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatalf("%s: %s: %v", name, k, err)
		}
		out[k] = b
	}
	return out
}

// recorder is a Transport that keeps copies of what is written and can be
// told to fail writes.
type recorder struct {
	sent    [][]byte
	failErr error
}

func (r *recorder) ReadFrame(ctx context.Context, buf []byte) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

func (r *recorder) WriteFrame(_ context.Context, frame []byte) error {
	if r.failErr != nil {
		return r.failErr
	}
	r.sent = append(r.sent, append([]byte(nil), frame...))
	return nil
}

func newTestAppliance(t testing.TB, self sourceroute.MAC, insp Inspector, notify bool) (*Appliance, *recorder) {
	t.Helper()
	rec := &recorder{}
	a, err := NewAppliance(ApplianceConfig{Self: self, Transport: rec, Inspector: insp, NotifyDrops: notify})
	if err != nil {
		t.Fatal(err)
	}
	return a, rec
}

// feed hands frame to the appliance's core as if it had been received into
// its buffer.
func feed(a *Appliance, frame []byte) {
	n := copy(a.buf, frame)
	a.handle(context.Background(), a.buf[:n])
}

var passAll = InspectorFunc(func([]byte, FrameMeta) Verdict { return Pass() })

func TestChainForwardsAsSpecified(t *testing.T) {
	v := loadVectors(t, "two-vsa-chain.json")
	steps := []struct {
		self    sourceroute.MAC
		in, out string
		meta    FrameMeta
	}{
		{vsa1, "dm_encapsulated_to_vsa1", "vsa1_forwarded_to_vsa2", FrameMeta{From: dm, DM: dm, Hop: 0, Hops: 3}},
		{vsa2, "vsa1_forwarded_to_vsa2", "vsa2_forwarded_to_dm", FrameMeta{From: vsa1, DM: dm, Hop: 1, Hops: 3}},
	}
	for _, s := range steps {
		t.Run(s.in, func(t *testing.T) {
			var gotInner []byte
			var gotMeta FrameMeta
			a, rec := newTestAppliance(t, s.self, InspectorFunc(func(inner []byte, m FrameMeta) Verdict {
				gotInner, gotMeta = append([]byte(nil), inner...), m
				return Pass()
			}), true)
			feed(a, v[s.in])
			if len(rec.sent) != 1 {
				t.Fatalf("sent %d frames, want 1", len(rec.sent))
			}
			if diff := cmp.Diff(hex.EncodeToString(v[s.out]), hex.EncodeToString(rec.sent[0])); diff != "" {
				t.Errorf("forwarded frame (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(v["original_frame"], gotInner); diff != "" {
				t.Errorf("inner frame given to the inspector (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(s.meta, gotMeta); diff != "" {
				t.Errorf("FrameMeta (-want +got):\n%s", diff)
			}
			want := Counters{Received: 1, Forwarded: 1}
			if diff := cmp.Diff(want, a.Counters()); diff != "" {
				t.Errorf("counters (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInvalidFramesAreCountedNotForwarded(t *testing.T) {
	inv := loadVectors(t, "invalid-frames.json")
	chain := loadVectors(t, "two-vsa-chain.json")
	tests := []struct {
		name   string
		frame  []byte
		self   sourceroute.MAC
		reason sourceroute.Reason
	}{
		{"truncated_header_15_bytes", inv["truncated_header_15_bytes"], vsa1, sourceroute.ReasonTruncated},
		{"num_zero", inv["num_zero"], vsa1, sourceroute.ReasonHopCount},
		{"next_out_of_range", inv["next_out_of_range"], vsa1, sourceroute.ReasonNextOutOfRange},
		{"route_array_truncated", inv["route_array_truncated"], vsa1, sourceroute.ReasonShortRoute},
		{"missing_inner_ethernet_header", inv["missing_inner_ethernet_header"], vsa1, sourceroute.ReasonNoInnerFrame},
		// Its dst is VSA2 while route[next] is VSA1: VSA2 must refuse it.
		{"dst_not_route_next", inv["dst_not_route_next"], vsa2, sourceroute.ReasonDstMismatch},
		{"multicast_hop_in_route", inv["multicast_hop_in_route"], vsa1, sourceroute.ReasonBadHopAddress},
		{"wrong_ethertype", inv["wrong_ethertype"], vsa1, sourceroute.ReasonEtherType},
		// A VSA listed as the last entry must not forward past it.
		{"addressed_at_last_hop", chain["vsa2_forwarded_to_dm"], dm, sourceroute.ReasonPastLastHop},
		{"shorter_than_a_mac", []byte{2, 0, 0}, vsa1, sourceroute.ReasonTruncated},
	}
	if len(inv) != 8 {
		t.Fatalf("invalid-frames.json has %d vectors, the table covers 8", len(inv))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inspected := false
			a, rec := newTestAppliance(t, tt.self, InspectorFunc(func([]byte, FrameMeta) Verdict {
				inspected = true
				return Pass()
			}), true)
			feed(a, tt.frame)
			if len(rec.sent) != 0 {
				t.Errorf("sent %d frames, want none", len(rec.sent))
			}
			if inspected {
				t.Error("an invalid frame reached the inspector")
			}
			var want Counters
			want.Received = 1
			want.Invalid[tt.reason] = 1
			if diff := cmp.Diff(want, a.Counters()); diff != "" {
				t.Errorf("counters (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFramesForOthersAreIgnored(t *testing.T) {
	v := loadVectors(t, "two-vsa-chain.json")
	a, rec := newTestAppliance(t, vsa2, passAll, true)
	feed(a, v["dm_encapsulated_to_vsa1"])
	feed(a, v["original_frame"])
	if len(rec.sent) != 0 {
		t.Errorf("sent %d frames, want none", len(rec.sent))
	}
	if diff := cmp.Diff(Counters{Received: 2, Ignored: 2}, a.Counters()); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
}

func TestDropVerdicts(t *testing.T) {
	v := loadVectors(t, "two-vsa-chain.json")
	in := v["dm_encapsulated_to_vsa1"]
	big := append(append([]byte(nil), in...), bytes.Repeat([]byte{0xab}, 400)...)
	tests := []struct {
		name       string
		frame      []byte
		verdict    Verdict
		notify     bool
		wantNotice bool
	}{
		{"notice", in, DropNotify(sourceroute.NoticeSignature), true, true},
		{"notice truncated to 256 bytes", big, DropNotify(sourceroute.NoticePolicyDeny), true, true},
		{"notices disabled", in, DropNotify(sourceroute.NoticeSignature), false, false},
		{"silent drop", in, Drop(), true, false},
		{"unknown action fails closed", in, Verdict{Action: 42, Notice: sourceroute.NoticeOther}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, rec := newTestAppliance(t, vsa1, InspectorFunc(func([]byte, FrameMeta) Verdict { return tt.verdict }), tt.notify)
			feed(a, tt.frame)
			want := Counters{Received: 1, Dropped: 1}
			if tt.wantNotice {
				want.NoticesSent = 1
				if len(rec.sent) != 1 {
					t.Fatalf("sent %d frames, want the notice only", len(rec.sent))
				}
				n, reason := sourceroute.ParseDropNotice(rec.sent[0])
				if reason != sourceroute.OK {
					t.Fatalf("notice does not parse: %v", reason)
				}
				wantDropped := tt.frame[:min(len(tt.frame), sourceroute.MaxNoticedBytes)]
				wantN := sourceroute.DropNotice{To: dm, From: vsa1, Why: tt.verdict.Notice, Dropped: wantDropped}
				if diff := cmp.Diff(wantN, n); diff != "" {
					t.Errorf("notice (-want +got):\n%s", diff)
				}
			} else if len(rec.sent) != 0 {
				t.Errorf("sent %d frames, want none", len(rec.sent))
			}
			if diff := cmp.Diff(want, a.Counters()); diff != "" {
				t.Errorf("counters (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRewriteVerdicts(t *testing.T) {
	v := loadVectors(t, "two-vsa-chain.json")
	in, fwd := v["dm_encapsulated_to_vsa1"], v["vsa1_forwarded_to_vsa2"]
	hdr := sourceroute.HeaderLen(3)
	tail := []byte{0xde, 0xad, 0xbe, 0xef}
	tests := []struct {
		name    string
		rewrite func(inner []byte) Verdict
		want    []byte // forwarded frame; nil: nothing sent
		reason  sourceroute.Reason
	}{
		{
			name: "same length",
			rewrite: func(inner []byte) Verdict {
				inner[len(inner)-1] = 'O' // "hellO"
				return Rewrite(0)
			},
			want: append(append([]byte(nil), fwd[:len(fwd)-1]...), 'O'),
		},
		{
			name: "grown into spare capacity",
			rewrite: func(inner []byte) Verdict {
				n := copy(inner[len(inner):cap(inner)], tail)
				return Rewrite(len(inner) + n)
			},
			want: append(append([]byte(nil), fwd...), tail...),
		},
		{
			name:    "shrunk to the inner Ethernet header",
			rewrite: func([]byte) Verdict { return Rewrite(sourceroute.EthernetHeaderLen) },
			want:    fwd[:hdr+sourceroute.EthernetHeaderLen],
		},
		{
			name:    "shrunk below an Ethernet header",
			rewrite: func([]byte) Verdict { return Rewrite(sourceroute.EthernetHeaderLen - 1) },
			reason:  sourceroute.ReasonNoInnerFrame,
		},
		{
			name:    "grown past the buffer",
			rewrite: func(inner []byte) Verdict { return Rewrite(cap(inner) + 1) },
			reason:  sourceroute.ReasonTooBig,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, rec := newTestAppliance(t, vsa1, InspectorFunc(func(inner []byte, _ FrameMeta) Verdict { return tt.rewrite(inner) }), true)
			feed(a, in)
			want := Counters{Received: 1}
			if tt.want != nil {
				want.Forwarded, want.Rewritten = 1, 1
				if len(rec.sent) != 1 {
					t.Fatalf("sent %d frames, want 1", len(rec.sent))
				}
				if diff := cmp.Diff(tt.want, rec.sent[0]); diff != "" {
					t.Errorf("forwarded (-want +got):\n%s", diff)
				}
			} else {
				want.Invalid[tt.reason] = 1
				if len(rec.sent) != 0 {
					t.Errorf("sent %d frames, want none", len(rec.sent))
				}
			}
			if diff := cmp.Diff(want, a.Counters()); diff != "" {
				t.Errorf("counters (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSendFailures(t *testing.T) {
	v := loadVectors(t, "two-vsa-chain.json")
	tooBig := Counters{Received: 1}
	tooBig.Invalid[sourceroute.ReasonTooBig] = 1
	tests := []struct {
		name string
		err  error
		want Counters
	}{
		{"over the MTU", ErrFrameTooBig, tooBig},
		{"link error", errors.New("link down"), Counters{Received: 1, SendErrors: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, rec := newTestAppliance(t, vsa1, passAll, true)
			rec.failErr = tt.err
			feed(a, v["dm_encapsulated_to_vsa1"])
			if diff := cmp.Diff(tt.want, a.Counters()); diff != "" {
				t.Errorf("counters (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("notice", func(t *testing.T) {
		a, rec := newTestAppliance(t, vsa1, InspectorFunc(func([]byte, FrameMeta) Verdict { return DropNotify(sourceroute.NoticePolicyDeny) }), true)
		rec.failErr = errors.New("link down")
		feed(a, v["dm_encapsulated_to_vsa1"])
		if diff := cmp.Diff(Counters{Received: 1, Dropped: 1, NoticeErrors: 1}, a.Counters()); diff != "" {
			t.Errorf("counters (-want +got):\n%s", diff)
		}
	})
}

func TestNewApplianceRejectsBadConfig(t *testing.T) {
	tr := NewMemTransport(1)
	tests := []struct {
		name string
		cfg  ApplianceConfig
		want string
	}{
		{"zero self", ApplianceConfig{Transport: tr, Inspector: passAll}, "not a unicast MAC"},
		{"multicast self", ApplianceConfig{Self: mustMAC("01:00:5e:00:00:01"), Transport: tr, Inspector: passAll}, "not a unicast MAC"},
		{"no transport", ApplianceConfig{Self: vsa1, Inspector: passAll}, "no transport"},
		{"no inspector", ApplianceConfig{Self: vsa1, Transport: tr}, "no inspector"},
		{"tiny buffer", ApplianceConfig{Self: vsa1, Transport: tr, Inspector: passAll, BufferSize: 20}, "buffer size 20"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewAppliance(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewAppliance error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestRunOverMemTransport drives Run itself: frames in, forwards out, a
// frame bigger than the buffer counted, and a clean stop on cancel.
func TestRunOverMemTransport(t *testing.T) {
	v := loadVectors(t, "two-vsa-chain.json")
	tr := NewMemTransport(8)
	a, err := NewAppliance(ApplianceConfig{Self: vsa1, Transport: tr, Inspector: passAll, BufferSize: 128})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()

	for _, f := range [][]byte{v["dm_encapsulated_to_vsa1"], make([]byte, 129), v["dm_encapsulated_to_vsa1"]} {
		if err := tr.Inject(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		got, err := tr.Sent(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(v["vsa1_forwarded_to_vsa2"], got); diff != "" {
			t.Errorf("forward %d (-want +got):\n%s", i, diff)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v, want nil", err)
	}
	want := Counters{Received: 3, Forwarded: 2}
	want.Invalid[sourceroute.ReasonTooBig] = 1
	if diff := cmp.Diff(want, a.Counters()); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
}

func TestRunStopsWhenTransportCloses(t *testing.T) {
	tr := NewMemTransport(1)
	a, err := NewAppliance(ApplianceConfig{Self: vsa1, Transport: tr, Inspector: passAll})
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
	if err := a.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run on a closed transport = %v, want ErrClosed", err)
	}
}

func TestRateLimitedHandler(t *testing.T) {
	var out bytes.Buffer
	h := NewRateLimitedHandler(slog.NewJSONHandler(&out, nil), time.Hour, 2)
	log := slog.New(h).With("component", "test")
	for i := 0; i < 5; i++ {
		log.Info("flood", "i", i)
	}
	// Refill one token as if an hour had passed, then log once more.
	b := h.(*rateLimitedHandler).b
	b.mu.Lock()
	b.last = b.last.Add(-time.Hour)
	b.mu.Unlock()
	log.Info("after")

	var got []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		delete(m, "time")
		got = append(got, m)
	}
	want := []map[string]any{
		{"level": "INFO", "msg": "flood", "component": "test", "i": 0.0},
		{"level": "INFO", "msg": "flood", "component": "test", "i": 1.0},
		{"level": "INFO", "msg": "after", "component": "test", "suppressed": 3.0},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("log records (-want +got):\n%s", diff)
	}
}
