package api_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/api/apitest"
)

// shortDir is a fresh directory with a path short enough for sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vsa-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestListenSocketMode(t *testing.T) {
	sock := filepath.Join(shortDir(t), "sub", "vsagent.sock")
	ln, err := api.Listen(context.Background(), sock)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if os.Geteuid() == 0 {
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 0 || st.Gid != 0 {
			t.Errorf("socket owned by %d:%d, want root:root", st.Uid, st.Gid)
		}
	}
	di, err := os.Stat(filepath.Dir(sock))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("created socket directory has mode %v, want 0700", di.Mode().Perm())
	}
	ln.Close()
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file left behind after Close: %v", err)
	}
}

func TestListenReplacesOnlyStaleSockets(t *testing.T) {
	dir := shortDir(t)

	t.Run("stale socket is replaced", func(t *testing.T) {
		sock := filepath.Join(dir, "stale.sock")
		// A listener that dies without unlinking leaves what a crashed
		// agent leaves: a socket file nobody answers on.
		old, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		old.(*net.UnixListener).SetUnlinkOnClose(false)
		old.Close()
		ln, err := api.Listen(context.Background(), sock)
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		ln.Close()
	})

	t.Run("live socket is left alone", func(t *testing.T) {
		sock := filepath.Join(dir, "live.sock")
		live, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		go func() {
			for {
				c, err := live.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		_, err = api.Listen(context.Background(), sock)
		if !errors.Is(err, api.ErrSocketInUse) {
			t.Fatalf("Listen over a live socket = %v, want ErrSocketInUse", err)
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("the live socket was disturbed: %v", err)
		}
		c.Close()
	})

	t.Run("a file that is not a socket is never deleted", func(t *testing.T) {
		path := filepath.Join(dir, "precious")
		if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := api.Listen(context.Background(), path)
		if !errors.Is(err, api.ErrNotSocket) || !strings.Contains(err.Error(), "regular file") {
			t.Fatalf("Listen over a regular file = %v, want ErrNotSocket naming it", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
			t.Errorf("file changed: %q, %v", b, err)
		}
	})
}

// TestPeerCredentials connects from another uid (nobody, 65534) in a
// re-executed copy of this test binary, and checks the two layers of
// protection separately: the socket file's mode, then the peer-credential
// check that holds even when the mode is loosened.
func TestPeerCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it runs a client as uid 65534 and expects root to be served")
	}
	const nobody = 65534
	// Everything the child touches must be reachable by nobody, so the
	// refusals below come from the layer under test, not from a 0700
	// temporary directory on the way.
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := copyTestBinary(t, dir)

	runAs := func(t *testing.T, uid uint32, sock string) (int, string) {
		t.Helper()
		cmd := exec.CommandContext(testCtx(t), bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), clientModeEnv+"="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("run client as uid %d: %v", uid, err)
		}
		return cmd.ProcessState.ExitCode(), string(out)
	}

	var logs apitest.Buffer
	rootOnly := apitest.ServeAt(t, filepath.Join(dir, "vsagent.sock"), populated(), api.ServerOptions{Logger: logs.Logger()})

	t.Run("root is served", func(t *testing.T) {
		if code, out := runAs(t, 0, rootOnly.Socket); code != clientAccepted {
			t.Errorf("root client exited %d, want %d (served): %s", code, clientAccepted, out)
		}
	})

	t.Run("file mode keeps other users out", func(t *testing.T) {
		if code, out := runAs(t, nobody, rootOnly.Socket); code != clientDenied {
			t.Errorf("uid %d on a 0600 socket exited %d, want %d (EACCES): %s", nobody, code, clientDenied, out)
		}
	})

	t.Run("credentials keep other users out of a loosened socket", func(t *testing.T) {
		if err := os.Chmod(rootOnly.Socket, 0o666); err != nil {
			t.Fatal(err)
		}
		code, out := runAs(t, nobody, rootOnly.Socket)
		if code != clientRefused {
			t.Errorf("uid %d on a 0666 socket exited %d, want %d (refused by the server): %s", nobody, code, clientRefused, out)
		}
		if !strings.Contains(logs.String(), "peer_uid=65534") {
			t.Errorf("the refusal was not logged with the peer's uid; log:\n%s", logs.String())
		}
	})

	t.Run("the same uid is served when allowed", func(t *testing.T) {
		// Proves that the refusal above is the credential check's doing:
		// with nobody on the allow list, the same connection is served.
		allowing := apitest.ServeAt(t, filepath.Join(dir, "allowing.sock"), populated(), api.ServerOptions{AllowedUIDs: []uint32{0, nobody}})
		if err := os.Chmod(allowing.Socket, 0o666); err != nil {
			t.Fatal(err)
		}
		if code, out := runAs(t, nobody, allowing.Socket); code != clientAccepted {
			t.Errorf("allowed uid %d exited %d, want %d: %s", nobody, code, clientAccepted, out)
		}
	})
}

func copyTestBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := filepath.Join(dir, "api.test")
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, src); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}
