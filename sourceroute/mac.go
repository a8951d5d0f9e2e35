package sourceroute

import (
	"errors"
	"fmt"
)

// MAC is a 48-bit IEEE 802 address. It is a value type (not net.HardwareAddr)
// so that route entries, flow keys and comparisons need no allocation.
type MAC [6]byte

// ErrBadMAC is returned by ParseMAC for text that is not a 48-bit address.
var ErrBadMAC = errors.New("sourceroute: malformed MAC address")

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

// IsMulticast reports whether the group bit (low bit of the first octet) is
// set; broadcast is a multicast address too.
func (m MAC) IsMulticast() bool { return m[0]&1 != 0 }

// isUnicast reports whether m may appear as a hop: SOURCE-ROUTE.md rule 6
// forbids group addresses and the all-zeros address.
func (m MAC) isUnicast() bool { return !m.IsMulticast() && !m.IsZero() }

const hexDigits = "0123456789abcdef"

// String formats m as lower-case, colon-separated hex ("02:00:00:00:10:01").
func (m MAC) String() string {
	var buf [17]byte
	for i, b := range m {
		if i > 0 {
			buf[3*i-1] = ':'
		}
		buf[3*i] = hexDigits[b>>4]
		buf[3*i+1] = hexDigits[b&0x0f]
	}
	return string(buf[:])
}

// MarshalText lets MACs appear as strings in JSON, TOML and slog output.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText accepts what ParseMAC accepts.
func (m *MAC) UnmarshalText(text []byte) error {
	parsed, err := ParseMAC(string(text))
	if err != nil {
		return err
	}
	*m = parsed
	return nil
}

// ParseMAC accepts exactly six two-digit hex octets separated by ':' or '-'
// (one separator kind throughout). Unlike net.ParseMAC it refuses EUI-64 and
// InfiniBand forms, which can never be a hop address.
func ParseMAC(s string) (MAC, error) {
	var m MAC
	if len(s) != 17 {
		return m, fmt.Errorf("%w: %q: want 17 characters like 02:00:00:00:10:01", ErrBadMAC, s)
	}
	sep := s[2]
	if sep != ':' && sep != '-' {
		return m, fmt.Errorf("%w: %q: octets must be separated by ':' or '-'", ErrBadMAC, s)
	}
	for i := range m {
		if i > 0 && s[3*i-1] != sep {
			return m, fmt.Errorf("%w: %q: mixed or missing separators", ErrBadMAC, s)
		}
		hi, okHi := fromHex(s[3*i])
		lo, okLo := fromHex(s[3*i+1])
		if !okHi || !okLo {
			return m, fmt.Errorf("%w: %q: octet %d is not hex", ErrBadMAC, s, i+1)
		}
		m[i] = hi<<4 | lo
	}
	return m, nil
}

func fromHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
