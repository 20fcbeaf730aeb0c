#!/bin/sh
# Stage 1 (/init of the initramfs syslinux loaded): find the root partition on
# the AHCI disk, check it with e2fsck, mount it read-write, switch to it.
# Every step prints a marker the harness times (harness/scenarios/bootstress/run.py):
#   HARNESS-KERNEL UPTIME        the kernel runs its initramfs
#   HARNESS-FSCK STATUS UPTIME   e2fsck -f -n of the root (0: clean)
#   HARNESS-ROOT OPTIONS UPTIME  the root is mounted (OPTIONS from /proc/mounts)
#   HARNESS-ERROR WHAT           this boot cannot go on (then a shell)
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
read -r up _ </proc/uptime
echo "HARNESS-KERNEL $up"

fail() {
    echo "HARNESS-ERROR $*"
    exec sh
}

root=
for arg in $(cat /proc/cmdline); do
    case "$arg" in harness.root=*) root="${arg#harness.root=}" ;; esac
done
[ -n "$root" ] || fail "no harness.root= on the kernel command line"
modprobe -a ahci sd_mod ext4 || fail "modprobe ahci sd_mod ext4 failed"

# The AHCI probe is asynchronous: wait for the partition, 30 s of guest time.
read -r start _ </proc/uptime
start=${start%.*}
while [ ! -b "$root" ]; do
    read -r now _ </proc/uptime
    if [ $((${now%.*} - start)) -ge 30 ]; then
        cat /proc/partitions
        fail "root partition $root did not appear within 30 s"
    fi
    usleep 20000
done

e2fsck -f -n "$root" >/tmp/fsck.log 2>&1
status=$?
read -r up _ </proc/uptime
echo "HARNESS-FSCK $status $up"
if [ "$status" -ne 0 ]; then
    cat /tmp/fsck.log
    fail "e2fsck -f -n $root exited with status $status"
fi

mkdir -p /newroot
mount -t ext4 -o rw "$root" /newroot || fail "mount -o rw $root failed"
opts=$(awk '$2 == "/newroot" { print $4 }' /proc/mounts)
read -r up _ </proc/uptime
echo "HARNESS-ROOT $opts $up"
for fs in dev proc sys; do
    mount --move "/$fs" "/newroot/$fs"
done
exec switch_root /newroot /init
