package sriov

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// VFConfig is a set of VF settings to make. A nil or unset field is left as
// it is, so a VFConfig can name a single change or a complete state.
type VFConfig struct {
	VLAN       *VLAN
	MAC        net.HardwareAddr
	Rate       *Rate
	SpoofCheck Toggle
	Trust      Toggle
	LinkState  LinkState
}

// Config is the VFConfig that puts a VF back into the settings s: every
// field the driver reported.
func (s VFSettings) Config() VFConfig {
	vlan, rate := s.VLAN, s.Rate
	c := VFConfig{VLAN: &vlan, Rate: &rate, SpoofCheck: s.SpoofCheck, Trust: s.Trust, LinkState: s.LinkState}
	if len(s.MAC) > 0 {
		c.MAC = append(net.HardwareAddr(nil), s.MAC...)
	}
	return c
}

// Changes is the part of c that differs from have: what Configure must do
// to get from have to c.
func (c VFConfig) Changes(have VFSettings) VFConfig {
	var d VFConfig
	if c.VLAN != nil && *c.VLAN != have.VLAN {
		d.VLAN = c.VLAN
	}
	if c.MAC != nil && !bytes.Equal(c.MAC, have.MAC) {
		d.MAC = c.MAC
	}
	if c.Rate != nil && *c.Rate != have.Rate {
		d.Rate = c.Rate
	}
	if c.SpoofCheck != ToggleUnset && c.SpoofCheck != have.SpoofCheck {
		d.SpoofCheck = c.SpoofCheck
	}
	if c.Trust != ToggleUnset && c.Trust != have.Trust {
		d.Trust = c.Trust
	}
	if c.LinkState != LinkStateUnset && c.LinkState != have.LinkState {
		d.LinkState = c.LinkState
	}
	return d
}

// Empty reports whether c changes nothing.
func (c VFConfig) Empty() bool {
	return c.VLAN == nil && c.MAC == nil && c.Rate == nil && c.SpoofCheck == ToggleUnset &&
		c.Trust == ToggleUnset && c.LinkState == LinkStateUnset
}

// Satisfied reports whether have already has every setting c names.
func (c VFConfig) Satisfied(have VFSettings) bool { return c.Changes(have).Empty() }

func (c VFConfig) validate() error {
	if c.VLAN != nil && (c.VLAN.ID < 0 || c.VLAN.ID > 4095 || c.VLAN.QoS < 0 || c.VLAN.QoS > 7) {
		return fmt.Errorf("%w: VLAN %d QoS %d", ErrInvalid, c.VLAN.ID, c.VLAN.QoS)
	}
	if c.MAC != nil && len(c.MAC) != 6 {
		return fmt.Errorf("%w: MAC address %s", ErrInvalid, c.MAC)
	}
	if c.Rate != nil && (c.Rate.MinMbps < 0 || c.Rate.MaxMbps < 0 || (c.Rate.MaxMbps != 0 && c.Rate.MinMbps > c.Rate.MaxMbps)) {
		return fmt.Errorf("%w: rate %d..%d Mbit/s", ErrInvalid, c.Rate.MinMbps, c.Rate.MaxMbps)
	}
	return nil
}

// VFSettings reads the settings of VF index of pf.
func (h *Host) VFSettings(pf PF, index int) (VFSettings, error) {
	if pf.Netdev == "" {
		return VFSettings{}, fmt.Errorf("sriov: PF %s has no netdev to configure VFs through: %w", pf.Address, ErrNotFound)
	}
	all, err := h.Netlink.VFs(pf.Netdev)
	if err != nil {
		return VFSettings{}, fmt.Errorf("sriov: read VFs of %s: %w", pf.Netdev, err)
	}
	for _, s := range all {
		if s.Index == index {
			return s, nil
		}
	}
	return VFSettings{}, fmt.Errorf("sriov: %s has no VF %d: %w", pf.Netdev, index, ErrNotFound)
}

// ConfigureVF makes the settings cfg names on VF index of pf, in the order
// drivers expect them (the order sriov-cni settled on): VLAN, MAC, rate,
// spoof check, trust, link state. The MAC address is read back and written
// again until it sticks. It stops at the first failure, with the settings
// before it made.
func (h *Host) ConfigureVF(ctx context.Context, pf PF, index int, cfg VFConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if pf.Netdev == "" {
		return fmt.Errorf("sriov: PF %s has no netdev to configure VFs through: %w", pf.Address, ErrNotFound)
	}
	if index < 0 || index >= pf.NumVFs {
		return fmt.Errorf("%w: PF %s has %d VFs, no VF %d", ErrInvalid, pf.Address, pf.NumVFs, index)
	}
	nl, dev := h.Netlink, pf.Netdev
	steps := []struct {
		name string
		set  bool
		do   func() error
	}{
		{"vlan", cfg.VLAN != nil, func() error { return nl.SetVFVLAN(dev, index, *cfg.VLAN) }},
		{"mac", cfg.MAC != nil, func() error { return h.setMAC(ctx, pf, index, cfg.MAC) }},
		{"rate", cfg.Rate != nil, func() error { return nl.SetVFRate(dev, index, *cfg.Rate) }},
		{"spoofchk", cfg.SpoofCheck != ToggleUnset, func() error { return nl.SetVFSpoofCheck(dev, index, cfg.SpoofCheck == ToggleOn) }},
		{"trust", cfg.Trust != ToggleUnset, func() error { return nl.SetVFTrust(dev, index, cfg.Trust == ToggleOn) }},
		{"state", cfg.LinkState != LinkStateUnset, func() error { return nl.SetVFLinkState(dev, index, cfg.LinkState) }},
	}
	for _, s := range steps {
		if !s.set {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("sriov: %s vf %d: before %s: %w", dev, index, s.name, err)
		}
		if err := s.do(); err != nil {
			return fmt.Errorf("sriov: %s vf %d: set %s: %w", dev, index, s.name, err)
		}
	}
	h.log().Info("VF configured", "pf", dev, "vf", index, "config", cfg.String())
	return nil
}

// setMAC writes the MAC and reads it back, again until it sticks: some
// drivers accept the write during a VF reset and then lose it.
func (h *Host) setMAC(ctx context.Context, pf PF, index int, mac net.HardwareAddr) error {
	delay := h.macRetryDelay()
	attempts := h.macAttempts()
	var got net.HardwareAddr
	for attempt := 1; ; attempt++ {
		if err := h.Netlink.SetVFMAC(pf.Netdev, index, mac); err != nil {
			return err
		}
		s, err := h.VFSettings(pf, index)
		if err != nil {
			return err
		}
		if got = s.MAC; bytes.Equal(got, mac) {
			return nil
		}
		if attempt == attempts {
			break
		}
		h.log().Warn("VF MAC did not stick, retrying", "pf", pf.Netdev, "vf", index, "want", mac.String(), "have", got.String(), "attempt", attempt)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
	return fmt.Errorf("%w: wrote %s %d times, reads back %s", ErrMACNotApplied, mac, attempts, got)
}

// String renders c the way `ip link set PF vf N` takes it.
func (c VFConfig) String() string {
	var b []byte
	if c.VLAN != nil {
		b = fmt.Appendf(b, " vlan %d qos %d", c.VLAN.ID, c.VLAN.QoS)
	}
	if c.MAC != nil {
		b = fmt.Appendf(b, " mac %s", c.MAC)
	}
	if c.Rate != nil {
		b = fmt.Appendf(b, " min_tx_rate %d max_tx_rate %d", c.Rate.MinMbps, c.Rate.MaxMbps)
	}
	if c.SpoofCheck != ToggleUnset {
		b = fmt.Appendf(b, " spoofchk %s", c.SpoofCheck)
	}
	if c.Trust != ToggleUnset {
		b = fmt.Appendf(b, " trust %s", c.Trust)
	}
	if c.LinkState != LinkStateUnset {
		b = fmt.Appendf(b, " state %s", c.LinkState)
	}
	if len(b) == 0 {
		return ""
	}
	return string(b[1:])
}

// numVFsPoll paces the wait for the kernel to show the VFs it created.
const numVFsPoll = 50 * time.Millisecond

// SetNumVFs enables n VFs on pf (0 disables them all) by writing
// sriov_numvfs, and waits until sysfs shows them. The kernel refuses to
// change a non-zero count to another non-zero one, so that goes through 0
// first: every existing VF disappears, with whatever was using it.
//
// The write blocks while the kernel resets functions and probes drivers,
// for a long time on big NICs, and reads of the attribute wait for it; all
// of it is bounded by ctx and NumVFsTimeout. A write that timed out still
// completes in the kernel later: read the PF again before retrying.
func (h *Host) SetNumVFs(ctx context.Context, pf PF, n int) error {
	if n < 0 || n > pf.TotalVFs {
		return fmt.Errorf("%w: PF %s supports 0..%d VFs, not %d", ErrInvalid, pf.Address, pf.TotalVFs, n)
	}
	ctx, cancel := context.WithTimeout(ctx, h.numVFsTimeout())
	defer cancel()
	path := filepath.Join(h.pciDir(pf.Address), "sriov_numvfs")
	var cur int
	if err := bounded(ctx, func() (err error) { cur, err = intAttr(path); return err }); err != nil {
		return fmt.Errorf("sriov: PF %s: read sriov_numvfs: %w", pf.Address, err)
	}
	if cur == n {
		return nil
	}
	steps := []int{n}
	if cur != 0 && n != 0 {
		steps = []int{0, n}
	}
	for _, v := range steps {
		if err := bounded(ctx, func() error { return writeAttr(path, strconv.Itoa(v)) }); err != nil {
			return fmt.Errorf("sriov: PF %s: write %d to sriov_numvfs: %w", pf.Address, v, err)
		}
		if err := h.waitForVFs(ctx, pf.Address, v); err != nil {
			return err
		}
	}
	h.log().Info("VFs enabled", "pf", pf.Address, "numvfs", n, "was", cur)
	return nil
}

// waitForVFs waits until sysfs shows exactly n VFs of the PF: the kernel
// creates the virtfnN links before the write returns, but a driver may
// finish probing later.
func (h *Host) waitForVFs(ctx context.Context, pfAddr string, n int) error {
	for !h.showsVFs(pfAddr, n) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("sriov: PF %s: waiting for sysfs to show %d VFs: %w", pfAddr, n, ctx.Err())
		case <-time.After(numVFsPoll):
		}
	}
	return nil
}

// showsVFs reports whether sysfs shows exactly n VFs of the PF.
func (h *Host) showsVFs(pfAddr string, n int) bool {
	exists := func(i int) bool {
		_, err := os.Lstat(filepath.Join(h.pciDir(pfAddr), "virtfn"+strconv.Itoa(i)))
		return err == nil
	}
	return (n == 0 || exists(n-1)) && !exists(n)
}

// writeAttr writes an existing sysfs attribute in one write, as the kernel
// wants, and never creates one.
func writeAttr(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// bounded runs fn, an uninterruptible system call on sysfs, in a goroutine
// so that one the kernel holds for too long does not hold the caller.
func bounded(ctx context.Context, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return err
	case <-ctx.Done():
		return fmt.Errorf("still blocked in the kernel: %w", ctx.Err())
	}
}
