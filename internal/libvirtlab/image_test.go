package libvirtlab

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestGuestDomainGolden(t *testing.T) {
	img := Image{KernelVersion: "6.1.0-99-amd64", Kernel: "/cache/kernel-6.1.0-99-amd64/vmlinuz", Initrd: "/cache/guest-0123.cpio.gz"}
	dom, err := GuestDomain("guest-1", img, GuestOptions{
		UUID:       "5d0a5f6e-8d42-4c41-9f0e-1f2e3d4c5b6a",
		MemoryMiB:  192,
		VCPUs:      2,
		ConsoleLog: "/lab/guest-1.console",
		Gateway:    "10.0.0.1",
		Cmdline:    "loglevel=4",
		Interfaces: []GuestInterface{
			{Target: "vstap0", MAC: "52:54:00:00:00:01", Address: "10.0.0.2/24"},
			{Type: "direct", Source: "veth-vf1", Mode: "vepa", Address: "10.1.0.2/24"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "guest-domain.golden.xml")
	if *update {
		if err := os.WriteFile(golden, []byte(got+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(strings.TrimSpace(string(want)), strings.TrimSpace(got)); diff != "" {
		t.Fatalf("guest domain XML (-golden +got), rerun with -update if intended:\n%s", diff)
	}
}

func TestGuestDomainRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts GuestOptions
	}{
		{"bad address", GuestOptions{Interfaces: []GuestInterface{{Address: "10.0.0.300/24"}}}},
		{"address without prefix", GuestOptions{Interfaces: []GuestInterface{{Address: "10.0.0.2"}}}},
		{"direct without source", GuestOptions{Interfaces: []GuestInterface{{Type: "direct"}}}},
		{"unknown type", GuestOptions{Interfaces: []GuestInterface{{Type: "vhostuser"}}}},
		{"bad gateway", GuestOptions{Gateway: "gateway"}},
	}
	for _, tt := range tests {
		if _, err := GuestDomain("g", Image{}, tt.opts); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}
