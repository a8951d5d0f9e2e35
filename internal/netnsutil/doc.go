// Package netnsutil runs code inside an existing network namespace.
//
// Sockets keep the namespace they were created in, so a long-lived process
// can open packet and netlink sockets in another namespace by switching only
// for the duration of the open, on a locked OS thread, and switching back.
package netnsutil
