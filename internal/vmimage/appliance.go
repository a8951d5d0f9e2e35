package vmimage

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Where the appliance image lives and what it holds. DefaultDir and the
// file names are what the embedded appliance templates refer to.
const (
	DefaultDir    = "/var/lib/vsagent/images"
	KernelFile    = "vsa-kernel"
	InitrdFile    = "vsa-initrd"
	VsafilterPath = "/usr/sbin/vsafilter"
)

// Console lines of the appliance's init, so that a console log tells what
// happened before and after vsafilter ran.
const (
	InitPrefix = "vsa-init: "
	// ProbeParam on the kernel command line makes init print ProbeOK and
	// power off at once: ProbeKVM boots the image with it.
	ProbeParam = "vsa.probe=1"
	ProbeOK    = InitPrefix + "probe ok"
)

// ApplianceInit returns /init of the appliance image. It loads the virtio
// modules in order, brings every ethN up (vsafilter sets promiscuous mode
// itself when its hop address is not the NIC's), runs vsafilter with its
// configuration from the kernel command line (serving eth0 unless that
// names another interface) and its JSON lines on the console, and powers the VM off when vsafilter exits for any reason: the
// domain stops, which the agent sees and treats as a failed appliance. As
// PID 1 the script must never exit (the kernel would panic), so a failed
// power-off falls back to the kernel's own.
func ApplianceInit() string {
	return `#!/bin/sh
# /init of the vsagent appliance image.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say() { read up idle < /proc/uptime; echo "` + InitPrefix + `[${up}s] $*"; }
off() { poweroff -f; echo o > /proc/sysrq-trigger; sleep 5; exit 1; }
case " $(cat /proc/cmdline) " in
*" ` + ProbeParam + ` "*) echo "` + ProbeOK + `"; off ;;
esac
for m in ` + strings.Join(KernelModules(), " ") + `; do
	if [ -e /lib/modules/$m.ko ] && ! insmod /lib/modules/$m.ko; then say "loading $m failed"; fi
done
ip link set lo up
# NICs appear asynchronously once virtio_net has probed them.
i=0
while [ $i -lt 100 ] && [ ! -e /sys/class/net/eth0 ]; do sleep 0.1; i=$((i+1)); done
for dev in /sys/class/net/eth*; do [ -e "$dev" ] && ip link set "${dev##*/}" up; done
# A header appliance has one NIC: serve eth0 unless the command line says.
set -- -config-from-cmdline
case " $(cat /proc/cmdline) " in
*" vsafilter.iface="*) ;;
*) set -- "$@" -i eth0 ;;
esac
say "starting vsafilter"
` + VsafilterPath + ` "$@"
status=$?
say "vsafilter exited with status $status; powering off"
off
`
}

// ErrNotStatic reports a program that cannot run in the image: dynamically
// linked (no libc there) or not an x86-64 executable.
var ErrNotStatic = errors.New("vmimage: not a static x86-64 executable")

// checkStatic insists on an x86-64 ELF executable without an interpreter.
func checkStatic(r io.ReaderAt, name string) error {
	f, err := elf.NewFile(r)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotStatic, name, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%w: %s is for %s", ErrNotStatic, name, f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%w: %s is an ELF %s", ErrNotStatic, name, f.Type)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%w: %s is dynamically linked (build it with CGO_ENABLED=0)", ErrNotStatic, name)
		}
	}
	return nil
}

// ApplianceOptions say what BuildAppliance builds and where.
type ApplianceOptions struct {
	// OutDir receives KernelFile and InitrdFile; default DefaultDir.
	OutDir string
	// Vsafilter is the static vsafilter binary to run in the image.
	Vsafilter string
	// KernelDeb, if set, is a linux-image .deb to take the kernel from
	// instead of downloading one.
	KernelDeb string
	Cache     Cache
}

// Appliance is a built appliance image.
type Appliance struct {
	KernelVersion string
	Kernel        string
	Initrd        string
}

// BuildAppliance writes the appliance image: the cached (or downloaded)
// kernel as KernelFile and a fresh initramfs with busybox, the virtio
// modules, vsafilter and ApplianceInit as InitrdFile. Both are replaced
// atomically, so a VM starting meanwhile boots either the old or the new
// image, never a mix.
func BuildAppliance(ctx context.Context, opts ApplianceOptions) (Appliance, error) {
	if opts.Vsafilter == "" {
		return Appliance{}, errors.New("vmimage: no vsafilter binary given")
	}
	bin, err := os.Open(opts.Vsafilter)
	if err != nil {
		return Appliance{}, fmt.Errorf("vmimage: vsafilter: %w", err)
	}
	err = checkStatic(bin, opts.Vsafilter)
	bin.Close()
	if err != nil {
		return Appliance{}, err
	}
	var k Kernel
	if opts.KernelDeb != "" {
		k, err = opts.Cache.KernelFromDeb(ctx, opts.KernelDeb)
	} else {
		k, err = opts.Cache.Kernel(ctx)
	}
	if err != nil {
		return Appliance{}, err
	}
	dir := opts.OutDir
	if dir == "" {
		dir = DefaultDir
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Appliance{}, fmt.Errorf("vmimage: output folder: %w", err)
	}
	files := k.ModuleFiles(KernelModules())
	files[VsafilterPath] = opts.Vsafilter
	a := Appliance{KernelVersion: k.Version, Kernel: filepath.Join(dir, KernelFile), Initrd: filepath.Join(dir, InitrdFile)}
	opts.Cache.logf("building %s (busybox, %d modules, vsafilter)…", a.Initrd, len(files)-1)
	if err := BuildInitramfs(ctx, a.Initrd, files, ApplianceInit()); err != nil {
		return Appliance{}, err
	}
	if err := copyFileAtomic(k.Vmlinuz, a.Kernel); err != nil {
		return Appliance{}, err
	}
	return a, nil
}

// copyFileAtomic copies src to dst, replacing dst atomically.
func copyFileAtomic(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("vmimage: %w", err)
	}
	defer in.Close()
	return writeAtomic(dst, func(w io.Writer) error {
		if _, err := io.Copy(w, in); err != nil {
			return fmt.Errorf("vmimage: copying %s: %w", src, err)
		}
		return nil
	})
}

// Check is what CheckAppliance found in an image.
type Check struct {
	KernelVersion string
	KernelBytes   int64
	InitrdBytes   int64
	Entries       int
	Modules       int
	VsafilterSize int64
}

// CheckAppliance verifies an appliance image in dir: KernelFile is an x86
// bzImage, and InitrdFile is a readable initramfs whose /init is a script,
// with busybox and a static vsafilter. Every problem found is reported.
func CheckAppliance(dir string) (Check, error) {
	var c Check
	var problems []error
	kernelPath := filepath.Join(dir, KernelFile)
	kernel, err := os.ReadFile(kernelPath)
	if err != nil {
		problems = append(problems, fmt.Errorf("kernel: %w", err))
	} else if c.KernelVersion, err = bzImageVersion(kernel); err != nil {
		problems = append(problems, fmt.Errorf("kernel %s: %w", kernelPath, err))
	}
	c.KernelBytes = int64(len(kernel))

	initrdPath := filepath.Join(dir, InitrdFile)
	f, err := os.Open(initrdPath)
	if err != nil {
		problems = append(problems, fmt.Errorf("initramfs: %w", err))
		return c, joinProblems(problems)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil {
		c.InitrdBytes = st.Size()
	}
	seen := map[string]bool{}
	err = WalkInitramfs(f, func(e Entry, data io.Reader) error {
		c.Entries++
		seen[e.Name] = true
		switch {
		case e.Name == "init":
			head := make([]byte, 2)
			if !e.IsRegular() || e.Mode&0o111 == 0 {
				problems = append(problems, errors.New("initramfs: /init is not an executable file"))
			} else if _, err := io.ReadFull(data, head); err != nil || string(head) != "#!" {
				problems = append(problems, errors.New("initramfs: /init is not a script"))
			}
		case e.Name == strings.TrimPrefix(VsafilterPath, "/"):
			c.VsafilterSize = e.Size
			if !e.IsRegular() || e.Mode&0o111 == 0 {
				problems = append(problems, fmt.Errorf("initramfs: %s is not an executable file", VsafilterPath))
				break
			}
			body, err := io.ReadAll(data)
			if err != nil {
				return err
			}
			if err := checkStatic(bytes.NewReader(body), VsafilterPath); err != nil {
				problems = append(problems, fmt.Errorf("initramfs: %w", err))
			}
		case strings.HasPrefix(e.Name, "lib/modules/") && strings.HasSuffix(e.Name, ".ko"):
			c.Modules++
		}
		return nil
	})
	if err != nil {
		problems = append(problems, fmt.Errorf("initramfs %s: %w", initrdPath, err))
	}
	for _, want := range []string{"init", "bin/busybox", strings.TrimPrefix(VsafilterPath, "/")} {
		if err == nil && !seen[want] {
			problems = append(problems, fmt.Errorf("initramfs: no /%s", want))
		}
	}
	return c, joinProblems(problems)
}

func joinProblems(problems []error) error {
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("vmimage: bad appliance image: %w", errors.Join(problems...))
}

// bzImageVersion reads the version string of an x86 boot image: the setup
// header carries "HdrS" at 0x202 and, at 0x20e, the offset of the version
// string minus 0x200 (Documentation/arch/x86/boot.rst).
func bzImageVersion(img []byte) (string, error) {
	if len(img) < 0x210 || string(img[0x202:0x206]) != "HdrS" {
		return "", errors.New("not an x86 bzImage (no HdrS signature)")
	}
	off := int(img[0x20e]) | int(img[0x20f])<<8
	if off == 0 {
		return "", errors.New("bzImage carries no version string")
	}
	start := off + 0x200
	if start >= len(img) {
		return "", errors.New("bzImage version offset is out of range")
	}
	rest := img[start:]
	if len(rest) > 256 {
		rest = rest[:256]
	}
	end := bytes.IndexByte(rest, 0)
	if end < 0 {
		return "", errors.New("bzImage version string is not terminated")
	}
	version, _, _ := strings.Cut(string(rest[:end]), " ")
	if version == "" {
		return "", errors.New("bzImage version string is empty")
	}
	return version, nil
}
