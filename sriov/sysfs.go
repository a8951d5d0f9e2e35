package sriov

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// PF is an SR-IOV physical function as sysfs shows it.
type PF struct {
	// Address is the PCI address, like "0000:3b:00.0".
	Address string
	// Driver is the bound driver ("ice", "i40e", "mlx5_core"), "" if none.
	Driver string
	// Netdev is the PF's own netdev, the uplink; "" when it has none (no
	// driver bound). Representors that live under the same PCI device in
	// switchdev mode are not it.
	Netdev string
	// PortName is the uplink's phys_port_name ("p0"), "" where the driver
	// does not report one.
	PortName string
	// SwitchID is the uplink's phys_switch_id: the NIC's eswitch, shared by
	// its representors. Drivers report it in switchdev mode (mlx5) or
	// always (ice); "" otherwise.
	SwitchID string
	TotalVFs int
	NumVFs   int
	// VFs are the enabled VFs, by index.
	VFs []VF
}

// VF is one virtual function of a PF.
type VF struct {
	// PF is the PCI address of the VF's physical function.
	PF    string
	Index int
	// Address is the VF's PCI address.
	Address string
	// Driver is the bound driver: the VF driver ("iavf", "mlx5_core"),
	// "vfio-pci" for a VF a guest owns, "" for an unbound one.
	Driver string
	// Netdev is the VF's host netdev, "" when it has none (bound to
	// vfio-pci or to no driver).
	Netdev string
}

// Assigned reports whether the VF is bound to vfio-pci: given to a guest
// (or ready for one), with no netdev on the host.
func (v VF) Assigned() bool { return v.Driver == "vfio-pci" }

var (
	pciAddress = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)
	// Uplinks are "p<port>" (split ports "p<port>s<sub>"); representors of
	// a local PF's VFs are "pf<pf>vf<vf>"; kernels before 5.x reported a
	// VF representor as the bare VF number. A "c<n>" prefix names an
	// external controller (a SmartNIC's host), whose VFs are not ours.
	uplinkPortName  = regexp.MustCompile(`^p\d+(s\d+)?$`)
	vfRepPortName   = regexp.MustCompile(`^pf(\d+)vf(\d+)$`)
	legacyRepNumber = regexp.MustCompile(`^\d+$`)
	uplinkNumber    = regexp.MustCompile(`^p(\d+)`)
)

// checkAddress refuses what is not a PCI address, so that no name from a
// domain definition becomes a path outside the tree.
func checkAddress(addr string) error {
	if !pciAddress.MatchString(addr) {
		return fmt.Errorf("%w: %q is not a PCI address (dddd:bb:ss.f)", ErrInvalid, addr)
	}
	return nil
}

func checkNetdev(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, "/\x00 ") || name == "." || name == ".." {
		return fmt.Errorf("%w: %q is not a netdev name", ErrInvalid, name)
	}
	return nil
}

func (h *Host) pciDir(addr string) string {
	return filepath.Join(h.SysRoot, "bus", "pci", "devices", addr)
}

func (h *Host) netDir(name string) string {
	return filepath.Join(h.SysRoot, "class", "net", name)
}

// attr reads a sysfs attribute. Attributes a driver does not implement
// fail to read (EOPNOTSUPP) or are absent; both read as "".
func attr(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func intAttr(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// linkBase is the last element of a symlink's target ("driver" → "iavf",
// "physfn" → the PF's address), "" if there is no such link.
func linkBase(path string) string {
	target, err := os.Readlink(path)
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

// PFs lists every SR-IOV capable PCI device (one with sriov_totalvfs),
// sorted by address.
func (h *Host) PFs() ([]PF, error) {
	entries, err := os.ReadDir(filepath.Join(h.SysRoot, "bus", "pci", "devices"))
	if err != nil {
		return nil, fmt.Errorf("sriov: list PCI devices: %w", err)
	}
	var pfs []PF
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(h.pciDir(e.Name()), "sriov_totalvfs")); err != nil {
			continue
		}
		pf, err := h.PF(e.Name())
		if err != nil {
			return nil, err
		}
		pfs = append(pfs, pf)
	}
	return pfs, nil
}

// PF describes the physical function at a PCI address.
func (h *Host) PF(addr string) (PF, error) {
	if err := checkAddress(addr); err != nil {
		return PF{}, err
	}
	dir := h.pciDir(addr)
	if _, err := os.Stat(dir); err != nil {
		return PF{}, fmt.Errorf("sriov: PCI device %s: %w", addr, ErrNotFound)
	}
	total, err := intAttr(filepath.Join(dir, "sriov_totalvfs"))
	if errors.Is(err, fs.ErrNotExist) {
		return PF{}, fmt.Errorf("sriov: PCI device %s has no sriov_totalvfs: %w", addr, ErrNotPF)
	}
	if err != nil {
		return PF{}, fmt.Errorf("sriov: PF %s: %w", addr, err)
	}
	num, err := intAttr(filepath.Join(dir, "sriov_numvfs"))
	if err != nil {
		return PF{}, fmt.Errorf("sriov: PF %s: %w", addr, err)
	}
	pf := PF{Address: addr, Driver: linkBase(filepath.Join(dir, "driver")), TotalVFs: total, NumVFs: num}
	if err := h.findUplink(&pf); err != nil {
		return PF{}, err
	}
	if pf.VFs, err = h.vfsOf(addr); err != nil {
		return PF{}, err
	}
	return pf, nil
}

// netdevsOf lists the netdevs under a PCI device's net/ directory.
func (h *Host) netdevsOf(addr string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(h.pciDir(addr), "net"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sriov: netdevs of %s: %w", addr, err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// findUplink picks the PF's own netdev among those under its PCI device. In
// switchdev mode mlx5 (and ice) put the VF representors there too; they
// are told apart by phys_port_name.
func (h *Host) findUplink(pf *PF) error {
	names, err := h.netdevsOf(pf.Address)
	if err != nil {
		return err
	}
	for _, name := range names {
		port := attr(filepath.Join(h.netDir(name), "phys_port_name"))
		if port != "" && !uplinkPortName.MatchString(port) {
			continue
		}
		pf.Netdev, pf.PortName = name, port
		pf.SwitchID = attr(filepath.Join(h.netDir(name), "phys_switch_id"))
		return nil
	}
	return nil
}

// vfsOf follows a PF's virtfnN links.
func (h *Host) vfsOf(pfAddr string) ([]VF, error) {
	entries, err := os.ReadDir(h.pciDir(pfAddr))
	if err != nil {
		return nil, fmt.Errorf("sriov: PF %s: %w", pfAddr, err)
	}
	var vfs []VF
	for _, e := range entries {
		idx, ok := strings.CutPrefix(e.Name(), "virtfn")
		if !ok {
			continue
		}
		i, err := strconv.Atoi(idx)
		if err != nil {
			continue
		}
		addr := linkBase(filepath.Join(h.pciDir(pfAddr), e.Name()))
		if checkAddress(addr) != nil {
			return nil, fmt.Errorf("sriov: PF %s: %s points to %q", pfAddr, e.Name(), addr)
		}
		vf, err := h.vfAt(pfAddr, i, addr)
		if err != nil {
			return nil, err
		}
		vfs = append(vfs, vf)
	}
	slices.SortFunc(vfs, func(a, b VF) int { return a.Index - b.Index })
	return vfs, nil
}

func (h *Host) vfAt(pfAddr string, index int, addr string) (VF, error) {
	vf := VF{PF: pfAddr, Index: index, Address: addr, Driver: linkBase(filepath.Join(h.pciDir(addr), "driver"))}
	names, err := h.netdevsOf(addr)
	if err != nil {
		return VF{}, err
	}
	if len(names) > 0 {
		vf.Netdev = names[0]
	}
	return vf, nil
}

// VFByAddress finds the VF at a PCI address (a hostdev interface's source).
func (h *Host) VFByAddress(addr string) (VF, error) {
	if err := checkAddress(addr); err != nil {
		return VF{}, err
	}
	dir := h.pciDir(addr)
	if _, err := os.Stat(dir); err != nil {
		return VF{}, fmt.Errorf("sriov: PCI device %s: %w", addr, ErrNotFound)
	}
	pfAddr := linkBase(filepath.Join(dir, "physfn"))
	if pfAddr == "" {
		return VF{}, fmt.Errorf("sriov: PCI device %s has no physfn: %w", addr, ErrNotVF)
	}
	vfs, err := h.vfsOf(pfAddr)
	if err != nil {
		return VF{}, err
	}
	for _, vf := range vfs {
		if vf.Address == addr {
			return vf, nil
		}
	}
	return VF{}, fmt.Errorf("sriov: no virtfn link of PF %s points to %s: %w", pfAddr, addr, ErrNotVF)
}

// NetdevAddress is the PCI address of the device behind a netdev.
func (h *Host) NetdevAddress(name string) (string, error) {
	if err := checkNetdev(name); err != nil {
		return "", err
	}
	if _, err := os.Lstat(h.netDir(name)); err != nil {
		return "", fmt.Errorf("sriov: netdev %s: %w", name, ErrNotFound)
	}
	addr := linkBase(filepath.Join(h.netDir(name), "device"))
	if checkAddress(addr) != nil {
		return "", fmt.Errorf("sriov: netdev %s is not on a PCI device: %w", name, ErrNotFound)
	}
	return addr, nil
}

// VFByNetdev finds the VF behind a host netdev (a direct interface's
// parent).
func (h *Host) VFByNetdev(name string) (VF, error) {
	addr, err := h.NetdevAddress(name)
	if err != nil {
		return VF{}, err
	}
	vf, err := h.VFByAddress(addr)
	if err != nil {
		return VF{}, fmt.Errorf("netdev %s: %w", name, err)
	}
	return vf, nil
}

// PFByNetdev finds the PF whose uplink is the netdev name. A representor,
// which sits under the same PCI device, is refused.
func (h *Host) PFByNetdev(name string) (PF, error) {
	addr, err := h.NetdevAddress(name)
	if err != nil {
		return PF{}, err
	}
	pf, err := h.PF(addr)
	if err != nil {
		return PF{}, fmt.Errorf("netdev %s: %w", name, err)
	}
	if pf.Netdev != name {
		return PF{}, fmt.Errorf("sriov: netdev %s is not the uplink of PF %s (%s is): %w", name, addr, pf.Netdev, ErrNotPF)
	}
	return pf, nil
}

// pfNumber is the PF's index on its NIC as representor names count it:
// from the uplink's "p<n>", else the PCI function number.
func (pf PF) pfNumber() int {
	if m := uplinkNumber.FindStringSubmatch(pf.PortName); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	n, _ := strconv.Atoi(pf.Address[len(pf.Address)-1:])
	return n
}

// Representor finds the netdev that represents vf on its NIC's eswitch in
// switchdev mode: the netdev with the PF uplink's phys_switch_id whose
// phys_port_name is "pf<P>vf<N>" (or, on old kernels, "<N>").
func (h *Host) Representor(vf VF) (string, error) {
	pf, err := h.PF(vf.PF)
	if err != nil {
		return "", err
	}
	if pf.SwitchID == "" {
		return "", fmt.Errorf("sriov: PF %s reports no phys_switch_id (is its eswitch in switchdev mode?): %w", pf.Address, ErrNotFound)
	}
	entries, err := os.ReadDir(filepath.Join(h.SysRoot, "class", "net"))
	if err != nil {
		return "", fmt.Errorf("sriov: list netdevs: %w", err)
	}
	wantPF, wantVF := strconv.Itoa(pf.pfNumber()), strconv.Itoa(vf.Index)
	for _, e := range entries {
		dir := h.netDir(e.Name())
		if attr(filepath.Join(dir, "phys_switch_id")) != pf.SwitchID {
			continue
		}
		port := attr(filepath.Join(dir, "phys_port_name"))
		if m := vfRepPortName.FindStringSubmatch(port); m != nil && m[1] == wantPF && m[2] == wantVF {
			return e.Name(), nil
		}
		if legacyRepNumber.MatchString(port) && port == wantVF {
			return e.Name(), nil
		}
	}
	return "", fmt.Errorf("sriov: no representor of PF %s VF %d: %w", pf.Address, vf.Index, ErrNotFound)
}
