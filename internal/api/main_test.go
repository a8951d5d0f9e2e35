package api_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vsagent/vsagent/internal/api"
)

// clientModeEnv makes the test binary, re-executed under another uid by
// the permission tests, act as a one-shot client of the socket it names.
const clientModeEnv = "VSAGENT_API_TEST_CLIENT_SOCKET"

// Exit statuses of the client mode.
const (
	clientAccepted = 0
	clientRefused  = 10 // the server answered 403
	clientDenied   = 11 // connect(2) failed with EACCES: file permissions
	clientOther    = 12
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(clientModeEnv); sock != "" {
		os.Exit(clientMode(sock))
	}
	os.Exit(m.Run())
}

func clientMode(sock string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := api.NewClient(sock)
	defer c.Close()
	_, err := c.Status(ctx)
	switch {
	case err == nil:
		return clientAccepted
	case errors.Is(err, api.ErrRefused):
		fmt.Fprintln(os.Stderr, err)
		return clientRefused
	case errors.Is(err, syscall.EACCES):
		fmt.Fprintln(os.Stderr, err)
		return clientDenied
	}
	fmt.Fprintln(os.Stderr, "client mode:", err)
	return clientOther
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
