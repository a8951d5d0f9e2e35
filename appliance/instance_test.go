package appliance

import (
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"
)

// The flag has a package-specific name because other test files of this
// package may define their own -update.
var updateInstanceGoldens = flag.Bool("update-instances", false, "rewrite appliance/testdata/golden/*.xml")

// goldenUUID stands in for the random UUID in golden files.
const goldenUUID = "00000000-0000-4000-8000-000000000000"

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

const testHostID = "8f0e6a52-3c71-4e8b-9a1d-5b2c7d4e6f10"

func TestNewInstanceGolden(t *testing.T) {
	tests := []struct {
		template string
		spec     Spec
		used     MACSet
		golden   string

		wantVCPU    libvirtxml.DomainVCPU
		wantMemKiB  uint
		wantCurKiB  uint
		wantForeign []string // metadata elements of others that must survive
	}{
		{
			template: "header-fw.xml",
			spec: Spec{Appliance: "fw", Index: 1, Kind: KindHeader, VCPUs: 1, MaxVCPUs: 4,
				MemoryKiB: 262144, MaxMemoryKiB: 1048576, HostID: testHostID},
			golden:      "header-fw-1.xml",
			wantVCPU:    libvirtxml.DomainVCPU{Placement: "static", Current: 1, Value: 4},
			wantMemKiB:  1048576,
			wantCurKiB:  262144,
			wantForeign: []string{`<app:release xmlns:app="https://example.com/appliance/1" version="2.4"/>`},
		},
		{
			// The second interface's MAC at attempt 0 is taken: it must be
			// rehashed while the first keeps its attempt-0 address.
			template:   "wire-ips.xml",
			spec:       Spec{Appliance: "ips", Index: 3, Kind: KindWire, VCPUs: 2, MemoryKiB: 524288, HostID: testHostID},
			used:       NewMACMap(deriveMAC(testHostID, "ips", 3, 1, 0)),
			golden:     "wire-ips-3.xml",
			wantVCPU:   libvirtxml.DomainVCPU{Value: 2},
			wantMemKiB: 524288,
			wantCurKiB: 524288,
		},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			tmpl, err := LoadTemplate(filepath.Join("testdata", "templates", tt.template))
			if err != nil {
				t.Fatal(err)
			}
			before, err := tmpl.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			dom, macs, err := NewInstance(tmpl, tt.spec, tt.used)
			if err != nil {
				t.Fatalf("NewInstance: %v", err)
			}
			after, _ := tmpl.Marshal()
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("NewInstance modified the template (-before +after):\n%s", diff)
			}

			if !uuidV4.MatchString(dom.UUID) {
				t.Errorf("UUID %q is not a lower-case RFC 4122 version 4 UUID", dom.UUID)
			}
			if dom.Name != InstanceName(tt.spec.Appliance, tt.spec.Index) {
				t.Errorf("name %q, want %q", dom.Name, InstanceName(tt.spec.Appliance, tt.spec.Index))
			}
			if diff := cmp.Diff(tt.wantVCPU, *dom.VCPU); diff != "" {
				t.Errorf("vcpu (-want +got):\n%s", diff)
			}
			if dom.VCPUs != nil {
				t.Errorf("template's <vcpus> list was copied: %+v", dom.VCPUs)
			}
			if dom.Memory.Value != tt.wantMemKiB || dom.Memory.Unit != "KiB" {
				t.Errorf("memory %d %s, want %d KiB", dom.Memory.Value, dom.Memory.Unit, tt.wantMemKiB)
			}
			if dom.CurrentMemory.Value != tt.wantCurKiB || dom.CurrentMemory.Unit != "KiB" {
				t.Errorf("currentMemory %d %s, want %d KiB", dom.CurrentMemory.Value, dom.CurrentMemory.Unit, tt.wantCurKiB)
			}
			if dom.GenID != nil && dom.GenID.Value != "" {
				t.Errorf("template's genid %q was copied", dom.GenID.Value)
			}
			for _, info := range dom.SysInfo {
				if info.SMBIOS != nil && info.SMBIOS.System != nil {
					for _, e := range info.SMBIOS.System.Entry {
						if e.Name == "uuid" {
							t.Errorf("SMBIOS system uuid %q was copied", e.Value)
						}
					}
				}
			}

			ifaces := dom.Devices.Interfaces
			if len(macs) != len(ifaces) {
				t.Fatalf("%d MACs for %d interfaces", len(macs), len(ifaces))
			}
			for i, iface := range ifaces {
				if iface.MAC == nil || iface.MAC.Address != macs[i].String() {
					t.Errorf("interface %d MAC %+v, want %s", i, iface.MAC, macs[i])
				}
				if !IsApplianceMAC(macs[i]) {
					t.Errorf("interface %d MAC %s lacks the appliance prefix", i, macs[i])
				}
				if tt.used != nil && tt.used.Contains(macs[i]) {
					t.Errorf("interface %d got used MAC %s", i, macs[i])
				}
				if iface.Target != nil {
					t.Errorf("interface %d keeps tap name %+v", i, iface.Target)
				}
			}
			if diff := cmp.Diff(macs, InstanceMACs(dom)); diff != "" {
				t.Errorf("InstanceMACs (-returned +read back):\n%s", diff)
			}

			generation, err := TemplateGeneration(tmpl)
			if err != nil {
				t.Fatal(err)
			}
			wantOwner := Owner{Appliance: tt.spec.Appliance, Index: tt.spec.Index, Kind: tt.spec.Kind,
				Host: tt.spec.HostID, Generation: generation}
			owner, ok := OwnerOf(dom)
			if !ok {
				t.Fatalf("OwnerOf found no ownership tag in %q", dom.Metadata.XML)
			}
			if diff := cmp.Diff(wantOwner, owner); diff != "" {
				t.Errorf("owner (-want +got):\n%s", diff)
			}
			if n := strings.Count(dom.Metadata.XML, OwnerNamespace); n != 1 {
				t.Errorf("metadata mentions vsagent's namespace %d times, want once (stale tags must go): %s", n, dom.Metadata.XML)
			}
			for _, foreign := range tt.wantForeign {
				if !strings.Contains(dom.Metadata.XML, foreign) {
					t.Errorf("metadata lost %s: %s", foreign, dom.Metadata.XML)
				}
			}

			dom.UUID = goldenUUID
			got, err := dom.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			compareInstanceGolden(t, filepath.Join("testdata", "golden", tt.golden), got+"\n")
		})
	}
}

func compareInstanceGolden(t *testing.T, path, got string) {
	t.Helper()
	if *updateInstanceGoldens {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-instances to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

func TestNewInstanceUUIDsDiffer(t *testing.T) {
	tmpl := mustLoadTemplate(t, "header-fw.xml")
	spec := Spec{Appliance: "fw", Index: 1, Kind: KindHeader, VCPUs: 1, MemoryKiB: 65536, HostID: testHostID}
	seen := map[string]bool{}
	for range 16 {
		dom, _, err := NewInstance(tmpl, spec, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !uuidV4.MatchString(dom.UUID) {
			t.Fatalf("UUID %q is not version 4", dom.UUID)
		}
		if seen[dom.UUID] {
			t.Fatalf("UUID %s repeated", dom.UUID)
		}
		seen[dom.UUID] = true
	}
}

func TestNewInstanceMACsDeterministic(t *testing.T) {
	tmpl := mustLoadTemplate(t, "wire-ips.xml")
	spec := Spec{Appliance: "ips", Index: 2, Kind: KindWire, VCPUs: 1, MemoryKiB: 65536, HostID: testHostID}
	_, first, err := NewInstance(tmpl, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, again, err := NewInstance(tmpl, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first, again); diff != "" {
		t.Errorf("same spec, different MACs (-first +again):\n%s", diff)
	}
	otherHost := spec
	otherHost.HostID = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
	_, elsewhere, err := NewInstance(tmpl, otherHost, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range first {
		if first[i].String() == elsewhere[i].String() {
			t.Errorf("NIC %d has %s on both hosts", i, first[i])
		}
	}
}

func TestNewInstanceSpecErrors(t *testing.T) {
	valid := Spec{Appliance: "fw", Index: 1, Kind: KindHeader, VCPUs: 1, MemoryKiB: 65536, HostID: testHostID}
	tests := []struct {
		name   string
		modify func(*Spec)
		want   string
	}{
		{"bad appliance", func(s *Spec) { s.Appliance = "fw/1" }, `appliance name "fw/1"`},
		{"empty appliance", func(s *Spec) { s.Appliance = "" }, "appliance name is empty"},
		{"index 0", func(s *Spec) { s.Index = 0 }, "index 0 is below 1"},
		{"kind", func(s *Spec) { s.Kind = "tap" }, `kind "tap"`},
		{"host", func(s *Spec) { s.HostID = "" }, "host ID is empty"},
		{"no vcpus", func(s *Spec) { s.VCPUs = 0 }, "vCPUs is 0"},
		{"max vcpus", func(s *Spec) { s.VCPUs, s.MaxVCPUs = 4, 2 }, "max vCPUs 2 is below vCPUs 4"},
		{"no memory", func(s *Spec) { s.MemoryKiB = 0 }, "memory KiB is 0"},
		{"max memory", func(s *Spec) { s.MemoryKiB, s.MaxMemoryKiB = 4096, 1024 }, "max memory KiB 1024 is below memory KiB 4096"},
	}
	tmpl := mustLoadTemplate(t, "header-fw.xml")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := valid
			tt.modify(&spec)
			_, _, err := NewInstance(tmpl, spec, nil)
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("error %v, want ErrInvalidSpec", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		if _, _, err := NewInstance(tmpl, valid, nil); err != nil {
			t.Fatal(err)
		}
	})
}

func TestNewInstanceTemplateErrors(t *testing.T) {
	spec := Spec{Appliance: "fw", Index: 1, Kind: KindHeader, VCPUs: 1, MemoryKiB: 65536, HostID: testHostID}
	tests := []struct {
		name string
		tmpl *libvirtxml.Domain
		want string
	}{
		{"nil", nil, "no template"},
		{"no devices", &libvirtxml.Domain{Type: "qemu"}, "no <interface>"},
		{"no interfaces", &libvirtxml.Domain{Type: "qemu", Devices: &libvirtxml.DomainDeviceList{}}, "no <interface>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := NewInstance(tt.tmpl, spec, nil)
			if !errors.Is(err, ErrInvalidTemplate) {
				t.Fatalf("error %v, want ErrInvalidTemplate", err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "vsa-fw-1") {
				t.Errorf("error %q does not name the instance and %q", err, tt.want)
			}
		})
	}
}

func TestNewInstanceMACExhaustion(t *testing.T) {
	tmpl := mustLoadTemplate(t, "header-fw.xml")
	spec := Spec{Appliance: "fw", Index: 1, Kind: KindHeader, VCPUs: 1, MemoryKiB: 65536, HostID: testHostID}
	everything := macSetFunc(func(net.HardwareAddr) bool { return true })
	_, _, err := NewInstance(tmpl, spec, everything)
	if !errors.Is(err, ErrMACSpaceExhausted) {
		t.Fatalf("error %v, want ErrMACSpaceExhausted", err)
	}
}

func TestParseInstanceName(t *testing.T) {
	tests := []struct {
		name      string
		appliance string
		n         int
		ok        bool
	}{
		{"vsa-fw-1", "fw", 1, true},
		{"vsa-fw-12", "fw", 12, true},
		{"vsa-web-fw-3", "web-fw", 3, true},
		{"vsa-ips_v2.1-7", "ips_v2.1", 7, true},
		{"vsa-9-9", "9", 9, true},
		{"vsa-fw-0", "", 0, false},
		{"vsa-fw-01", "", 0, false},
		{"vsa-fw-+1", "", 0, false},
		{"vsa-fw--1", "", 0, false},
		{"vsa-fw-", "", 0, false},
		{"vsa-fw", "", 0, false},
		{"vsa--1", "", 0, false},
		{"vsa-fw--x-1", "fw--x", 1, true},
		{"vsa-fw-1x", "", 0, false},
		{"vsa-fw-99999999999999999999", "", 0, false},
		{"VSA-fw-1", "", 0, false},
		{"fw-1", "", 0, false},
		{"web1", "", 0, false},
		{"", "", 0, false},
		{"vsa-f/w-1", "", 0, false},
		{"vsa-" + strings.Repeat("a", maxApplianceNameLen) + "-1", strings.Repeat("a", maxApplianceNameLen), 1, true},
		{"vsa-" + strings.Repeat("a", maxApplianceNameLen+1) + "-1", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			appliance, n, ok := ParseInstanceName(tt.name)
			if appliance != tt.appliance || n != tt.n || ok != tt.ok {
				t.Errorf("ParseInstanceName(%q) = %q, %d, %v; want %q, %d, %v",
					tt.name, appliance, n, ok, tt.appliance, tt.n, tt.ok)
			}
			if ok && InstanceName(appliance, n) != tt.name {
				t.Errorf("InstanceName(%q, %d) = %q, want %q", appliance, n, InstanceName(appliance, n), tt.name)
			}
		})
	}
}

func TestValidateApplianceName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"fw", true},
		{"F", true},
		{"web-fw_2.0", true},
		{"", false},
		{"-fw", false},
		{"fw-", false},
		{".fw", false},
		{"fw.", false},
		{"f w", false},
		{"fw\x00", false},
		{"fé", false},
		{strings.Repeat("x", maxApplianceNameLen), true},
		{strings.Repeat("x", maxApplianceNameLen+1), false},
	}
	for _, tt := range tests {
		err := ValidateApplianceName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateApplianceName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestInstanceMACs(t *testing.T) {
	dom := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{Interfaces: []libvirtxml.DomainInterface{
		{MAC: &libvirtxml.DomainInterfaceMAC{Address: "02:5A:00:00:00:01"}},
		{},
		{MAC: &libvirtxml.DomainInterfaceMAC{Address: "not-a-mac"}},
		{MAC: &libvirtxml.DomainInterfaceMAC{Address: "52:54:00:aa:bb:cc"}},
	}}}
	want := []net.HardwareAddr{
		{0x02, 0x5a, 0, 0, 0, 1},
		{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc},
	}
	if diff := cmp.Diff(want, InstanceMACs(dom)); diff != "" {
		t.Errorf("InstanceMACs (-want +got):\n%s", diff)
	}
	if got := InstanceMACs(nil); got != nil {
		t.Errorf("InstanceMACs(nil) = %v", got)
	}
	if got := InstanceMACs(&libvirtxml.Domain{}); got != nil {
		t.Errorf("InstanceMACs(no devices) = %v", got)
	}
}

func FuzzParseInstanceName(f *testing.F) {
	for _, seed := range []string{"vsa-fw-1", "vsa-web-fw-12", "vsa-fw-01", "vsa--1", "vsa-fw-", "x", "", "vsa-a.b_c-999999999999"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		appliance, n, ok := ParseInstanceName(name)
		if !ok {
			return
		}
		if n < 1 {
			t.Fatalf("ParseInstanceName(%q) accepted index %d", name, n)
		}
		if err := ValidateApplianceName(appliance); err != nil {
			t.Fatalf("ParseInstanceName(%q) accepted appliance %q: %v", name, appliance, err)
		}
		if back := InstanceName(appliance, n); back != name {
			t.Fatalf("ParseInstanceName(%q) = %q, %d, which formats as %q", name, appliance, n, back)
		}
	})
}

type macSetFunc func(net.HardwareAddr) bool

func (f macSetFunc) Contains(mac net.HardwareAddr) bool { return f(mac) }

func mustLoadTemplate(t testing.TB, name string) *libvirtxml.Domain {
	t.Helper()
	tmpl, err := LoadTemplate(filepath.Join("testdata", "templates", name))
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}
