package libvirtlab

import (
	"context"
	"os"

	"github.com/vsagent/vsagent/internal/vmimage"
)

// CacheEnv names the environment variable that overrides the cache folder.
const CacheEnv = "VSAGENT_LAB_CACHE"

// CacheDir is where kernels and images are kept between runs:
// $VSAGENT_LAB_CACHE, else the image cache that `vsagent image build` uses
// too (vmimage.DefaultCacheDir), so that the kernel is downloaded once.
func CacheDir() (string, error) {
	if d := os.Getenv(CacheEnv); d != "" {
		return d, nil
	}
	return vmimage.DefaultCacheDir()
}

// GuestModules are the kernel modules a guest needs for its virtio NICs,
// in the order they must be loaded.
var GuestModules = vmimage.NetModules

// Kernel is a Debian kernel unpacked into the cache.
type Kernel = vmimage.Kernel

// Image is a bootable guest: kernel and initramfs.
type Image struct {
	KernelVersion string
	Kernel        string
	Initrd        string
}

// cache resolves "" to CacheDir, which honours the lab's own variable.
func cache(dir string) (vmimage.Cache, error) {
	if dir == "" {
		var err error
		if dir, err = CacheDir(); err != nil {
			return vmimage.Cache{}, err
		}
	}
	return vmimage.Cache{Dir: dir}, nil
}

// GuestImage returns the test guest image, building what the cache lacks:
// the kernel (see FetchKernel) and an initramfs with GuestInit as /init.
func GuestImage(ctx context.Context, cacheDir string) (Image, error) {
	c, err := cache(cacheDir)
	if err != nil {
		return Image{}, err
	}
	k, err := c.Kernel(ctx)
	if err != nil {
		return Image{}, err
	}
	initrd, err := c.Initramfs(ctx, "guest", k.ModuleFiles(GuestModules), GuestInit)
	if err != nil {
		return Image{}, err
	}
	return Image{KernelVersion: k.Version, Kernel: k.Vmlinuz, Initrd: initrd}, nil
}

// CachedInitramfs builds an initramfs like BuildInitramfs into the cache,
// named after a digest of everything that goes into it, and reuses it when
// it exists already.
func CachedInitramfs(ctx context.Context, cacheDir, name string, files map[string]string, initScript string) (string, error) {
	c, err := cache(cacheDir)
	if err != nil {
		return "", err
	}
	return c.Initramfs(ctx, name, files, initScript)
}

// FetchKernel returns a kernel from the cache or, if there is none, the one
// Debian's linux-image-amd64 depends on, downloaded and unpacked but never
// installed (vmimage.Cache.Kernel).
func FetchKernel(ctx context.Context, cacheDir string) (Kernel, error) {
	c, err := cache(cacheDir)
	if err != nil {
		return Kernel{}, err
	}
	return c.Kernel(ctx)
}

// BuildInitramfs writes a deterministic gzip-compressed initramfs to out:
// busybox, initScript as /init and files (see vmimage.BuildInitramfs).
func BuildInitramfs(ctx context.Context, out string, files map[string]string, initScript string) error {
	return vmimage.BuildInitramfs(ctx, out, files, initScript)
}
