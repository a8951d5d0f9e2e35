package hookapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// HandlerFunc answers one hook request.
type HandlerFunc func(ctx context.Context, req Request) Answer

// Serve answers hook requests on ln until ctx ends. Only root may ask: the
// hook runs as libvirtd's user (root), and anyone else could otherwise make
// the agent provision appliances or hold guests' interfaces. Each request
// gets at most its phase's Deadline, which the hook would not wait past
// anyway.
func Serve(ctx context.Context, ln net.Listener, h HandlerFunc, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("hook socket: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			serveConn(ctx, conn, h, log)
		}()
	}
}

// readTimeout bounds how long a connected peer may take to send its
// request: the hook writes it at once.
const readTimeout = 5 * time.Second

func serveConn(ctx context.Context, conn net.Conn, h HandlerFunc, log *slog.Logger) {
	uid, err := peerUID(conn)
	if err != nil || uid != 0 {
		log.Warn("hook request refused: only root may use the hook socket", "uid", uid, "error", err)
		_ = writeJSON(conn, Answer{Verdict: Refuse, Message: "vsagent: only root may use the hook socket"})
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(readTimeout))
	req, err := ReadRequest(conn)
	if err != nil {
		log.Warn("hook request refused", "error", err)
		_ = writeJSON(conn, Answer{Verdict: Refuse, Message: "vsagent: " + err.Error()})
		return
	}
	rctx, cancel := context.WithTimeout(ctx, Deadline(req.Op))
	defer cancel()
	start := time.Now()
	a := h(rctx, req)
	log.Info("hook answered", "guest", req.Domain, "op", req.Op, "sub_op", req.SubOp,
		"verdict", a.Verdict, "rewritten", a.XML != "", "took", time.Since(start).Round(time.Microsecond), "message", a.Message)
	_ = conn.SetWriteDeadline(time.Now().Add(readTimeout))
	if err := writeJSON(conn, a); err != nil {
		log.Warn("cannot answer the hook; it will apply hook_failure", "guest", req.Domain, "op", req.Op, "error", err)
	}
}

func peerUID(c net.Conn) (uint32, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, fmt.Errorf("peer credentials: %T is not a unix socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return 0, fmt.Errorf("peer credentials: %w", credErr)
	}
	return cred.Uid, nil
}
