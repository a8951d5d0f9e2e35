#!/bin/sh
# /init of the vsagent appliance image.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say() { read up idle < /proc/uptime; echo "vsa-init: [${up}s] $*"; }
off() { poweroff -f; echo o > /proc/sysrq-trigger; sleep 5; exit 1; }
case " $(cat /proc/cmdline) " in
*" vsa.probe=1 "*) echo "vsa-init: probe ok"; off ;;
esac
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_blk; do
	if [ -e /lib/modules/$m.ko ] && ! insmod /lib/modules/$m.ko; then say "loading $m failed"; fi
done
ip link set lo up
# NICs appear asynchronously once virtio_net has probed them.
i=0
while [ $i -lt 100 ] && [ ! -e /sys/class/net/eth0 ]; do sleep 0.1; i=$((i+1)); done
for dev in /sys/class/net/eth*; do [ -e "$dev" ] && ip link set "${dev##*/}" up; done
# A header appliance has one NIC: serve eth0 unless the command line says.
set -- -config-from-cmdline
case " $(cat /proc/cmdline) " in
*" vsafilter.iface="*) ;;
*) set -- "$@" -i eth0 ;;
esac
say "starting vsafilter"
/usr/sbin/vsafilter "$@"
status=$?
say "vsafilter exited with status $status; powering off"
off
