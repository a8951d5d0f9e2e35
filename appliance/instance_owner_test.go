package appliance

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"
)

var sampleOwner = Owner{
	Appliance:  "fw",
	Index:      1,
	Kind:       KindHeader,
	Host:       "8f0e6a52-3c71-4e8b-9a1d-5b2c7d4e6f10",
	Generation: "sha256:2bf781aa2c5f1190ec43663a121b6813c76250107bdf53d204362983932ab75a",
}

func TestOwnerXML(t *testing.T) {
	want := `<owner appliance="fw" index="1" kind="header" host="8f0e6a52-3c71-4e8b-9a1d-5b2c7d4e6f10" ` +
		`template="sha256:2bf781aa2c5f1190ec43663a121b6813c76250107bdf53d204362983932ab75a"/>`
	if diff := cmp.Diff(want, sampleOwner.XML()); diff != "" {
		t.Errorf("XML (-want +got):\n%s", diff)
	}
}

func TestParseOwnerForms(t *testing.T) {
	tests := []struct {
		name string
		xml  string
		want Owner
	}{
		{"Owner.XML", sampleOwner.XML(), sampleOwner},
		{"namespaced", sampleOwner.namespacedXML(), sampleOwner},
		{
			// Captured from libvirt 9.0: GetMetadata(ELEMENT, OwnerNamespace)
			// returns the element without any namespace.
			"libvirt GetMetadata",
			`<owner appliance="fw" index="1" kind="header" host="h&amp;1" template="sha256:ab"/>`,
			Owner{Appliance: "fw", Index: 1, Kind: KindHeader, Host: "h&1", Generation: "sha256:ab"},
		},
		{
			// Captured from libvirt 9.0: the element inside GetXMLDesc's <metadata>.
			"libvirt domain XML",
			`<vsagent:owner xmlns:vsagent="https://vsagent.dev/xmlns/state/1" appliance="fw" index="1" kind="header" host="h&amp;1" template="sha256:ab"/>`,
			Owner{Appliance: "fw", Index: 1, Kind: KindHeader, Host: "h&1", Generation: "sha256:ab"},
		},
		{
			"default namespace",
			`<owner xmlns="https://vsagent.dev/xmlns/state/1" appliance="ips" index="20" kind="wire" host="h" template="t"/>`,
			Owner{Appliance: "ips", Index: 20, Kind: KindWire, Host: "h", Generation: "t"},
		},
		{
			"other prefix, our namespace",
			`<x:owner xmlns:x="https://vsagent.dev/xmlns/state/1" x:appliance="fw" index="2" kind="wire" host="h" template="t"></x:owner>`,
			Owner{Appliance: "fw", Index: 2, Kind: KindWire, Host: "h", Generation: "t"},
		},
		{
			"undeclared vsagent prefix",
			`<vsagent:owner appliance="fw" index="2" kind="wire" host="h" template="t"/>`,
			Owner{Appliance: "fw", Index: 2, Kind: KindWire, Host: "h", Generation: "t"},
		},
		{
			"whitespace, comments, unknown attribute and child",
			"\n  <?xml version=\"1.0\"?><!-- c --><owner appliance=\"fw\" index=\"3\" kind=\"header\" host=\"h\" template=\"t\" future=\"x\"><child/></owner>\n",
			Owner{Appliance: "fw", Index: 3, Kind: KindHeader, Host: "h", Generation: "t"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOwner(tt.xml)
			if err != nil {
				t.Fatalf("ParseOwner: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("owner (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseOwnerErrors(t *testing.T) {
	good := `appliance="fw" index="1" kind="header" host="h" template="t"`
	tests := []struct {
		name string
		xml  string
		want string
	}{
		{"empty", "", "no element"},
		{"not xml", "owner", "text outside"},
		{"unclosed", `<owner ` + good + `>`, "unexpected EOF"},
		{"foreign namespace", `<owner xmlns="https://example.com/x" ` + good + `/>`, "is not {" + OwnerNamespace + "}owner"},
		{"other element", `<gate ` + good + `/>`, "gate is not"},
		{"two elements", `<owner ` + good + `/><owner ` + good + `/>`, "more than one element"},
		{"trailing text", `<owner ` + good + `/>junk`, "text outside"},
		{"missing index", `<owner appliance="fw" kind="header" host="h" template="t"/>`, "attribute index is missing"},
		{"missing host", `<owner appliance="fw" index="1" kind="header" template="t"/>`, "attribute host is missing"},
		{"empty template", `<owner appliance="fw" index="1" kind="header" host="h" template=""/>`, "attribute template is missing or empty"},
		{"index zero", `<owner appliance="fw" index="0" kind="header" host="h" template="t"/>`, `index "0"`},
		{"index leading zero", `<owner appliance="fw" index="01" kind="header" host="h" template="t"/>`, `index "01"`},
		{"index sign", `<owner appliance="fw" index="+1" kind="header" host="h" template="t"/>`, `index "+1"`},
		{"bad kind", `<owner appliance="fw" index="1" kind="tap" host="h" template="t"/>`, `kind "tap"`},
		{"bad appliance", `<owner appliance="f w" index="1" kind="wire" host="h" template="t"/>`, `appliance name "f w"`},
		{"duplicate attribute", `<owner appliance="fw" appliance="ips" index="1" kind="wire" host="h" template="t"/>`, "given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseOwner(tt.xml)
			if !errors.Is(err, ErrInvalidOwner) {
				t.Fatalf("error %v, want ErrInvalidOwner", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestOwnerRoundTripEscaping(t *testing.T) {
	o := Owner{Appliance: "a.b_c-d", Index: 1 << 40, Kind: KindWire,
		Host: "h\"<&>'\t\r\nx", Generation: "sha256:é"}
	for name, s := range map[string]string{"XML": o.XML(), "namespaced": o.namespacedXML()} {
		got, err := ParseOwner(s)
		if err != nil {
			t.Fatalf("%s: ParseOwner(%q): %v", name, s, err)
		}
		if diff := cmp.Diff(o, got); diff != "" {
			t.Errorf("%s round trip (-want +got):\n%s", name, diff)
		}
	}
}

func TestOwnerOfLibvirtDomain(t *testing.T) {
	dom, err := ParseTemplate(mustReadFile(t, filepath.Join("testdata", "libvirt-dumpxml-vsa-fw-1.xml")))
	if err != nil {
		t.Fatal(err)
	}
	got, ok := OwnerOf(dom)
	if !ok {
		t.Fatalf("no owner in %q", dom.Metadata.XML)
	}
	if diff := cmp.Diff(sampleOwner, got); diff != "" {
		t.Errorf("owner (-want +got):\n%s", diff)
	}
}

func TestOwnerOf(t *testing.T) {
	ours := sampleOwner.namespacedXML()
	foreign := `<app:release xmlns:app="https://example.com/appliance/1" version="2.4"/>`
	tests := []struct {
		name     string
		metadata *libvirtxml.DomainMetadata
		ok       bool
	}{
		{"no metadata", nil, false},
		{"empty metadata", &libvirtxml.DomainMetadata{}, false},
		{"only foreign", &libvirtxml.DomainMetadata{XML: foreign}, false},
		{"ours among others", &libvirtxml.DomainMetadata{XML: "\n  " + foreign + "\n  " + ours + "\n"}, true},
		{"un-namespaced owner belongs to someone else", &libvirtxml.DomainMetadata{XML: sampleOwner.XML()}, false},
		{"foreign owner element", &libvirtxml.DomainMetadata{XML: `<x:owner xmlns:x="https://example.com/x" appliance="fw" index="1" kind="header" host="h" template="t"/>`}, false},
		{"invalid tag is foreign", &libvirtxml.DomainMetadata{XML: `<vsagent:owner xmlns:vsagent="` + OwnerNamespace + `" appliance="fw" index="0" kind="header" host="h" template="t"/>`}, false},
		{"two tags are foreign", &libvirtxml.DomainMetadata{XML: ours + ours}, false},
		{"other vsagent state is not ownership", &libvirtxml.DomainMetadata{XML: `<vsagent:gate xmlns:vsagent="` + OwnerNamespace + `" paused="yes"/>`}, false},
		{"malformed metadata", &libvirtxml.DomainMetadata{XML: ours + "<broken>"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := OwnerOf(&libvirtxml.Domain{Metadata: tt.metadata})
			if ok != tt.ok {
				t.Fatalf("OwnerOf ok=%v, want %v (owner %+v)", ok, tt.ok, got)
			}
			if ok {
				if diff := cmp.Diff(sampleOwner, got); diff != "" {
					t.Errorf("owner (-want +got):\n%s", diff)
				}
			} else if got != (Owner{}) {
				t.Errorf("OwnerOf returned %+v with ok=false", got)
			}
		})
	}
	if _, ok := OwnerOf(nil); ok {
		t.Error("OwnerOf(nil) reported an owner")
	}
}

func TestWithOwnerStripsOurNamespace(t *testing.T) {
	meta := &libvirtxml.DomainMetadata{XML: `
    <app:release xmlns:app="https://example.com/appliance/1" version="2.4"><app:note>keep &amp; me</app:note></app:release>
    <vsagent:owner xmlns:vsagent="` + OwnerNamespace + `" appliance="old" index="9" kind="wire" host="x" template="y"/>
    <vsagent:policy xmlns:vsagent="` + OwnerNamespace + `" name="web"/>
    <!-- comment -->
    <plain>text</plain>
  `}
	got, err := withOwner(meta, sampleOwner)
	if err != nil {
		t.Fatal(err)
	}
	want := `<app:release xmlns:app="https://example.com/appliance/1" version="2.4"><app:note>keep &amp; me</app:note></app:release>` +
		`<plain>text</plain>` + sampleOwner.namespacedXML()
	if diff := cmp.Diff(want, got.XML); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}
}

func FuzzParseOwner(f *testing.F) {
	for _, seed := range []string{
		sampleOwner.XML(),
		sampleOwner.namespacedXML(),
		`<owner appliance="fw" index="1" kind="header" host="h&amp;1" template="sha256:ab"/>`,
		`<owner xmlns="https://vsagent.dev/xmlns/state/1" appliance="ips" index="20" kind="wire" host="h" template="t"/>`,
		`<owner appliance="fw" index="01" kind="header" host="h" template="t"/>`,
		`<owner appliance="fw" index="1" kind="header" host="&#xD;&#x9;" template="t"><x/></owner>`,
		`<owner/>`, `<owner`, ``, `<a:owner xmlns:a="x"/>`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := ParseOwner(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidOwner) {
				t.Fatalf("error %v does not wrap ErrInvalidOwner", err)
			}
			return
		}
		for name, form := range map[string]string{"XML": o.XML(), "namespaced": o.namespacedXML()} {
			back, err := ParseOwner(form)
			if err != nil {
				t.Fatalf("%s of %+v does not parse: %v", name, o, err)
			}
			if diff := cmp.Diff(o, back); diff != "" {
				t.Fatalf("%s round trip (-first +second):\n%s", name, diff)
			}
		}
	})
}
