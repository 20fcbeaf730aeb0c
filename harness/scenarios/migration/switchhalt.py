"""A device event as the switch point: `--switch-at io-error:read|write[:DISK]`.

The VM stops with the guest's request still pending in the device, as QEMU's
own ahci-test halts DMA (`/ahci/migrate/dma/halted`): the disk's device has
werror/rerror=stop (LaunchPlan.halt_on_disk_error, rendered by
topology/render.py), and at hop time a blkdebug node that fails the next
read_aio or write_aio once with EIO is put between the disk's format node and
its file (`blockdev-add` + `blockdev-reopen` of the format node: the command
line stays plain, so the destination, which has no blkdebug, retries the
request after `cont`).  The guest's next request of that kind fails, QEMU stops
the VM in runstate `io-error` (the stream carries it: no rewrite needed), the
hop migrates it, and the destination runs on from there; the load's checks
then read every block back.  Measured first by hand on 7.2.22: a 64 KiB dd
halted, migrated, retried on the destination, read back identical, no libata
error in dmesg.
"""

from __future__ import annotations

from typing import Any

from harness.deadline import Deadline
from harness.errors import HarnessError, UserError
from harness.guest.running import Guest
from harness.scenarios.migration.switchpoint import SwitchPoint
from harness.scenarios.migration.watch import HopFailure
from harness.topology.render import node_name

__all__ = ["HALT_SECONDS", "halt_disk", "parse_io_error"]

HALT_SECONDS = 30.0   # for the guest's next request of the kind to fail (TCG seconds)
EIO = 5


def parse_io_error(text: str, disks: tuple[str, ...]) -> SwitchPoint:
    """`io-error:read|write[:DISK]` -> a SwitchPoint naming it (DISK: a loaded disk's
    name, `ahci` or a device id; default the first).  A bad one is a UserError."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[1] not in ("read", "write"):
        raise UserError(f"--switch-at {text!r}: expected io-error:read|write[:DISK]",
                        fix="e.g. --switch-at io-error:write:ahci")
    if not disks:
        raise UserError(f"--switch-at {text}: no disk is loaded, so no request can halt",
                        fix="run a write or mixed load on a disk (--load write)")
    disk = parts[2] if len(parts) == 3 else disks[0]
    if disk not in disks:
        raise UserError(f"--switch-at {text}: {disk!r} is not a loaded disk "
                        f"(loaded: {', '.join(disks)})", fix="name one of them")
    return SwitchPoint(f"io-error:{parts[1]}:{disk}")


def _file_node(guest: Guest, fmt_node: str) -> str:
    assert guest.qmp is not None
    nodes: list[dict[str, Any]] = guest.qmp.execute("query-named-block-nodes", {"flat": True})
    fmt = next((n for n in nodes if n.get("node-name") == fmt_node), None)
    if fmt is None:
        raise HarnessError(f"no block node {fmt_node!r} in {guest.name}")
    for node in nodes:
        if node.get("drv") == "file" and node.get("file") == fmt.get("file"):
            return str(node["node-name"])
    raise HarnessError(f"the file node under {fmt_node!r} in {guest.name} is not listed",
                       tail=repr([(n.get("node-name"), n.get("drv")) for n in nodes]))


def halt_disk(guest: Guest, point: SwitchPoint, hop: int) -> str:
    """Arm the one-shot error on POINT's disk in GUEST and wait until the VM stops
    in io-error.  Returns what stopped."""
    assert guest.qmp is not None
    _, op, disk = point.symbol.split(":")
    fmt_node = node_name(disk)
    qmp = guest.qmp
    debug = f"{disk}.halt{hop}"
    qmp.execute("blockdev-add", {
        "driver": "blkdebug", "node-name": debug, "image": _file_node(guest, fmt_node),
        "inject-error": [{"event": f"{op}_aio", "errno": EIO, "once": True}]})
    qmp.execute("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": fmt_node,
                                                 "file": debug}]})
    deadline = Deadline(HALT_SECONDS, f"hop {hop}: a guest {op} on {disk} to fail")
    event = None
    try:
        event = qmp.wait_event("BLOCK_IO_ERROR", deadline)
    except HarnessError:
        raise HopFailure("switch-point-not-reached", hop,
                         f"{point.spec()}: the guest issued no {op} to {disk} within "
                         f"{deadline.seconds:.0f} s (a read needs --load mixed)",
                         process=guest.name) from None
    status = qmp.execute("query-status")["status"]
    if status != "io-error":
        raise HopFailure("switch-point-not-reached", hop,
                         f"{point.spec()}: the failed {op} left {guest.name} {status!r}, "
                         "not 'io-error' (werror/rerror=stop missing?)", process=guest.name)
    data = event.get("data", {})
    return (f"{data.get('operation')} on {data.get('node-name') or disk} halted "
            f"({data.get('reason')}, action {data.get('action')})")
