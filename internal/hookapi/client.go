package hookapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// Ask sends req to the agent listening on socket and waits for its answer
// until ctx ends or the phase's Deadline passes, whichever comes first.
// Every failure to get an answer matches ErrUnreachable; an answer that is
// not one matches ErrProtocol.
func Ask(ctx context.Context, socket string, req Request) (Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, Deadline(req.Op))
	defer cancel()
	dialCtx, dialCancel := context.WithTimeout(ctx, DialTimeout)
	defer dialCancel()
	var d net.Dialer
	conn, err := d.DialContext(dialCtx, "unix", socket)
	if err != nil {
		return Answer{}, fmt.Errorf("%w: %s: %w", ErrUnreachable, socket, describeDial(err))
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := writeJSON(conn, req); err != nil {
		return Answer{}, fmt.Errorf("%w: send request: %w", ErrUnreachable, err)
	}
	a, err := ReadAnswer(conn)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return Answer{}, fmt.Errorf("%w: no answer within %s", ErrUnreachable, Deadline(req.Op))
		}
		var ne net.Error
		if errors.As(err, &ne) || errors.Is(err, syscall.ECONNRESET) {
			return Answer{}, fmt.Errorf("%w: %w", ErrUnreachable, err)
		}
		return Answer{}, err
	}
	return a, nil
}

// describeDial turns the two usual reasons into words an operator reading
// libvirt's error recognises.
func describeDial(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("no such socket (is vsagent running?): %w", err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nobody listens (vsagent stopped?): %w", err)
	}
	return err
}
