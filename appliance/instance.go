package appliance

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// OwnerNamespace is the XML namespace of every piece of state vsagent writes
// into libvirt metadata (the hypervisor package uses the same one); OwnerPrefix
// is the prefix (libvirt's metadata "key") it is written with.
const (
	OwnerNamespace = "https://vsagent.dev/xmlns/state/1"
	OwnerPrefix    = "vsagent"
)

// Appliance kinds: a header VSA speaks the MSR header itself; a wire VSA is a
// plain bump in the wire and the DM strips and restores the header around it.
const (
	KindHeader = "header"
	KindWire   = "wire"
)

// instancePrefix marks appliance domains by name. Ownership is decided by the
// metadata tag (OwnerOf), never by the name alone: anybody can name a domain
// "vsa-fw-1".
const instancePrefix = "vsa-"

// maxApplianceNameLen keeps instance names readable in virsh listings and
// well inside every limit libvirt or a management tool may apply.
const maxApplianceNameLen = 48

// ErrInvalidSpec is wrapped by NewInstance when the Spec itself is unusable.
var ErrInvalidSpec = errors.New("invalid appliance instance spec")

// ValidateApplianceName checks that name can be used as an appliance name:
// 1 to 48 characters from [A-Za-z0-9._-], starting and ending with a letter or
// digit. The restriction keeps instance names unambiguous to parse and safe to
// put into domain names, log fields and file names.
func ValidateApplianceName(name string) error {
	if name == "" {
		return errors.New("appliance name is empty")
	}
	if len(name) > maxApplianceNameLen {
		return fmt.Errorf("appliance name %q is longer than %d characters", name, maxApplianceNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		edge := i == 0 || i == len(name)-1
		if !alnum && (edge || c != '-' && c != '_' && c != '.') {
			return fmt.Errorf("appliance name %q: character %q at %d is not allowed", name, c, i)
		}
	}
	return nil
}

// InstanceName returns the domain name of instance n (n >= 1) of an
// appliance: "vsa-<appliance>-<n>". The inputs are not validated here;
// NewInstance validates them before using the name.
func InstanceName(appliance string, n int) string {
	return instancePrefix + appliance + "-" + strconv.Itoa(n)
}

// ParseInstanceName is the inverse of InstanceName. It accepts only the
// canonical form (valid appliance name, index >= 1 without sign or leading
// zeros), so that every accepted name maps back to exactly itself.
func ParseInstanceName(name string) (appliance string, n int, ok bool) {
	rest, found := strings.CutPrefix(name, instancePrefix)
	if !found {
		return "", 0, false
	}
	dash := strings.LastIndexByte(rest, '-')
	if dash < 0 {
		return "", 0, false
	}
	appliance = rest[:dash]
	if ValidateApplianceName(appliance) != nil {
		return "", 0, false
	}
	n, err := parseIndex(rest[dash+1:])
	if err != nil {
		return "", 0, false
	}
	return appliance, n, true
}

// parseIndex parses a canonical instance index: decimal digits only, no
// leading zero, at least 1.
func parseIndex(s string) (int, error) {
	if s == "" {
		return 0, errors.New("index is empty")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("index %q is not a decimal number", s)
		}
	}
	if s[0] == '0' {
		return 0, fmt.Errorf("index %q is zero or has a leading zero", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("index %q: %w", s, err)
	}
	return n, nil
}

// Spec describes one appliance instance to create from a template.
type Spec struct {
	Appliance string
	Index     int    // n in vsa-<appliance>-<n>, >= 1
	Kind      string // KindHeader or KindWire

	// VCPUs and MemoryKiB are what the instance boots with; MaxVCPUs and
	// MaxMemoryKiB are how far the autoscaler may grow it live. Zero maxima
	// mean "no live growth" (equal to the boot values).
	VCPUs, MaxVCPUs         uint
	MemoryKiB, MaxMemoryKiB uint64

	// HostID is the host's UUID. It seeds the MAC derivation, so addresses
	// are stable per host and differ between hosts, and it is recorded in the
	// ownership tag so an agent can tell its own appliances from ones that
	// migrated in from another host.
	HostID string
}

// normalized validates s and fills in defaulted maxima.
func (s Spec) normalized() (Spec, error) {
	var problems []error
	if err := ValidateApplianceName(s.Appliance); err != nil {
		problems = append(problems, err)
	}
	if s.Index < 1 {
		problems = append(problems, fmt.Errorf("index %d is below 1", s.Index))
	}
	if err := validateKind(s.Kind); err != nil {
		problems = append(problems, err)
	}
	if s.HostID == "" {
		problems = append(problems, errors.New("host ID is empty"))
	}
	problems = append(problems, sizeProblems("vCPUs", s.VCPUs, &s.MaxVCPUs)...)
	problems = append(problems, sizeProblems("memory KiB", s.MemoryKiB, &s.MaxMemoryKiB)...)
	if len(problems) > 0 {
		return s, fmt.Errorf("%w: %w", ErrInvalidSpec, errors.Join(problems...))
	}
	return s, nil
}

func validateKind(kind string) error {
	if kind != KindHeader && kind != KindWire {
		return fmt.Errorf("kind %q is neither %q nor %q", kind, KindHeader, KindWire)
	}
	return nil
}

// sizeProblems checks a boot size and its growth ceiling, defaulting a zero
// ceiling to the boot size.
func sizeProblems[T uint | uint64](what string, boot T, ceiling *T) []error {
	var problems []error
	if boot == 0 {
		problems = append(problems, fmt.Errorf("%s is 0", what))
	}
	if *ceiling == 0 {
		*ceiling = boot
	}
	if *ceiling < boot {
		problems = append(problems, fmt.Errorf("max %s %d is below %s %d", what, *ceiling, what, boot))
	}
	return problems
}

// NewInstance makes the domain definition of one appliance instance from a
// template. The template is not modified. The result has the instance name,
// a fresh random UUID, the spec's vCPU and memory sizing, one derived MAC per
// interface (avoiding used, which may be nil), and the ownership tag in its
// metadata; identity the template must not pass on to several domains (UUID,
// hardware UUID, generation ID, SMBIOS UUID, tap device names, MACs, stale
// vsagent metadata) is removed. The returned MACs are in interface order.
func NewInstance(tmpl *libvirtxml.Domain, spec Spec, used MACSet) (*libvirtxml.Domain, []net.HardwareAddr, error) {
	spec, err := spec.normalized()
	if err != nil {
		return nil, nil, err
	}
	name := InstanceName(spec.Appliance, spec.Index)
	if tmpl == nil {
		return nil, nil, fmt.Errorf("instance %s: %w: no template", name, ErrInvalidTemplate)
	}
	if err := validateTemplate(tmpl); err != nil {
		return nil, nil, fmt.Errorf("instance %s: %w", name, err)
	}
	canonical, err := tmpl.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("instance %s: encode template: %w", name, err)
	}
	// A marshal/unmarshal round trip is the deep copy: libvirtxml's types are
	// full of pointers and slices that a shallow copy would share with the
	// template.
	dom := &libvirtxml.Domain{}
	if err := dom.Unmarshal(canonical); err != nil {
		return nil, nil, fmt.Errorf("instance %s: copy template: %w", name, err)
	}
	macs, err := allocateMACs(spec.HostID, spec.Appliance, spec.Index, len(dom.Devices.Interfaces), used)
	if err != nil {
		return nil, nil, err
	}
	owner := Owner{
		Appliance:  spec.Appliance,
		Index:      spec.Index,
		Kind:       spec.Kind,
		Host:       spec.HostID,
		Generation: generationOf(canonical),
	}
	metadata, err := withOwner(dom.Metadata, owner)
	if err != nil {
		return nil, nil, fmt.Errorf("instance %s: template metadata: %w", name, err)
	}

	dom.ID = nil
	dom.Name = name
	dom.UUID = newUUIDv4()
	dom.HWUUID = ""
	if dom.GenID != nil {
		// An empty <genid/> asks libvirt to generate one; copying the
		// template's would tell two guests they are the same VM generation.
		dom.GenID = &libvirtxml.DomainGenID{}
	}
	dropSMBIOSUUID(dom)
	dom.Metadata = metadata
	setVCPUs(dom, spec.VCPUs, spec.MaxVCPUs)
	setMemory(dom, spec.MemoryKiB, spec.MaxMemoryKiB)
	for i := range dom.Devices.Interfaces {
		iface := &dom.Devices.Interfaces[i]
		iface.MAC = &libvirtxml.DomainInterfaceMAC{Address: macs[i].String()}
		// A fixed tap name would make the second instance fail to start;
		// libvirt picks a free one when none is given.
		iface.Target = nil
	}
	return dom, macs, nil
}

func setVCPUs(dom *libvirtxml.Domain, current, maximum uint) {
	vcpu := &libvirtxml.DomainVCPU{Value: maximum}
	if dom.VCPU != nil {
		vcpu.Placement = dom.VCPU.Placement
		vcpu.CPUSet = dom.VCPU.CPUSet
	}
	// libvirt omits current when it equals the maximum; doing the same keeps
	// our XML identical to what libvirt hands back.
	if current < maximum {
		vcpu.Current = current
	}
	dom.VCPU = vcpu
	// <vcpus> enumerates the template's vCPUs one by one; it would contradict
	// the new count.
	dom.VCPUs = nil
}

// setMemory sizes the instance for balloon-based growth: <memory> is the
// ceiling the guest is booted with, <currentMemory> what it gets now, so
// the autoscaler can raise currentMemory live up to the ceiling.
func setMemory(dom *libvirtxml.Domain, current, maximum uint64) {
	mem := &libvirtxml.DomainMemory{Value: uint(maximum), Unit: "KiB"}
	if dom.Memory != nil {
		mem.DumpCore = dom.Memory.DumpCore
	}
	dom.Memory = mem
	dom.CurrentMemory = &libvirtxml.DomainCurrentMemory{Value: uint(current), Unit: "KiB"}
}

// dropSMBIOSUUID removes a template's SMBIOS system UUID: libvirt requires it
// to equal the domain UUID, which is new for every instance.
func dropSMBIOSUUID(dom *libvirtxml.Domain) {
	for _, info := range dom.SysInfo {
		if info.SMBIOS == nil || info.SMBIOS.System == nil {
			continue
		}
		entries := info.SMBIOS.System.Entry[:0]
		for _, e := range info.SMBIOS.System.Entry {
			if e.Name != "uuid" {
				entries = append(entries, e)
			}
		}
		info.SMBIOS.System.Entry = entries
	}
}

// newUUIDv4 returns a random RFC 4122 version 4 UUID. crypto/rand.Read
// cannot fail (it aborts the process if the kernel's generator is broken).
func newUUIDv4() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// InstanceMACs returns the MAC addresses of dom's interfaces in device order.
// Interfaces without an address, or with one that does not parse, are
// skipped: the result feeds MACSets, where an unknown address cannot collide.
func InstanceMACs(dom *libvirtxml.Domain) []net.HardwareAddr {
	if dom == nil || dom.Devices == nil {
		return nil
	}
	var macs []net.HardwareAddr
	for _, iface := range dom.Devices.Interfaces {
		if iface.MAC == nil {
			continue
		}
		mac, err := net.ParseMAC(iface.MAC.Address)
		if err != nil {
			continue
		}
		macs = append(macs, mac)
	}
	return macs
}
