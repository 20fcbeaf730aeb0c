# Sourced by the console shell's /etc/profile: defines harness_restored, which
# the harness types on the serial console right after a guest is restored from
# a snapshot, before anyone SSHes in.  A shell function with builtins where
# possible: every fork costs milliseconds under TCG.
#   harness_restored EPOCH SEEDHEX MAC
#   - the wall clock jumps to now (the snapshot's clock is from when it was saved),
#   - fresh host randomness is mixed into the pool (restored guests would
#     otherwise share the saved RNG state),
#   - the management NIC takes this run's MAC.
harness_restored() {
    date -s "@$1" >/dev/null
    echo "$2" >/dev/urandom
    read -r ifc </run/harness.ifc
    # slirp keeps mapping 10.0.2.15 to the old MAC until the guest sends an
    # ARP packet (SSH stalls ~6 s otherwise): with arp_notify the kernel
    # sends a gratuitous ARP as part of the address change.
    echo 1 >"/proc/sys/net/ipv4/conf/$ifc/arp_notify"
    ip link set dev "$ifc" address "$3"
    read -r up _ </proc/uptime
    echo "HARNESS-RESTORED $up"
}
