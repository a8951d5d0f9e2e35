package intercept

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/rewrite")

const rewritePort = "vsa-dm0"

func readRewriteCase(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "rewrite", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDivertDomainXMLGolden rewrites incoming domain XMLs as the agent does
// at migrate and restore begin: only direct interfaces and the metadata
// change, the rest stays byte for byte.
func TestDivertDomainXMLGolden(t *testing.T) {
	for _, tc := range []struct {
		name    string
		changed bool
	}{
		{name: "restore-direct", changed: true},
		{name: "no-metadata", changed: true},
		{name: "taps-only", changed: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := readRewriteCase(t, tc.name+".xml")
			out, changed, err := DivertDomainXML(in, rewritePort)
			if err != nil {
				t.Fatal(err)
			}
			if changed != tc.changed {
				t.Fatalf("changed = %v, want %v", changed, tc.changed)
			}
			if !changed {
				if out != in {
					t.Errorf("unchanged XML differs from the input:\n%s", cmp.Diff(in, out))
				}
				return
			}
			golden := filepath.Join("testdata", "rewrite", tc.name+".golden.xml")
			if *updateGolden {
				if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if d := cmp.Diff(readRewriteCase(t, tc.name+".golden.xml"), out); d != "" {
				t.Errorf("rewritten XML (-golden +got):\n%s", d)
			}
			// Rewriting again changes nothing: the agent may be asked twice.
			again, changed, err := DivertDomainXML(out, rewritePort)
			if err != nil || changed || again != out {
				t.Errorf("second rewrite: changed %v, err %v, diff:\n%s", changed, err, cmp.Diff(out, again))
			}
			checkRewritten(t, in, out)
		})
	}
}

// checkRewritten checks the rewritten domain against the original one as
// libvirt reads them: each direct interface is Diverted from its original
// on rewritePort, keeps its network, and its original is recorded exactly.
func checkRewritten(t *testing.T, in, out string) {
	t.Helper()
	var before, after libvirtxml.Domain
	if err := before.Unmarshal(in); err != nil {
		t.Fatal(err)
	}
	if err := after.Unmarshal(out); err != nil {
		t.Fatalf("rewritten XML does not parse: %v", err)
	}
	recs, err := recordsOf(&after)
	if err != nil {
		t.Fatal(err)
	}
	orig := InterfacesOf(&before)
	got := InterfacesOf(&after)
	if len(got) != len(orig) {
		t.Fatalf("%d interfaces after the rewrite, %d before", len(got), len(orig))
	}
	for i, o := range orig {
		g := got[i]
		if o.Type != TypeDirect {
			if d := cmp.Diff(o.XML, g.XML); d != "" {
				t.Errorf("%s interface %d changed:\n%s", o.Type, i, d)
			}
			continue
		}
		want, _ := Diverted(o.XML, rewritePort)
		if d := cmp.Diff(want, g.XML); d != "" {
			t.Errorf("interface %s is not Diverted from its original (-want +got):\n%s", o.MAC, d)
		}
		if g.Network != o.Source {
			t.Errorf("interface %s: network %q, want the original parent %q", o.MAC, g.Network, o.Source)
		}
		rec, ok := recs.find(o.MAC)
		if !ok {
			t.Errorf("no record of %s", o.MAC)
			continue
		}
		x, err := rec.original()
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(o.XML, x); d != "" {
			t.Errorf("record of %s is not the original (-want +got):\n%s", o.MAC, d)
		}
	}
}

// TestDivertDomainXMLMigrated: a guest the source host diverted arrives
// with its diverted interface (on the source's port) and its record; it is
// wired to this host's port from the record, and the record is kept as it
// was, so that a revert here restores what the operator defined.
func TestDivertDomainXMLMigrated(t *testing.T) {
	in := readRewriteCase(t, "restore-direct.xml")
	here, _, err := DivertDomainXML(in, rewritePort)
	if err != nil {
		t.Fatal(err)
	}
	fromSource := strings.Replace(here, `dev="`+rewritePort+`"`, `dev="vsa-dm7"`, 1)
	if fromSource == here {
		t.Fatal("the rewritten interface does not name the port")
	}
	out, changed, err := DivertDomainXML(fromSource, rewritePort)
	if err != nil || !changed {
		t.Fatalf("changed %v, err %v", changed, err)
	}
	if d := cmp.Diff(here, out); d != "" {
		t.Errorf("a guest diverted elsewhere is not wired as one diverted here (-want +got):\n%s", d)
	}
}

// TestDivertDomainXMLAdoptedAndReverted plays the guest after it started
// from the rewritten XML: the backend finds it diverted, Apply touches
// nothing (no unplug, no plug), and Revert restores the original element.
func TestDivertDomainXMLAdoptedAndReverted(t *testing.T) {
	in := readRewriteCase(t, "restore-direct.xml")
	out, _, err := DivertDomainXML(in, rewritePort)
	if err != nil {
		t.Fatal(err)
	}
	var started libvirtxml.Domain
	if err := started.Unmarshal(out); err != nil {
		t.Fatal(err)
	}
	recs, err := recordsOf(&started)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDomains{uuid: started.UUID, running: true}
	if f.meta, err = recs.marshal(); err != nil {
		t.Fatal(err)
	}
	started.Metadata = nil
	f.live = started
	b := newMacvtap(t, f)
	const mac = "52:54:00:83:00:02"
	ifc := ifaceOf(t, f, mac)
	ctx := context.Background()
	if ok, err := b.Applied(ctx, ifc, rewritePort); err != nil || !ok {
		t.Fatalf("Applied = %v, %v; want the rewritten interface seen as diverted", ok, err)
	}
	if err := b.Apply(ctx, ifc, rewritePort); err != nil {
		t.Fatal(err)
	}
	diffCalls(t, "Apply after the rewrite", f)

	var before libvirtxml.Domain
	if err := before.Unmarshal(in); err != nil {
		t.Fatal(err)
	}
	original := InterfacesOf(&before)[0].XML
	revertExactly(t, b, f, ifc, original)
	diffCalls(t, "Revert", f, "update link down", "detach", "attach vp0 bridge", "metadata")
}

func TestDivertDomainXMLErrors(t *testing.T) {
	const direct = `<interface type='direct'><mac address='52:54:00:83:00:02'/><source dev='vp0' mode='bridge'/></interface>`
	for _, tc := range []struct {
		name, doc string
		want      error
		contains  string
	}{
		{name: "truncated", doc: `<domain><name>a</name><devices>` + direct, want: ErrDomainXML, contains: "unexpected EOF"},
		{name: "not a domain", doc: `<network><name>a</name></network>`, want: ErrDomainXML, contains: "<network>"},
		{name: "empty", doc: ``, want: ErrDomainXML, contains: "not a complete domain"},
		{name: "no MAC", doc: `<domain><name>a</name><devices><interface type='direct'><source dev='vp0'/></interface></devices></domain>`,
			want: ErrDomainXML, contains: "no MAC"},
		{name: "bad MAC", doc: `<domain><name>a</name><devices><interface type='direct'><mac address='nope'/><source dev='vp0'/></interface></devices></domain>`,
			want: ErrDomainXML, contains: "nope"},
		{name: "bad interface", doc: `<domain><name>a</name><devices><interface type='direct'><mac address='52:54:00:83:00:02'/><address type='pci' slot='x'/></interface></devices></domain>`,
			want: ErrDomainXML, contains: "interface 0"},
		{name: "unreadable record", doc: `<domain><name>a</name><metadata><i:intercept xmlns:i="` + Namespace + `"><i:diverted mac="zz"/></i:intercept></metadata><devices>` + direct + `</devices></domain>`,
			want: ErrRecord, contains: "record 0"},
		{name: "record of another MAC", doc: `<domain><name>a</name><metadata><i:intercept xmlns:i="` + Namespace + `"><i:diverted mac="52:54:00:83:00:02">&lt;interface type='direct'&gt;&lt;mac address='52:54:00:00:00:01'/&gt;&lt;/interface&gt;</i:diverted></i:intercept></metadata><devices>` + direct + `</devices></domain>`,
			want: ErrRecord, contains: "another MAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, changed, err := DivertDomainXML(tc.doc, rewritePort)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("error = %v, want %v containing %q", err, tc.want, tc.contains)
			}
			if changed || out != tc.doc {
				t.Errorf("a failed rewrite returned changed %v and another XML", changed)
			}
		})
	}
}

func FuzzDivertDomainXML(f *testing.F) {
	for _, name := range []string{"restore-direct.xml", "no-metadata.xml", "taps-only.xml", "restore-direct.golden.xml"} {
		f.Add(readRewriteCase(f, name))
	}
	f.Add(`<domain><name>a</name><metadata/><devices><interface type='direct'><mac address='52:54:00:00:00:01'/><source dev='p'/></interface></devices></domain>`)
	f.Fuzz(func(t *testing.T, doc string) {
		out, changed, err := DivertDomainXML(doc, rewritePort)
		if err != nil || !changed {
			if out != doc {
				t.Fatalf("unchanged or failed rewrite returned another XML (err %v)", err)
			}
			return
		}
		again, changed, err := DivertDomainXML(out, rewritePort)
		if err != nil || changed || again != out {
			t.Fatalf("rewrite not idempotent: changed %v, err %v\nfirst:\n%s\nsecond:\n%s", changed, err, out, again)
		}
	})
}
