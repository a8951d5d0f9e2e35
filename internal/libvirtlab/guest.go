package libvirtlab

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// GuestReady is the console line the guest prints once its interfaces are
// configured and its responders run.
const GuestReady = "libvirtlab-guest: ready"

// GuestInit is /init of the test guest. It loads the virtio modules in
// GuestModules order, configures ethN from the kernel command line
// (guestip=ADDR/LEN for eth0, guestipN=ADDR/LEN for ethN, guestgw=ADDR,
// guestname=NAME), starts an HTTP server on port 80 that answers with the
// guest's name and a TCP echo server on port 7, prints GuestReady, runs the
// script of guestrun=BASE64 (see GuestRun) in the background with its
// output on the console, and idles; as PID 1 it must never exit.
var GuestInit = `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in ` + strings.Join(GuestModules, " ") + `; do
	if [ -e /lib/modules/$m.ko ]; then insmod /lib/modules/$m.ko; fi
done
ip link set lo up
: > /tmp/addrs
gw=
run=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	guestip=*) echo "0 ${arg#*=}" >> /tmp/addrs ;;
	guestip[0-9]*=*) n=${arg%%=*}; echo "${n#guestip} ${arg#*=}" >> /tmp/addrs ;;
	guestgw=*) gw=${arg#*=} ;;
	guestname=*) hostname "${arg#*=}" ;;
	guestrun=*) run=${arg#*=} ;;
	esac
done
# The responders listen before any address exists, so a guest that answers
# ping answers on its ports too.
mkdir -p /www
hostname > /www/index.html
httpd -p 80 -h /www
nc -ll -p 7 -e /bin/cat &
# NICs appear asynchronously once virtio_net has probed them.
i=0
while [ $i -lt 100 ] && [ ! -e /sys/class/net/eth0 ]; do sleep 0.1; i=$((i+1)); done
for dev in /sys/class/net/eth*; do [ -e "$dev" ] && ip link set "${dev##*/}" up; done
while read n addr; do ip addr add "$addr" dev "eth$n"; done < /tmp/addrs
if [ -n "$gw" ]; then ip route add default via "$gw"; fi
ip -o addr show
echo "` + GuestReady + `"
if [ -n "$run" ]; then echo "$run" | base64 -d > /tmp/run.sh && sh /tmp/run.sh & fi
while :; do sleep 3600; done
`

// GuestOptions describe a test guest.
type GuestOptions struct {
	UUID string
	// MemoryMiB defaults to 128, VCPUs to 1.
	MemoryMiB uint
	VCPUs     uint
	// ConsoleLog receives the serial console (kernel messages, GuestReady);
	// empty means no console.
	ConsoleLog string
	// Gateway becomes the guest's default route.
	Gateway    string
	Interfaces []GuestInterface
	// Cmdline is appended to the kernel command line.
	Cmdline string
}

// GuestInterface is one NIC of a test guest; the Nth becomes ethN inside.
type GuestInterface struct {
	// Type is "ethernet" (default: a tap named Target in libvirtd's network
	// namespace), "direct" (a macvtap on Source in Mode, default "bridge")
	// or "bridge" (a tap that libvirt enslaves to the bridge Source).
	Type   string
	Target string
	Source string
	Mode   string
	MAC    string
	// Address is the guest's address in CIDR form, e.g. "10.0.0.2/24".
	Address string
}

// GuestDomain describes a test guest that boots img under TCG: machine q35,
// direct kernel boot, ACPI (device detach needs it), no balloon, no USB,
// virtio NICs without option ROMs and the serial console in a file.
func GuestDomain(name string, img Image, opts GuestOptions) (*libvirtxml.Domain, error) {
	mem, vcpus := opts.MemoryMiB, opts.VCPUs
	if mem == 0 {
		mem = 128
	}
	if vcpus == 0 {
		vcpus = 1
	}
	cmdline := []string{"console=ttyS0", "quiet", "panic=-1", "guestname=" + name}
	if opts.Gateway != "" {
		if _, err := netip.ParseAddr(opts.Gateway); err != nil {
			return nil, fmt.Errorf("libvirtlab: gateway: %w", err)
		}
		cmdline = append(cmdline, "guestgw="+opts.Gateway)
	}
	devices := &libvirtxml.DomainDeviceList{
		Controllers: []libvirtxml.DomainController{{Type: "usb", Model: "none"}},
		MemBalloon:  &libvirtxml.DomainMemBalloon{Model: "none"},
	}
	for i, nic := range opts.Interfaces {
		iface, err := guestInterface(nic)
		if err != nil {
			return nil, fmt.Errorf("libvirtlab: interface %d: %w", i, err)
		}
		devices.Interfaces = append(devices.Interfaces, iface)
		if nic.Address != "" {
			if _, err := netip.ParsePrefix(nic.Address); err != nil {
				return nil, fmt.Errorf("libvirtlab: interface %d address: %w", i, err)
			}
			key := "guestip"
			if i > 0 {
				key = fmt.Sprintf("guestip%d", i)
			}
			cmdline = append(cmdline, key+"="+nic.Address)
		}
	}
	if opts.ConsoleLog != "" {
		port := uint(0)
		devices.Serials = []libvirtxml.DomainSerial{{
			Source: &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: opts.ConsoleLog}},
			Target: &libvirtxml.DomainSerialTarget{Port: &port},
		}}
	}
	if opts.Cmdline != "" {
		cmdline = append(cmdline, opts.Cmdline)
	}
	return &libvirtxml.Domain{
		Type:   "qemu",
		Name:   name,
		UUID:   opts.UUID,
		Memory: &libvirtxml.DomainMemory{Value: mem, Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: vcpus},
		OS: &libvirtxml.DomainOS{
			Type:    &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "q35", Type: "hvm"},
			Kernel:  img.Kernel,
			Initrd:  img.Initrd,
			Cmdline: strings.Join(cmdline, " "),
		},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		Clock:      &libvirtxml.DomainClock{Offset: "utc"},
		OnPoweroff: "destroy",
		// A guest whose init dies panics and reboots at once (panic=-1);
		// stopping it then makes the failure visible instead of a boot loop.
		OnReboot: "destroy",
		OnCrash:  "destroy",
		Devices:  devices,
	}, nil
}

func guestInterface(nic GuestInterface) (libvirtxml.DomainInterface, error) {
	iface := libvirtxml.DomainInterface{
		Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"},
		ROM:   &libvirtxml.DomainROM{Enabled: "no"},
	}
	if nic.MAC != "" {
		iface.MAC = &libvirtxml.DomainInterfaceMAC{Address: nic.MAC}
	}
	if nic.Target != "" {
		iface.Target = &libvirtxml.DomainInterfaceTarget{Dev: nic.Target}
	}
	switch nic.Type {
	case "", "ethernet":
		iface.Source = &libvirtxml.DomainInterfaceSource{Ethernet: &libvirtxml.DomainInterfaceSourceEthernet{}}
	case "direct":
		if nic.Source == "" {
			return iface, fmt.Errorf("direct interface needs a source device")
		}
		mode := nic.Mode
		if mode == "" {
			mode = "bridge"
		}
		iface.Source = &libvirtxml.DomainInterfaceSource{Direct: &libvirtxml.DomainInterfaceSourceDirect{Dev: nic.Source, Mode: mode}}
	case "bridge":
		if nic.Source == "" {
			return iface, fmt.Errorf("bridge interface needs a source bridge")
		}
		iface.Source = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: nic.Source}}
	default:
		return iface, fmt.Errorf("unsupported interface type %q", nic.Type)
	}
	return iface, nil
}

// GuestRun returns the kernel command line parameter (for
// GuestOptions.Cmdline) that makes the guest run script with busybox sh
// once it is ready, so that a guest can start traffic by itself. The script
// travels base64-encoded because the command line splits on spaces; the
// whole command line must stay under the kernel's 2047 bytes.
func GuestRun(script string) string {
	return "guestrun=" + base64.StdEncoding.EncodeToString([]byte(script))
}
