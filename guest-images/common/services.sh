# The part of /init both guest flavours share (sourced as
# /etc/harness-services.sh): modules, the management NIC, the SSH key, hotplug
# module loading, user-fault forwarding, dropbear, HARNESS-READY and the
# console shell.  The caller sets `args` to the harness.* arguments:
#   harness.modules=a,b,c   modules this topology needs (modprobe resolves deps)
#   harness.mac=MAC         the management NIC: gets 10.0.2.15/24 via slirp
#   harness.kmsg=BASE64     a line written to the kernel log during boot (a test's
#                           own kernel trouble, to see the console scans catch it)
mods=
mac=
for arg in $args; do
    case "$arg" in
        harness.modules=*) mods="${arg#harness.modules=}" ;;
        harness.mac=*) mac="${arg#harness.mac=}" ;;
        harness.kmsg=*) echo "${arg#harness.kmsg=}" | base64 -d >/dev/kmsg ;;
    esac
done
echo /sbin/modprobe >/proc/sys/kernel/modprobe
[ -n "$mods" ] && modprobe -a $(echo "$mods" | tr , ' ')

ip link set lo up
ifc=
if [ -n "$mac" ]; then
    for d in /sys/class/net/*; do
        [ "$(cat "$d/address")" = "$mac" ] && ifc="${d##*/}"
    done
fi
if [ -n "$ifc" ]; then
    echo "$ifc" >/run/harness.ifc
    ip link set "$ifc" up
    ip addr add 10.0.2.15/24 dev "$ifc"
    ip route add default via 10.0.2.2
else
    echo "HARNESS-ERROR no interface with MAC $mac"
fi

mkdir -p /root/.ssh
chmod 700 /root /root/.ssh
ln -sf /sys/firmware/qemu_fw_cfg/by_name/opt/harness/authorized_keys/raw /root/.ssh/authorized_keys
# No udev here (and the Debian kernel has no uevent helper): busybox's
# `uevent` listens on netlink and runs /sbin/hotplug per event, so a
# hot-plugged device gets its driver loaded by modalias.  Started after the
# boot-time modules: coldplug is what harness.modules= is for.
printf '#!/bin/sh\n[ "$ACTION" = add ] && [ -n "$MODALIAS" ] && exec modprobe -q "$MODALIAS"\n' >/sbin/hotplug
chmod 755 /sbin/hotplug
uevent /sbin/hotplug </dev/null >/dev/null 2>&1 &

# The kernel prints warnings and worse on the console itself (loglevel=5), even
# when user space is stuck.  A user process killed by a fault is reported at
# info level only ("traps: sh[42] general protection fault ...", "sh[42]:
# segfault at ..."): re-log those kernel records (facility 0, levels 5-7) at
# warning level through /dev/kmsg, so the kernel prints them on the console
# like its own warnings and the console scan names a crashed guest program too.
# Not written to /dev/console: that goes through the tty's interrupt-driven
# transmit, which was seen to stall mid-line for 20 s after a snapshot restore
# (CI, 7.2.22), while the kernel's console writes poll the UART and get out.
# The re-logged record has facility 1 (user, "12,..."), so it is not re-read.
# awk, not sed: it flushes each line (fflush), one record per write().
cat /dev/kmsg </dev/null 2>/dev/null | awk '/^[5-7],/ && /general protection fault|segfault at|trap invalid opcode|trap divide error/ {
    sub(/^[^;]*;/, "<4>kmsg: "); print; fflush() }' >/dev/kmsg 2>/dev/null &

# dropbear binds its socket before it daemonizes, so READY means "listening".
dropbear -r /etc/dropbear/hostkey -p 22 -s -E 2>>/var/log/dropbear.log
read -r up _ </proc/uptime
echo "HARNESS-READY $up"

# A root shell on the serial console, for pexpect and for people.
while true; do
    setsid cttyhack sh -l
done
