package intercept

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// Diverted is original, a direct interface, wired as the macvtap backend
// diverts it: in VEPA mode, on parent port unless port is "". Everything
// else (MAC, model, PCI address, alias, link state) is kept, so that the
// guest sees the same NIC. It is the one definition of a diversion, shared
// by the live path (Apply, which unplugs and plugs) and DivertDomainXML
// (which wires a guest before it starts).
func Diverted(original *libvirtxml.DomainInterface, port string) (*libvirtxml.DomainInterface, error) {
	if original.Source == nil || original.Source.Direct == nil {
		return nil, fmt.Errorf("not a direct interface: %w", ErrUnsupported)
	}
	x, err := copyInterface(original)
	if err != nil {
		return nil, err
	}
	x.Source.Direct.Mode = "vepa"
	if port != "" {
		x.Source.Direct.Dev = port
	}
	return x, nil
}

// divertPlan decides how to divert the interface with mac onto port, whose
// element is now current (nil if the guest has none). The original is the
// recorded one if there is a record, else current. want is nil when current
// is already diverted: by an earlier diversion, or because the operator
// configured it so (then there is nothing to record or revert). record says
// that recs, returned with the original added, must be stored before the
// interface is rewired, so that a revert always knows what to go back to.
func divertPlan(current *libvirtxml.DomainInterface, recs records, mac net.HardwareAddr, port string) (want *libvirtxml.DomainInterface, out records, record bool, err error) {
	original := current
	rec, recorded := recs.find(mac)
	if recorded {
		if original, err = rec.original(); err != nil {
			return nil, recs, false, err
		}
	}
	if original == nil {
		return nil, recs, false, fmt.Errorf("guest has no interface %s: %w", mac, ErrNoInterface)
	}
	if want, err = Diverted(original, port); err != nil {
		return nil, recs, false, err
	}
	if current != nil && sameSource(current, want) && linkState(current) == linkState(want) {
		return nil, recs, false, nil
	}
	if recorded {
		return want, recs, false, nil
	}
	if out, err = recs.with(mac, original); err != nil {
		return nil, recs, false, err
	}
	return want, out, true, nil
}

// ErrDomainXML reports a domain XML that cannot be rewritten.
var ErrDomainXML = errors.New("unusable domain XML")

// DivertDomainXML returns doc, the XML of a guest about to start (the
// incoming definition of a migration or a restore), with each direct
// interface wired as the macvtap backend's Apply wires it live onto port,
// and each original recorded in the guest's metadata as Apply records it.
// Once the guest runs, Apply finds its interfaces diverted and adopts them
// without unplugging anything, and Revert restores the originals.
//
// Only the changed <interface> elements and <metadata> are replaced; the
// rest of doc is kept byte for byte, including what libvirtxml does not
// model. changed is false (and out is doc) when nothing needs rewiring.
func DivertDomainXML(doc, port string) (out string, changed bool, err error) {
	layout, err := scanDomain(doc)
	if err != nil {
		return doc, false, err
	}
	recs, err := parseRecords(layout.metadataInner)
	if err != nil {
		return doc, false, err
	}
	var edits []edit
	recorded := false
	for i, span := range layout.interfaces {
		var x libvirtxml.DomainInterface
		if err := x.Unmarshal(doc[span.from:span.to]); err != nil {
			return doc, false, fmt.Errorf("%w: interface %d: %w", ErrDomainXML, i, err)
		}
		if x.Source == nil || x.Source.Direct == nil {
			continue // a tap is diverted in the kernel, not in the XML
		}
		if x.MAC == nil {
			return doc, false, fmt.Errorf("%w: direct interface %d has no MAC address", ErrDomainXML, i)
		}
		mac, err := net.ParseMAC(x.MAC.Address)
		if err != nil {
			return doc, false, fmt.Errorf("%w: direct interface %d: %w", ErrDomainXML, i, err)
		}
		want, more, record, err := divertPlan(&x, recs, mac, port)
		if err != nil {
			return doc, false, fmt.Errorf("direct interface %s: %w", mac, err)
		}
		if want == nil {
			continue
		}
		if record {
			recs, recorded = more, true
		}
		text, err := want.Marshal()
		if err != nil {
			return doc, false, fmt.Errorf("encode interface %s: %w", mac, err)
		}
		edits = append(edits, edit{span, text})
	}
	if len(edits) == 0 {
		return doc, false, nil
	}
	if recorded {
		meta, err := layout.metadataWith(recs)
		if err != nil {
			return doc, false, err
		}
		edits = append(edits, meta)
	}
	return apply(doc, edits), true, nil
}

// span is a byte range of a document.
type span struct{ from, to int }

type edit struct {
	span
	text string
}

// apply replaces each edit's span of doc by its text; spans do not overlap.
func apply(doc string, edits []edit) string {
	slices.SortFunc(edits, func(a, b edit) int { return a.from - b.from })
	var b strings.Builder
	at := 0
	for _, e := range edits {
		b.WriteString(doc[at:e.from])
		b.WriteString(e.text)
		at = e.to
	}
	b.WriteString(doc[at:])
	return b.String()
}

// domainLayout is where, in a domain's XML, the parts DivertDomainXML may
// replace are.
type domainLayout struct {
	interfaces []span // each <domain><devices><interface> element
	// metadata is the <metadata> element, metadataInner its content; with
	// no <metadata>, metadata is the empty span where one goes.
	metadata      span
	hasMetadata   bool
	metadataInner string
}

func scanDomain(doc string) (domainLayout, error) {
	var l domainLayout
	dec := xml.NewDecoder(strings.NewReader(doc))
	var path []string
	for {
		at := int(dec.InputOffset())
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return l, fmt.Errorf("%w: %w", ErrDomainXML, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			path = append(path, t.Name.Local)
			where := strings.Join(path, "/")
			switch {
			case len(path) == 1 && where != "domain":
				return l, fmt.Errorf("%w: root element is <%s>, not <domain>", ErrDomainXML, t.Name.Local)
			case where == "domain/devices/interface" || where == "domain/metadata":
				if err := dec.Skip(); err != nil {
					return l, fmt.Errorf("%w: %w", ErrDomainXML, err)
				}
				path = path[:len(path)-1]
				s := span{at, int(dec.InputOffset())}
				if where == "domain/metadata" {
					var m struct {
						Inner string `xml:",innerxml"`
					}
					if err := xml.Unmarshal([]byte(doc[s.from:s.to]), &m); err != nil {
						return l, fmt.Errorf("%w: metadata: %w", ErrDomainXML, err)
					}
					l.metadata, l.hasMetadata, l.metadataInner = s, true, m.Inner
				} else {
					l.interfaces = append(l.interfaces, s)
				}
			}
		case xml.EndElement:
			if len(path) == 2 && !l.hasMetadata && (path[1] == "uuid" || (path[1] == "name" && l.metadata.from == 0)) {
				// A new <metadata> goes after <uuid> (or <name>), where
				// libvirt itself puts it.
				end := int(dec.InputOffset())
				l.metadata = span{end, end}
			}
			path = path[:len(path)-1]
		}
	}
	if len(path) != 0 || l.metadata.from == 0 && !l.hasMetadata {
		return l, fmt.Errorf("%w: not a complete domain with a name", ErrDomainXML)
	}
	return l, nil
}

// metadataWith is the edit that stores recs in the domain's metadata in
// place of an earlier intercept element, leaving every other element of
// the metadata as it was.
func (l domainLayout) metadataWith(recs records) (edit, error) {
	var elem bytes.Buffer
	enc := xml.NewEncoder(&elem)
	if err := enc.EncodeElement(recs, xml.StartElement{Name: xml.Name{Space: Namespace, Local: "intercept"}}); err != nil {
		return edit{}, fmt.Errorf("encode intercept records: %w", err)
	}
	inner := l.metadataInner
	if old, found, err := topLevelElement(inner, Namespace, "intercept"); err != nil {
		return edit{}, err
	} else if found {
		inner = inner[:old.from] + inner[old.to:]
	}
	return edit{l.metadata, "<metadata>" + inner + elem.String() + "</metadata>"}, nil
}

// topLevelElement finds the span of the first top-level element ns:local
// in a metadata's inner XML.
func topLevelElement(inner, ns, local string) (span, bool, error) {
	dec := xml.NewDecoder(strings.NewReader(inner))
	for {
		at := int(dec.InputOffset())
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return span{}, false, nil
		}
		if err != nil {
			return span{}, false, fmt.Errorf("%w: metadata: %w", ErrRecord, err)
		}
		t, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if err := dec.Skip(); err != nil {
			return span{}, false, fmt.Errorf("%w: metadata: %w", ErrRecord, err)
		}
		if t.Name.Space == ns && t.Name.Local == local {
			return span{at, int(dec.InputOffset())}, true, nil
		}
	}
}

// DivertDomainXML wires the direct interfaces of a starting guest's XML as
// this backend's Apply wires them live (see the package function).
func (m *macvtap) DivertDomainXML(doc, port string) (string, bool, error) {
	return DivertDomainXML(doc, port)
}

// DivertDomainXML rewrites the direct interfaces when this host diverts
// them by macvtap. Taps need nothing in the XML (tc-redirect diverts them
// in the kernel), and without a libvirt connection direct interfaces are
// not diverted at all, so the XML is kept.
func (d *byType) DivertDomainXML(doc, port string) (string, bool, error) {
	if m, ok := d.direct.(*macvtap); ok {
		return m.DivertDomainXML(doc, port)
	}
	return doc, false, nil
}
