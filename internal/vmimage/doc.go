// Package vmimage builds the bootable images vsagent's VMs run: a Debian
// kernel and a gzip-compressed initramfs around a static busybox.
//
// The kernel comes from Debian's archive: `apt-get download` fetches the
// linux-image package that linux-image-amd64 depends on and the kernel and
// the few virtio modules an appliance needs are unpacked from it with
// `dpkg-deb --fsys-tarfile`. Nothing is installed on the machine, so the
// host's own boot setup is never touched. Kernels and initramfs archives
// live in a cache folder shared by every process that builds images (a
// file lock serialises writers), so a kernel is downloaded once per machine.
//
// The initramfs is written in pure Go (newc cpio, deterministic), so
// identical inputs give identical archives and a build needs neither cpio
// nor root.
//
// BuildAppliance makes the appliance image that `make appliance-image` and
// `vsagent image build` install: vsa-kernel and vsa-initrd, whose /init
// loads the virtio modules, brings the NICs up and runs vsafilter
// configured from the kernel command line (Cmdline) or a config disk
// (WriteConfigDisk), with its JSON counters on the serial console; when
// vsafilter exits, the VM powers off so that libvirt reports it stopped.
//
// ProbeKVM decides whether appliance domains can use type='kvm' by booting
// the image under KVM for real: on some hosts /dev/kvm opens and answers
// every ioctl, yet ordinary guests never boot.
package vmimage
