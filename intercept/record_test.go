package intercept

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"
)

func TestRecordsRoundTrip(t *testing.T) {
	var x libvirtxml.DomainInterface
	if err := x.Unmarshal(directIface); err != nil {
		t.Fatal(err)
	}
	rs, err := records{}.with(mac(directMAC), &x)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := rs.marshal()
	if err != nil {
		t.Fatal(err)
	}
	// As libvirt hands it back: prefixed, with the namespace declared, next
	// to other namespaces' elements.
	stored := strings.Replace(doc, "<intercept>", `<vsagent:intercept xmlns:vsagent="`+Namespace+`">`, 1)
	stored = strings.Replace(stored, "</intercept>", "</vsagent:intercept>", 1)
	metadata := `<vsagent:gate xmlns:vsagent="https://vsagent.dev/xmlns/state/1" resume="true"/>` + "\n    " + stored
	got, err := parseRecords(metadata)
	if err != nil {
		t.Fatal(err)
	}
	d, ok := got.find(mac(strings.ToUpper(directMAC)))
	if !ok {
		t.Fatalf("record not found in %q", metadata)
	}
	back, err := d.original()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&x, back); diff != "" {
		t.Errorf("recorded interface (-stored +read):\n%s", diff)
	}
	if empty, err := got.without(mac(directMAC)).marshal(); err != nil || empty != "" {
		t.Errorf("without the last record: %q, %v; want the element removed", empty, err)
	}
}

func TestParseRecords(t *testing.T) {
	const ns = `xmlns:v="` + Namespace + `"`
	tests := []struct {
		name     string
		metadata string
		want     []diverted
		wantErr  bool
	}{
		{"no metadata", "", nil, false},
		{"other namespaces only", `<v:binding xmlns:v="https://vsagent.dev/xmlns/binding/1" policy="x"/>`, nil, false},
		{"same local name, other namespace", `<intercept xmlns="urn:other"><diverted mac="52:54:00:00:00:01">x</diverted></intercept>`, nil, false},
		{"nested deeper is not ours", `<a><v:intercept ` + ns + `><diverted mac="52:54:00:00:00:01">x</diverted></v:intercept></a>`, nil, false},
		{"empty element", `<v:intercept ` + ns + `/>`, nil, false},
		{"normalises the MAC", `<v:intercept ` + ns + `><diverted mac="52:54:00:AB:00:01">x</diverted></v:intercept>`,
			[]diverted{{MAC: "52:54:00:ab:00:01", Original: "x"}}, false},
		{"bad MAC", `<v:intercept ` + ns + `><diverted mac="nope">x</diverted></v:intercept>`, nil, true},
		{"malformed XML", `<v:intercept ` + ns + `><diverted mac="52:54:00:00:00:01">`, nil, true},
		{"malformed metadata before", `<a><b></a>`, nil, true},
	}
	for _, tt := range tests {
		got, err := parseRecords(tt.metadata)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: error %v, want error %v", tt.name, err, tt.wantErr)
			continue
		}
		if err != nil && !errors.Is(err, ErrRecord) {
			t.Errorf("%s: %v does not match ErrRecord", tt.name, err)
		}
		if diff := cmp.Diff(tt.want, got.Diverted); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestRecordedElementMustMatch(t *testing.T) {
	for _, d := range []diverted{
		{MAC: "52:54:00:00:00:01", Original: "<interface"},
		{MAC: "52:54:00:00:00:01", Original: `<interface type="direct"><mac address="52:54:00:00:00:02"/></interface>`},
		{MAC: "52:54:00:00:00:01", Original: `<interface type="direct"/>`},
	} {
		if _, err := d.original(); !errors.Is(err, ErrRecord) {
			t.Errorf("original() of %q = %v, want ErrRecord", d.Original, err)
		}
	}
}

func FuzzParseRecords(f *testing.F) {
	f.Add(`<v:intercept xmlns:v="` + Namespace + `"><diverted mac="52:54:00:00:00:01">&lt;interface type="direct"&gt;&lt;mac address="52:54:00:00:00:01"/&gt;&lt;/interface&gt;</diverted></v:intercept>`)
	f.Add(`<intercept xmlns="` + Namespace + `"/>`)
	f.Add(`<a><b/></a>`)
	f.Fuzz(func(t *testing.T, metadata string) {
		rs, err := parseRecords(metadata)
		if err != nil {
			if !errors.Is(err, ErrRecord) {
				t.Fatalf("error %v does not match ErrRecord", err)
			}
			return
		}
		for _, d := range rs.Diverted {
			if _, ok := rs.find(mac(d.MAC)); !ok {
				t.Fatalf("record %s not found by its own MAC", d.MAC)
			}
			d.original()
		}
		doc, err := rs.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if doc == "" {
			return
		}
		// What we store must read back the same.
		again, err := parseRecords(strings.Replace(doc, "<intercept>", `<intercept xmlns="`+Namespace+`">`, 1))
		if err != nil {
			t.Fatalf("re-reading %q: %v", doc, err)
		}
		if diff := cmp.Diff(rs.Diverted, again.Diverted); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}
