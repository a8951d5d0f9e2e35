// Package sriov discovers SR-IOV physical and virtual functions from sysfs
// (under an injectable root), reads NIC facts through ethtool and devlink and
// configures VFs through netlink.
//
// Each system library sits behind one thin interface so tests can use
// recording fakes. It knows nothing of guests, policies or libvirt.
package sriov
