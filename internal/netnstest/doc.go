// Package netnstest gives tests throwaway network namespaces, veth pairs and
// bridges, and a safe way to run code or processes inside a namespace.
//
// Every helper takes a testing.TB, skips the test when it is not running as
// root, gives what it creates a unique name so that parallel test binaries
// never collide, and removes it on t.Cleanup even when the test fails.
//
// Switching namespaces in a Go program is only safe on a locked OS thread
// that is restored before it is unlocked: the runtime moves goroutines
// between threads freely, so a thread left in the wrong namespace would
// silently run unrelated goroutines there. NS.Do does that dance; for
// netlink work NS.Netlink gives a handle bound to the namespace that needs
// no thread switching at all, and processes are started through
// `ip netns exec`, which also gives them the namespace's view of /sys.
package netnstest
