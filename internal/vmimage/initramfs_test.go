package vmimage

import (
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

func requireBusybox(t *testing.T) {
	t.Helper()
	if _, err := staticBusybox(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("skipping: cpio is needed to read the archive back")
	}
}

// listArchive reads an image back with the system's cpio, an independent
// implementation of the format.
func listArchive(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := exec.Command("sh", "-c", `gzip -dc "$1" | cpio -itv --quiet`, "sh", path).Output()
	if err != nil {
		t.Fatalf("cpio cannot read %s: %v", path, err)
	}
	entries := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 {
			t.Fatalf("odd cpio line %q", line)
		}
		// mode links owner group size|major,minor month day year name [-> target]
		name := f[len(f)-1]
		if i := indexOf(f, "->"); i > 0 {
			name = f[i-1] + " -> " + f[i+1]
		}
		entries[strings.SplitN(name, " -> ", 2)[0]] = f[0] + " " + name
	}
	return entries
}

func indexOf(f []string, s string) int {
	for i, v := range f {
		if v == s {
			return i
		}
	}
	return -1
}

func TestBuildInitramfs(t *testing.T) {
	requireBusybox(t)
	dir := t.TempDir()
	payload := filepath.Join(dir, "payload")
	if err := os.WriteFile(payload, []byte("appliance binary"), 0o750); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"/opt/vsa/vsafilter": payload}
	const init = "#!/bin/sh\nexec /opt/vsa/vsafilter\n"
	out := filepath.Join(dir, "initrd.cpio.gz")
	if err := BuildInitramfs(context.Background(), out, files, init); err != nil {
		t.Fatal(err)
	}
	entries := listArchive(t, out)
	want := map[string]string{
		"init":              "-rwxr-xr-x init",
		"bin/busybox":       "-rwxr-xr-x bin/busybox",
		"bin/sh":            "lrwxrwxrwx bin/sh -> /bin/busybox",
		"dev/console":       "crw------- dev/console",
		"dev/null":          "crw------- dev/null",
		"opt":               "drwxr-xr-x opt",
		"opt/vsa":           "drwxr-xr-x opt/vsa",
		"opt/vsa/vsafilter": "-rwxr-x--- opt/vsa/vsafilter",
		"proc":              "drwxr-xr-x proc",
		"sbin/insmod":       "lrwxrwxrwx sbin/insmod -> /bin/busybox",
		"lib/modules":       "drwxr-xr-x lib/modules",
		"usr/bin/wget":      "lrwxrwxrwx usr/bin/wget -> /bin/busybox",
		"sys":               "drwxr-xr-x sys",
	}
	got := map[string]string{}
	for name := range want {
		got[name] = entries[name]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("archive entries (-want +got):\n%s", diff)
	}
	extracted, err := exec.Command("sh", "-c", `gzip -dc "$1" | cpio -i --quiet --to-stdout init opt/vsa/vsafilter`, "sh", out).Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(extracted) != init+"appliance binary" {
		t.Fatalf("file contents = %q", extracted)
	}

	again := filepath.Join(dir, "again.cpio.gz")
	if err := BuildInitramfs(context.Background(), again, files, init); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("identical inputs gave different archives")
	}
}

func TestBuildInitramfsRejectsBadInput(t *testing.T) {
	requireBusybox(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "x.cpio.gz")
	ok := "#!/bin/sh\n"
	tests := []struct {
		name  string
		files map[string]string
		init  string
	}{
		{"init without interpreter", nil, "echo hi\n"},
		{"overrides init", map[string]string{"/init": "/bin/true"}, ok},
		{"overrides busybox", map[string]string{"bin/../bin/busybox": "/bin/true"}, ok},
		{"missing source", map[string]string{"/x": filepath.Join(dir, "nope")}, ok},
		{"directory source", map[string]string{"/x": dir}, ok},
	}
	for _, tt := range tests {
		if err := BuildInitramfs(context.Background(), out, tt.files, tt.init); err == nil {
			t.Errorf("%s: built anyway", tt.name)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed build left an archive behind")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
		t.Errorf("a failed build left temporary files: %v", left)
	}
}

const aptDepends = `linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
`

func TestKernelPackage(t *testing.T) {
	tests := []struct {
		name, in, want string
		ok             bool
	}{
		{"debian 12", aptDepends, "linux-image-6.1.0-56-amd64", true},
		{"with other lines", "linux-image-amd64\n  Recommends: firmware\n  Depends: linux-image-6.12.9+bpo-amd64\n", "linux-image-6.12.9+bpo-amd64", true},
		{"unsigned variant not matched", "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64-unsigned\n", "", false},
		{"virtual package", "linux-image-amd64\n  Depends: <linux-image-6.1.0-56-amd64>\n", "", false},
		{"empty", "", "", false},
		{"error text", "E: No packages found\n", "", false},
	}
	for _, tt := range tests {
		got, ok := kernelPackage(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s: (%q, %v), want (%q, %v)", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzKernelPackage(f *testing.F) {
	f.Add(aptDepends)
	f.Add("  Depends: linux-image-6.1.0-56-amd64\r\n")
	f.Add("Depends: linux-image--amd64")
	f.Add("Depends: linux-image-1-amd64 ; rm -rf /")
	f.Fuzz(func(t *testing.T, in string) {
		pkg, ok := kernelPackage(in)
		if !ok {
			return
		}
		// The result goes to apt-get as one argument: it must be a plain
		// package name, never an option or something with spaces.
		if !strings.HasPrefix(pkg, "linux-image-") || !strings.HasSuffix(pkg, "-amd64") || strings.ContainsAny(pkg, " \t\r\n;/<>") {
			t.Fatalf("kernelPackage(%q) = %q", in, pkg)
		}
	})
}
