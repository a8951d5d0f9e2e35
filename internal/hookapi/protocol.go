package hookapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

var (
	// ErrBadRequest: what the hook sent is not a request this agent
	// understands.
	ErrBadRequest = errors.New("malformed hook request")
	// ErrUnreachable: the agent did not answer (not running, not listening,
	// or too slow for the phase's deadline).
	ErrUnreachable = errors.New("agent unreachable")
	// ErrProtocol: something answered that is not the agent.
	ErrProtocol = errors.New("unexpected answer on the hook socket")
)

// MaxMessage bounds a request or an answer: a domain's XML is a few
// kilobytes, and a peer must not make the other side read forever.
const MaxMessage = 4 << 20

// Operations of libvirt's qemu hook (its first argument after the domain
// name) that this package knows.
const (
	OpPrepare   = "prepare"
	OpStart     = "start"
	OpStarted   = "started"
	OpStopped   = "stopped"
	OpRelease   = "release"
	OpMigrate   = "migrate"
	OpRestore   = "restore"
	OpReconnect = "reconnect"
	OpAttach    = "attach"
)

// Request is one run of the hook: the domain's name, libvirt's operation,
// sub-operation and extra argument, and the domain XML from stdin.
type Request struct {
	Domain string `json:"domain"`
	Op     string `json:"op"`
	SubOp  string `json:"sub_op"`
	Extra  string `json:"extra,omitempty"`
	XML    string `json:"xml"`
}

// Verdict is what the hook tells libvirt.
type Verdict string

const (
	// Allow: exit 0, the operation proceeds.
	Allow Verdict = "allow"
	// Refuse: exit 1 with Message on stderr; libvirt cancels the operation
	// and reports the message.
	Refuse Verdict = "refuse"
)

// Answer is the agent's reply. XML, for migrate and restore only, is the
// domain XML libvirt must use instead of the one it sent; empty keeps it.
type Answer struct {
	Verdict Verdict `json:"verdict"`
	Message string  `json:"message,omitempty"`
	XML     string  `json:"xml,omitempty"`
}

// Forwarded reports whether the hook asks the agent about this phase at
// all. The others (started, stopped, release, reconnect, attach) change
// nothing the agent's libvirt events do not already tell it, so the hook
// returns at once instead of delaying libvirt.
func Forwarded(op, subOp string) bool {
	switch op {
	case OpPrepare, OpStart, OpMigrate, OpRestore:
		return subOp == "begin"
	}
	return false
}

// Deadline is how long the hook waits for the agent's answer in a phase.
// libvirt waits for the hook while it holds the domain's job, so every
// second here delays that one domain's start (and nothing else). prepare
// only starts provisioning; start installs the fail-closed hold on the
// guest's taps, which takes milliseconds on a healthy host; migrate and
// restore may rewrite interfaces.
func Deadline(op string) time.Duration {
	switch op {
	case OpPrepare:
		return 5 * time.Second
	case OpStart, OpMigrate, OpRestore:
		return 15 * time.Second
	}
	return 2 * time.Second
}

// DialTimeout bounds connecting to the agent: a listening agent accepts in
// microseconds, and a missing one is refused at once.
const DialTimeout = 2 * time.Second

// ReadRequest decodes one request and checks that it names a domain and a
// forwarded phase.
func ReadRequest(r io.Reader) (Request, error) {
	var req Request
	if err := readJSON(r, &req); err != nil {
		return Request{}, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	switch {
	case req.Domain == "":
		return Request{}, fmt.Errorf("%w: no domain name", ErrBadRequest)
	case !Forwarded(req.Op, req.SubOp):
		return Request{}, fmt.Errorf("%w: phase %q %q is not one the agent answers", ErrBadRequest, req.Op, req.SubOp)
	case req.XML == "":
		return Request{}, fmt.Errorf("%w: no domain XML", ErrBadRequest)
	}
	return req, nil
}

// ReadAnswer decodes the agent's answer.
func ReadAnswer(r io.Reader) (Answer, error) {
	var a Answer
	if err := readJSON(r, &a); err != nil {
		return Answer{}, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if a.Verdict != Allow && a.Verdict != Refuse {
		return Answer{}, fmt.Errorf("%w: verdict %q", ErrProtocol, a.Verdict)
	}
	return a, nil
}

func readJSON(r io.Reader, into any) error {
	lr := &io.LimitedReader{R: r, N: MaxMessage + 1}
	dec := json.NewDecoder(lr)
	if err := dec.Decode(into); err != nil {
		if lr.N <= 0 {
			return fmt.Errorf("message exceeds %d bytes", MaxMessage)
		}
		return err
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > MaxMessage {
		return fmt.Errorf("message of %d bytes exceeds %d", len(b), MaxMessage)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
