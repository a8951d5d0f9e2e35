package vmimage

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"
)

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Fatalf("%s (-golden +got), rerun with -update if intended:\n%s", name, diff)
	}
}

func TestApplianceInitGolden(t *testing.T) {
	script := ApplianceInit()
	golden(t, "appliance-init.golden.sh", script)
	// The image's shell is busybox's; have it check the syntax.
	busybox, err := staticBusybox()
	if err != nil {
		t.Skipf("skipping the syntax check: %v", err)
	}
	if out, err := exec.Command(busybox, "sh", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("busybox sh -n: %v\n%s", err, out)
	}
}

func TestCmdline(t *testing.T) {
	rules := []byte("[filter]\ndefault = \"deny\"\n")
	tests := []struct {
		name string
		opts CmdlineOptions
	}{
		{"defaults", CmdlineOptions{}},
		{"rules", CmdlineOptions{Rules: rules, StatsInterval: 10 * time.Second}},
		{"config disk", CmdlineOptions{ConfigDisk: "/dev/vda", Interface: "eth1", LogLevel: "debug"}},
		{"everything", CmdlineOptions{Interface: "ens3", Rules: rules, StatsInterval: 1500 * time.Millisecond, EtherType: 0x88b7, LogLevel: "warn"}},
	}
	var got strings.Builder
	for _, tt := range tests {
		line, err := Cmdline(tt.opts)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		got.WriteString(tt.name + ": " + line + "\n")
		if !strings.HasPrefix(line, BaseCmdline+" ") {
			t.Errorf("%s: %q does not start with %q", tt.name, line, BaseCmdline)
		}
		// What vsafilter will decode from the line is exactly the rules.
		for _, tok := range strings.Fields(line) {
			if enc, ok := strings.CutPrefix(tok, "vsafilter.rules="); ok {
				dec, err := base64.StdEncoding.DecodeString(enc)
				if err != nil || !bytes.Equal(dec, tt.opts.Rules) {
					t.Errorf("%s: rules decode to %q, %v", tt.name, dec, err)
				}
			}
		}
	}
	golden(t, "cmdline.golden", got.String())
}

func TestCmdlineRejects(t *testing.T) {
	tests := []struct {
		name string
		opts CmdlineOptions
	}{
		{"rules and disk", CmdlineOptions{Rules: []byte("x=1"), ConfigDisk: "/dev/vda"}},
		{"disk outside /dev", CmdlineOptions{ConfigDisk: "/etc/vsafilter.toml"}},
		{"disk with space", CmdlineOptions{ConfigDisk: "/dev/vd a"}},
		{"interface too long", CmdlineOptions{Interface: "a-very-long-ifname"}},
		{"interface with quote", CmdlineOptions{Interface: `eth"0`}},
		{"NUL in rules", CmdlineOptions{Rules: []byte("a\x00b")}},
		{"802.3 length", CmdlineOptions{EtherType: 0x05dc}},
		{"notice type", CmdlineOptions{EtherType: 0x88b6}},
		{"bad log level", CmdlineOptions{LogLevel: "verbose"}},
		{"negative stats", CmdlineOptions{StatsInterval: -time.Second}},
		{"too long", CmdlineOptions{Rules: bytes.Repeat([]byte("# padding\n"), 160)}},
	}
	for _, tt := range tests {
		if line, err := Cmdline(tt.opts); !errors.Is(err, ErrCmdline) {
			t.Errorf("%s: Cmdline = %q, %v; want an ErrCmdline", tt.name, line, err)
		}
	}
	// The longest rules that still fit are accepted: the limit is exact.
	base, _ := Cmdline(CmdlineOptions{Rules: []byte("x")})
	room := (MaxCmdline - len(base) + 4) / 4 * 3
	if line, err := Cmdline(CmdlineOptions{Rules: bytes.Repeat([]byte("#"), room)}); err != nil || len(line) > MaxCmdline {
		t.Errorf("%d bytes of rules: %d-byte line, %v", room, len(line), err)
	}
}

func TestWriteConfigDisk(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "config.img")
	tests := []struct {
		name   string
		config []byte
		size   int
	}{
		{"small", []byte("[filter]\ndefault = \"deny\"\n"), 64 << 10},
		{"one block exactly", bytes.Repeat([]byte("#"), 64<<10), 128 << 10},
	}
	for _, tt := range tests {
		if err := WriteConfigDisk(disk, tt.config); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		got, err := os.ReadFile(disk)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != tt.size {
			t.Errorf("%s: disk of %d bytes, want %d", tt.name, len(got), tt.size)
		}
		// vsafilter reads up to the first NUL: that must be the whole text.
		if i := bytes.IndexByte(got, 0); i != len(tt.config) || !bytes.Equal(got[:i], tt.config) {
			t.Errorf("%s: text up to the first NUL is %d bytes, want the %d of the configuration", tt.name, i, len(tt.config))
		}
		if strings.Trim(string(got[len(tt.config):]), "\x00") != "" {
			t.Errorf("%s: padding is not all zero", tt.name)
		}
	}
	for name, bad := range map[string][]byte{"empty": nil, "NUL": []byte("a\x00"), "too big": make([]byte, maxConfigDisk+1)} {
		if bad != nil && name == "too big" {
			for i := range bad {
				bad[i] = '#'
			}
		}
		if err := WriteConfigDisk(filepath.Join(dir, "bad.img"), bad); err == nil {
			t.Errorf("%s configuration: written anyway", name)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 1 {
		t.Errorf("failed writes left files: %v", left)
	}
}

// The header template must boot the installed image and carry exactly the
// rules of its rules file; -update regenerates its command line.
func TestHeaderTemplate(t *testing.T) {
	const dir = "../../testdata/templates"
	xmlPath := filepath.Join(dir, "vsa-header.xml")
	rules, err := os.ReadFile(filepath.Join(dir, "vsa-header.rules.toml"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := Cmdline(CmdlineOptions{Rules: rules, StatsInterval: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(xmlPath)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		re := regexp.MustCompile(`<cmdline>[^<]*</cmdline>`)
		doc = re.ReplaceAll(doc, []byte("<cmdline>"+want+"</cmdline>"))
		if err := os.WriteFile(xmlPath, doc, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(string(doc)); err != nil {
		t.Fatal(err)
	}
	got := struct{ Type, Kernel, Initrd, Cmdline string }{dom.Type, dom.OS.Kernel, dom.OS.Initrd, dom.OS.Cmdline}
	wantOS := struct{ Type, Kernel, Initrd, Cmdline string }{
		DomainQEMU, filepath.Join(DefaultDir, KernelFile), filepath.Join(DefaultDir, InitrdFile), want,
	}
	if diff := cmp.Diff(wantOS, got); diff != "" {
		t.Fatalf("%s (-want +got), rerun with -update to regenerate the command line:\n%s", xmlPath, diff)
	}
	if n := len(dom.Devices.Interfaces); n != 1 {
		t.Fatalf("a header appliance has one NIC, the template %d", n)
	}
	if dom.OnReboot != "destroy" || dom.OnPoweroff != "destroy" {
		t.Errorf("on_reboot %q, on_poweroff %q: a failed appliance must stop, not restart", dom.OnReboot, dom.OnPoweroff)
	}
}

// fakeKernel puts an unpacked kernel into a cache folder the way install
// does, with every module built in unless modules name some.
func fakeKernel(t *testing.T, cacheDir, version string, vmlinuz []byte, modules ...string) string {
	t.Helper()
	d := filepath.Join(cacheDir, "kernel-"+version)
	if err := os.MkdirAll(filepath.Join(d, "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "vmlinuz"), vmlinuz, 0o644); err != nil {
		t.Fatal(err)
	}
	isModule := map[string]bool{}
	for _, m := range modules {
		isModule[m] = true
		if err := os.WriteFile(filepath.Join(d, "modules", m+".ko"), []byte("module "+m), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var kept strings.Builder
	for _, m := range KernelModules() {
		if isModule[m] {
			kept.WriteString(m + " ko\n")
		} else {
			kept.WriteString(m + " builtin\n")
		}
	}
	if err := os.WriteFile(filepath.Join(d, keptList), []byte(kept.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// fakeBzImage is the smallest file bzImageVersion accepts.
func fakeBzImage(version string) []byte {
	img := make([]byte, 0x400)
	copy(img[0x202:], "HdrS")
	img[0x20e], img[0x20f] = 0x00, 0x01 // version at 0x100 + 0x200
	copy(img[0x300:], version+" (builder@example) #1 SMP\x00")
	return img
}

func TestCachedKernel(t *testing.T) {
	cacheDir := t.TempDir()
	if _, ok := cachedKernel(cacheDir); ok {
		t.Fatal("an empty cache has a kernel")
	}
	// Unpacked by an older build that kept fewer modules: not complete.
	old := fakeKernel(t, cacheDir, "6.1.0-98-amd64", fakeBzImage("6.1.0-98-amd64"), "virtio_net")
	list, _ := os.ReadFile(filepath.Join(old, keptList))
	os.WriteFile(filepath.Join(old, keptList), bytes.ReplaceAll(list, []byte("virtio_blk builtin\n"), nil), 0o644)
	if k, ok := cachedKernel(cacheDir); ok {
		t.Fatalf("a kernel without virtio_blk counts as complete: %+v", k)
	}
	fakeKernel(t, cacheDir, "6.1.0-99-amd64", fakeBzImage("6.1.0-99-amd64"), "virtio_net", "virtio_blk")
	k, ok := cachedKernel(cacheDir)
	if !ok || k.Version != "6.1.0-99-amd64" {
		t.Fatalf("cachedKernel = %+v, %v", k, ok)
	}
	want := map[string]string{
		"/lib/modules/virtio_net.ko": filepath.Join(cacheDir, "kernel-6.1.0-99-amd64", "modules", "virtio_net.ko"),
	}
	if diff := cmp.Diff(want, k.ModuleFiles(NetModules)); diff != "" {
		t.Errorf("module files (-want +got):\n%s", diff)
	}
	// A module the list promises but the folder lacks: not complete.
	os.Remove(want["/lib/modules/virtio_net.ko"])
	if _, ok := cachedKernel(cacheDir); ok {
		t.Error("a kernel missing a listed module counts as complete")
	}
}

func TestBuildAndCheckAppliance(t *testing.T) {
	requireBusybox(t)
	busybox, _ := staticBusybox()
	cacheDir, out := t.TempDir(), filepath.Join(t.TempDir(), "images")
	fakeKernel(t, cacheDir, "6.1.0-99-amd64", fakeBzImage("6.1.0-99-amd64"), "virtio_net")
	var progress []string
	cache := Cache{Dir: cacheDir, Logf: func(f string, a ...any) { progress = append(progress, f) }}
	ctx := context.Background()

	// busybox stands in for vsafilter: what matters is a static executable.
	a, err := BuildAppliance(ctx, ApplianceOptions{OutDir: out, Vsafilter: busybox, Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	if a.KernelVersion != "6.1.0-99-amd64" || a.Kernel != filepath.Join(out, KernelFile) || a.Initrd != filepath.Join(out, InitrdFile) {
		t.Fatalf("BuildAppliance = %+v", a)
	}
	if len(progress) == 0 {
		t.Error("no progress reported")
	}
	c, err := CheckAppliance(out)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(busybox)
	if c.KernelVersion != "6.1.0-99-amd64" || c.Modules != 1 || c.VsafilterSize != st.Size() || c.Entries < 100 {
		t.Errorf("CheckAppliance = %+v", c)
	}
	// The archive read back by cpio, an independent reader, agrees.
	entries := listArchive(t, a.Initrd)
	for _, name := range []string{"init", "bin/busybox", "usr/sbin/vsafilter", "lib/modules/virtio_net.ko"} {
		if entries[name] == "" {
			t.Errorf("initramfs lacks %s", name)
		}
	}
	initScript, err := exec.Command("sh", "-c", `gzip -dc "$1" | cpio -i --quiet --to-stdout init`, "sh", a.Initrd).Output()
	if err != nil || string(initScript) != ApplianceInit() {
		t.Errorf("/init in the image differs from ApplianceInit (%v)", err)
	}

	// A dynamically linked program would find no libc in the image.
	dynamic, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := BuildAppliance(ctx, ApplianceOptions{OutDir: out, Vsafilter: dynamic, Cache: cache}); !errors.Is(err, ErrNotStatic) {
		t.Errorf("dynamic vsafilter: %v, want ErrNotStatic", err)
	}
	if _, err := BuildAppliance(ctx, ApplianceOptions{OutDir: out, Vsafilter: filepath.Join(out, "none"), Cache: cache}); err == nil {
		t.Error("missing vsafilter: built anyway")
	}
	if _, err := CheckAppliance(out); err != nil {
		t.Errorf("a failed build damaged the image: %v", err)
	}
}

func TestCheckApplianceFindsProblems(t *testing.T) {
	requireBusybox(t)
	dynamic, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		kernel []byte
		files  map[string]string
		init   string
		want   []string
	}{
		{"not a kernel", []byte("MZ nothing"), map[string]string{VsafilterPath: "/bin/busybox"}, "#!/bin/sh\n", []string{"no HdrS signature"}},
		{"no vsafilter", fakeBzImage("6.1.0"), nil, "#!/bin/sh\n", []string{"no /usr/sbin/vsafilter"}},
		{"dynamic vsafilter", fakeBzImage("6.1.0"), map[string]string{VsafilterPath: dynamic}, "#!/bin/sh\n", []string{"dynamically linked"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, KernelFile), tt.kernel, 0o644); err != nil {
				t.Fatal(err)
			}
			files := map[string]string{}
			for dest, src := range tt.files {
				if src == "/bin/busybox" {
					src, _ = staticBusybox()
				}
				files[dest] = src
			}
			if err := BuildInitramfs(context.Background(), filepath.Join(dir, InitrdFile), files, tt.init); err != nil {
				t.Fatal(err)
			}
			_, err := CheckAppliance(dir)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	if _, err := CheckAppliance(t.TempDir()); err == nil || !strings.Contains(err.Error(), KernelFile) || !strings.Contains(err.Error(), InitrdFile) {
		t.Errorf("empty folder: %v, want both files named", err)
	}
}

func TestBzImageVersion(t *testing.T) {
	short := fakeBzImage("6.1.0")
	unterminated := fakeBzImage("6.1.0")
	for i := 0x300; i < len(unterminated); i++ {
		unterminated[i] = 'x'
	}
	outOfRange := fakeBzImage("6.1.0")
	outOfRange[0x20f] = 0x7f
	tests := []struct {
		name string
		img  []byte
		want string
		ok   bool
	}{
		{"debian", fakeBzImage("6.1.0-56-amd64"), "6.1.0-56-amd64", true},
		{"too short", short[:0x200], "", false},
		{"no signature", append(make([]byte, 0x202), "HdrX"+string(make([]byte, 0x100))...), "", false},
		{"unterminated", unterminated, "", false},
		{"offset out of range", outOfRange, "", false},
	}
	for _, tt := range tests {
		got, err := bzImageVersion(tt.img)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("%s: %q, %v; want %q, ok=%v", tt.name, got, err, tt.want, tt.ok)
		}
	}
}

func FuzzBzImageVersion(f *testing.F) {
	f.Add(fakeBzImage("6.1.0-56-amd64"))
	f.Add(fakeBzImage(""))
	f.Add([]byte("HdrS"))
	f.Fuzz(func(t *testing.T, img []byte) {
		v, err := bzImageVersion(img)
		if err == nil && (v == "" || strings.ContainsAny(v, " \x00")) {
			t.Fatalf("version %q accepted", v)
		}
	})
}
