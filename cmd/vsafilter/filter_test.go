package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/sourceroute"
)

const filterTestConfig = `
[filter]
default = "deny"
malformed = "deny"

[[rule]]
name = "no-telnet"
action = "deny"
proto = "tcp"
dport = 23

[[rule]]
name = "quiet-deny"
action = "deny"
proto = "udp"
dport = 9
notify = false

[[rule]]
name = "web"
action = "allow"
proto = "tcp"
dport = [80, 443]

[[rule]]
name = "dns"
action = "allow"
proto = "udp"
dport = 53

[[signature]]
name = "evil"
pattern = "evil"

[[signature]]
name = "probe"
pattern = "GET /admin"
action = "alert"
proto = "tcp"
dport = 80

[[signature]]
name = "nop-sled"
hex = "90909090"
proto = "tcp"
`

func newTestFilter(t testing.TB, doc string, events slog.Handler) *filter {
	t.Helper()
	return newFilter(mustConfig(t, doc), events)
}

func TestFilterVerdicts(t *testing.T) {
	web := func(payload string) []byte {
		return eth(etherTypeIPv4, ipv4(protoTCP, "10.0.0.1", "10.0.0.2", tcp(40000, 80, []byte(payload))))
	}
	dns := func(payload string) []byte {
		return eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", udp(40000, 53, []byte(payload))))
	}
	cutTCP := eth(etherTypeIPv4, ipv4(protoTCP, "10.0.0.1", "10.0.0.2", make([]byte, 10)))
	tests := []struct {
		name    string
		frame   []byte
		want    appliance.Verdict
		counter string // which counter must have counted the frame
	}{
		{"allowed by rule", web("GET / HTTP/1.1"), appliance.Pass(), "rule:web"},
		{"denied by rule", eth(etherTypeIPv4, ipv4(protoTCP, "10.0.0.1", "10.0.0.2", tcp(1, 23, nil))), appliance.DropNotify(sourceroute.NoticePolicyDeny), "rule:no-telnet"},
		{"denied without notice", eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", udp(1, 9, nil))), appliance.Drop(), "rule:quiet-deny"},
		{"default deny", eth(etherTypeIPv6, ipv6(protoUDP, "fd00::1", "fd00::2", udp(1, 123, nil))), appliance.DropNotify(sourceroute.NoticePolicyDeny), "default"},
		{"signature drop", dns("this is evil stuff"), appliance.DropNotify(sourceroute.NoticeSignature), "signature:evil"},
		{"alert signature passes", web("GET /admin GET /admin"), appliance.Pass(), "signature:probe"},
		{"signature scoped to tcp does not apply to udp", dns("\x90\x90\x90\x90"), appliance.Pass(), "rule:dns"},
		{"scoped signature applies", web("\x90\x90\x90\x90\x90"), appliance.DropNotify(sourceroute.NoticeSignature), "signature:nop-sled"},
		// 10.0.0.1 is 0a000001: a signature must not see headers.
		{"headers are not payload", eth(etherTypeIPv4, ipv4(protoUDP, "101.118.105.108", "10.0.0.2", udp(1, 53, nil))), appliance.Pass(), "rule:dns"},
		{"malformed inner frame", cutTCP, appliance.DropNotify(sourceroute.NoticeMalformed), "malformed:tcp_bad_header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTestFilter(t, filterTestConfig, nil)
			got := f.Inspect(tt.frame, appliance.FrameMeta{})
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("verdict (-want +got):\n%s", diff)
			}
			counted := countersHit(f)
			if diff := cmp.Diff(map[string]uint64{tt.counter: 1}, counted); diff != "" {
				t.Errorf("counters (-want +got):\n%s", diff)
			}
			if !strings.HasPrefix(tt.counter, "malformed") {
				if b := bytesFor(f, tt.counter); b != uint64(len(tt.frame)) {
					t.Errorf("bytes of %s = %d, want %d", tt.counter, b, len(tt.frame))
				}
			}
		})
	}
}

// countersHit lists every non-zero hit counter of f.
func countersHit(f *filter) map[string]uint64 {
	s := f.stats()
	out := map[string]uint64{}
	if s.Default.Hits > 0 {
		out["default"] = s.Default.Hits
	}
	for _, r := range s.Rules {
		if r.Hits > 0 {
			out["rule:"+r.Name] = r.Hits
		}
	}
	for _, g := range s.Signatures {
		if g.Hits > 0 {
			out["signature:"+g.Name] = g.Hits
		}
	}
	for k, v := range s.Malformed {
		out["malformed:"+k] = v
	}
	// A signature hit also counts the rule that allowed the frame; the
	// table names the most specific counter, so drop the rule then.
	if len(out) == 2 {
		for k := range out {
			if strings.HasPrefix(k, "rule:") {
				delete(out, k)
			}
		}
	}
	return out
}

func bytesFor(f *filter, counter string) uint64 {
	s := f.stats()
	if counter == "default" {
		return s.Default.Bytes
	}
	for _, r := range s.Rules {
		if "rule:"+r.Name == counter {
			return r.Bytes
		}
	}
	for _, g := range s.Signatures {
		if "signature:"+g.Name == counter {
			return g.Bytes
		}
	}
	return 0
}

func TestMalformedAllowed(t *testing.T) {
	f := newTestFilter(t, "[filter]\nmalformed = \"allow\"", nil)
	frame := eth(etherTypeIPv4, []byte{0x45, 0})
	if v := f.Inspect(frame, appliance.FrameMeta{}); v != appliance.Pass() {
		t.Errorf("verdict %+v, want pass", v)
	}
	if got := f.stats().Malformed; !cmp.Equal(got, map[string]uint64{"ipv4_bad_header": 1}) {
		t.Errorf("malformed counters %v", got)
	}
}

func TestEventLogsAreRateLimited(t *testing.T) {
	var buf bytes.Buffer
	events := appliance.NewRateLimitedHandler(slog.NewJSONHandler(&buf, nil), time.Hour, 2)
	f := newTestFilter(t, "[[rule]]\nname = \"logged\"\naction = \"deny\"\nproto = \"udp\"\nlog = true", events)
	frame := eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", udp(1234, 53, nil)))
	meta := appliance.FrameMeta{From: sourceroute.MAC{2, 0, 0, 0, 0x0d, 1}, DM: sourceroute.MAC{2, 0, 0, 0, 0x0d, 1}}
	for range 10 {
		f.Inspect(frame, meta)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines for 10 hits with a burst of 2:\n%s", len(lines), buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	delete(rec, "time")
	want := map[string]any{"level": "WARN", "msg": "rule matched", "rule": "logged", "action": "deny", "from": "02:00:00:00:0d:01",
		"dm": "02:00:00:00:0d:01", "proto": "udp", "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1234.0, "dport": 53.0}
	if diff := cmp.Diff(want, rec); diff != "" {
		t.Errorf("event (-want +got):\n%s", diff)
	}
	if got := f.stats().Rules[0].Hits; got != 10 {
		t.Errorf("hits = %d, want 10 (logging must not limit counting)", got)
	}
}

func loadVectors(t testing.TB, name string) map[string][]byte {
	t.Helper()
	raw, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for k, v := range m {
		if s, ok := v.(string); ok {
			b, err := hex.DecodeString(s)
			if err != nil {
				t.Fatal(err)
			}
			out[k] = b
		}
	}
	return out
}

var (
	vsa1MAC = sourceroute.MAC{2, 0, 0, 0, 0x10, 1}
	vsa2MAC = sourceroute.MAC{2, 0, 0, 0, 0x10, 2}
	dmMAC   = sourceroute.MAC{2, 0, 0, 0, 0x0d, 1}
)

// runFilterAppliance runs an appliance with the filter of doc over an
// in-memory transport, feeds it frame and returns what it sent, if anything.
func runFilterAppliance(t *testing.T, self sourceroute.MAC, doc string, frame []byte) ([]byte, appliance.Counters) {
	t.Helper()
	tr := appliance.NewMemTransport(4)
	a, err := appliance.NewAppliance(appliance.ApplianceConfig{Self: self, Transport: tr, Inspector: newTestFilter(t, doc, nil), NotifyDrops: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if err := tr.Inject(ctx, frame); err != nil {
		t.Fatal(err)
	}
	// A marker frame for another MAC is ignored; once it is counted the
	// test frame has been fully handled, so nothing more can be sent.
	if err := tr.Inject(ctx, []byte{2, 9, 9, 9, 9, 9}); err != nil {
		t.Fatal(err)
	}
	for a.Counters().Ignored == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("frames not handled")
		case <-time.After(time.Millisecond):
		}
	}
	sendCtx, sendCancel := context.WithTimeout(ctx, time.Millisecond)
	defer sendCancel()
	out, _ := tr.Sent(sendCtx)
	return out, a.Counters()
}

// TestFilterInTheChain runs the two-VSA chain of SOURCE-ROUTE.md with
// vsafilter's inspector: what passes is forwarded byte for byte as the
// vectors say; a deny and a signature each produce a drop notice to the DM
// carrying the frame as received.
func TestFilterInTheChain(t *testing.T) {
	v := loadVectors(t, "two-vsa-chain.json")
	allowDNS := "[filter]\ndefault = \"deny\"\n[[rule]]\naction = \"allow\"\nproto = \"udp\"\ndst = \"10.0.0.2\"\ndport = 53\n"
	tests := []struct {
		name     string
		self     sourceroute.MAC
		doc      string
		in, want string
		notice   sourceroute.NoticeReason
	}{
		{"vsa1 forwards", vsa1MAC, allowDNS, "dm_encapsulated_to_vsa1", "vsa1_forwarded_to_vsa2", 0},
		{"vsa2 forwards", vsa2MAC, allowDNS + "[[signature]]\npattern = \"goodbye\"\n", "vsa1_forwarded_to_vsa2", "vsa2_forwarded_to_dm", 0},
		{"vsa1 denies", vsa1MAC, "[[rule]]\naction = \"deny\"\nsrc = \"10.0.0.1\"\n", "dm_encapsulated_to_vsa1", "", sourceroute.NoticePolicyDeny},
		{"vsa2 signature", vsa2MAC, "[[signature]]\npattern = \"hello\"\n", "vsa1_forwarded_to_vsa2", "", sourceroute.NoticeSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, c := runFilterAppliance(t, tt.self, tt.doc, v[tt.in])
			if tt.notice == 0 {
				if diff := cmp.Diff(hex.EncodeToString(v[tt.want]), hex.EncodeToString(out)); diff != "" {
					t.Errorf("forwarded (-want +got):\n%s", diff)
				}
				if c.Forwarded != 1 {
					t.Errorf("counters %+v", c)
				}
				return
			}
			n, reason := sourceroute.ParseDropNotice(out)
			if reason != sourceroute.OK {
				t.Fatalf("no drop notice (%v): %x", reason, out)
			}
			want := sourceroute.DropNotice{To: dmMAC, From: tt.self, Why: tt.notice, Dropped: v[tt.in]}
			if diff := cmp.Diff(want, n); diff != "" {
				t.Errorf("notice (-want +got):\n%s", diff)
			}
			if c.Dropped != 1 || c.NoticesSent != 1 || c.Forwarded != 0 {
				t.Errorf("counters %+v", c)
			}
		})
	}
}

// benchFilter is a realistic large policy: 100 rules of which the packet
// matches the last, and 1000 signatures none of which is in the payload.
func benchFilter(t testing.TB) (*filter, []byte) {
	rnd := rand.New(rand.NewPCG(1, 1))
	var doc strings.Builder
	for i := range 99 {
		fmt.Fprintf(&doc, "[[rule]]\naction = \"deny\"\nproto = \"tcp\"\nsrc = [\"10.%d.0.0/16\", \"fd%02x::/16\"]\ndport = \"1000-2000\"\n", i, i)
	}
	doc.WriteString("[[rule]]\naction = \"allow\"\nproto = \"udp\"\ndport = 53\n")
	for range 1000 {
		p := make([]byte, 8+rnd.IntN(25))
		for j := range p {
			p[j] = byte('a' + rnd.IntN(26))
		}
		fmt.Fprintf(&doc, "[[signature]]\npattern = %q\n", p)
	}
	payload := make([]byte, 1500-14-20-8)
	for j := range payload {
		payload[j] = byte('a' + rnd.IntN(26))
	}
	return newTestFilter(t, doc.String(), nil), eth(etherTypeIPv4, ipv4(protoUDP, "192.0.2.1", "10.0.0.2", udp(1, 53, payload)))
}

func TestInspectAllocatesNothing(t *testing.T) {
	f, frame := benchFilter(t)
	exhausted := appliance.NewRateLimitedHandler(slog.NewJSONHandler(&bytes.Buffer{}, nil), time.Hour, 1)
	exhausted.Enabled(context.Background(), slog.LevelWarn)
	logged := newTestFilter(t, strings.ReplaceAll(filterTestConfig, "name = ", "log = true\nname = "), exhausted)
	if !logged.rules[0].log || !logged.signatures[1].log {
		t.Fatal("logging not enabled in the test policy")
	}
	frames := map[string]struct {
		f     *filter
		frame []byte
	}{
		"pass after 100 rules and 1000 signatures": {f, frame},
		"signature drop":                  {logged, eth(etherTypeIPv4, ipv4(protoTCP, "10.0.0.1", "10.0.0.2", tcp(1, 80, []byte("\x90\x90\x90\x90"))))},
		"rule deny":                       {logged, eth(etherTypeIPv4, ipv4(protoTCP, "10.0.0.1", "10.0.0.2", tcp(1, 23, nil)))},
		"malformed":                       {logged, eth(etherTypeIPv4, []byte{0x45})},
		"alert with its log rate-limited": {logged, eth(etherTypeIPv4, ipv4(protoTCP, "10.0.0.1", "10.0.0.2", tcp(1, 80, []byte("GET /admin"))))},
	}
	for name, c := range frames {
		if allocs := testing.AllocsPerRun(200, func() { c.f.Inspect(c.frame, appliance.FrameMeta{}) }); allocs != 0 {
			t.Errorf("%s: %v allocations per frame, want 0", name, allocs)
		}
	}
}

// BenchmarkInspect is vsafilter's per-frame cost for a 1500-byte frame:
// parse, 100 rules, one pass of 1000 signatures over the payload.
func BenchmarkInspect(b *testing.B) {
	f, frame := benchFilter(b)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if v := f.Inspect(frame, appliance.FrameMeta{}); v.Action != appliance.ActionPass {
			b.Fatal(v)
		}
	}
}
