package hookapi

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/internal/config"
)

func testConfig(t testing.TB, failure string) *config.Config {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "vsagent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte(`hook_failure = "closed"`), []byte(`hook_failure = "`+failure+`"`), 1)
	cfg, err := config.Parse("vsagent.toml", data, "testdata")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// domainXML is a guest as libvirt hands it to the hook; binding, if not
// empty, is put in its metadata.
func domainXML(name, binding string) string {
	meta := ""
	if binding != "" {
		meta = `<metadata><vs:binding xmlns:vs="` + BindingNamespace + `" policy="` + binding + `"/></metadata>`
	}
	return `<domain type='qemu'><name>` + name + `</name><uuid>6f1b3f0e-1c1d-4b51-9a53-0d1e6f3c2a11</uuid>` + meta +
		`<devices><interface type='ethernet'><mac address='52:54:00:12:34:56'/><target dev='vnet7'/></interface></devices></domain>`
}

func TestReadRequest(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Request
		wantErr  string
	}{
		{name: "start", in: `{"domain":"web-1","op":"start","sub_op":"begin","xml":"<domain/>"}`,
			want: Request{Domain: "web-1", Op: "start", SubOp: "begin", XML: "<domain/>"}},
		{name: "extra and unknown field", in: `{"domain":"d","op":"migrate","sub_op":"begin","extra":"-","xml":"<x/>","later":1}`,
			want: Request{Domain: "d", Op: "migrate", SubOp: "begin", Extra: "-", XML: "<x/>"}},
		{name: "not json", in: `start web-1`, wantErr: "malformed hook request: invalid character"},
		{name: "no domain", in: `{"op":"start","sub_op":"begin","xml":"<x/>"}`, wantErr: "no domain name"},
		{name: "phase not forwarded", in: `{"domain":"d","op":"stopped","sub_op":"end","xml":"<x/>"}`, wantErr: `phase "stopped" "end"`},
		{name: "no xml", in: `{"domain":"d","op":"prepare","sub_op":"begin"}`, wantErr: "no domain XML"},
		{name: "too big", in: `{"domain":"` + strings.Repeat("a", MaxMessage+1) + `"}`, wantErr: "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadRequest(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ReadRequest error = %v, want ErrBadRequest containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("request (-want +got):\n%s", d)
			}
		})
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add([]byte(`{"domain":"web-1","op":"start","sub_op":"begin","xml":"<domain/>"}`))
	f.Add([]byte(`{"domain":1}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := ReadRequest(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not match ErrBadRequest", err)
			}
			return
		}
		if req.Domain == "" || req.XML == "" || !Forwarded(req.Op, req.SubOp) {
			t.Fatalf("accepted an incomplete request %+v", req)
		}
	})
}

func TestBindingOf(t *testing.T) {
	for _, tc := range []struct {
		name, meta, want string
		wantErr          bool
	}{
		{name: "none"},
		{name: "binding", meta: `<vs:binding xmlns:vs="` + BindingNamespace + `" policy=" web "/>`, want: "web"},
		{name: "default namespace", meta: `<binding xmlns="` + BindingNamespace + `" policy="db"/>`, want: "db"},
		{name: "other namespace", meta: `<binding xmlns="https://example.com/x" policy="db"/>`},
		{name: "nested is not a binding", meta: `<o:x xmlns:o="https://example.com/o"><binding xmlns="` + BindingNamespace + `" policy="db"/></o:x>`},
		{name: "after another element", meta: `<o:x xmlns:o="https://example.com/o"/><vs:binding xmlns:vs="` + BindingNamespace + `" policy="db"/>`, want: "db"},
		{name: "broken", meta: `<vs:binding xmlns:vs="` + BindingNamespace + `" policy="db">`, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			xml := `<domain type='qemu'><name>g</name>`
			if tc.meta != "" {
				xml += `<metadata>` + tc.meta + `</metadata>`
			}
			g, err := ResolveGuest(testConfig(t, "closed"), Request{Domain: "g", XML: xml + `</domain>`})
			if tc.wantErr {
				// libvirtxml already refuses a broken document.
				if err == nil && g.Resolution.Err == nil {
					t.Fatal("broken metadata accepted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := BindingOf(g.Domain)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("binding = %q, want %q", got, tc.want)
			}
		})
	}
}

func FuzzResolveGuest(f *testing.F) {
	cfg := testConfig(f, "closed")
	f.Add("web-1", domainXML("web-1", ""))
	f.Add("g", domainXML("g", "web"))
	f.Add("g", domainXML("g", "nope"))
	f.Add("g", `<domain><metadata><binding xmlns="`+BindingNamespace+`"`)
	f.Fuzz(func(t *testing.T, name, xml string) {
		g, err := ResolveGuest(cfg, Request{Domain: name, Op: OpStart, SubOp: "begin", XML: xml})
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not match ErrBadRequest", err)
			}
			return
		}
		a := Fallback(cfg, Request{Domain: name, Op: OpStart, SubOp: "begin", XML: xml}, ErrUnreachable)
		if g.NeedsInspection() != (a.Verdict == Refuse) {
			t.Fatalf("fail-closed fallback for %+v is %+v", g.Resolution, a)
		}
	})
}

func TestFallback(t *testing.T) {
	cause := errors.New("no such socket")
	for _, tc := range []struct {
		name, failure, op, dom, binding string
		want                            Verdict
		wantMsg                         string
	}{
		{name: "unmanaged guest starts", failure: "closed", op: OpStart, dom: "db-1", want: Allow},
		{name: "policy by glob, closed", failure: "closed", op: OpStart, dom: "web-1", want: Refuse, wantMsg: `refusing start of guest web-1: it needs inspection (policy "web"`},
		{name: "policy by binding, closed", failure: "closed", op: OpPrepare, dom: "db-1", binding: "web", want: Refuse, wantMsg: "no such socket"},
		{name: "unknown bound policy, closed", failure: "closed", op: OpMigrate, dom: "db-1", binding: "nope", want: Refuse, wantMsg: `policy "nope"`},
		{name: "policy, open", failure: "open", op: OpStart, dom: "web-1", want: Allow, wantMsg: "UNINSPECTED"},
		{name: "unmanaged, open", failure: "open", op: OpStart, dom: "db-1", want: Allow},
		{name: "phase not forwarded", failure: "closed", op: OpStopped, dom: "web-1", want: Allow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := Fallback(testConfig(t, tc.failure), Request{Domain: tc.dom, Op: tc.op, SubOp: "begin", XML: domainXML(tc.dom, tc.binding)}, cause)
			if a.Verdict != tc.want || !strings.Contains(a.Message, tc.wantMsg) || (tc.wantMsg == "") != (a.Message == "") {
				t.Errorf("Fallback = %+v, want %s with a message containing %q", a, tc.want, tc.wantMsg)
			}
		})
	}
	a := Fallback(testConfig(t, "closed"), Request{Domain: "x", Op: OpStart, SubOp: "begin", XML: "<domain"}, cause)
	if a.Verdict != Refuse || !strings.Contains(a.Message, "cannot be read") {
		t.Errorf("unreadable XML: %+v, want a refusal saying so", a)
	}
}

// fakeAgent records what the handler asks and fails when told to.
type fakeAgent struct {
	cfg  *config.Config
	fail error
	mu   sync.Mutex
	got  []string
}

func (f *fakeAgent) Config() *config.Config { return f.cfg }
func (f *fakeAgent) HookPrepare(_ context.Context, g Guest) error {
	return f.record("prepare " + g.Domain.Name + " " + g.PolicyName())
}
func (f *fakeAgent) HookStart(_ context.Context, g Guest) error {
	return f.record("start " + g.Domain.Name + " " + g.PolicyName())
}
func (f *fakeAgent) record(s string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, s)
	return f.fail
}

func serve(t *testing.T, h HandlerFunc) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the hook socket answers root only; run as root")
	}
	sock := filepath.Join(t.TempDir(), "hook.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, h, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

func TestServeAndAsk(t *testing.T) {
	fa := &fakeAgent{cfg: testConfig(t, "closed")}
	sock := serve(t, NewHandler(fa))
	ctx := context.Background()
	for _, tc := range []struct {
		req      Request
		want     Verdict
		wantCall string
	}{
		{req: Request{Domain: "web-1", Op: OpPrepare, SubOp: "begin", XML: domainXML("web-1", "")}, want: Allow, wantCall: "prepare web-1 web"},
		{req: Request{Domain: "web-1", Op: OpStart, SubOp: "begin", XML: domainXML("web-1", "")}, want: Allow, wantCall: "start web-1 web"},
		{req: Request{Domain: "db-1", Op: OpStart, SubOp: "begin", XML: domainXML("db-1", "")}, want: Allow},
		{req: Request{Domain: "db-1", Op: OpStart, SubOp: "begin", XML: domainXML("db-1", "nope")}, want: Allow, wantCall: "start db-1 nope"},
		{req: Request{Domain: "web-1", Op: OpMigrate, SubOp: "begin", XML: domainXML("web-1", "")}, want: Allow},
		{req: Request{Domain: "web-1", Op: OpStart, SubOp: "begin", XML: "<domain"}, want: Refuse},
		{req: Request{Domain: "web-1", Op: OpStopped, SubOp: "end", XML: domainXML("web-1", "")}, want: Refuse},
	} {
		fa.got = nil
		a, err := Ask(ctx, sock, tc.req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.req.Op, tc.req.Domain, err)
		}
		if a.Verdict != tc.want || a.XML != "" {
			t.Errorf("%s %s: answer %+v, want %s without XML", tc.req.Op, tc.req.Domain, a, tc.want)
		}
		var want []string
		if tc.wantCall != "" {
			want = []string{tc.wantCall}
		}
		if d := cmp.Diff(want, fa.got); d != "" {
			t.Errorf("%s %s: agent calls (-want +got):\n%s", tc.req.Op, tc.req.Domain, d)
		}
	}

	fa.fail = errors.New("tc refused")
	a, err := Ask(ctx, sock, Request{Domain: "web-1", Op: OpStart, SubOp: "begin", XML: domainXML("web-1", "")})
	if err != nil {
		t.Fatal(err)
	}
	if a.Verdict != Refuse || !strings.Contains(a.Message, "tc refused") || !strings.Contains(a.Message, `policy "web"`) {
		t.Errorf("failing hold: answer %+v, want a refusal naming the policy and the cause", a)
	}
}

func TestAskUnreachable(t *testing.T) {
	req := Request{Domain: "web-1", Op: OpStart, SubOp: "begin", XML: domainXML("web-1", "")}
	_, err := Ask(context.Background(), filepath.Join(t.TempDir(), "missing.sock"), req)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "is vsagent running?") {
		t.Errorf("missing socket: %v, want ErrUnreachable saying so", err)
	}

	// An agent that accepts and never answers: the caller's deadline ends
	// the wait, and the hook falls back.
	release := make(chan struct{})
	sock := serve(t, func(ctx context.Context, _ Request) Answer {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return Answer{Verdict: Allow}
	})
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = Ask(ctx, sock, req)
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("silent agent: %v, want ErrUnreachable", err)
	}

	// Something that is not the agent.
	other := filepath.Join(t.TempDir(), "other.sock")
	ln, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			// Read what the client sends before answering, as a real server
			// would: closing first races the client's write (broken pipe).
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, _ = c.Read(make([]byte, 64<<10))
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			c.Close()
		}
	}()
	_, err = Ask(context.Background(), other, req)
	if !errors.Is(err, ErrProtocol) {
		t.Errorf("foreign listener: %v, want ErrProtocol", err)
	}
}

// rewritingAgent is a fakeAgent whose backend wires interfaces in the XML.
type rewritingAgent struct {
	fakeAgent
	rewriteErr error
}

func (r *rewritingAgent) HookRewrite(_ context.Context, g Guest, doc string) (string, error) {
	if err := r.record("rewrite " + g.Domain.Name + " " + g.PolicyName()); err != nil {
		return "", err
	}
	if r.rewriteErr != nil {
		return "", r.rewriteErr
	}
	return strings.Replace(doc, "vnet7", "rewired", 1), nil
}

// TestHandlerRewrite: at migrate and restore begin a Rewriter's XML is the
// answer for guests that need inspection, and what cannot be read or
// rewritten is answered as hook_failure says.
func TestHandlerRewrite(t *testing.T) {
	for _, tc := range []struct {
		name, failure, op, dom, xml string
		rewriteErr                  error
		want                        Verdict
		wantXML, wantMsg, wantCall  string
	}{
		{name: "migrate", failure: "closed", op: OpMigrate, dom: "web-1", want: Allow, wantXML: "rewired", wantCall: "rewrite web-1 web"},
		{name: "restore", failure: "closed", op: OpRestore, dom: "web-1", want: Allow, wantXML: "rewired", wantCall: "rewrite web-1 web"},
		{name: "no policy, unchanged", failure: "closed", op: OpRestore, dom: "db-1", want: Allow},
		{name: "start is not rewritten", failure: "closed", op: OpStart, dom: "web-1", want: Allow, wantCall: "start web-1 web"},
		{name: "rewrite fails, closed", failure: "closed", op: OpMigrate, dom: "web-1", rewriteErr: errors.New("unreadable record"), want: Refuse,
			wantMsg:  `refusing migrate of guest web-1: it needs inspection (policy "web") and its interfaces cannot be wired to the intercept path in its XML: unreadable record; hook_failure is "closed"`,
			wantCall: "rewrite web-1 web"},
		{name: "rewrite fails, open", failure: "open", op: OpRestore, dom: "web-1", rewriteErr: errors.New("unreadable record"), want: Allow,
			wantMsg: `guest web-1 proceeds to restore although it needs inspection`, wantCall: "rewrite web-1 web"},
		{name: "malformed, closed", failure: "closed", op: OpMigrate, dom: "web-1", xml: "<domain><name>web-1", want: Refuse,
			wantMsg: `refusing migrate of guest web-1: malformed hook request: domain XML of web-1`},
		{name: "malformed, open", failure: "open", op: OpRestore, dom: "web-1", xml: "<domain><name>web-1", want: Allow,
			wantMsg: `proceeds to restore although malformed hook request`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ag := &rewritingAgent{fakeAgent: fakeAgent{cfg: testConfig(t, tc.failure)}, rewriteErr: tc.rewriteErr}
			req := Request{Domain: tc.dom, Op: tc.op, SubOp: "begin", XML: tc.xml}
			if req.XML == "" {
				req.XML = domainXML(tc.dom, "")
			}
			a := NewHandler(ag)(context.Background(), req)
			if a.Verdict != tc.want || !strings.Contains(a.Message, tc.wantMsg) || (tc.wantMsg == "") != (a.Message == "") {
				t.Errorf("answer %+v, want %s with message %q", a, tc.want, tc.wantMsg)
			}
			if tc.wantXML == "" && a.XML != "" || !strings.Contains(a.XML, tc.wantXML) {
				t.Errorf("answer XML %q, want one containing %q", a.XML, tc.wantXML)
			}
			var want []string
			if tc.wantCall != "" {
				want = []string{tc.wantCall}
			}
			if d := cmp.Diff(want, ag.got); d != "" {
				t.Errorf("agent calls (-want +got):\n%s", d)
			}
		})
	}
}
