package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// ErrSocketInUse: another process answers on the socket path, most
	// likely a second agent; the file is left alone.
	ErrSocketInUse = errors.New("control socket is in use by another process")
	// ErrNotSocket: something other than a socket sits at the socket path;
	// it is never deleted.
	ErrNotSocket = errors.New("control socket path exists and is not a socket")
)

// staleProbeTimeout bounds the dial that decides whether a leftover socket
// file still has a listener; a live agent accepts in microseconds.
const staleProbeTimeout = time.Second

// Listen creates the control socket at path, mode 0600 and (when running as
// root) owned by root:root. A socket file left by a dead agent is replaced;
// one that someone still answers on is not (ErrSocketInUse), and neither is
// anything that is not a socket (ErrNotSocket). The parent directory is
// created 0700 if missing; an existing one is left as it is.
//
// The file mode is defence in depth: bind creates the file before it can be
// chmod-ed, and directories and modes get loosened by hand, so the server
// also checks every connection's peer credentials.
func Listen(ctx context.Context, path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	if err := removeStale(ctx, path); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	if err := secure(path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func secure(path string) error {
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("restrict control socket %s: %w", path, err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(path, 0, 0); err != nil {
			return fmt.Errorf("give control socket %s to root: %w", path, err)
		}
	}
	return nil
}

// removeStale deletes a socket file at path that nobody listens on.
func removeStale(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect control socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%w: %s is %s", ErrNotSocket, path, describeMode(fi.Mode()))
	}
	probeCtx, cancel := context.WithTimeout(ctx, staleProbeTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(probeCtx, "unix", path)
	if err == nil {
		conn.Close()
		return fmt.Errorf("%w: %s", ErrSocketInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe existing control socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale control socket: %w", err)
	}
	return nil
}

func describeMode(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m.IsRegular():
		return "a regular file"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a socket (" + m.Type().String() + ")"
}

// Peer is who is on the other end of a control connection, as the kernel
// reports it (SO_PEERCRED: the credentials at connect time).
type Peer struct {
	PID int32
	UID uint32
	GID uint32
}

// peerConn carries the credentials read at accept time to the handlers.
type peerConn struct {
	net.Conn
	peer Peer
	err  error
}

// credListener reads every accepted connection's peer credentials. It
// refuses nothing itself: the refusal is an HTTP answer, so that a client
// learns why instead of seeing a reset connection.
type credListener struct{ net.Listener }

func (l credListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	p, perr := peerOf(c)
	return &peerConn{Conn: c, peer: p, err: perr}, nil
}

func peerOf(c net.Conn) (Peer, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Peer{}, fmt.Errorf("peer credentials: %T is not a unix socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", credErr)
	}
	return Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}
