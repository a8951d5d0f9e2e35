package appliance

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// ErrInvalidTemplate is wrapped by every error about a template that cannot
// be turned into appliance instances.
var ErrInvalidTemplate = errors.New("invalid appliance template")

// LoadTemplate reads and checks the template at path (see ParseTemplate).
func LoadTemplate(path string) (*libvirtxml.Domain, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load template: %w", err)
	}
	dom, err := ParseTemplate(data)
	if err != nil {
		return nil, fmt.Errorf("load template %s: %w", path, err)
	}
	return dom, nil
}

// ParseTemplate parses a libvirt domain XML document and checks that
// NewInstance can make instances from it: exactly one <domain> root element,
// at least one <interface>, no writable disk that instances would share, and
// no memory-hotplug or NUMA sizing that per-instance memory would contradict.
func ParseTemplate(data []byte) (*libvirtxml.Domain, error) {
	root, err := singleRoot(data)
	if err != nil {
		return nil, fmt.Errorf("%w: not well-formed XML: %w", ErrInvalidTemplate, err)
	}
	if root.Local != "domain" {
		return nil, fmt.Errorf("%w: root element is <%s>, not a libvirt <domain>", ErrInvalidTemplate, root.Local)
	}
	dom := &libvirtxml.Domain{}
	if err := dom.Unmarshal(string(data)); err != nil {
		return nil, fmt.Errorf("%w: not valid domain XML: %w", ErrInvalidTemplate, err)
	}
	if err := validateTemplate(dom); err != nil {
		return nil, err
	}
	// libvirtxml does not always read back what it writes (an interface
	// with an empty type attribute is one case). Instances are made from the
	// encoded template, so a template that does not survive the round trip
	// is rejected here rather than at instance time.
	canonical, err := dom.Marshal()
	if err != nil {
		return nil, fmt.Errorf("%w: cannot be re-encoded: %w", ErrInvalidTemplate, err)
	}
	if err := (&libvirtxml.Domain{}).Unmarshal(canonical); err != nil {
		return nil, fmt.Errorf("%w: does not survive re-encoding: %w", ErrInvalidTemplate, err)
	}
	return dom, nil
}

// singleRoot checks that data is one well-formed XML document and returns
// the name of its root element. encoding/xml's Unmarshal alone stops after
// the first element and would accept trailing garbage or a second document.
func singleRoot(data []byte) (xml.Name, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	var root xml.Name
	roots := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return root, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			roots++
			if roots > 1 {
				return root, fmt.Errorf("second root element <%s> at offset %d", t.Name.Local, d.InputOffset())
			}
			root = t.Name
			if err := d.Skip(); err != nil {
				return root, err
			}
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return root, fmt.Errorf("text outside the root element at offset %d", d.InputOffset())
			}
		}
	}
	if roots == 0 {
		return root, errors.New("no root element")
	}
	return root, nil
}

// validateTemplate reports every reason tmpl cannot yield instances.
func validateTemplate(tmpl *libvirtxml.Domain) error {
	var problems []string
	if tmpl.Devices == nil || len(tmpl.Devices.Interfaces) == 0 {
		problems = append(problems, "no <interface> device: an appliance needs a NIC to sit in a chain")
	}
	if tmpl.Devices != nil {
		for i, iface := range tmpl.Devices.Interfaces {
			if iface.Target != nil && iface.Target.Managed == "no" {
				problems = append(problems, fmt.Sprintf(
					"interface %d uses the pre-created tap %q, which several instances cannot share", i, iface.Target.Dev))
			}
		}
		for i, disk := range tmpl.Devices.Disks {
			if sharedWritable(disk) {
				problems = append(problems, fmt.Sprintf(
					"disk %d (%s) is writable and would be shared by every instance: mark it <readonly/>, <shareable/> or <transient/>",
					i, diskLabel(disk)))
			}
		}
	}
	if tmpl.MaximumMemory != nil {
		problems = append(problems,
			"<maxMemory> (memory hotplug) is not supported: instances grow by balloon up to <memory>")
	}
	if tmpl.CPU != nil && tmpl.CPU.Numa != nil && len(tmpl.CPU.Numa.Cell) > 0 {
		problems = append(problems,
			"NUMA cells are not supported: their sizes would contradict the per-instance memory")
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidTemplate, strings.Join(problems, "; "))
	}
	return nil
}

// sharedWritable reports a disk that every instance would open read-write:
// two appliances writing one image corrupt it.
func sharedWritable(disk libvirtxml.DomainDisk) bool {
	if disk.Device == "cdrom" || !hasBacking(disk.Source) {
		return false
	}
	return disk.ReadOnly == nil && disk.Shareable == nil && disk.Transient == nil
}

// hasBacking reports whether a disk source names storage. libvirtxml fills in
// an empty source of the disk's type even when the XML has none, so an empty
// drive shows up as a file or block source without a path.
func hasBacking(src *libvirtxml.DomainDiskSource) bool {
	switch {
	case src == nil:
		return false
	case src.File != nil:
		return src.File.File != ""
	case src.Block != nil:
		return src.Block.Dev != ""
	case src.Dir != nil:
		return src.Dir.Dir != ""
	}
	return true
}

func diskLabel(disk libvirtxml.DomainDisk) string {
	if disk.Target != nil && disk.Target.Dev != "" {
		return "target " + disk.Target.Dev
	}
	if disk.Device != "" {
		return disk.Device
	}
	return "disk"
}

// TemplateGeneration identifies a template's content: "sha256:" and the hex
// SHA-256 of its canonical libvirtxml encoding. Hashing the parsed form rather
// than the file ignores formatting and comments and covers exactly what
// instances are made of. NewInstance records it in the ownership tag, so the
// agent can find instances made from an older template.
func TemplateGeneration(tmpl *libvirtxml.Domain) (string, error) {
	canonical, err := tmpl.Marshal()
	if err != nil {
		return "", fmt.Errorf("encode template: %w", err)
	}
	return generationOf(canonical), nil
}

func generationOf(canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	return "sha256:" + hex.EncodeToString(sum[:])
}
