package appliance

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// ownerElement is the local name of the ownership tag in OwnerNamespace.
const ownerElement = "owner"

// ErrInvalidOwner is wrapped by ParseOwner's errors.
var ErrInvalidOwner = errors.New("invalid appliance ownership tag")

// Owner is the ownership tag vsagent puts into the metadata of every
// appliance domain it defines. Only domains carrying a valid tag are ever
// resized, stopped or deleted by vsagent.
type Owner struct {
	Appliance  string
	Index      int
	Kind       string
	Host       string // UUID of the host whose agent defined the domain
	Generation string // TemplateGeneration of the template it was made from
}

// XML returns the tag without a namespace, the form libvirt's SetMetadata
// takes (libvirt adds the namespace it is given as key and URI):
//
//	<owner appliance="fw" index="1" kind="header" host="…" template="sha256:…"/>
func (o Owner) XML() string {
	return o.element(ownerElement, "")
}

// namespacedXML returns the tag as it appears inside a domain's <metadata>.
func (o Owner) namespacedXML() string {
	return o.element(OwnerPrefix+":"+ownerElement,
		` xmlns:`+OwnerPrefix+`="`+OwnerNamespace+`"`)
}

func (o Owner) element(name, nsDecl string) string {
	var b strings.Builder
	b.WriteString("<" + name + nsDecl)
	for _, a := range [...]struct{ key, value string }{
		{"appliance", o.Appliance},
		{"index", strconv.Itoa(o.Index)},
		{"kind", o.Kind},
		{"host", o.Host},
		{"template", o.Generation},
	} {
		b.WriteString(" " + a.key + `="`)
		// EscapeText also escapes tab, CR and LF, which a parser would
		// otherwise normalise to spaces inside an attribute value.
		_ = xml.EscapeText(&b, []byte(a.value)) // strings.Builder never fails
		b.WriteString(`"`)
	}
	b.WriteString("/>")
	return b.String()
}

// ParseOwner parses an ownership tag in any of the forms it is met in: as
// written by Owner.XML, as libvirt's GetMetadata returns it (no namespace),
// and as it appears in a domain's XML (prefixed, with its xmlns declaration,
// or with a default-namespace declaration). A tag in a foreign namespace, or
// with missing or invalid attributes, is an error. Unknown attributes and
// child elements are ignored so a newer agent's tags stay readable.
func ParseOwner(s string) (Owner, error) {
	d := xml.NewDecoder(strings.NewReader(s))
	var owner Owner
	found := false
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Owner{}, fmt.Errorf("%w: %w", ErrInvalidOwner, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if found {
				return Owner{}, fmt.Errorf("%w: more than one element", ErrInvalidOwner)
			}
			if !isOwnerName(t.Name, true) {
				return Owner{}, fmt.Errorf("%w: element {%s}%s is not {%s}%s",
					ErrInvalidOwner, t.Name.Space, t.Name.Local, OwnerNamespace, ownerElement)
			}
			if owner, err = ownerFromAttrs(t.Attr); err != nil {
				return Owner{}, err
			}
			found = true
			if err := d.Skip(); err != nil {
				return Owner{}, fmt.Errorf("%w: %w", ErrInvalidOwner, err)
			}
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return Owner{}, fmt.Errorf("%w: text outside the element", ErrInvalidOwner)
			}
		}
	}
	if !found {
		return Owner{}, fmt.Errorf("%w: no element", ErrInvalidOwner)
	}
	return owner, nil
}

// isOwnerName reports whether name is the ownership tag. The empty namespace
// is accepted only for a standalone tag (what GetMetadata returns), never
// inside <metadata>, where an un-namespaced <owner> belongs to somebody else.
// An unresolved "vsagent" prefix is accepted because a fragment cut out of a
// domain's metadata may have lost the declaration that lived on an ancestor.
func isOwnerName(name xml.Name, standalone bool) bool {
	if name.Local != ownerElement {
		return false
	}
	switch name.Space {
	case OwnerNamespace, OwnerPrefix:
		return true
	case "":
		return standalone
	}
	return false
}

func ownerFromAttrs(attrs []xml.Attr) (Owner, error) {
	values := map[string]string{}
	for _, a := range attrs {
		if a.Name.Space == "xmlns" || a.Name.Space == "" && a.Name.Local == "xmlns" {
			continue
		}
		if a.Name.Space != "" && a.Name.Space != OwnerNamespace {
			continue
		}
		if _, dup := values[a.Name.Local]; dup {
			return Owner{}, fmt.Errorf("%w: attribute %s given twice", ErrInvalidOwner, a.Name.Local)
		}
		values[a.Name.Local] = a.Value
	}
	var problems []error
	require := func(key string) string {
		v, ok := values[key]
		if !ok || v == "" {
			problems = append(problems, fmt.Errorf("attribute %s is missing or empty", key))
		}
		return v
	}
	o := Owner{
		Appliance:  require("appliance"),
		Kind:       require("kind"),
		Host:       require("host"),
		Generation: require("template"),
	}
	if index := require("index"); index != "" {
		n, err := parseIndex(index)
		if err != nil {
			problems = append(problems, err)
		}
		o.Index = n
	}
	if o.Appliance != "" {
		if err := ValidateApplianceName(o.Appliance); err != nil {
			problems = append(problems, err)
		}
	}
	if o.Kind != "" {
		if err := validateKind(o.Kind); err != nil {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return Owner{}, fmt.Errorf("%w: %w", ErrInvalidOwner, errors.Join(problems...))
	}
	return o, nil
}

// OwnerOf returns the ownership tag in dom's metadata. A missing or invalid
// tag reports false: a domain vsagent cannot prove it owns is foreign, since
// mistaking a foreign domain for an appliance could destroy somebody's VM.
func OwnerOf(dom *libvirtxml.Domain) (Owner, bool) {
	if dom == nil || dom.Metadata == nil {
		return Owner{}, false
	}
	var owner Owner
	found := false
	err := eachMetadataElement(dom.Metadata.XML, func(start xml.StartElement, raw string) error {
		if !isOwnerName(start.Name, false) {
			return nil
		}
		if found {
			return errors.New("more than one ownership tag")
		}
		o, err := ParseOwner(raw)
		if err != nil {
			return err
		}
		owner, found = o, true
		return nil
	})
	if err != nil || !found {
		return Owner{}, false
	}
	return owner, true
}

// withOwner returns a copy of a template's metadata in which every element
// of vsagent's namespace (a template must not pass on ownership, gates or
// policy bindings) is replaced by the instance's ownership tag. Foreign
// elements are kept verbatim, so their own namespace declarations survive.
func withOwner(meta *libvirtxml.DomainMetadata, owner Owner) (*libvirtxml.DomainMetadata, error) {
	var b strings.Builder
	if meta != nil {
		err := eachMetadataElement(meta.XML, func(start xml.StartElement, raw string) error {
			if start.Name.Space == OwnerNamespace || start.Name.Space == OwnerPrefix {
				return nil
			}
			b.WriteString(raw)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	b.WriteString(owner.namespacedXML())
	return &libvirtxml.DomainMetadata{XML: b.String()}, nil
}

// eachMetadataElement calls fn with every top-level element of a <metadata>
// body and its exact source text.
func eachMetadataElement(inner string, fn func(start xml.StartElement, raw string) error) error {
	d := xml.NewDecoder(strings.NewReader(inner))
	for {
		offset := d.InputOffset()
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if err := d.Skip(); err != nil {
			return err
		}
		if err := fn(start, inner[offset:d.InputOffset()]); err != nil {
			return err
		}
	}
}
