package appliance

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const minimalInterface = `<interface type='ethernet'><model type='virtio'/></interface>`

func TestParseTemplateErrors(t *testing.T) {
	tests := []struct {
		name string
		xml  string
		want string
	}{
		{"empty", "", "not well-formed XML: no root element"},
		{"not xml", "this is not XML", "not well-formed XML: text outside the root element"},
		{"unclosed", "<domain type='qemu'><devices>", "not well-formed XML"},
		{"mismatched", "<domain></devices>", "not well-formed XML"},
		{"two roots", "<domain/><domain/>", "second root element <domain>"},
		{"trailing text", "<domain/>trailing", "text outside the root element"},
		{"network", "<network><name>default</name></network>", "root element is <network>, not a libvirt <domain>"},
		{"bad value", "<domain><vcpu>many</vcpu><devices>" + minimalInterface + "</devices></domain>", "not valid domain XML"},
		{"no devices", "<domain type='qemu'><name>x</name></domain>", "no <interface> device"},
		{"no interface", "<domain type='qemu'><devices><disk device='cdrom'/></devices></domain>", "no <interface> device"},
		{
			"shared writable disk",
			"<domain><devices><disk type='file' device='disk'><source file='/img/a.qcow2'/><target dev='vda'/></disk>" + minimalInterface + "</devices></domain>",
			"disk 0 (target vda) is writable and would be shared",
		},
		{
			"pre-created tap",
			"<domain><devices><interface type='ethernet'><target dev='tap-fw' managed='no'/></interface></devices></domain>",
			`pre-created tap "tap-fw"`,
		},
		{
			"memory hotplug",
			"<domain><maxMemory slots='4' unit='GiB'>8</maxMemory><devices>" + minimalInterface + "</devices></domain>",
			"<maxMemory> (memory hotplug) is not supported",
		},
		{
			"numa",
			"<domain><cpu><numa><cell id='0' cpus='0' memory='1' unit='GiB'/></numa></cpu><devices>" + minimalInterface + "</devices></domain>",
			"NUMA cells are not supported",
		},
		{
			// Found by FuzzParseTemplate: libvirtxml drops the empty type
			// when encoding and then refuses its own output.
			"empty interface type",
			"<domain><devices><interface type=''></interface></devices></domain>",
			"does not survive re-encoding: Missing interface type attribute",
		},
		{
			"every problem is reported",
			"<domain><maxMemory slots='4' unit='GiB'>8</maxMemory><devices/></domain>",
			"no <interface> device: an appliance needs a NIC to sit in a chain; <maxMemory>",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dom, err := ParseTemplate([]byte(tt.xml))
			if !errors.Is(err, ErrInvalidTemplate) {
				t.Fatalf("ParseTemplate = %v, %v; want ErrInvalidTemplate", dom, err)
			}
			if dom != nil {
				t.Errorf("a domain came back with the error: %+v", dom)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestParseTemplateAccepts(t *testing.T) {
	tests := []struct {
		name string
		xml  string
	}{
		{"minimal", "<domain type='qemu'><devices>" + minimalInterface + "</devices></domain>"},
		{"prolog and comments", "<?xml version='1.0'?>\n<!-- c -->\n<domain type='qemu'><devices>" + minimalInterface + "</devices></domain>\n<!-- end -->\n"},
		{"readonly, shareable, transient and empty disks",
			"<domain><devices>" +
				"<disk device='disk'><source file='/a'/><readonly/></disk>" +
				"<disk device='disk'><source file='/b'/><shareable/></disk>" +
				"<disk device='disk'><source file='/c'/><transient/></disk>" +
				"<disk device='cdrom'><source file='/d.iso'/></disk>" +
				"<disk device='disk'/>" +
				minimalInterface + "</devices></domain>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseTemplate([]byte(tt.xml)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLoadTemplate(t *testing.T) {
	dom, err := LoadTemplate(filepath.Join("testdata", "templates", "wire-ips.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if dom.Name != "ips" || len(dom.Devices.Interfaces) != 2 {
		t.Errorf("loaded %q with %d interfaces, want ips with 2", dom.Name, len(dom.Devices.Interfaces))
	}

	missing := filepath.Join(t.TempDir(), "absent.xml")
	if _, err := LoadTemplate(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: error %v, want fs.ErrNotExist", err)
	}

	bad := filepath.Join(t.TempDir(), "bad.xml")
	if err := os.WriteFile(bad, []byte("<network/>"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadTemplate(bad)
	if !errors.Is(err, ErrInvalidTemplate) || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad file: error %v, want ErrInvalidTemplate naming %s", err, bad)
	}
}

func TestTemplateGeneration(t *testing.T) {
	a := mustLoadTemplate(t, "wire-ips.xml")
	genA, err := TemplateGeneration(a)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(genA, "sha256:") || len(genA) != len("sha256:")+64 {
		t.Errorf("generation %q is not sha256:<64 hex>", genA)
	}

	// Formatting and comments are not content.
	raw := mustReadFile(t, filepath.Join("testdata", "templates", "wire-ips.xml"))
	reformatted := strings.ReplaceAll(string(raw), "\n  ", "\n\t\t") + "<!-- trailing comment -->\n"
	b, err := ParseTemplate([]byte(reformatted))
	if err != nil {
		t.Fatal(err)
	}
	genB, _ := TemplateGeneration(b)
	if diff := cmp.Diff(genA, genB); diff != "" {
		t.Errorf("reformatting changed the generation (-before +after):\n%s", diff)
	}

	b.Devices.Interfaces[0].Model.Type = "e1000"
	genC, _ := TemplateGeneration(b)
	if genC == genA {
		t.Error("changing the NIC model did not change the generation")
	}
}

func FuzzParseTemplate(f *testing.F) {
	for _, name := range []string{"header-fw.xml", "wire-ips.xml"} {
		f.Add(mustReadFile(f, filepath.Join("testdata", "templates", name)))
	}
	for _, seed := range []string{
		"", "<domain/>", "<network/>", "<domain><devices>" + minimalInterface + "</devices></domain>",
		"<domain><metadata><a:x xmlns:a='u'/><vsagent:owner xmlns:vsagent='" + OwnerNamespace + "'/></metadata><devices>" + minimalInterface + minimalInterface + "</devices></domain>",
		"<domain><devices><interface><mac address='zz'/><target dev='t'/></interface></devices></domain>",
	} {
		f.Add([]byte(seed))
	}
	spec := Spec{Appliance: "fw", Index: 1, Kind: KindHeader, VCPUs: 1, MemoryKiB: 65536, HostID: testHostID}
	f.Fuzz(func(t *testing.T, data []byte) {
		tmpl, err := ParseTemplate(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidTemplate) {
				t.Fatalf("error %v does not wrap ErrInvalidTemplate", err)
			}
			return
		}
		// Whatever parses as a template must make an instance that is ours.
		dom, macs, err := NewInstance(tmpl, spec, nil)
		if err != nil {
			t.Fatalf("accepted template fails NewInstance: %v", err)
		}
		if len(macs) != len(tmpl.Devices.Interfaces) {
			t.Fatalf("%d MACs for %d interfaces", len(macs), len(tmpl.Devices.Interfaces))
		}
		if owner, ok := OwnerOf(dom); !ok || owner.Appliance != "fw" {
			t.Fatalf("instance owner %+v, %v; metadata %q", owner, ok, dom.Metadata.XML)
		}
	})
}

func mustReadFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
