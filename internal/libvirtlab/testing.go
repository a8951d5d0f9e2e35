package libvirtlab

import (
	"context"
	"errors"
	"testing"
	"time"
)

// New starts a lab for a test and stops it when the test ends. It skips the
// test, saying why, when the machine cannot run a lab (not root, libvirtd or
// QEMU missing), and fails it when the lab does not come up.
func New(t testing.TB) *Lab { return NewWith(t, Options{}) }

// NewWith is New with options.
func NewWith(t testing.TB, opts Options) *Lab {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Start(ctx, "", opts)
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatalf("starting a private libvirtd: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.Stop(ctx); err != nil {
			t.Errorf("stopping lab %s: %v", l.Name, err)
		}
	})
	return l
}
