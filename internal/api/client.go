package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
)

// ErrProtocol: the agent answered something this client cannot read (a
// different program on the socket, or a truncated answer).
var ErrProtocol = errors.New("unexpected answer from the agent")

// maxAnswer bounds a non-streamed answer, so that a confused peer cannot
// make the client read forever.
const maxAnswer = 64 << 20

// Client talks to the agent's control socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the socket at path; it connects lazily.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns: 1,
	}
	return &Client{socket: path, hc: &http.Client{Transport: tr}}
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Status asks for the agent's health and counts.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.get(ctx, "/v1/status", nil, &st)
	return st, err
}

// Guests lists the guests the agent has examined, sorted by name.
func (c *Client) Guests(ctx context.Context) ([]Guest, error) {
	var l GuestList
	err := c.get(ctx, "/v1/guests", nil, &l)
	return l.Guests, err
}

// Appliances lists the appliance instances vsagent owns.
func (c *Client) Appliances(ctx context.Context) ([]Appliance, error) {
	var l ApplianceList
	err := c.get(ctx, "/v1/appliances", nil, &l)
	return l.Appliances, err
}

// Flows lists the dataplane's flows, of one guest if guest is not empty.
func (c *Client) Flows(ctx context.Context, guest string) (FlowList, error) {
	q := url.Values{}
	if guest != "" {
		q.Set("guest", guest)
	}
	var l FlowList
	err := c.get(ctx, "/v1/flows", q, &l)
	return l, err
}

// Explain asks which policy governs a domain and why.
func (c *Client) Explain(ctx context.Context, domain string) (Explanation, error) {
	var e Explanation
	err := c.get(ctx, "/v1/explain/"+url.PathEscape(domain), nil, &e)
	return e, err
}

// Events returns the logged events after seq.
func (c *Client) Events(ctx context.Context, after uint64) ([]Event, error) {
	var l EventList
	err := c.get(ctx, "/v1/events", url.Values{"after": {strconv.FormatUint(after, 10)}}, &l)
	return l.Events, err
}

// FollowEvents calls fn with every event after seq, as it happens, until
// ctx ends (nil is returned), fn fails (its error is returned), or the
// agent goes away (an error matching ErrUnreachable).
func (c *Client) FollowEvents(ctx context.Context, after uint64, fn func(Event) error) error {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}, "follow": {"true"}}
	resp, err := c.do(ctx, "/v1/events", q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	err = DecodeEvents(resp.Body, fn)
	if ctx.Err() != nil {
		return nil
	}
	if err == nil {
		return fmt.Errorf("%w: the event stream ended (agent stopped?)", ErrUnreachable)
	}
	return err
}

// DecodeEvents reads a stream of JSON lines, one Event each, calling fn for
// each. It returns nil at a clean end of the stream, fn's error, an error
// matching ErrProtocol for anything that is not an event, and one matching
// ErrUnreachable when the stream breaks. Unknown fields are ignored: later
// agents may add some.
func DecodeEvents(r io.Reader, fn func(Event) error) error {
	dec := json.NewDecoder(bufio.NewReader(r))
	for {
		var e Event
		err := dec.Decode(&e)
		if errors.Is(err, io.EOF) {
			return nil
		}
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case err == nil:
		case errors.As(err, &syntax), errors.As(err, &typ):
			return fmt.Errorf("%w: event stream: %w", ErrProtocol, err)
		default:
			return fmt.Errorf("%w: event stream: %w", ErrUnreachable, err)
		}
		if e.Seq == 0 {
			return fmt.Errorf("%w: event stream: an event without a sequence number", ErrProtocol)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}

func (c *Client) get(ctx context.Context, path string, q url.Values, into any) error {
	resp, err := c.do(ctx, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("%w: read answer to %s: %w", ErrUnreachable, path, err)
	}
	if len(body) > maxAnswer {
		return fmt.Errorf("%w: answer to %s exceeds %d bytes", ErrProtocol, path, maxAnswer)
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("%w: decode answer to %s: %w", ErrProtocol, path, err)
	}
	return nil
}

// do sends a GET and returns a 200 answer; any other status becomes an
// *Error carrying the agent's code and message.
func (c *Client) do(ctx context.Context, path string, q url.Values) (*http.Response, error) {
	u := url.URL{Scheme: "http", Host: "vsagent", Path: path, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("build request for %s: %w", path, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, c.socket, ctx.Err())
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, c.socket, unwrapURL(err))
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	var eb ErrorBody
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Code == "" {
		return nil, fmt.Errorf("%w: HTTP %d from %s", ErrProtocol, resp.StatusCode, path)
	}
	return nil, &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
}

// unwrapURL drops net/http's `Get "http://vsagent/v1/…":` prefix, which
// names a host that does not exist and only confuses operators.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
