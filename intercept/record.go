package intercept

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// Namespace is the guest metadata namespace in which the macvtap backend
// keeps, for each interface it diverted, the interface's original element.
// It lives in the guest's definition, so it survives an agent restart and
// travels with the guest on migration.
const Namespace = "https://vsagent.dev/xmlns/intercept/1"

// records is the metadata element:
//
//	<intercept>
//	  <diverted mac="52:54:00:..">&lt;interface type='direct'&gt;…</diverted>
//	</intercept>
//
// The original <interface> is kept as escaped text rather than as child
// elements: libvirt rewrites namespaces of metadata elements but never
// touches text, so the element comes back exactly as it was stored.
type records struct {
	XMLName  xml.Name   `xml:"intercept"`
	Diverted []diverted `xml:"diverted"`
}

type diverted struct {
	MAC      string `xml:"mac,attr"`
	Original string `xml:",chardata"`
}

// parseRecords finds vsagent's intercept element among the children of a
// domain's <metadata> (its inner XML, as libvirtxml keeps it). No element
// means no records; an element that cannot be decoded is an error, so that
// nobody overwrites what it holds.
func parseRecords(metadata string) (records, error) {
	var rs records
	if _, err := decodeMetadataElement(metadata, Namespace, "intercept", &rs); err != nil {
		return records{}, err
	}
	for i, d := range rs.Diverted {
		mac, err := net.ParseMAC(d.MAC)
		if err != nil {
			return records{}, fmt.Errorf("%w: record %d: %w", ErrRecord, i, err)
		}
		rs.Diverted[i].MAC = mac.String()
	}
	return rs, nil
}

// decodeMetadataElement decodes into out the top-level element ns:local
// among the children of a domain's <metadata> (its inner XML, as libvirtxml
// keeps it), and reports whether there was one.
func decodeMetadataElement(metadata, ns, local string, out any) (bool, error) {
	dec := xml.NewDecoder(strings.NewReader(metadata))
	for depth := 0; ; {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("%w: metadata: %w", ErrRecord, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth > 0 || t.Name.Space != ns || t.Name.Local != local {
				depth++
				continue
			}
			if err := dec.DecodeElement(out, &t); err != nil {
				return false, fmt.Errorf("%w: %w", ErrRecord, err)
			}
			return true, nil
		case xml.EndElement:
			depth--
		}
	}
}

func recordsOf(dom *libvirtxml.Domain) (records, error) {
	if dom.Metadata == nil {
		return records{}, nil
	}
	return parseRecords(dom.Metadata.XML)
}

func (rs records) find(mac net.HardwareAddr) (diverted, bool) {
	for _, d := range rs.Diverted {
		if d.MAC == mac.String() {
			return d, true
		}
	}
	return diverted{}, false
}

func (rs records) with(mac net.HardwareAddr, original *libvirtxml.DomainInterface) (records, error) {
	doc, err := original.Marshal()
	if err != nil {
		return rs, fmt.Errorf("encode interface: %w", err)
	}
	out := rs.without(mac)
	out.Diverted = append(out.Diverted, diverted{MAC: mac.String(), Original: doc})
	return out, nil
}

func (rs records) without(mac net.HardwareAddr) records {
	out := records{}
	for _, d := range rs.Diverted {
		if d.MAC != mac.String() {
			out.Diverted = append(out.Diverted, d)
		}
	}
	return out
}

// marshal returns the element to store, or "" (which removes it) when no
// record is left.
func (rs records) marshal() (string, error) {
	if len(rs.Diverted) == 0 {
		return "", nil
	}
	out, err := xml.Marshal(rs)
	if err != nil {
		return "", fmt.Errorf("encode intercept records: %w", err)
	}
	return string(out), nil
}

func (d diverted) original() (*libvirtxml.DomainInterface, error) {
	var x libvirtxml.DomainInterface
	if err := x.Unmarshal(d.Original); err != nil {
		return nil, fmt.Errorf("%w: interface %s: %w", ErrRecord, d.MAC, err)
	}
	if x.MAC == nil || !strings.EqualFold(x.MAC.Address, d.MAC) {
		return nil, fmt.Errorf("%w: interface %s: recorded element has another MAC", ErrRecord, d.MAC)
	}
	return &x, nil
}
