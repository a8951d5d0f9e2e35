package sriov_test

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/sriov"
	"github.com/vsagent/vsagent/sriov/sriovtest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/discovery")

var nics = []string{"e810-legacy", "x710-legacy", "connectx5-legacy", "connectx5-switchdev"}

func hostOn(t *testing.T, nic string, vars map[string]string) *sriov.Host {
	t.Helper()
	return &sriov.Host{SysRoot: sriovtest.Build(t, nic, vars), Logger: sriovtest.Logger(t)}
}

// TestDiscoveryGolden walks every NIC table and compares what discovery
// finds with testdata/discovery/<nic>.json (go test -run Golden -update
// rewrites them after a reviewed change).
func TestDiscoveryGolden(t *testing.T) {
	for _, nic := range nics {
		t.Run(nic, func(t *testing.T) {
			pfs, err := hostOn(t, nic, nil).PFs()
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.MarshalIndent(pfs, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "discovery", nic+".json")
			if *update {
				if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), string(got)+"\n"); diff != "" {
				t.Errorf("discovery (-golden +got):\n%s", diff)
			}
		})
	}
}

func TestLookups(t *testing.T) {
	e810 := hostOn(t, "e810-legacy", nil)
	cx5 := hostOn(t, "connectx5-switchdev", nil)
	x710 := hostOn(t, "x710-legacy", nil)

	vf, err := e810.VFByAddress("0000:3b:01.2")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sriov.VF{PF: "0000:3b:00.0", Index: 2, Address: "0000:3b:01.2", Driver: "vfio-pci"}, vf); diff != "" {
		t.Errorf("VFByAddress (-want +got):\n%s", diff)
	}
	if !vf.Assigned() {
		t.Error("a vfio-pci VF is not Assigned")
	}
	vf, err = e810.VFByNetdev("ens1f0v1")
	if err != nil || vf.Index != 1 || vf.Address != "0000:3b:01.1" || vf.Driver != "iavf" || vf.Assigned() {
		t.Errorf("VFByNetdev(ens1f0v1) = %+v, %v", vf, err)
	}
	pf, err := cx5.PFByNetdev("enp3s0f0")
	if err != nil || pf.Address != "0000:03:00.0" || pf.NumVFs != 3 || len(pf.VFs) != 3 {
		t.Errorf("PFByNetdev(enp3s0f0) = %+v, %v", pf, err)
	}
	if addr, err := x710.NetdevAddress("ens2f1"); err != nil || addr != "0000:5e:00.1" {
		t.Errorf("NetdevAddress(ens2f1) = %q, %v", addr, err)
	}

	for _, tt := range []struct {
		name string
		call func() error
		want error
	}{
		{"a PF is not a VF", func() error { _, err := e810.VFByAddress("0000:3b:00.0"); return err }, sriov.ErrNotVF},
		{"no such device", func() error { _, err := e810.VFByAddress("0000:3b:07.0"); return err }, sriov.ErrNotFound},
		{"a path is not an address", func() error { _, err := e810.VFByAddress("../../../etc"); return err }, sriov.ErrInvalid},
		{"a root port is not a PF", func() error { _, err := e810.PF("0000:3a:00.0"); return err }, sriov.ErrNotPF},
		{"a VF netdev is not a PF", func() error { _, err := e810.PFByNetdev("ens1f0v0"); return err }, sriov.ErrNotPF},
		{"a representor is not the uplink", func() error { _, err := cx5.PFByNetdev("enp3s0f0_1"); return err }, sriov.ErrNotPF},
		{"a PF netdev is not a VF", func() error { _, err := cx5.VFByNetdev("enp3s0f0"); return err }, sriov.ErrNotVF},
		{"a virtual netdev has no PCI device", func() error { _, err := cx5.NetdevAddress("lo"); return err }, sriov.ErrNotFound},
		{"no such netdev", func() error { _, err := cx5.NetdevAddress("eth9"); return err }, sriov.ErrNotFound},
		{"a dot name is not a netdev", func() error { _, err := cx5.NetdevAddress(".."); return err }, sriov.ErrInvalid},
		{"slashes are not a netdev", func() error { _, err := cx5.NetdevAddress("a/b"); return err }, sriov.ErrInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, tt.want) {
				t.Errorf("error %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRepresentor(t *testing.T) {
	tests := []struct {
		name  string
		nic   string
		vars  map[string]string
		vf    string // PCI address
		want  string
		error error
	}{
		{"ConnectX-5 switchdev, VF 0", "connectx5-switchdev", nil, "0000:03:00.2", "enp3s0f0_0", nil},
		{"ConnectX-5 switchdev, VF 2 with a host netdev", "connectx5-switchdev", nil, "0000:03:00.4", "enp3s0f0_2", nil},
		{"old kernel: phys_port_name is the VF number", "connectx5-switchdev", map[string]string{"REP0_PORT": "0"}, "0000:03:00.2", "enp3s0f0_0", nil},
		{"external controller's VF is not ours", "connectx5-switchdev", map[string]string{"REP0_PORT": "c1pf0vf0"}, "0000:03:00.2", "", sriov.ErrNotFound},
		{"renamed representors", "connectx5-switchdev", map[string]string{"REP1": "vsa-rep1"}, "0000:03:00.3", "vsa-rep1", nil},
		{"ConnectX-5 legacy has no switch id", "connectx5-legacy", nil, "0000:03:00.2", "", sriov.ErrNotFound},
		{"E810 legacy has a switch id but no representors", "e810-legacy", nil, "0000:3b:01.0", "", sriov.ErrNotFound},
		{"X710 has no switch id", "x710-legacy", nil, "0000:5e:02.0", "", sriov.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hostOn(t, tt.nic, tt.vars)
			vf, err := h.VFByAddress(tt.vf)
			if err != nil {
				t.Fatal(err)
			}
			got, err := h.Representor(vf)
			if got != tt.want || !errors.Is(err, tt.error) {
				t.Errorf("Representor = %q, %v; want %q, %v", got, err, tt.want, tt.error)
			}
		})
	}
}

func TestEswitchAndNICFacts(t *testing.T) {
	h := hostOn(t, "connectx5-switchdev", nil)
	dl := sriovtest.NewDevlink(map[string]string{"0000:03:00.0": sriov.EswitchSwitchdev})
	h.Devlink = dl
	h.Ethtool = sriovtest.Ethtool{"enp3s0f0": {Driver: "mlx5_core", Version: "6.1.0-18-amd64", Firmware: "16.35.2000 (MT_0000000080)", BusInfo: "0000:03:00.0"}}
	pf, err := h.PFByNetdev("enp3s0f0")
	if err != nil {
		t.Fatal(err)
	}
	if mode, err := h.EswitchMode(pf); mode != sriov.EswitchSwitchdev || err != nil {
		t.Errorf("EswitchMode = %q, %v", mode, err)
	}
	info, err := h.NICInfo(pf)
	if err != nil || info.Driver != pf.Driver || info.BusInfo != pf.Address {
		t.Errorf("NICInfo = %+v, %v; want the driver and address sysfs shows", info, err)
	}
	if err := h.SetEswitchMode(pf, "off"); !errors.Is(err, sriov.ErrInvalid) {
		t.Errorf("SetEswitchMode(off) = %v", err)
	}
	dl.Busy = true
	if err := h.SetEswitchMode(pf, sriov.EswitchLegacy); err == nil {
		t.Error("SetEswitchMode succeeded on a busy device")
	}
	dl.Busy = false
	if err := h.SetEswitchMode(pf, sriov.EswitchLegacy); err != nil {
		t.Fatal(err)
	}
	want := []string{"devlink dev eswitch set pci/0000:03:00.0 mode legacy", "devlink dev eswitch set pci/0000:03:00.0 mode legacy"}
	if diff := cmp.Diff(want, dl.Calls()); diff != "" {
		t.Errorf("devlink calls (-want +got):\n%s", diff)
	}
	if mode, _ := h.EswitchMode(pf); mode != sriov.EswitchLegacy {
		t.Errorf("mode after SetEswitchMode: %q", mode)
	}
	other, err := h.PF("0000:03:00.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.EswitchMode(other); err == nil {
		t.Error("EswitchMode of a device devlink does not know succeeded")
	}
	if _, err := h.NICInfo(other); err == nil {
		t.Error("NICInfo of a netdev ethtool does not know succeeded")
	}
}
