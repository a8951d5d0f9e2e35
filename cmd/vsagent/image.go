package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vsagent/vsagent/internal/vmimage"
)

type imageCommand struct {
	name, synopsis, does string
	run                  func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// imageCommands are the subcommands of `vsagent image`, in usage order. A
// function rather than a variable: the subcommands print their own usage
// from it, which would make a variable's initialisation depend on itself.
func imageCommands() []imageCommand {
	return []imageCommand{
		{"build", "[-out DIR] [-vsafilter PATH] [-cache DIR] [-kernel-deb FILE]",
			"build the appliance image: DIR/vsa-kernel and DIR/vsa-initrd", imageBuild},
		{"check", "[DIR]", "verify an appliance image", imageCheck},
		{"cmdline", "(-rules FILE | -config-disk DEV) [-iface IF] [-stats D] [-ethertype N] [-log LEVEL] [-vsafilter PATH]",
			"print the kernel command line of an appliance template", imageCmdline},
		{"config-disk", "-rules FILE -out FILE [-vsafilter PATH]",
			"write a raw config disk holding a vsafilter configuration", imageConfigDisk},
		{"probe-kvm", "[-dir DIR] [-timeout D]",
			"print the domain type appliance templates should use: kvm or qemu", imageProbeKVM},
	}
}

func imageUsage() string {
	var b strings.Builder
	b.WriteString("usage: vsagent image COMMAND [flags]\n\ncommands:\n")
	for _, c := range imageCommands() {
		fmt.Fprintf(&b, "  %s %s\n        %s\n", c.name, c.synopsis, c.does)
	}
	return b.String()
}

// runImage implements `vsagent image`. It returns the exit status: 0 done,
// 1 failed, 2 usage error.
func runImage(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, imageUsage())
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	for _, c := range imageCommands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, imageUsage())
		return 0
	}
	fmt.Fprintf(stderr, "vsagent image: unknown command %q\n%s", args[0], imageUsage())
	return 2
}

// parseImageFlags parses a subcommand's flags and allows at most maxArgs
// positional arguments; when ok is false the caller returns code.
func parseImageFlags(fs *flag.FlagSet, args []string, maxArgs int, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		for _, c := range imageCommands() {
			if c.name == fs.Name() {
				fmt.Fprintf(stderr, "usage: vsagent image %s %s\n", c.name, c.synopsis)
			}
		}
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > maxArgs {
		fmt.Fprintf(stderr, "vsagent image %s: unexpected argument %q\n", fs.Name(), fs.Arg(maxArgs))
		fs.Usage()
		return 2, false
	}
	return 0, true
}

func imageBuild(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	out := fs.String("out", vmimage.DefaultDir, "output `folder` for vsa-kernel and vsa-initrd")
	vsafilter := fs.String("vsafilter", "", "static vsafilter `binary` (default: vsafilter beside this program)")
	cacheDir := fs.String("cache", "", "`folder` caching the downloaded kernel (default $"+vmimage.CacheEnv+" or ~/.cache/vsagent-images)")
	kernelDeb := fs.String("kernel-deb", "", "take the kernel from this linux-image `.deb` instead of downloading it")
	if code, ok := parseImageFlags(fs, args, 0, stderr); !ok {
		return code
	}
	if *vsafilter == "" {
		*vsafilter = besideExecutable("vsafilter")
		if *vsafilter == "" {
			fmt.Fprintln(stderr, "vsagent image build: no vsafilter binary: build one with `CGO_ENABLED=0 go build -o bin/vsafilter ./cmd/vsafilter` and pass -vsafilter bin/vsafilter")
			return 2
		}
	}
	progress := func(format string, a ...any) {
		fmt.Fprintf(stdout, "vsagent image: "+format+"\n", a...)
	}
	start := time.Now()
	progress("vsafilter %s", *vsafilter)
	img, err := vmimage.BuildAppliance(ctx, vmimage.ApplianceOptions{
		OutDir:    *out,
		Vsafilter: *vsafilter,
		KernelDeb: *kernelDeb,
		Cache:     vmimage.Cache{Dir: *cacheDir, Logf: progress},
	})
	if err != nil {
		fmt.Fprintf(stderr, "vsagent image build: %v%s\n", err, buildHint(err, *out))
		return 1
	}
	progress("done in %.1fs: %s (kernel %s, %s), %s (%s)", time.Since(start).Seconds(),
		img.Kernel, img.KernelVersion, fileSize(img.Kernel), img.Initrd, fileSize(img.Initrd))
	return 0
}

// buildHint adds what to do about the errors people meet first.
func buildHint(err error, out string) string {
	switch {
	case errors.Is(err, os.ErrPermission):
		return fmt.Sprintf("\n(writing %s needs root; or pass -out and -cache folders you own)", out)
	case errors.Is(err, vmimage.ErrDownload),
		errors.Is(err, vmimage.ErrMissingTool) && strings.Contains(err.Error(), "apt"):
		return "\n(the kernel comes from Debian's archive through apt; offline or without apt, fetch a linux-image-*-amd64 .deb elsewhere and pass it with -kernel-deb)"
	}
	return ""
}

// besideExecutable returns name in this program's folder if it exists
// there, as `make` builds bin/vsagent and bin/vsafilter side by side.
func besideExecutable(name string) string {
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(self), name)
	if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
		return ""
	}
	return p
}

func fileSize(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.1f MB", float64(st.Size())/1e6)
}

func imageCheck(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	if code, ok := parseImageFlags(fs, args, 1, stderr); !ok {
		return code
	}
	dir := vmimage.DefaultDir
	if fs.NArg() == 1 {
		dir = fs.Arg(0)
	}
	c, err := vmimage.CheckAppliance(dir)
	if err != nil {
		fmt.Fprintf(stderr, "vsagent image check: %s: %v\n", dir, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok: kernel %s (%.1f MB), initramfs %.1f MB with %d entries, %d modules, vsafilter %.1f MB\n",
		dir, c.KernelVersion, float64(c.KernelBytes)/1e6, float64(c.InitrdBytes)/1e6, c.Entries, c.Modules, float64(c.VsafilterSize)/1e6)
	return 0
}

// validateRules runs `vsafilter -c FILE check` when a vsafilter binary is
// at hand: its own parser is the only complete judge of a configuration.
func validateRules(ctx context.Context, vsafilter, rules string, stderr io.Writer) bool {
	if vsafilter == "" {
		return true
	}
	out, err := exec.CommandContext(ctx, vsafilter, "-c", rules, "check").CombinedOutput()
	stderr.Write(out)
	if err != nil {
		fmt.Fprintf(stderr, "vsagent image: %s rejects %s: %v\n", vsafilter, rules, err)
		return false
	}
	return true
}

func imageCmdline(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cmdline", flag.ContinueOnError)
	rules := fs.String("rules", "", "vsafilter TOML configuration `file` to bake in (base64)")
	disk := fs.String("config-disk", "", "`device` in the VM holding the configuration instead, e.g. /dev/vda")
	iface := fs.String("iface", "eth0", "`interface` vsafilter serves")
	stats := fs.Duration("stats", 10*time.Second, "counters `interval` on the console (0: vsafilter's default)")
	etherType := fs.String("ethertype", "", "MSR `EtherType` (default 0x88b5)")
	logLevel := fs.String("log", "", "vsafilter log `level`: debug, info, warn, error")
	vsafilter := fs.String("vsafilter", "", "vsafilter `binary` to validate the rules with")
	if code, ok := parseImageFlags(fs, args, 0, stderr); !ok {
		return code
	}
	if (*rules == "") == (*disk == "") {
		fmt.Fprintln(stderr, "vsagent image cmdline: give exactly one of -rules and -config-disk")
		return 2
	}
	opts := vmimage.CmdlineOptions{Interface: *iface, ConfigDisk: *disk, StatsInterval: *stats, LogLevel: *logLevel}
	if *etherType != "" {
		n, err := strconv.ParseUint(*etherType, 0, 16)
		if err != nil {
			fmt.Fprintf(stderr, "vsagent image cmdline: -ethertype %q is not a 16-bit number\n", *etherType)
			return 2
		}
		opts.EtherType = uint16(n)
	}
	if *rules != "" {
		data, err := os.ReadFile(*rules)
		if err != nil {
			fmt.Fprintf(stderr, "vsagent image cmdline: %v\n", err)
			return 1
		}
		if !validateRules(ctx, *vsafilter, *rules, stderr) {
			return 1
		}
		opts.Rules = data
	}
	line, err := vmimage.Cmdline(opts)
	if err != nil {
		fmt.Fprintf(stderr, "vsagent image cmdline: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, line)
	return 0
}

func imageConfigDisk(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("config-disk", flag.ContinueOnError)
	rules := fs.String("rules", "", "vsafilter TOML configuration `file`")
	out := fs.String("out", "", "raw disk image `file` to write")
	vsafilter := fs.String("vsafilter", "", "vsafilter `binary` to validate the rules with")
	if code, ok := parseImageFlags(fs, args, 0, stderr); !ok {
		return code
	}
	if *rules == "" || *out == "" {
		fmt.Fprintln(stderr, "vsagent image config-disk: -rules and -out are required")
		return 2
	}
	data, err := os.ReadFile(*rules)
	if err == nil && !validateRules(ctx, *vsafilter, *rules, stderr) {
		return 1
	}
	if err == nil {
		err = vmimage.WriteConfigDisk(*out, data)
	}
	if err != nil {
		fmt.Fprintf(stderr, "vsagent image config-disk: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s holding %s; attach it read-only as a virtio disk and use vsafilter.config=/dev/vdX\n", *out, fileSize(*out), *rules)
	return 0
}

func imageProbeKVM(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("probe-kvm", flag.ContinueOnError)
	dir := fs.String("dir", vmimage.DefaultDir, "appliance image `folder` to boot")
	timeout := fs.Duration("timeout", vmimage.DefaultProbeTimeout, "how long a KVM boot may take")
	if code, ok := parseImageFlags(fs, args, 0, stderr); !ok {
		return code
	}
	res, err := vmimage.ProbeKVM(ctx, filepath.Join(*dir, vmimage.KernelFile), filepath.Join(*dir, vmimage.InitrdFile), *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "vsagent image probe-kvm: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, res.DomainType)
	fmt.Fprintln(stderr, "vsagent image probe-kvm:", strings.TrimSpace(res.Reason))
	return 0
}
