"""INT#x sharing stress and bridge-depth routing: build, check, load, measure.

The routing model and the stress topology are in intx_layout.py, the counters
and the host's payload server in intx_io.py; this module runs the stress in a
guest and re-exports their public names.

Why this shape:
- The *model* of where a device's INT#x lands is derived here from the PCI
  specs, never read back from QEMU: each PCI-to-PCI bridge swizzles
  pin' = ((pin - 1 + slot) mod 4) + 1 towards its primary bus, and the root bus
  maps (slot, pin) to a chipset PIRQ link (PIIX: (slot - 1 + pin - 1) mod 4 =
  PIRQA-D; ICH9 default D<n>IR for slots below 0x18: (slot + pin - 1) mod 4 + 4 =
  PIRQE-H).  A link becomes a line: PIIX steers PIRQx to the ISA IRQ in its
  PIRQRC register (read from the guest's config space), ICH9 in APIC mode to
  GSI 16 + x.
- Two views are compared with it: the guest's (sysfs irq, /proc/interrupts) and
  QEMU's (HMP `info irq`: which IO-APIC pin counted the interrupts while one
  device alone did I/O).
- The topology puts every stress device on ONE link by choosing its slot: all
  devices share a line whatever their bridge depth.  MSI-X is off (vectors=0),
  so the only way a completion is noticed is the shared INT#x line.
- The load is verified I/O: disks write a random 1 MiB chunk with O_DIRECT and
  read it back through md5sum; NICs download a deterministic payload from a
  host server through their own user-mode netdev and check its md5.  I/O
  counts come from the kernel (/sys/block/*/stat, net statistics), not the
  script.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.guest.acpi import pci_interrupt_links
from harness.guest.console import kernel_trouble
from harness.guest.functions import GuestFunction, functions_by_path
from harness.protocols import RunningGuest
from harness.qemu.machines import machine_facts
from harness.scenarios.intx.io import (
    CHUNK,
    counter_delta,
    parse_info_irq,
    parse_proc_interrupts,
)
from harness.scenarios.intx.steering import link_mismatch, parse_steering, plan_separation
from harness.scenarios.intx.topology import (
    DISK_BYTES,
    LINK_NAMES,
    IntxRoute,
    StressDevice,
    StressKind,
    StressLayout,
    expected_line,
    intx_route,
    root_link,
    shared_line_layout,
    swizzle,
)
from harness.topology.placement import resolve
from harness.topology.tree import path_of
from harness.workloads.payload import PayloadServer

__all__ = ["IntxRoute", "IntxStress", "LoadResult", "StressDevice",
           "StressLayout", "expected_line", "intx_route", "parse_info_irq",
           "parse_proc_interrupts", "root_link", "run_stress", "shared_line_layout", "swizzle"]

# --------------------------------------------------------------------------- the guest side

@dataclass(frozen=True)
class ProbeResult:
    """One device doing I/O alone: did its line count, and on which IO-APIC pin."""

    device: str
    guest_delta: int              # the device's line in /proc/interrupts
    qemu_pins: dict[int, int]     # IO-APIC pins whose `info irq` count grew
    error: str | None = None      # the I/O did not complete (an interrupt lost?)


@dataclass(frozen=True)
class DeviceLoad:
    device: str
    kind: StressKind
    depth: int
    irq: int
    ops: int                      # kernel-counted requests (disk) or packets (net)
    bytes: int                    # verified payload bytes
    rounds: int                   # verified chunks
    bad: int                      # chunks that read back wrong
    errors: int                   # dd/nc failures

    def as_dict(self, seconds: float, line_rate: float) -> dict[str, Any]:
        return {"device": self.device, "kind": self.kind, "depth": self.depth,
                "irq": self.irq, "interrupts_per_s": round(line_rate, 1),
                "io_per_s": round(self.ops / seconds, 1) if seconds else 0.0,
                "mib_per_s": round(self.bytes / seconds / 2**20, 2) if seconds else 0.0,
                "verified_chunks": self.rounds, "bad_chunks": self.bad, "errors": self.errors}


@dataclass(frozen=True)
class LoadResult:
    seconds: float                # guest clock, first start to last finish
    devices: tuple[DeviceLoad, ...]
    line_deltas: dict[int, int]   # guest /proc/interrupts
    qemu_pin_deltas: dict[int, int]
    failures: tuple[str, ...] = field(default=())

    def line_rate(self, irq: int) -> float:
        return self.line_deltas.get(irq, 0) / self.seconds if self.seconds else 0.0

    @property
    def io_per_s(self) -> float:
        return sum(d.ops for d in self.devices) / self.seconds if self.seconds else 0.0

    @property
    def interrupts_per_s(self) -> float:
        lines = {d.irq for d in self.devices}
        return sum(self.line_deltas.get(i, 0) for i in lines) / self.seconds if self.seconds else 0


def _disk_loop(dev: StressDevice, fn: GuestFunction, disk_bytes: int) -> str:
    chunks = max(1, disk_bytes // CHUNK)
    blocks = CHUNK // 4096
    return f"""(
  id={dev.id}; d=/dev/{fn.block}; pat=/tmp/intx/$id.pat
  dd if=/dev/urandom of=$pat bs=65536 count={CHUNK // 65536} 2>/dev/null
  want=$(md5sum < $pat | cut -d' ' -f1); r=0; bad=0; err=0; k=0
  while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do
    dd if=$pat of=$d bs=4096 seek=$((k*{blocks})) count={blocks} oflag=direct conv=notrunc \
      2>/dev/null || err=$((err+1))
    got=$(dd if=$d bs=4096 skip=$((k*{blocks})) count={blocks} iflag=direct 2>/dev/null \
      | md5sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || bad=$((bad+1))
    r=$((r+1)); k=$(( (k+1) % {chunks} ))
  done
  echo "res $id $r $bad $err" > /tmp/intx/$id.res
) &
"""


def _net_loop(dev: StressDevice, port: int, md5: str) -> str:
    return f"""(
  id={dev.id}; r=0; bad=0; err=0
  while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do
    got=$(timeout 30 nc {dev.host_ip} {port} | md5sum | cut -d' ' -f1) || err=$((err+1))
    [ "$got" = "{md5}" ] || bad=$((bad+1))
    r=$((r+1))
  done
  echo "res $id $r $bad $err" > /tmp/intx/$id.res
) &
"""


def _counters_script(fns: Sequence[GuestFunction]) -> str:
    parts = ["cat /proc/interrupts"]
    for fn in fns:
        if fn.block:
            parts.append(f"echo \"blk {fn.block} $(cat /sys/block/{fn.block}/stat)\"")
        if fn.net:
            s = f"/sys/class/net/{fn.net}/statistics"
            parts.append(f"echo \"net {fn.net} $(cat {s}/rx_packets) $(cat {s}/tx_packets)\"")
    return "; ".join(parts)


def _io_counts(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        p = line.split()
        if len(p) > 8 and p[0] == "blk":
            out[p[1]] = int(p[2]) + int(p[6])   # reads + writes completed
        elif len(p) == 4 and p[0] == "net":
            out[p[1]] = int(p[2]) + int(p[3])
    return out


class IntxStress:
    """Drive the stress devices of a booted guest built from `layout`."""

    def __init__(self, guest: RunningGuest, layout: StressLayout, server: PayloadServer,
                 disk_bytes: int = DISK_BYTES):
        self.guest = guest
        self.layout = layout
        self.server = server
        self.disk_bytes = disk_bytes
        topo = resolve(layout.topology)
        self.paths = {d.id: path_of(topo, topo.device(d.id)) for d in layout.devices}
        self.routes = {d.id: intx_route(topo, d.id) for d in layout.devices}
        self.fns: dict[str, GuestFunction] = {}
        # The line each device's INT#x must arrive on: the chipset's fixed wiring
        # (q35), or on pc the IO-APIC pin QEMU counted in the device's solo probe.
        self.expected: dict[str, int] = {}
        self._choices: dict[int, tuple[int, ...]] | None = None
        # pc: {PIRQ link: the IRQ PIIX steers it to}, paired links separated first
        self.steering: dict[int, int | None] | None = None

    # ---- discovery and routing --------------------------------------------
    def discover(self) -> list[str]:
        """Find every stress device in the guest, bring its NIC up, and return the
        routing failures: MSI in use, or a line other than the model's."""
        found = functions_by_path(self.guest)
        failures = []
        setup = []
        for dev in self.layout.devices:
            path = self.paths[dev.id]
            fn = found.get(path)
            if fn is None or (fn.block if dev.kind == "blk" else fn.net) is None:
                raise HarnessError(f"stress device {dev.id} ({'/'.join(path)}) has no "
                                   f"{'disk' if dev.kind == 'blk' else 'interface'} in the guest",
                                   fix="check that virtio_blk/virtio_net loaded (dmesg)",
                                   tail="\n".join(f"{'/'.join(p)} {f}" for p, f in found.items()))
            self.fns[dev.id] = fn
            route = self.routes[dev.id]
            fixed = expected_line(self.layout.topology.machine, route.link)
            if fn.msi:
                failures.append(f"{dev.id}: uses MSI/MSI-X although vectors=0")
            if fixed is not None:
                self.expected[dev.id] = fixed
                if fn.irq != fixed:
                    failures.append(
                        f"{dev.id} at {'/'.join(path)}: guest routed INT#x to IRQ {fn.irq}, "
                        f"model says {route.link_name} -> IRQ {fixed} "
                        f"(pins device->root {route.pins})")
            else:
                choices = self._link_choices().get(route.link, ())
                if fn.irq not in choices:
                    failures.append(
                        f"{dev.id} at {'/'.join(path)}: guest routed INT#x to IRQ {fn.irq}, "
                        f"not one of the interrupts the DSDT offers for LNK"
                        f"{LINK_NAMES[route.link]} (model: {route.link_name}, pins "
                        f"device->root {route.pins}): {list(choices)}")
            if dev.kind == "net":
                setup.append(f"ip link set {fn.net} up && "
                             f"ip addr replace {dev.guest_ip}/24 dev {fn.net}")
        if setup:
            self.guest.succeed(" && ".join(setup))
        return failures + self._separate_pairs()

    def _separate_pairs(self) -> list[str]:
        """pc: read PIIX's PIRQ steering and give every link that shares an IRQ with
        a link the stress uses an IRQ of its own (steering.py); what cannot be."""
        where = machine_facts(self.layout.topology.machine).pirq_steering
        if where is None:
            return []
        bdf, offset = where
        register = int(self.guest.succeed(f"setpci -s {bdf} {offset:x}.L").strip(), 16)
        stress = {fn.virtio for fn in self.fns.values() if fn.virtio}
        others = {}
        for irq, (_, _, actions) in parse_proc_interrupts(
                self.guest.succeed("cat /proc/interrupts")).items():
            names = [a.strip() for a in actions.split(",") if a.strip() not in stress]
            if any(names):
                others[irq] = ", ".join(n for n in names if n)
        plan = plan_separation(parse_steering(register), {r.link for r in self.routes.values()},
                               self._link_choices(), others)
        for link, irq in plan.moves.items():
            self.guest.succeed(f"setpci -s {bdf} {offset + link:x}.b={irq:02x}")
        self.steering = plan.steering
        return list(plan.unseparated)

    def _link_choices(self) -> dict[int, tuple[int, ...]]:
        """{PIRQ link index: the interrupts its _PRS offers} from the guest's DSDT
        (pc: LNKA-LNKD), fetched and decompiled once."""
        if self._choices is None:
            links = {link.name: link for link in pci_interrupt_links(self.guest)}
            self._choices = {}
            for index, letter in enumerate(LINK_NAMES[:4]):
                link = links.get(f"LNK{letter}")
                prs = [d for d in (link.descriptors if link else ()) if d.where == "_PRS"]
                self._choices[index] = tuple(sorted({i for d in prs for i in d.interrupts}))
        return self._choices

    def _qemu_pins(self) -> dict[int, int]:
        return parse_info_irq(self.guest.qmp.hmp("info irq"))

    def _line_counts(self) -> dict[int, int]:
        return {k: v[0] for k, v in
                parse_proc_interrupts(self.guest.succeed("cat /proc/interrupts")).items()}

    def probe(self, device_id: str) -> ProbeResult:
        """A little I/O on one device alone; what counted it, guest and QEMU side."""
        dev, fn = self.layout.device(device_id), self.fns[device_id]
        if dev.kind == "blk":
            cmd = f"dd if=/dev/{fn.block} of=/dev/null bs=4096 count=64 iflag=direct"
        else:
            cmd = f"timeout 30 nc {dev.host_ip} {self.server.port} | md5sum"
        q0, g0 = self._qemu_pins(), self._line_counts()
        error = None
        try:
            self.guest.succeed(cmd, timeout=60)
        except HarnessError as exc:  # an interrupt that went to another line never completes
            error = exc.message
        q1 = self._qemu_pins()
        try:
            g1 = self._line_counts()
        except HarnessError:
            g1 = g0
        return ProbeResult(device_id, g1.get(fn.irq, 0) - g0.get(fn.irq, 0),
                           counter_delta(q0, q1), error)

    def check_probe(self, probe: ProbeResult) -> list[str]:
        """The line of the device counted, and QEMU's IO-APIC pin is the model's
        (pc: one of the link's _PRS choices, the guest's IRQ, and the same pin as
        every other device on the link)."""
        failures = []
        fn, route = self.fns[probe.device], self.routes[probe.device]
        if probe.error is not None:
            failures.append(f"{probe.device}: its I/O did not complete: {probe.error}")
        if probe.guest_delta <= 0:
            failures.append(f"{probe.device}: its line IRQ {fn.irq} did "
                            "not count any interrupt while it alone did I/O")
        # Pins 0-15 other than PCI-routable lines carry the timer/serial/RTC edges.
        pci_pins = {p for p in probe.qemu_pins if p >= 16 or p in (5, 9, 10, 11)}
        if probe.device not in self.expected:  # pc: the hardware says which line
            if len(pci_pins) != 1:
                return [*failures, (
                    f"{probe.device}: QEMU's IO-APIC counted interrupts on pins "
                    f"{sorted(pci_pins)} ({probe.qemu_pins}) while it alone did I/O; "
                    f"expected exactly one, the line of {route.link_name}")]
            pin = next(iter(pci_pins))
            wrong_link = (link_mismatch(probe.device, route.link, pin, self.steering)
                          if self.steering is not None else None)
            if wrong_link is not None:
                failures.append(wrong_link)
            choices = self._link_choices().get(route.link, ())
            if pin not in choices:
                failures.append(f"{probe.device}: QEMU delivered its INT#x on IO-APIC pin "
                                f"{pin}, not one of the DSDT's _PRS interrupts for LNK"
                                f"{LINK_NAMES[route.link]}: {list(choices)}")
            if fn.irq != pin:
                failures.append(f"{probe.device}: the guest handles its INT#x as IRQ "
                                f"{fn.irq}, QEMU delivered it on IO-APIC pin {pin}")
            same_link = {self.expected[d] for d, r in self.routes.items()
                         if r.link == route.link and d in self.expected}
            if same_link and same_link != {pin}:
                failures.append(f"{probe.device}: {route.link_name} arrived on pin {pin}, "
                                f"other devices on the link on {sorted(same_link)}")
            self.expected[probe.device] = pin
            return failures
        want = self.expected[probe.device]
        if pci_pins != {want}:
            failures.append(f"{probe.device}: QEMU's IO-APIC counted interrupts on pins "
                            f"{sorted(pci_pins)} ({probe.qemu_pins}) while it alone did I/O; "
                            f"the model says {self.routes[probe.device].link_name} -> pin {want}")
        return failures

    # ---- load --------------------------------------------------------------
    def load(self, seconds: int, only: Sequence[str] | None = None) -> LoadResult:
        """Concurrent verified I/O on the chosen devices for `seconds` (guest clock)."""
        chosen = [d for d in self.layout.devices if only is None or d.id in only]
        fns = [self.fns[d.id] for d in chosen]
        loops = "".join(_disk_loop(d, self.fns[d.id], self.disk_bytes) if d.kind == "blk"
                        else _net_loop(d, self.server.port, self.server.md5) for d in chosen)
        counters = _counters_script(fns)
        script = (f"mkdir -p /tmp/intx; rm -f /tmp/intx/*.res\n"
                  f"echo '@@ before'; {counters}\n"
                  f"t0=$(cut -d' ' -f1 /proc/uptime); end=$(( ${{t0%.*}} + {seconds} ))\n"
                  f"{loops}wait\n"
                  f"t1=$(cut -d' ' -f1 /proc/uptime)\n"
                  f"echo '@@ after'; {counters}\n"
                  f"echo \"@@ time $t0 $t1\"; cat /tmp/intx/*.res\n")
        q0 = self._qemu_pins()
        out = self.guest.succeed(f"sh -c {shlex.quote(script)}", timeout=seconds + 120)
        q1 = self._qemu_pins()
        before, _, rest = out.partition("@@ after")
        after, _, tail = rest.partition("@@ time")
        t0, t1 = (float(x) for x in tail.split()[:2])
        g0 = {k: v[0] for k, v in parse_proc_interrupts(before).items()}
        g1 = {k: v[0] for k, v in parse_proc_interrupts(after).items()}
        io0, io1 = _io_counts(before), _io_counts(after)
        results = {p[1]: p[2:] for p in (line.split() for line in tail.splitlines())
                   if len(p) == 5 and p[0] == "res"}
        loads, failures = [], []
        for dev in chosen:
            fn = self.fns[dev.id]
            name = fn.block if dev.kind == "blk" else fn.net
            assert name is not None
            if dev.id not in results:
                failures.append(f"{dev.id}: its load loop reported nothing")
                continue
            rounds, bad, errors = (int(x) for x in results[dev.id])
            load = DeviceLoad(dev.id, dev.kind, dev.depth, fn.irq, io1.get(name, 0) -
                              io0.get(name, 0), (rounds - bad - errors) * CHUNK, rounds,
                              bad, errors)
            loads.append(load)
            if bad or errors:
                failures.append(f"{dev.id}: {bad} of {rounds} chunks corrupted, {errors} "
                                "transfers failed")
            if rounds == 0 or load.ops == 0:
                failures.append(f"{dev.id}: no I/O completed in {seconds} s")
        line_deltas = {irq: g1.get(irq, 0) - g0.get(irq, 0) for irq in {f.irq for f in fns}}
        for irq, delta in line_deltas.items():
            if delta <= 0:
                failures.append(f"IRQ {irq}: /proc/interrupts did not grow under load")
        return LoadResult(t1 - t0, tuple(loads), line_deltas, counter_delta(q0, q1), tuple(failures))

    def trouble(self) -> list[str]:
        """Kernel complaints (nobody cared, Disabling IRQ, I/O error...) from the
        console log, and from dmesg for what happened before the guest was up."""
        lines = [f"dmesg: {t}" for t in kernel_trouble(self.guest.succeed("dmesg"))]
        return lines + [f"console: {t}" for t in self.guest.console.trouble()]


def run_stress(guest: RunningGuest, layout: StressLayout, server: PayloadServer,
               seconds: int) -> dict[str, Any]:
    """discover -> probe every device alone -> concurrent load -> kernel trouble.

    Returns one JSON-able report: `ok`, `failures` (always a list), per-device
    interrupt and I/O rates, the routing model against both views.
    """
    stress = IntxStress(guest, layout, server)
    failures = stress.discover()
    probes = {}
    for dev in layout.devices:
        probe = stress.probe(dev.id)
        probes[dev.id] = probe
        failures += stress.check_probe(probe)
    result = stress.load(seconds)
    failures += list(result.failures)
    failures += stress.trouble()
    devices = []
    for load in result.devices:
        route = stress.routes[load.device]
        entry = load.as_dict(result.seconds, result.line_rate(load.irq))
        entry.update(path="/".join(stress.paths[load.device]), pins=list(route.pins),
                     link=route.link_name, expected_irq=stress.expected[load.device],
                     probe_line_delta=probes[load.device].guest_delta,
                     probe_qemu_pins={str(k): v for k, v in probes[load.device].qemu_pins.items()},
                     shared_with=[d.device for d in result.devices
                                  if d.irq == load.irq and d.device != load.device])
        devices.append(entry)
    return {"ok": not failures, "machine": layout.topology.machine,
            "devices_count": len(layout.devices), "depths": [d.depth for d in layout.devices],
            "link": f"PIRQ{LINK_NAMES[layout.link]}", "seconds": round(result.seconds, 2),
            "interrupts_per_s": round(result.interrupts_per_s, 1),
            "io_per_s": round(result.io_per_s, 1),
            "lines": {str(k): v for k, v in result.line_deltas.items()},
            "qemu_ioapic_pins": {str(k): v for k, v in result.qemu_pin_deltas.items()},
            "devices": devices, "failures": failures}
