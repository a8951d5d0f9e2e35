package config

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"
)

// ParseDuration parses a non-negative Go duration string ("250ms", "2m",
// "1h30m"). A bare number is refused even when it is 0 would be
// unambiguous, so that every duration in a file reads the same way.
func ParseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || !strings.ContainsAny(s, "nuµmsh") {
		return 0, fmt.Errorf("invalid duration %q: use a number with a unit, such as \"250ms\", \"30s\" or \"2m\"", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	return d, nil
}

// sizeUnits follows libvirt's convention: a bare letter and the IEC suffix
// are powers of 1024, the SI suffix powers of 1000.
var sizeUnits = map[string]uint64{
	"b": 1, "bytes": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
}

// ParseSize parses a memory size such as "256MiB", "1GiB", "512M" or
// "2000MB" and returns it in KiB, the unit libvirt uses for domain memory.
// Units are case-insensitive; the size must be a positive whole number of
// KiB.
func ParseSize(s string) (uint64, error) {
	bad := func(why string) error { return fmt.Errorf("invalid size %q: %s", s, why) }
	digits := 0
	for digits < len(s) && s[digits] >= '0' && s[digits] <= '9' {
		digits++
	}
	if digits == 0 {
		return 0, bad(`use a whole number with a unit, such as "256MiB" or "1GiB"`)
	}
	n, err := strconv.ParseUint(s[:digits], 10, 64)
	if err != nil {
		return 0, bad("number too large")
	}
	if digits < len(s) && s[digits] == '.' {
		return 0, bad("fractions are not supported; use a smaller unit, such as \"1536MiB\" for 1.5GiB")
	}
	unit := strings.TrimPrefix(s[digits:], " ")
	if unit == "" {
		return 0, bad(`missing unit (KiB, MiB, GiB or TiB)`)
	}
	mult, ok := sizeUnits[strings.ToLower(unit)]
	if !ok {
		return 0, bad(fmt.Sprintf("unknown unit %q (use KiB, MiB, GiB or TiB)", unit))
	}
	hi, bytes := bits.Mul64(n, mult)
	if hi != 0 {
		return 0, bad("too large")
	}
	if bytes == 0 {
		return 0, bad("must be greater than zero")
	}
	if bytes%1024 != 0 {
		return 0, bad("not a whole number of KiB")
	}
	return bytes / 1024, nil
}

// FormatSize renders KiB in the largest IEC unit that divides it exactly,
// the inverse of ParseSize for messages and summaries.
func FormatSize(kib uint64) string {
	for _, u := range []struct {
		name string
		kib  uint64
	}{{"TiB", 1 << 30}, {"GiB", 1 << 20}, {"MiB", 1 << 10}} {
		if kib != 0 && kib%u.kib == 0 {
			return strconv.FormatUint(kib/u.kib, 10) + u.name
		}
	}
	return strconv.FormatUint(kib, 10) + "KiB"
}

// PortRange is an inclusive range of L4 ports; a single port has Lo == Hi.
type PortRange struct {
	Lo, Hi uint16
}

// Contains reports whether port p is in the range.
func (r PortRange) Contains(p uint16) bool { return p >= r.Lo && p <= r.Hi }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}

// ParsePortRange parses "443" or "1000-2000"; ports are 1..65535.
func ParsePortRange(s string) (PortRange, error) {
	bad := func(why string) (PortRange, error) {
		return PortRange{}, fmt.Errorf("invalid port range %q: %s", s, why)
	}
	loStr, hiStr, isRange := strings.Cut(s, "-")
	lo, err := parsePort(loStr)
	if err != nil {
		return bad(err.Error())
	}
	hi := lo
	if isRange {
		if hi, err = parsePort(hiStr); err != nil {
			return bad(err.Error())
		}
		if hi < lo {
			return bad(fmt.Sprintf("%d is greater than %d", lo, hi))
		}
	}
	return PortRange{Lo: lo, Hi: hi}, nil
}

var errPortSyntax = errors.New(`use a port such as "443" or a range such as "1000-2000"`)

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errPortSyntax
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > math.MaxUint16 {
		return 0, fmt.Errorf("port %d is out of range 1..65535", n)
	}
	return uint16(n), nil
}

// Protocol numbers of the protocol names a classifier accepts.
var protocolNumbers = map[string]int{
	"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132,
}

// AnyProtocol is the ProtocolNumber of a classifier that matches every protocol.
const AnyProtocol = -1

// ParseProtocol parses a classifier protocol: "any", a name (tcp, udp,
// icmp, icmpv6, sctp) or an IP protocol number 0..255. It returns
// AnyProtocol for "any".
func ParseProtocol(s string) (int, error) {
	if s == "any" {
		return AnyProtocol, nil
	}
	if n, ok := protocolNumbers[s]; ok {
		return n, nil
	}
	if s != "" && strings.TrimLeft(s, "0123456789") == "" && len(s) <= 3 {
		if n, _ := strconv.Atoi(s); n <= 255 {
			return n, nil
		}
	}
	return 0, fmt.Errorf(`%q is not a protocol: use "any", "tcp", "udp", "icmp", "icmpv6", "sctp" or a number 0..255`, s)
}

// hasPorts reports whether a protocol number carries L4 ports a classifier
// can match.
func hasPorts(proto int) bool {
	return proto == protocolNumbers["tcp"] || proto == protocolNumbers["udp"] || proto == protocolNumbers["sctp"]
}

// ParsePrefix parses a CIDR prefix or a single address (taken as a host
// prefix). A prefix with host bits set is refused: "10.1.2.3/8" is more
// likely a typo than a wish for 10.0.0.0/8.
func ParsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		addr, err := netip.ParseAddr(s)
		if err != nil || addr.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 or IPv6 address or prefix", s)
		}
		return netip.PrefixFrom(addr, addr.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 or IPv6 prefix", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

// checkGlob validates a domain name pattern in path.Match syntax.
func checkGlob(pattern string) error {
	if pattern == "" {
		return errors.New("empty pattern")
	}
	if _, err := path.Match(pattern, ""); err != nil {
		return fmt.Errorf("%q is not a valid pattern: %w", pattern, err)
	}
	return nil
}

// checkIfName applies the kernel's rules for network interface names.
func checkIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid interface name", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r"):
		return fmt.Errorf("interface name %q contains '/', ':' or white space", name)
	}
	return nil
}

// reservedEtherTypes are EtherTypes the DM's ports see or send for other
// purposes; carrying the source-route header in one of them would make the
// DM mistake ordinary traffic for routed frames or vice versa.
var reservedEtherTypes = map[uint16]string{
	0x0800: "IPv4",
	0x0806: "ARP",
	0x8035: "RARP",
	0x8100: "802.1Q VLAN",
	0x86DD: "IPv6",
	0x8808: "Ethernet flow control",
	0x8809: "slow protocols (LACP)",
	0x8847: "MPLS",
	0x8848: "MPLS multicast",
	0x888E: "802.1X",
	0x88A8: "802.1ad QinQ",
	0x88B6: "the source-route drop notice",
	0x88CC: "LLDP",
	0x88E5: "MACsec",
	0x88F7: "PTP",
	0x894F: "NSH",
	0x9100: "QinQ",
}

func checkEtherType(v int64) error {
	if v < 0x0600 || v > 0xFFFF {
		return fmt.Errorf("0x%04X is not an EtherType (0x0600..0xFFFF; smaller values are 802.3 lengths)", v)
	}
	if name, ok := reservedEtherTypes[uint16(v)]; ok {
		return fmt.Errorf("0x%04X is the EtherType of %s; use an unused one such as 0x88B5 (IEEE 802 Local Experimental 1)", v, name)
	}
	return nil
}
