package sriov_test

import (
	"os"
	"strings"
	"testing"

	"github.com/vsagent/vsagent/sriov"
	"github.com/vsagent/vsagent/sriov/sriovtest"
)

// FuzzDiscovery feeds discovery odd sysfs trees (garbage attributes,
// links to nowhere, VFs without a PF): it must answer or fail with an
// error, never panic.
func FuzzDiscovery(f *testing.F) {
	for _, nic := range nics {
		if b, err := os.ReadFile(sriovtest.TablePath(nic)); err == nil {
			f.Add(string(b))
		}
	}
	f.Add("file bus/pci/devices/0000:00:01.0/sriov_totalvfs x\nfile bus/pci/devices/0000:00:01.0/sriov_numvfs 1\n")
	f.Add("file d/0000:00:01.0/sriov_totalvfs 1\nfile d/0000:00:01.0/sriov_numvfs 1\nlink bus/pci/devices/0000:00:01.0 ../../../d/0000:00:01.0\nlink d/0000:00:01.0/virtfn0 ../../d\n")
	f.Add("file class/net/a/phys_switch_id 1\nfile class/net/a/phys_port_name pf0vf99999999999999999999\n")
	f.Fuzz(func(t *testing.T, table string) {
		tree, err := sriovtest.ParseTree("fuzz", strings.NewReader(table))
		if err != nil {
			return
		}
		root := t.TempDir()
		if tree.Materialize(root, nil) != nil {
			return
		}
		h := &sriov.Host{SysRoot: root}
		pfs, _ := h.PFs()
		for _, pf := range pfs {
			for _, vf := range pf.VFs {
				_, _ = h.VFByAddress(vf.Address)
				_, _ = h.Representor(vf)
				if vf.Netdev != "" {
					_, _ = h.VFByNetdev(vf.Netdev)
				}
			}
			if pf.Netdev != "" {
				_, _ = h.PFByNetdev(pf.Netdev)
			}
		}
		entries, _ := os.ReadDir(root + "/class/net")
		for _, e := range entries {
			_, _ = h.PFByNetdev(e.Name())
			_, _ = h.VFByNetdev(e.Name())
		}
	})
}
