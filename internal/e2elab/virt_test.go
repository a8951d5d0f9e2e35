package e2elab

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"libvirt.org/go/libvirtxml"
)

func TestDomainTypeUsesTheCachedProbe(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vsa-kernel"), filepath.Join(dir, "vsa-initrd")
	// No image at all: only a cached answer can be returned without a boot.
	if err := os.WriteFile(filepath.Join(dir, probeFile), []byte("kvm\nguest booted under KVM\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := DomainType(context.Background(), kernel, initrd)
	if err != nil || res.DomainType != "kvm" {
		t.Fatalf("DomainType = %+v, %v; want the cached kvm", res, err)
	}
}

func TestTemplatesTakeTheProbedDomainType(t *testing.T) {
	for _, typ := range []string{"kvm", "qemu"} {
		t.Run(typ, func(t *testing.T) {
			dir := t.TempDir()
			_, err := writeConfig(Options{
				Dir: dir, Template: "../../testdata/templates/vsa-header.xml",
				Kernel: "/images/vsa-kernel", Initrd: "/images/vsa-initrd", GuestPrefix: "web", DomainType: typ,
			}, "test:///default")
			if err != nil {
				t.Fatal(err)
			}
			for _, app := range []string{"ips", "fw"} {
				b, err := os.ReadFile(filepath.Join(dir, app+".xml"))
				if err != nil {
					t.Fatal(err)
				}
				var dom libvirtxml.Domain
				if err := dom.Unmarshal(string(b)); err != nil {
					t.Fatal(err)
				}
				if dom.Type != typ || dom.OS.Kernel != "/images/vsa-kernel" {
					t.Errorf("%s template: type %q kernel %q; want %q and the image's kernel", app, dom.Type, dom.OS.Kernel, typ)
				}
			}
		})
	}
}
