package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"time"
)

// Provider is what the server needs from the daemon. Every method but
// Events is bounded by ctx; Events never blocks.
type Provider interface {
	Status(ctx context.Context) (Status, error)
	Guests(ctx context.Context) ([]Guest, error)
	Appliances(ctx context.Context) ([]Appliance, error)
	// Flows lists the dataplane's flows, of one guest when guest is not
	// empty (an unknown guest is ErrNotFound).
	Flows(ctx context.Context, guest string) (FlowList, error)
	// Explain says which policy governs the domain and why; an unknown
	// domain is ErrNotFound.
	Explain(ctx context.Context, domain string) (Explanation, error)
	// Events returns the events after seq and a channel that is closed
	// when another arrives.
	Events(after uint64) ([]Event, <-chan struct{})
}

// ServerOptions tunes a Server; zero values take the defaults.
type ServerOptions struct {
	Logger *slog.Logger
	// AllowedUIDs are the peer uids served; default root only. Tests use
	// it to admit their own unprivileged uid.
	AllowedUIDs []uint32
	// RequestTimeout bounds every request but an event stream (10s).
	RequestTimeout time.Duration
	// WriteTimeout bounds each write of an event stream to a client that
	// stopped reading (10s).
	WriteTimeout time.Duration
}

// Server serves the v1 API on a listener from Listen.
type Server struct {
	p    Provider
	log  *slog.Logger
	opts ServerOptions
	mux  *http.ServeMux
}

// NewServer prepares a server; nothing listens until Serve.
func NewServer(p Provider, opts ServerOptions) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if len(opts.AllowedUIDs) == 0 {
		opts.AllowedUIDs = []uint32{0}
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	s := &Server{p: p, log: opts.Logger, opts: opts, mux: http.NewServeMux()}
	s.route("/v1/status", nil, s.status)
	s.route("/v1/guests", nil, s.guests)
	s.route("/v1/appliances", nil, s.appliances)
	s.route("/v1/flows", []string{"guest"}, s.flows)
	s.route("/v1/explain/{domain}", nil, s.explain)
	s.mux.HandleFunc("/v1/events", s.events)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no such endpoint %s (this agent serves API %s)", r.URL.Path, Version))
	})
	return s
}

type peerKey struct{}

// Serve answers requests on ln until ctx ends, then stops: open event
// streams end at once, other requests get a moment to finish. ln should
// come from Listen; connections whose peer credentials cannot be read, or
// arrive through any other kind of listener, are refused.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		// Requests live in ctx, so that Shutdown does not wait forever on
		// event streams that never go idle.
		BaseContext: func(net.Listener) context.Context { return ctx },
		ConnContext: func(c context.Context, conn net.Conn) context.Context {
			if pc, ok := conn.(*peerConn); ok {
				return context.WithValue(c, peerKey{}, pc)
			}
			return c
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(credListener{ln}) }()
	select {
	case err := <-errc:
		return fmt.Errorf("control API: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutCtx); err != nil {
		hs.Close()
	}
	<-errc
	return nil
}

// ServeHTTP checks the caller, then routes. Exposed so that tests and
// embedders can mount the API, but outside Serve no request carries peer
// credentials, so every one is refused: it fails closed.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	pc, _ := r.Context().Value(peerKey{}).(*peerConn)
	if pc == nil || pc.err != nil || !slices.Contains(s.opts.AllowedUIDs, pc.peer.UID) {
		s.refuse(w, r, pc)
		return
	}
	if !canonical(r.URL.Path) {
		// The mux would answer with an HTML redirect; an API client is
		// better served by a plain error it can print.
		writeError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no such endpoint %q (paths must be canonical)", r.URL.Path))
		return
	}
	s.mux.ServeHTTP(w, r)
}

func canonical(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	c := path.Clean(p)
	return c == p || c != "/" && c+"/" == p
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, pc *peerConn) {
	msg := "permission denied: the control socket serves root only"
	switch {
	case pc == nil:
		s.log.Warn("control API: refused a request without peer credentials", "path", r.URL.Path)
	case pc.err != nil:
		s.log.Warn("control API: refused a connection whose credentials are unreadable", "error", pc.err)
	default:
		s.log.Warn("control API: refused a connection from a uid that is not allowed",
			"peer_uid", pc.peer.UID, "peer_gid", pc.peer.GID, "peer_pid", pc.peer.PID, "path", r.URL.Path)
		msg = fmt.Sprintf("permission denied: uid %d may not use the control socket (root only)", pc.peer.UID)
	}
	w.Header().Set("Connection", "close")
	writeError(w, http.StatusForbidden, CodeForbidden, msg)
}

// route registers a GET endpoint that accepts only the named query
// parameters and runs within the request timeout.
func (s *Server) route(pattern string, params []string, h func(ctx context.Context, r *http.Request) (any, error)) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if !s.checkRequest(w, r, params) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.opts.RequestTimeout)
		defer cancel()
		v, err := h(ctx, r)
		if err != nil {
			s.writeFailure(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

func (s *Server) checkRequest(w http.ResponseWriter, r *http.Request, params []string) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, CodeBadRequest, fmt.Sprintf("method %s not allowed: the API is read-only", r.Method))
		return false
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("malformed query: %v", err))
		return false
	}
	for k, vs := range q {
		if !slices.Contains(params, k) {
			writeError(w, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("unknown query parameter %q", k))
			return false
		}
		if len(vs) > 1 {
			writeError(w, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("query parameter %q given %d times", k, len(vs)))
			return false
		}
	}
	return true
}

func (s *Server) status(ctx context.Context, _ *http.Request) (any, error) {
	st, err := s.p.Status(ctx)
	st.APIVersion = Version
	return st, err
}

func (s *Server) guests(ctx context.Context, _ *http.Request) (any, error) {
	gs, err := s.p.Guests(ctx)
	return GuestList{Guests: nonNil(gs)}, err
}

func (s *Server) appliances(ctx context.Context, _ *http.Request) (any, error) {
	as, err := s.p.Appliances(ctx)
	return ApplianceList{Appliances: nonNil(as)}, err
}

func (s *Server) flows(ctx context.Context, r *http.Request) (any, error) {
	fl, err := s.p.Flows(ctx, r.URL.Query().Get("guest"))
	fl.Flows = nonNil(fl.Flows)
	return fl, err
}

func (s *Server) explain(ctx context.Context, r *http.Request) (any, error) {
	domain := r.PathValue("domain")
	if domain == "" {
		return nil, fmt.Errorf("%w: no domain named", errBadRequest)
	}
	return s.p.Explain(ctx, domain)
}

var errBadRequest = errors.New("bad request")

// events serves the event log, or follows it as JSON lines until the
// client or the server goes away.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	if !s.checkRequest(w, r, []string{"after", "follow"}) {
		return
	}
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("after=%q: want a sequence number", v))
			return
		}
		after = n
	}
	follow := false
	if v := q.Get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("follow=%q: want true or false", v))
			return
		}
		follow = b
	}
	if !follow {
		evs, _ := s.p.Events(after)
		writeJSON(w, http.StatusOK, EventList{Events: nonNil(evs)})
		return
	}
	s.follow(w, r, after)
}

func (s *Server) follow(w http.ResponseWriter, r *http.Request, after uint64) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	ctx := r.Context()
	for {
		// Flushing the header before the first wait tells the client that
		// the stream is open even when no event is pending.
		if err := s.flushWithin(rc); err != nil {
			return
		}
		evs, more := s.p.Events(after)
		for _, e := range evs {
			if err := s.writeWithin(rc, func() error { return enc.Encode(e) }); err != nil {
				s.log.Debug("control API: event follower went away", "error", err)
				return
			}
			after = e.Seq
		}
		if len(evs) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-more:
		}
	}
}

func (s *Server) writeWithin(rc *http.ResponseController, write func() error) error {
	// A deadline the connection does not support only costs the bound.
	_ = rc.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
	return write()
}

func (s *Server) flushWithin(rc *http.ResponseController) error {
	return s.writeWithin(rc, rc.Flush)
}

func (s *Server) writeFailure(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, CodeNotFound, err.Error())
	case errors.Is(err, errBadRequest):
		writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, CodeUnavailable, err.Error())
	default:
		s.log.Error("control API: request failed", "path", r.URL.Path, "error", err)
		writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
	}
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorBody{Error: ErrorDetail{Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body, _ = json.Marshal(ErrorBody{Error: ErrorDetail{Code: CodeInternal, Message: "encode answer: " + err.Error()}})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// nonNil makes empty lists encode as [] rather than null, which is kinder
// to scripts (jq '.guests | length').
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
