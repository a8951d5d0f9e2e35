package vmimage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// CacheEnv names the environment variable that overrides the cache folder.
const CacheEnv = "VSAGENT_IMAGE_CACHE"

// DefaultCacheDir is where kernels and initramfs archives are kept between
// runs: $VSAGENT_IMAGE_CACHE, else vsagent-images in the user's cache folder.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv(CacheEnv); d != "" {
		return d, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("vmimage: no cache folder (set %s): %w", CacheEnv, err)
	}
	return filepath.Join(base, "vsagent-images"), nil
}

// Cache fetches kernels and builds initramfs archives into a folder and
// reuses what is there. The zero value uses DefaultCacheDir and reports
// nothing.
type Cache struct {
	// Dir is the cache folder; "" means DefaultCacheDir.
	Dir string
	// Logf receives one line per slow step (download, unpack, build), for a
	// command that shows its progress; nil keeps quiet.
	Logf func(format string, args ...any)
}

func (c Cache) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// dir returns the cache folder, created if needed.
func (c Cache) dir() (string, error) {
	dir := c.Dir
	if dir == "" {
		var err error
		if dir, err = DefaultCacheDir(); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("vmimage: cache folder: %w", err)
	}
	return dir, nil
}

// lockCache serialises cache writers across processes: test binaries of
// several packages and a `make appliance-image` may all want the kernel at
// the same moment.
func lockCache(ctx context.Context, dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("vmimage: cache lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("vmimage: cache lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("vmimage: waiting for the cache lock: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
