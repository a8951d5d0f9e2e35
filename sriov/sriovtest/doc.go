// Package sriovtest gives tests of SR-IOV code a fake sysfs tree and
// recording fakes of the system libraries package sriov wraps.
//
// Fake trees are tables (ParseTree's format) in sriov/testdata/nics, one
// per NIC layout (Intel E810 and X710, NVIDIA ConnectX-5 in legacy and
// switchdev mode), materialized into a temporary directory that becomes
// sriov.Host.SysRoot. Their ${NAME} placeholders let a test point netdev
// names at links it created itself, such as veth ends standing for
// representors.
//
// Netlink, Devlink and Ethtool keep the state a driver would, refuse what
// the kernel refuses, and record each change as the command line (`ip link
// set …`, `devlink dev eswitch set …`) it equals, so a test can compare the
// exact sequence of calls.
package sriovtest
