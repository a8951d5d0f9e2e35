package sriovtest

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/sriov"
)

// Netlink is a recording fake of sriov.Netlink that behaves like a PF
// driver where callers can tell: it keeps every VF's settings, refuses
// what the kernel refuses with the kernel's errno (ENODEV for a missing
// netdev, EINVAL for a VF index out of range, a VLAN above 4095, a QoS
// above 7, a multicast MAC or a minimum rate above the maximum, EOPNOTSUPP
// for trust on a driver without it), and can lose MAC writes the way some
// drivers do during a VF reset. Every change is recorded as the `ip`
// command it equals; reads are not recorded.
type Netlink struct {
	mu      sync.Mutex
	pfs     map[string][]sriov.VFSettings
	promisc map[string]bool
	noTrust map[string]bool
	calls   []string
	// LoseMACWrites is how many of the next MAC writes are acknowledged and
	// then lost.
	LoseMACWrites int
	// FailOn makes the change whose command starts with a key fail with
	// the error, once.
	FailOn map[string]error
}

// NewNetlink returns a fake without links.
func NewNetlink() *Netlink {
	return &Netlink{pfs: map[string][]sriov.VFSettings{}, promisc: map[string]bool{}, noTrust: map[string]bool{}, FailOn: map[string]error{}}
}

// AddPF adds a PF netdev with n VFs in the state drivers leave a new VF in:
// no MAC, no VLAN, no rate limit, spoof checking on, not trusted, link
// state auto.
func (f *Netlink) AddPF(netdev string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vfs := make([]sriov.VFSettings, n)
	for i := range vfs {
		vfs[i] = sriov.VFSettings{Index: i, MAC: net.HardwareAddr{0, 0, 0, 0, 0, 0},
			SpoofCheck: sriov.ToggleOn, Trust: sriov.ToggleOff, LinkState: sriov.LinkStateAuto}
	}
	f.pfs[netdev] = vfs
	f.promisc[netdev] = false
}

// WithoutTrust makes the PF's driver lack the trust callback: it reports
// no trust setting and refuses to set one.
func (f *Netlink) WithoutTrust(pf string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.noTrust[pf] = true
	for i := range f.pfs[pf] {
		f.pfs[pf][i].Trust = sriov.ToggleUnset
	}
}

// AddNetdev adds a netdev that is not a PF (a VF's netdev), for Promisc.
func (f *Netlink) AddNetdev(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.promisc[name] = false
}

// SetVF changes a VF's settings behind the caller's back (as the operator
// or libvirt would), without recording a call.
func (f *Netlink) SetVF(pf string, s sriov.VFSettings) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pfs[pf][s.Index] = clone(s)
}

// VF returns a copy of a VF's settings.
func (f *Netlink) VF(pf string, i int) sriov.VFSettings {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.pfs[pf][i])
}

// IsPromisc reports a netdev's promiscuous flag.
func (f *Netlink) IsPromisc(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.promisc[name]
}

// Calls returns the changes made since the last call, as `ip` commands.
func (f *Netlink) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func clone(s sriov.VFSettings) sriov.VFSettings {
	s.MAC = slices.Clone(s.MAC)
	return s
}

// change records cmd and runs apply on the VF unless the kernel would
// refuse.
func (f *Netlink) change(pf string, vf int, cmd string, apply func(*sriov.VFSettings) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, cmd)
	if err := f.injected(cmd); err != nil {
		return err
	}
	vfs, ok := f.pfs[pf]
	if !ok {
		return fmt.Errorf("link %s: %w", pf, unix.ENODEV)
	}
	if vf < 0 || vf >= len(vfs) {
		return unix.EINVAL
	}
	return apply(&vfs[vf])
}

func (f *Netlink) injected(cmd string) error {
	for prefix, err := range f.FailOn {
		if strings.HasPrefix(cmd, prefix) {
			delete(f.FailOn, prefix)
			return err
		}
	}
	return nil
}

func (f *Netlink) VFs(pf string) ([]sriov.VFSettings, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vfs, ok := f.pfs[pf]
	if !ok {
		return nil, fmt.Errorf("link %s: %w", pf, unix.ENODEV)
	}
	out := make([]sriov.VFSettings, len(vfs))
	for i, v := range vfs {
		out[i] = clone(v)
	}
	return out, nil
}

func (f *Netlink) SetVFVLAN(pf string, vf int, vlan sriov.VLAN) error {
	return f.change(pf, vf, fmt.Sprintf("ip link set %s vf %d vlan %d qos %d", pf, vf, vlan.ID, vlan.QoS), func(s *sriov.VFSettings) error {
		if vlan.ID < 0 || vlan.ID > 4095 || vlan.QoS < 0 || vlan.QoS > 7 {
			return unix.EINVAL
		}
		s.VLAN = vlan
		return nil
	})
}

func (f *Netlink) SetVFMAC(pf string, vf int, mac net.HardwareAddr) error {
	return f.change(pf, vf, fmt.Sprintf("ip link set %s vf %d mac %s", pf, vf, mac), func(s *sriov.VFSettings) error {
		if len(mac) != 6 || mac[0]&1 != 0 {
			return unix.EINVAL
		}
		if f.LoseMACWrites > 0 {
			f.LoseMACWrites--
			return nil
		}
		s.MAC = slices.Clone(mac)
		return nil
	})
}

func (f *Netlink) SetVFRate(pf string, vf int, rate sriov.Rate) error {
	cmd := fmt.Sprintf("ip link set %s vf %d min_tx_rate %d max_tx_rate %d", pf, vf, rate.MinMbps, rate.MaxMbps)
	return f.change(pf, vf, cmd, func(s *sriov.VFSettings) error {
		if rate.MaxMbps != 0 && rate.MinMbps > rate.MaxMbps {
			return unix.EINVAL
		}
		s.Rate = rate
		return nil
	})
}

func (f *Netlink) SetVFSpoofCheck(pf string, vf int, on bool) error {
	return f.change(pf, vf, fmt.Sprintf("ip link set %s vf %d spoofchk %s", pf, vf, sriov.ToggleOf(on)), func(s *sriov.VFSettings) error {
		s.SpoofCheck = sriov.ToggleOf(on)
		return nil
	})
}

func (f *Netlink) SetVFTrust(pf string, vf int, on bool) error {
	return f.change(pf, vf, fmt.Sprintf("ip link set %s vf %d trust %s", pf, vf, sriov.ToggleOf(on)), func(s *sriov.VFSettings) error {
		if f.noTrust[pf] {
			return unix.EOPNOTSUPP
		}
		s.Trust = sriov.ToggleOf(on)
		return nil
	})
}

func (f *Netlink) SetVFLinkState(pf string, vf int, state sriov.LinkState) error {
	return f.change(pf, vf, fmt.Sprintf("ip link set %s vf %d state %s", pf, vf, state), func(s *sriov.VFSettings) error {
		if state == sriov.LinkStateUnset {
			return unix.EINVAL
		}
		s.LinkState = state
		return nil
	})
}

func (f *Netlink) Promisc(name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	on, ok := f.promisc[name]
	if !ok {
		return false, fmt.Errorf("link %s: %w", name, unix.ENODEV)
	}
	return on, nil
}

func (f *Netlink) SetPromisc(name string, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cmd := fmt.Sprintf("ip link set dev %s promisc %s", name, sriov.ToggleOf(on))
	f.calls = append(f.calls, cmd)
	if err := f.injected(cmd); err != nil {
		return err
	}
	if _, ok := f.promisc[name]; !ok {
		return fmt.Errorf("link %s: %w", name, unix.ENODEV)
	}
	f.promisc[name] = on
	return nil
}

// Devlink is a recording fake of sriov.Devlink: one eswitch mode per PCI
// device. Like mlx5, it refuses to change the mode while Busy (VFs bound
// to their driver).
type Devlink struct {
	mu    sync.Mutex
	modes map[string]string
	calls []string
	// Busy makes SetEswitchMode fail with EBUSY.
	Busy bool
}

// NewDevlink returns a fake with the given modes by PCI address.
func NewDevlink(modes map[string]string) *Devlink {
	m := map[string]string{}
	for k, v := range modes {
		m[k] = v
	}
	return &Devlink{modes: m}
}

func (d *Devlink) EswitchMode(addr string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	mode, ok := d.modes[addr]
	if !ok {
		return "", unix.ENODEV
	}
	return mode, nil
}

func (d *Devlink) SetEswitchMode(addr, mode string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, fmt.Sprintf("devlink dev eswitch set pci/%s mode %s", addr, mode))
	if _, ok := d.modes[addr]; !ok {
		return unix.ENODEV
	}
	if d.Busy {
		return unix.EBUSY
	}
	d.modes[addr] = mode
	return nil
}

// Calls returns the changes made since the last call, as devlink commands.
func (d *Devlink) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.calls
	d.calls = nil
	return c
}

// Ethtool is a fake sriov.Ethtool: driver facts by netdev name.
type Ethtool map[string]sriov.DriverInfo

func (e Ethtool) DriverInfo(netdev string) (sriov.DriverInfo, error) {
	info, ok := e[netdev]
	if !ok {
		return sriov.DriverInfo{}, unix.ENODEV
	}
	return info, nil
}
