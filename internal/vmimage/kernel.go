package vmimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
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
)

// NetModules are the kernel modules a VM needs for its virtio NICs, in the
// order they must be loaded (each needs the ones before it).
var NetModules = []string{
	"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
	"virtio_pci", "failover", "net_failover", "virtio_net",
}

// DiskModules are loaded after NetModules for a virtio config disk.
var DiskModules = []string{"virtio_blk"}

// KernelModules are every module a fetched kernel keeps, in load order.
func KernelModules() []string {
	return append(append([]string(nil), NetModules...), DiskModules...)
}

// Errors a caller may want to tell apart: the machine lacks a program the
// build needs, or the kernel could not be downloaded.
var (
	ErrMissingTool = errors.New("vmimage: required program missing")
	ErrDownload    = errors.New("vmimage: kernel download failed")
)

// Kernel is a Debian kernel unpacked into the cache: the image and the
// KernelModules that are modules rather than built in.
type Kernel struct {
	Version string
	Vmlinuz string
	// Modules maps a module name to its .ko file.
	Modules map[string]string
}

// ModuleFiles returns the .ko files of the named modules as initramfs
// entries (/lib/modules/NAME.ko → file); built-in ones have none.
func (k Kernel) ModuleFiles(names []string) map[string]string {
	files := map[string]string{}
	for _, name := range names {
		if ko, ok := k.Modules[name]; ok {
			files["/lib/modules/"+name+".ko"] = ko
		}
	}
	return files
}

// Kernel returns a kernel from the cache or, if there is none, the one
// Debian's linux-image-amd64 depends on, downloaded with `apt-get download`
// into the cache and unpacked there. Nothing is installed on this machine.
func (c Cache) Kernel(ctx context.Context) (Kernel, error) {
	dir, err := c.dir()
	if err != nil {
		return Kernel{}, err
	}
	if k, ok := cachedKernel(dir); ok {
		c.logf("kernel %s (cached in %s)", k.Version, dir)
		return k, nil
	}
	unlock, err := lockCache(ctx, dir)
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()
	if k, ok := cachedKernel(dir); ok {
		c.logf("kernel %s (cached in %s)", k.Version, dir)
		return k, nil
	}

	for _, tool := range []string{"apt-cache", "apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return Kernel{}, fmt.Errorf("%w: %s (install apt, or build from a linux-image-*-amd64 .deb file)", ErrMissingTool, tool)
		}
	}
	depends, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").CombinedOutput()
	if err != nil {
		return Kernel{}, fmt.Errorf("%w: apt-cache depends linux-image-amd64 (run apt-get update?): %w: %s", ErrDownload, err, bytes.TrimSpace(depends))
	}
	pkg, ok := kernelPackage(string(depends))
	if !ok {
		return Kernel{}, fmt.Errorf("%w: no linux-image-*-amd64 dependency in `apt-cache depends linux-image-amd64` (run apt-get update?):\n%s", ErrDownload, depends)
	}
	work, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return Kernel{}, fmt.Errorf("vmimage: %w", err)
	}
	defer os.RemoveAll(work)
	c.logf("downloading %s with apt-get…", pkg)
	dl := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	dl.Dir = work
	if out, err := dl.CombinedOutput(); err != nil {
		return Kernel{}, fmt.Errorf("%w: apt-get download %s%s: %w: %s", ErrDownload, pkg, downloadHint(out), err, bytes.TrimSpace(out))
	}
	debs, _ := filepath.Glob(filepath.Join(work, "*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("%w: apt-get download %s left %d packages", ErrDownload, pkg, len(debs))
	}
	return c.install(ctx, dir, debs[0])
}

// downloadHint names the likely cause of a failed apt download.
func downloadHint(out []byte) string {
	s := string(out)
	switch {
	case strings.Contains(s, "Temporary failure resolving"), strings.Contains(s, "Could not resolve"),
		strings.Contains(s, "Failed to fetch"), strings.Contains(s, "Could not connect"),
		strings.Contains(s, "Network is unreachable"):
		return " (no network, or the apt sources are unreachable)"
	case strings.Contains(s, "Unable to locate package"), strings.Contains(s, "Can't select candidate"):
		return " (stale package lists: run apt-get update)"
	}
	return ""
}

// KernelFromDeb unpacks a linux-image .deb the caller already has (an
// offline machine) into the cache and returns it; a kernel of the same
// version that is already cached is kept.
func (c Cache) KernelFromDeb(ctx context.Context, deb string) (Kernel, error) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		return Kernel{}, fmt.Errorf("%w: dpkg-deb (install dpkg)", ErrMissingTool)
	}
	if _, err := os.Stat(deb); err != nil {
		return Kernel{}, fmt.Errorf("vmimage: kernel package: %w", err)
	}
	dir, err := c.dir()
	if err != nil {
		return Kernel{}, err
	}
	unlock, err := lockCache(ctx, dir)
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()
	return c.install(ctx, dir, deb)
}

// install unpacks deb next to the cache and moves it into place, unless a
// complete kernel of that version is there already: it may be in use by a
// running VM or another build, so it is never replaced.
func (c Cache) install(ctx context.Context, dir, deb string) (Kernel, error) {
	work, err := os.MkdirTemp(dir, ".kernel-")
	if err != nil {
		return Kernel{}, fmt.Errorf("vmimage: %w", err)
	}
	defer os.RemoveAll(work)
	tree := filepath.Join(work, "tree")
	c.logf("unpacking %s (keeping the kernel and %d modules)…", filepath.Base(deb), len(KernelModules()))
	version, err := unpackKernel(ctx, deb, tree)
	if err != nil {
		return Kernel{}, err
	}
	final := filepath.Join(dir, "kernel-"+version)
	if k, ok := completeKernel(final); ok {
		return k, nil
	}
	if err := os.RemoveAll(final); err != nil {
		return Kernel{}, fmt.Errorf("vmimage: %w", err)
	}
	if err := os.Rename(tree, final); err != nil {
		return Kernel{}, fmt.Errorf("vmimage: %w", err)
	}
	k, ok := completeKernel(final)
	if !ok {
		return Kernel{}, fmt.Errorf("vmimage: unpacked kernel %s is incomplete", version)
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

// keptList is written last into an unpacked kernel: one "NAME ko" or "NAME
// builtin" line per module. A kernel without it, or whose list lacks a
// module that KernelModules names now, is unpacked again.
const keptList = "modules.kept"

// cachedKernel finds the newest complete kernel in the cache.
func cachedKernel(cacheDir string) (Kernel, bool) {
	dirs, _ := filepath.Glob(filepath.Join(cacheDir, "kernel-*"))
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		if k, ok := completeKernel(d); ok {
			return k, true
		}
	}
	return Kernel{}, false
}

func completeKernel(d string) (Kernel, bool) {
	list, err := os.ReadFile(filepath.Join(d, keptList))
	if err != nil {
		return Kernel{}, false
	}
	kept := map[string]string{}
	for _, line := range strings.Split(string(list), "\n") {
		if name, how, ok := strings.Cut(line, " "); ok {
			kept[name] = how
		}
	}
	k := Kernel{
		Version: strings.TrimPrefix(filepath.Base(d), "kernel-"),
		Vmlinuz: filepath.Join(d, "vmlinuz"),
		Modules: map[string]string{},
	}
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		return Kernel{}, false
	}
	for _, m := range KernelModules() {
		switch kept[m] {
		case "builtin":
		case "ko":
			ko := filepath.Join(d, "modules", m+".ko")
			if _, err := os.Stat(ko); err != nil {
				return Kernel{}, false
			}
			k.Modules[m] = ko
		default:
			return Kernel{}, false
		}
	}
	return k, true
}

// unpackKernel streams the package's data archive and keeps the kernel
// image and the wanted modules (about 12 MB of the package's 400 MB).
func unpackKernel(ctx context.Context, deb, tree string) (version string, err error) {
	if err := os.MkdirAll(filepath.Join(tree, "modules"), 0o755); err != nil {
		return "", fmt.Errorf("vmimage: %w", err)
	}
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", fmt.Errorf("vmimage: %w", err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("vmimage: dpkg-deb: %w", err)
	}
	wanted := map[string]bool{}
	for _, m := range KernelModules() {
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
			err = fmt.Errorf("vmimage: reading %s: %w", deb, terr)
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
		err = fmt.Errorf("vmimage: dpkg-deb --fsys-tarfile %s: %w: %s", deb, werr, bytes.TrimSpace(stderr.Bytes()))
	}
	if err != nil {
		return "", err
	}
	if version == "" || strings.ContainsAny(version, "/\x00") {
		return "", fmt.Errorf("vmimage: %s holds no /boot/vmlinuz-* (is it a linux-image package?)", deb)
	}
	var kept strings.Builder
	var missing []string
	for _, m := range KernelModules() {
		switch {
		case found[m]:
			fmt.Fprintf(&kept, "%s ko\n", m)
		case strings.Contains(builtin, "/"+m+".ko\n"):
			fmt.Fprintf(&kept, "%s builtin\n", m)
		default:
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("vmimage: kernel %s has neither module nor built-in %s", version, strings.Join(missing, ", "))
	}
	if err := os.WriteFile(filepath.Join(tree, keptList), []byte(kept.String()), 0o644); err != nil {
		return "", fmt.Errorf("vmimage: %w", err)
	}
	return version, nil
}

func writeFile(dest string, r io.Reader) error {
	f, err := os.OpenFile(dest, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("vmimage: %w", err)
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("vmimage: writing %s: %w", dest, err)
	}
	return f.Close()
}
