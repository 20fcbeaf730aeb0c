#!/bin/sh
# Stage 2: /init on the ext4 root of the AHCI guest (the initramfs mounted it
# read-write and moved /dev, /proc and /sys here).  Arguments come from QEMU's
# fw_cfg file opt/harness/cmdline, since the kernel command line is fixed in
# syslinux.cfg on the disk:
#   harness.modules=a,b,c   modules this topology needs (modprobe resolves deps)
#   harness.mac=MAC         the management NIC: gets 10.0.2.15/24 via slirp
# The SSH key is fw_cfg file opt/harness/authorized_keys, as on the debian12 guest.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mkdir -p /dev/pts /tmp /run /var/log
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1
read -r up _ </proc/uptime
echo "HARNESS-INIT $up"

# Proof the root takes writes (the overlay the harness made for this boot).
echo "$up" >/var/log/harness-boot || echo "HARNESS-ERROR the root file system refuses writes"

modprobe qemu_fw_cfg
args=$(cat /proc/cmdline /sys/firmware/qemu_fw_cfg/by_name/opt/harness/cmdline/raw 2>/dev/null)
. /etc/harness-services.sh
