#!/bin/sh
# /init of the pci-harness guest (busybox sh).  Kernel command line keys:
#   harness.modules=a,b,c   modules this topology needs (modprobe resolves deps)
#   harness.mac=MAC         the management NIC: gets 10.0.2.15/24 via slirp
# The SSH key is not in the image: /root/.ssh/authorized_keys points at the
# fw_cfg file opt/harness/authorized_keys, which QEMU serves from the current
# process's command line -- so a guest restored from a snapshot accepts the
# key of the run that restored it.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /var/log
mount -t devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1
read -r up _ </proc/uptime
echo "HARNESS-INIT $up"

args=$(cat /proc/cmdline)
. /etc/harness-services.sh
