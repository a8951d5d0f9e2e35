// Package sriov discovers SR-IOV physical and virtual functions from sysfs,
// reads NIC facts through ethtool and the eswitch mode through devlink, and
// configures VFs through netlink.
//
// A Host is one machine: SysRoot is where sysfs is mounted ("/sys", or a
// fake tree in tests) and Netlink, Devlink and Ethtool are thin interfaces,
// each method documented with the command line it equals, whose system
// implementations (SystemNetlink, SystemDevlink, SystemEthtool) open their
// sockets per call. Discovery follows what the kernel shows:
// sriov_totalvfs and sriov_numvfs of a PF, its virtfnN links, each VF's
// physfn link, bound driver (vfio-pci: a guest's) and netdev, and, in
// switchdev mode, the representor whose phys_switch_id is the uplink's and
// whose phys_port_name is pf<P>vf<N>.
//
// ConfigureVF makes VF settings in the order drivers expect (VLAN, MAC,
// rate, spoof check, trust, link state) and reads the MAC back until it
// sticks; SetNumVFs bounds its blocking sysfs writes. VFSettings.Config and
// VFConfig.Changes turn a recorded state into the calls that restore it.
//
// The package knows nothing of guests, policies or libvirt. Package
// sriovtest has the fake sysfs tables and recording fakes; docs/sriov.md
// says what is proven against hardware (nothing: this project has none),
// against fakes, and against a simulated NIC.
package sriov
