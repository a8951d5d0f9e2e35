package appliance

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
)

// MAC addresses of appliance NICs are 02:5a:hh:hh:hh:hh.
//
// 0x02 sets the locally administered bit and clears the multicast bit, so the
// address is a valid unicast address that no vendor OUI can ever own. The
// second octet 0x5a is fixed so that appliance NICs are recognisable in `ip
// link`, bridge FDBs and captures, and so that they never collide with
// libvirt's and QEMU's 52:54:00 defaults used by ordinary guests. The fixed
// prefix also means the address can never be all-zero or broadcast.
//
// The remaining 32 bits come from SHA-256 over (host UUID, appliance, index,
// NIC position, attempt). Deriving rather than drawing them at random keeps an
// instance's MACs stable when the agent re-creates it on the same host (switch
// FDBs, DHCP leases and the appliance's own config keep working), while the
// host UUID in the hash keeps two hosts from producing the same addresses for
// the same instance name (a migrated appliance must not clash with its
// replacement). A collision with a MAC already in use on the host bumps the
// attempt counter and rehashes, so the result stays deterministic for a given
// set of used addresses.
const (
	macOctet0 = 0x02
	macOctet1 = 0x5a

	// maxMACAttempts bounds the rehash loop. With 2^32 candidates and at most
	// a few thousand NICs per host, needing more than a handful of attempts
	// means the caller's MACSet claims (nearly) everything.
	maxMACAttempts = 1 << 12

	// macHashLabel versions the derivation: changing the scheme must change
	// the label so old and new addresses cannot be confused.
	macHashLabel = "vsagent-appliance-mac-v1"
)

// ErrMACSpaceExhausted is returned when no collision-free address can be
// found for a NIC within the bounded number of rehash attempts.
var ErrMACSpaceExhausted = errors.New("no free appliance MAC address")

// MACSet answers whether a MAC address is already in use on the host.
type MACSet interface {
	Contains(mac net.HardwareAddr) bool
}

// MACMap is a MACSet backed by a map. The zero value is not usable; make one
// with NewMACMap.
type MACMap map[[6]byte]struct{}

// NewMACMap returns a MACMap holding macs.
func NewMACMap(macs ...net.HardwareAddr) MACMap {
	m := make(MACMap, len(macs))
	for _, mac := range macs {
		m.Add(mac)
	}
	return m
}

// Add records mac. Addresses that are not 48-bit Ethernet addresses are
// ignored: appliance NICs only ever get 48-bit ones, so they cannot collide.
func (m MACMap) Add(mac net.HardwareAddr) {
	if key, ok := macKey(mac); ok {
		m[key] = struct{}{}
	}
}

// Contains reports whether mac was added.
func (m MACMap) Contains(mac net.HardwareAddr) bool {
	key, ok := macKey(mac)
	if !ok {
		return false
	}
	_, found := m[key]
	return found
}

func macKey(mac net.HardwareAddr) ([6]byte, bool) {
	var key [6]byte
	if len(mac) != len(key) {
		return key, false
	}
	copy(key[:], mac)
	return key, true
}

// IsApplianceMAC reports whether mac carries the prefix vsagent gives
// appliance NICs.
func IsApplianceMAC(mac net.HardwareAddr) bool {
	return len(mac) == 6 && mac[0] == macOctet0 && mac[1] == macOctet1
}

// deriveMAC computes the candidate address for one NIC and attempt.
func deriveMAC(hostID, appliance string, index, nic int, attempt uint32) net.HardwareAddr {
	h := sha256.New()
	// Length prefixes keep ("ab","c") and ("a","bc") apart.
	writeField := func(s string) {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	writeField(macHashLabel)
	writeField(hostID)
	writeField(appliance)
	var nums [20]byte
	binary.BigEndian.PutUint64(nums[0:8], uint64(index))
	binary.BigEndian.PutUint64(nums[8:16], uint64(nic))
	binary.BigEndian.PutUint32(nums[16:20], attempt)
	h.Write(nums[:])
	sum := h.Sum(nil)
	return net.HardwareAddr{macOctet0, macOctet1, sum[0], sum[1], sum[2], sum[3]}
}

// allocateMACs returns one address per NIC, avoiding used and each other.
func allocateMACs(hostID, appliance string, index, nics int, used MACSet) ([]net.HardwareAddr, error) {
	taken := make(MACMap, nics)
	macs := make([]net.HardwareAddr, 0, nics)
	for nic := range nics {
		mac, err := allocateMAC(hostID, appliance, index, nic, used, taken)
		if err != nil {
			return nil, err
		}
		taken.Add(mac)
		macs = append(macs, mac)
	}
	return macs, nil
}

func allocateMAC(hostID, appliance string, index, nic int, used MACSet, taken MACMap) (net.HardwareAddr, error) {
	for attempt := range uint32(maxMACAttempts) {
		mac := deriveMAC(hostID, appliance, index, nic, attempt)
		if taken.Contains(mac) || (used != nil && used.Contains(mac)) {
			continue
		}
		return mac, nil
	}
	return nil, fmt.Errorf("%w: NIC %d of %s after %d attempts",
		ErrMACSpaceExhausted, nic, InstanceName(appliance, index), maxMACAttempts)
}
