package hypervisor

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// NodeInfo is what the host offers, for the budget of appliance resources.
type NodeInfo struct {
	Model     string
	CPUs      uint
	MHz       uint
	MemoryKiB uint64
	Sockets   uint32
	Cores     uint32
	Threads   uint32
}

// Hostname returns the hypervisor host's name.
func (c *Conn) Hostname(ctx context.Context) (string, error) {
	var out string
	err := c.do(ctx, "hostname", "", func(v *libvirt.Connect) error {
		var err error
		out, err = v.GetHostname()
		return err
	})
	return out, err
}

// HostUUID returns the host's UUID, lower case with dashes: the one in the
// capabilities (libvirtd's host_uuid setting or the machine's SMBIOS), else
// the SMBIOS system UUID from sysinfo. It is unique per host, which makes it
// a seed for per-host MAC addresses. The test driver reports neither; its
// host lives in this process and is named by its URI, so it gets a UUID
// derived from the URI (stable across runs, distinct per node file). Any
// other driver without one yields ErrNoHostUUID.
func (c *Conn) HostUUID(ctx context.Context) (string, error) {
	var out string
	err := c.do(ctx, "host uuid", "", func(v *libvirt.Connect) error {
		caps, err := v.GetCapabilities()
		if err != nil {
			return err
		}
		if out, err = hostUUIDFrom(caps, ""); err == nil {
			return nil
		}
		// Sysinfo is a second call, and some drivers lack it: ask only when
		// the capabilities have no answer.
		if sysinfo, serr := v.GetSysinfo(0); serr == nil {
			if out, err = hostUUIDFrom(caps, sysinfo); err == nil {
				return nil
			}
		}
		if driver, terr := v.GetType(); terr == nil && strings.EqualFold(driver, "test") {
			out = uuidFromName(c.uri)
			return nil
		}
		return err
	})
	return out, err
}

// uuidFromName derives a name-based (version 5, SHA-1) UUID from name.
func uuidFromName(name string) string {
	// The URL namespace of RFC 9562.
	namespace := [16]byte{0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8}
	h := sha1.New()
	h.Write(namespace[:])
	h.Write([]byte(name))
	sum := h.Sum(nil)
	sum[6] = sum[6]&0x0f | 0x50
	sum[8] = sum[8]&0x3f | 0x80
	return dashed(hex.EncodeToString(sum[:16]))
}

// hostUUIDFrom extracts the host UUID from capabilities XML, falling back to
// the SMBIOS system entry of sysinfo XML.
func hostUUIDFrom(capsXML, sysinfoXML string) (string, error) {
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(capsXML); err != nil {
		return "", fmt.Errorf("decode capabilities: %w", err)
	}
	if u, ok := normalizeUUID(caps.Host.UUID); ok {
		return u, nil
	}
	if sysinfoXML != "" {
		var si libvirtxml.SysInfo
		if err := si.Unmarshal(sysinfoXML); err != nil {
			return "", fmt.Errorf("decode sysinfo: %w", err)
		}
		if si.SMBIOS != nil && si.SMBIOS.System != nil {
			for _, e := range si.SMBIOS.System.Entry {
				if e.Name != "uuid" {
					continue
				}
				if u, ok := normalizeUUID(e.Value); ok {
					return u, nil
				}
			}
		}
	}
	return "", ErrNoHostUUID
}

// normalizeUUID accepts the textual UUID forms libvirt accepts (with or
// without dashes, any case, surrounding space) and returns the canonical
// one. Placeholders made of one repeated digit, which firmware reports when
// it has no UUID, count as none.
func normalizeUUID(s string) (string, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	digits := make([]byte, 0, 32)
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch == '-':
		case ch >= '0' && ch <= '9', ch >= 'a' && ch <= 'f':
			digits = append(digits, ch)
		default:
			return "", false
		}
	}
	if len(digits) != 32 || strings.Count(string(digits), string(digits[0])) == 32 {
		return "", false
	}
	return dashed(string(digits)), true
}

// dashed formats 32 hex digits as 8-4-4-4-12.
func dashed(h string) string {
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// NodeInfo returns the host's processors and memory.
func (c *Conn) NodeInfo(ctx context.Context) (NodeInfo, error) {
	var out NodeInfo
	err := c.do(ctx, "node info", "", func(v *libvirt.Connect) error {
		ni, err := v.GetNodeInfo()
		if err != nil {
			return err
		}
		out = NodeInfo{
			Model:     ni.Model,
			CPUs:      ni.Cpus,
			MHz:       ni.MHz,
			MemoryKiB: ni.Memory,
			Sockets:   ni.Sockets,
			Cores:     ni.Cores,
			Threads:   ni.Threads,
		}
		return nil
	})
	return out, err
}
