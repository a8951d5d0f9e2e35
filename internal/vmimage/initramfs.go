package vmimage

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// BuildInitramfs writes a gzip-compressed initramfs (newc cpio) to out: a
// static busybox with a symlink for every applet, /dev/console and /dev/null,
// initScript as /init, and files (destination path in the image → path on
// this machine, mode kept). The archive is deterministic (sorted entries,
// zero timestamps), so identical inputs give identical images; out is
// replaced atomically.
func BuildInitramfs(ctx context.Context, out string, files map[string]string, initScript string) error {
	if !strings.HasPrefix(initScript, "#!") {
		return errors.New("vmimage: init script must start with #!")
	}
	busybox, err := staticBusybox()
	if err != nil {
		return err
	}
	applets, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("vmimage: listing busybox applets: %w", err)
	}

	img := newImage()
	img.file("/init", 0o755, initScript, "")
	img.file("/bin/busybox", 0o755, "", busybox)
	for _, a := range strings.Fields(string(applets)) {
		if p := "/" + a; p != "/bin/busybox" {
			img.symlink(p, "/bin/busybox")
		}
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run", "/etc", "/root", "/var", "/lib/modules", "/sbin", "/usr/bin", "/usr/sbin"} {
		img.dir(d)
	}
	img.device("/dev/console", 5, 1)
	img.device("/dev/null", 1, 3)
	for dest, src := range files {
		clean := path.Clean("/" + dest)
		if clean == "/init" || clean == "/bin/busybox" {
			return fmt.Errorf("vmimage: %s is reserved in the image", clean)
		}
		st, err := os.Stat(src)
		if err != nil {
			return fmt.Errorf("vmimage: image file %s: %w", dest, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("vmimage: image file %s: %s is not a regular file", dest, src)
		}
		img.file(clean, uint32(st.Mode().Perm()), "", src)
	}
	return img.write(ctx, out)
}

// Initramfs builds an initramfs like BuildInitramfs into the cache, named
// NAME-DIGEST.cpio.gz after a digest of everything that goes into it, and
// reuses it when it exists already.
func (c Cache) Initramfs(ctx context.Context, name string, files map[string]string, initScript string) (string, error) {
	dir, err := c.dir()
	if err != nil {
		return "", err
	}
	key, err := initramfsKey(files, initScript)
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, fmt.Sprintf("%s-%s.cpio.gz", name, key))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	unlock, err := lockCache(ctx, dir)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	c.logf("building initramfs %s…", filepath.Base(out))
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
			return "", fmt.Errorf("vmimage: image file %s: %w", d, err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%o\x00", d, st.Size(), st.ModTime().UnixNano(), st.Mode())
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// staticBusybox finds busybox and insists that it is statically linked: a
// dynamic one would find no libc in the image.
func staticBusybox() (string, error) {
	p, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("%w: busybox (install busybox-static)", ErrMissingTool)
	}
	f, err := elf.Open(p)
	if err != nil {
		return "", fmt.Errorf("vmimage: %s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%w: %s is dynamically linked (install busybox-static)", ErrMissingTool, p)
		}
	}
	return p, nil
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeChar    = 0o020000
)

type entry struct {
	mode         uint32
	content      string // inline file content or symlink target
	source       string // file on this machine to copy
	rmajor, rmin uint32
}

type image map[string]*entry

func newImage() image { return image{} }

func (img image) parents(p string) {
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if _, ok := img[d]; !ok {
			img[d] = &entry{mode: modeDir | 0o755}
		}
	}
}

func (img image) dir(p string) {
	img.parents(p)
	img[p] = &entry{mode: modeDir | 0o755}
}

func (img image) file(p string, perm uint32, content, source string) {
	img.parents(p)
	img[p] = &entry{mode: modeFile | perm, content: content, source: source}
}

func (img image) symlink(p, target string) {
	img.parents(p)
	img[p] = &entry{mode: modeSymlink | 0o777, content: target}
}

func (img image) device(p string, major, minor uint32) {
	img.parents(p)
	img[p] = &entry{mode: modeChar | 0o600, rmajor: major, rmin: minor}
}

func (img image) write(ctx context.Context, out string) error {
	return writeAtomic(out, func(w io.Writer) error {
		buf := bufio.NewWriter(w)
		zw := gzip.NewWriter(buf)
		cw := &cpioWriter{w: zw}
		names := make([]string, 0, len(img))
		for p := range img {
			names = append(names, p)
		}
		sort.Strings(names)
		for _, p := range names {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := cw.add(strings.TrimPrefix(p, "/"), img[p]); err != nil {
				return fmt.Errorf("vmimage: packing %s: %w", p, err)
			}
		}
		if err := cw.trailer(); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		return buf.Flush()
	})
}

// writeAtomic creates dst (mode 0644) with what fill writes, through a
// temporary file in dst's folder that replaces dst only once complete: a VM
// starting meanwhile reads either the old file or the new one, never half.
func writeAtomic(dst string, fill func(io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+"-*")
	if err != nil {
		return fmt.Errorf("vmimage: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("vmimage: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("vmimage: writing %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("vmimage: %w", err)
	}
	return nil
}

// cpioWriter writes the "newc" format the kernel unpacks into its rootfs.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	n   int64
}

func (c *cpioWriter) header(name string, mode, nlink uint32, size int64, rmajor, rminor uint32) error {
	c.ino++
	fields := []uint32{c.ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rmajor, rminor, uint32(len(name) + 1), 0}
	var h strings.Builder
	h.WriteString("070701")
	for _, f := range fields {
		fmt.Fprintf(&h, "%08x", f)
	}
	h.WriteString(name)
	h.WriteByte(0)
	if err := c.put([]byte(h.String())); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) put(b []byte) error {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return err
}

// pad aligns to the 4-byte boundary newc requires after names and data.
func (c *cpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.put(make([]byte, 4-r))
	}
	return nil
}

func (c *cpioWriter) add(name string, e *entry) error {
	switch e.mode &^ 0o7777 {
	case modeDir:
		return c.header(name, e.mode, 2, 0, 0, 0)
	case modeChar:
		return c.header(name, e.mode, 1, 0, e.rmajor, e.rmin)
	case modeSymlink:
		if err := c.header(name, e.mode, 1, int64(len(e.content)), 0, 0); err != nil {
			return err
		}
		if err := c.put([]byte(e.content)); err != nil {
			return err
		}
		return c.pad()
	}
	if e.source == "" {
		if err := c.header(name, e.mode, 1, int64(len(e.content)), 0, 0); err != nil {
			return err
		}
		if err := c.put([]byte(e.content)); err != nil {
			return err
		}
		return c.pad()
	}
	f, err := os.Open(e.source)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() > 1<<32-1 {
		return fmt.Errorf("%s is too large for cpio", e.source)
	}
	if err := c.header(name, e.mode, 1, st.Size(), 0, 0); err != nil {
		return err
	}
	n, err := io.Copy(writerFunc(c.put), f)
	if err != nil {
		return err
	}
	if n != st.Size() {
		return fmt.Errorf("%s changed size while packing", e.source)
	}
	return c.pad()
}

func (c *cpioWriter) trailer() error {
	return c.header("TRAILER!!!", 0, 1, 0, 0, 0)
}

type writerFunc func([]byte) error

func (f writerFunc) Write(b []byte) (int, error) {
	if err := f(b); err != nil {
		return 0, err
	}
	return len(b), nil
}
