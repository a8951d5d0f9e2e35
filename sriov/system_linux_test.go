package sriov_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/sriov"
)

// TestSystemNetlinkOnVeth runs the real wrappers against the kernel in a
// throwaway namespace. There is no SR-IOV device here, so this proves only
// that the requests are well formed and their refusals reported: a veth
// has no VFs, and the kernel answers every VF setting on it with an error
// (the device has no ndo_set_vf_* callback). The promiscuous flag is real.
func TestSystemNetlinkOnVeth(t *testing.T) {
	ns := netnstest.New(t)
	peer := netnstest.New(t)
	netnstest.Veth(t, netnstest.End{NS: ns, Name: "pf0"}, netnstest.End{NS: peer, Name: "eth0"})
	nl := sriov.SystemNetlink(filepath.Join("/run/netns", ns.Name()))

	vfs, err := nl.VFs("pf0")
	if err != nil || len(vfs) != 0 {
		t.Errorf("VFs of a veth = %+v, %v; want none", vfs, err)
	}
	if _, err := nl.VFs("nope0"); !errors.Is(err, sriov.ErrNotFound) {
		t.Errorf("VFs of a missing link: %v, want ErrNotFound", err)
	}
	for name, call := range map[string]func() error{
		"vlan":     func() error { return nl.SetVFVLAN("pf0", 0, sriov.VLAN{ID: 5}) },
		"mac":      func() error { return nl.SetVFMAC("pf0", 0, []byte{2, 0, 0, 0, 0, 1}) },
		"rate":     func() error { return nl.SetVFRate("pf0", 0, sriov.Rate{MaxMbps: 10}) },
		"spoofchk": func() error { return nl.SetVFSpoofCheck("pf0", 0, false) },
		"trust":    func() error { return nl.SetVFTrust("pf0", 0, true) },
		"state":    func() error { return nl.SetVFLinkState("pf0", 0, sriov.LinkStateEnable) },
	} {
		if err := call(); err == nil {
			t.Errorf("%s on a veth succeeded", name)
		}
	}
	if err := nl.SetVFLinkState("pf0", 0, sriov.LinkStateUnset); !errors.Is(err, sriov.ErrInvalid) {
		t.Errorf("unset link state: %v", err)
	}
	for _, on := range []bool{true, false} {
		if err := nl.SetPromisc("pf0", on); err != nil {
			t.Fatal(err)
		}
		if got, err := nl.Promisc("pf0"); got != on || err != nil {
			t.Errorf("Promisc after SetPromisc(%v) = %v, %v", on, got, err)
		}
	}
	if _, err := sriov.SystemDevlink(filepath.Join("/run/netns", ns.Name())).EswitchMode("0000:00:00.0"); err == nil {
		t.Error("devlink knows a device that does not exist")
	}
	var info sriov.DriverInfo
	if err := ns.Do(func() (err error) { info, err = sriov.SystemEthtool().DriverInfo("pf0"); return err }); err != nil || info.Driver != "veth" {
		t.Errorf("ethtool -i pf0 = %+v, %v; want driver veth", info, err)
	}
}
