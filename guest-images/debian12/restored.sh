#!/bin/sh
# /bin/harness-restored EPOCH SEEDHEX MAC -- run over the serial console right
# after a guest is restored from a snapshot, before anyone SSHes in:
#   - the wall clock jumps to now (the snapshot's clock is from when it was saved),
#   - fresh host randomness is mixed into the pool (restored guests would
#     otherwise share the saved RNG state),
#   - the management NIC takes this run's MAC.
epoch=$1 seed=$2 mac=$3
date -s "@$epoch" >/dev/null
echo "$seed" >/dev/urandom
for d in /sys/class/net/*; do
    [ -e "$d/device" ] || continue
    if [ "$(cat "$d/address")" = "$(cat /run/harness.mac)" ]; then
        # slirp keeps mapping 10.0.2.15 to the old MAC until the guest sends
        # an ARP packet (SSH stalls ~6 s otherwise): with arp_notify the
        # kernel sends a gratuitous ARP as part of the address change.
        echo 1 >"/proc/sys/net/ipv4/conf/${d##*/}/arp_notify"
        ip link set dev "${d##*/}" address "$mac" && echo "$mac" >/run/harness.mac
    fi
done
echo "HARNESS-RESTORED $(cut -d' ' -f1 /proc/uptime)"
