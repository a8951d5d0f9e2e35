package libvirtlab

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"
)

// CacheEnv names the environment variable that overrides the cache folder.
const CacheEnv = "VSAGENT_LAB_CACHE"

// CacheDir is where kernels and images are kept between runs: $VSAGENT_LAB_CACHE,
// else vsagent-lab in the user's cache folder.
func CacheDir() (string, error) {
	if d := os.Getenv(CacheEnv); d != "" {
		return d, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("libvirtlab: no cache folder (set %s): %w", CacheEnv, err)
	}
	return filepath.Join(base, "vsagent-lab"), nil
}

// GuestModules are the kernel modules a guest needs for its virtio NICs,
// in the order they must be loaded.
var GuestModules = []string{
	"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
	"virtio_pci", "failover", "net_failover", "virtio_net",
}

// Kernel is a Debian kernel unpacked into the cache: the image and the
// modules that GuestModules names (built-in ones have no file).
type Kernel struct {
	Version string
	Vmlinuz string
	// Modules maps a module name to its .ko file.
	Modules map[string]string
}

// Image is a bootable guest: kernel and initramfs.
type Image struct {
	KernelVersion string
	Kernel        string
	Initrd        string
}

// GuestImage returns the test guest image, building what the cache lacks:
// the kernel (see FetchKernel) and an initramfs with GuestInit as /init.
func GuestImage(ctx context.Context, cacheDir string) (Image, error) {
	k, err := FetchKernel(ctx, cacheDir)
	if err != nil {
		return Image{}, err
	}
	files := map[string]string{}
	for name, ko := range k.Modules {
		files["/lib/modules/"+name+".ko"] = ko
	}
	initrd, err := CachedInitramfs(ctx, cacheDir, "guest", files, GuestInit)
	if err != nil {
		return Image{}, err
	}
	return Image{KernelVersion: k.Version, Kernel: k.Vmlinuz, Initrd: initrd}, nil
}

// CachedInitramfs builds an initramfs like BuildInitramfs into the cache,
// named after a digest of everything that goes into it, and reuses it when
// it exists already.
func CachedInitramfs(ctx context.Context, cacheDir, name string, files map[string]string, initScript string) (string, error) {
	cacheDir, err := resolveCache(cacheDir)
	if err != nil {
		return "", err
	}
	key, err := initramfsKey(files, initScript)
	if err != nil {
		return "", err
	}
	out := filepath.Join(cacheDir, fmt.Sprintf("%s-%s.cpio.gz", name, key))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	unlock, err := lockCache(ctx, cacheDir)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := BuildInitramfs(ctx, out, files, initScript); err != nil {
		return "", err
	}
	return out, nil
}

// initramfsKey digests the inputs of an image: the script, the busybox
// binary's identity and every file's destination, size and modification
// time (hashing the bytes of large binaries on every run would cost more
// than it saves).
func initramfsKey(files map[string]string, initScript string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "newc-v1\x00%s\x00", initScript)
	busybox, err := staticBusybox()
	if err != nil {
		return "", err
	}
	sources := map[string]string{"/bin/busybox": busybox}
	for dest, src := range files {
		sources[dest] = src
	}
	dests := make([]string, 0, len(sources))
	for d := range sources {
		dests = append(dests, d)
	}
	sort.Strings(dests)
	for _, d := range dests {
		st, err := os.Stat(sources[d])
		if err != nil {
			return "", fmt.Errorf("libvirtlab: image file %s: %w", d, err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%o\x00", d, st.Size(), st.ModTime().UnixNano(), st.Mode())
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func resolveCache(dir string) (string, error) {
	if dir == "" {
		var err error
		if dir, err = CacheDir(); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("libvirtlab: cache folder: %w", err)
	}
	return dir, nil
}

// lockCache serialises cache writers across processes: test binaries of
// several packages run at once and may all want the kernel.
func lockCache(ctx context.Context, dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("libvirtlab: cache lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("libvirtlab: cache lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("libvirtlab: waiting for the cache lock: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// FetchKernel returns a kernel from the cache or, if there is none, the one
// Debian's linux-image-amd64 depends on: downloaded with `apt-get download`
// and unpacked from `dpkg-deb --fsys-tarfile`, keeping only the image and
// the GuestModules. Nothing is installed on this machine.
func FetchKernel(ctx context.Context, cacheDir string) (Kernel, error) {
	cacheDir, err := resolveCache(cacheDir)
	if err != nil {
		return Kernel{}, err
	}
	if k, ok := cachedKernel(cacheDir); ok {
		return k, nil
	}
	unlock, err := lockCache(ctx, cacheDir)
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()
	if k, ok := cachedKernel(cacheDir); ok {
		return k, nil
	}

	depends, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").CombinedOutput()
	if err != nil {
		return Kernel{}, fmt.Errorf("libvirtlab: apt-cache depends linux-image-amd64 (try apt-get update): %w: %s", err, bytes.TrimSpace(depends))
	}
	pkg, ok := kernelPackage(string(depends))
	if !ok {
		return Kernel{}, fmt.Errorf("libvirtlab: no linux-image-*-amd64 dependency in:\n%s", depends)
	}
	work, err := os.MkdirTemp(cacheDir, ".kernel-")
	if err != nil {
		return Kernel{}, fmt.Errorf("libvirtlab: %w", err)
	}
	defer os.RemoveAll(work)
	dl := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	dl.Dir = work
	if out, err := dl.CombinedOutput(); err != nil {
		return Kernel{}, fmt.Errorf("libvirtlab: apt-get download %s: %w: %s", pkg, err, bytes.TrimSpace(out))
	}
	debs, _ := filepath.Glob(filepath.Join(work, "*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("libvirtlab: apt-get download %s left %d packages", pkg, len(debs))
	}
	tree := filepath.Join(work, "tree")
	version, err := unpackKernel(ctx, debs[0], tree)
	if err != nil {
		return Kernel{}, err
	}
	final := filepath.Join(cacheDir, "kernel-"+version)
	os.RemoveAll(final)
	if err := os.Rename(tree, final); err != nil {
		return Kernel{}, fmt.Errorf("libvirtlab: %w", err)
	}
	k, ok := cachedKernel(cacheDir)
	if !ok {
		return Kernel{}, fmt.Errorf("libvirtlab: unpacked kernel %s is incomplete", version)
	}
	return k, nil
}

var kernelDependency = regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-[0-9][0-9A-Za-z.+~-]*-amd64)\s*$`)

// kernelPackage picks the versioned kernel package out of `apt-cache
// depends linux-image-amd64` output.
func kernelPackage(depends string) (string, bool) {
	m := kernelDependency.FindStringSubmatch(depends)
	if m == nil {
		return "", false
	}
	return m[1], true
}

const kernelComplete = "complete"

// cachedKernel finds the newest completely unpacked kernel in the cache.
func cachedKernel(cacheDir string) (Kernel, bool) {
	dirs, _ := filepath.Glob(filepath.Join(cacheDir, "kernel-*"))
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, kernelComplete)); err != nil {
			continue
		}
		k := Kernel{
			Version: strings.TrimPrefix(filepath.Base(d), "kernel-"),
			Vmlinuz: filepath.Join(d, "vmlinuz"),
			Modules: map[string]string{},
		}
		for _, m := range GuestModules {
			ko := filepath.Join(d, "modules", m+".ko")
			if _, err := os.Stat(ko); err == nil {
				k.Modules[m] = ko
			}
		}
		return k, true
	}
	return Kernel{}, false
}

// unpackKernel streams the package's data archive and keeps the kernel
// image and the wanted modules (about 12 MB of the package's 400 MB).
func unpackKernel(ctx context.Context, deb, tree string) (version string, err error) {
	if err := os.MkdirAll(filepath.Join(tree, "modules"), 0o755); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("libvirtlab: dpkg-deb: %w", err)
	}
	wanted := map[string]bool{}
	for _, m := range GuestModules {
		wanted[m+".ko"] = true
	}
	builtin := ""
	found := map[string]bool{}
	tr := tar.NewReader(bufio.NewReader(stdout))
	for {
		hdr, terr := tr.Next()
		if terr == io.EOF {
			break
		}
		if terr != nil {
			err = fmt.Errorf("libvirtlab: reading %s: %w", deb, terr)
			break
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name := path.Clean("/" + hdr.Name)
		base := path.Base(name)
		var dest string
		switch {
		case path.Dir(name) == "/boot" && strings.HasPrefix(base, "vmlinuz-"):
			version = strings.TrimPrefix(base, "vmlinuz-")
			dest = filepath.Join(tree, "vmlinuz")
		case strings.HasPrefix(name, "/lib/modules/") && wanted[base]:
			dest = filepath.Join(tree, "modules", base)
			found[strings.TrimSuffix(base, ".ko")] = true
		case strings.HasPrefix(name, "/lib/modules/") && base == "modules.builtin":
			var list []byte
			list, err = io.ReadAll(tr)
			builtin = string(list)
		}
		if err == nil && dest != "" {
			err = writeFile(dest, tr)
		}
		if err != nil {
			break
		}
	}
	io.Copy(io.Discard, stdout)
	if werr := cmd.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("libvirtlab: dpkg-deb --fsys-tarfile %s: %w: %s", deb, werr, bytes.TrimSpace(stderr.Bytes()))
	}
	if err != nil {
		return "", err
	}
	if version == "" {
		return "", fmt.Errorf("libvirtlab: %s holds no /boot/vmlinuz-*", deb)
	}
	var missing []string
	for _, m := range GuestModules {
		if !found[m] && !strings.Contains(builtin, "/"+m+".ko\n") {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("libvirtlab: kernel %s has neither module nor built-in %s", version, strings.Join(missing, ", "))
	}
	if err := os.WriteFile(filepath.Join(tree, kernelComplete), []byte(version+"\n"), 0o644); err != nil {
		return "", err
	}
	return version, nil
}

func writeFile(dest string, r io.Reader) error {
	f, err := os.OpenFile(dest, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
