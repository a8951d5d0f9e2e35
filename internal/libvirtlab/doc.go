// Package libvirtlab runs private libvirt daemons and tiny QEMU guests for
// integration tests, the demo and migration tests.
//
// A Lab is one simulated hypervisor host: a libvirtd with its own network
// namespace, UTS namespace (hostname) and private mount namespace in which
// /run is a fresh tmpfs and /etc/libvirt, /var/lib/libvirt, /var/log/libvirt
// and /var/cache/libvirt are bind mounts of directories under Lab.Dir. A
// holder process owns those namespaces, so libvirtd can be killed and
// restarted (Kill, Restart) or frozen (Signal) without losing its state or
// its running guests; Stop removes every process, mount and the namespace.
// Each lab gets a distinct random host UUID, because libvirt refuses to
// migrate between hosts with the same one. Clients reach a lab through its
// socket in Lab.Dir (Lab.URI); Lab.Exec runs commands inside its namespaces.
//
// GuestImage gets a Debian kernel and builds an initramfs around
// busybox-static that configures the guest's interfaces from the kernel
// command line, both through package vmimage (which also builds the
// appliance image) and cached in the same folder, so the kernel is
// downloaded once per machine; GuestDomain describes a guest for it that
// boots in about ten seconds under TCG.
//
// Nothing here imports the libvirt binding: the process-wide libvirt event
// loop must be registered before any connection, and that is the hypervisor
// package's business.
package libvirtlab
