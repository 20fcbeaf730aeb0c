"""Record real QEMU data for the unit tests (development tool, not run by pytest).

    .venv/bin/python tests/unit/data/record_qemu.py topologies/q35-mixed.toml OUT.json

Renders the topology, starts QEMU under TCG with no guest (SeaBIOS numbers the
buses and stops at "no bootable device"), and saves query-pci, the QOM hotplug
info and every function's 256 config bytes (read with HMP: xp on the q35
MMCONFIG window, port 0xcf8/0xcfc on pc).  With --paused (and
--where=DRIVER,...) it instead records where.py's answers and every QMP exchange
they needed (`qmp_log`), for replay in test_where_*.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.scenarios.where import where
from harness.topology.load import load_topology
from harness.topology.render import render
from harness.views import qom_hotplug_info, qom_pci_buses


class Recorder:
    """A QMP client with the harness `.execute` shape that logs every exchange."""

    def __init__(self, sock: str) -> None:
        self.q = QEMUMonitorProtocol(sock)
        self.q.connect()
        self.log: list[dict[str, Any]] = []

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        reply = self.q.cmd_raw(command, arguments)
        if "error" in reply:
            self.log.append({"execute": command, "arguments": arguments,
                             "error": reply["error"]})
            raise RuntimeError(reply["error"]["desc"])
        self.log.append({"execute": command, "arguments": arguments, "return": reply["return"]})
        return reply["return"]


def hmp(q: Recorder, line: str) -> str:
    out: str = q.execute("human-monitor-command", {"command-line": line})
    return out


def read_config(q: Recorder, q35: bool, bus: int, devfn: int) -> str:
    words: list[int] = []
    if q35:
        base = 0xB0000000 + (bus << 20) + (devfn << 12)
        for line in hmp(q, f"xp /64xw {base:#x}").splitlines():
            words += [int(w, 16) for w in line.split(":")[1].split()]
    else:
        for off in range(0, 256, 4):
            hmp(q, f"o/w 0xcf8 {0x80000000 | bus << 16 | devfn << 8 | off:#x}")
            words.append(int(hmp(q, "i/w 0xcfc").split("=")[1], 16))
    return b"".join(w.to_bytes(4, "little") for w in words).hex()


def walk(devs: list[dict[str, Any]], acc: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for d in devs:
        acc.append(d)
        if "pci_bridge" in d:
            walk(d["pci_bridge"].get("devices", []), acc)
    return acc


def main() -> None:
    topo_path, out_path = sys.argv[1], sys.argv[2]
    paused = "--paused" in sys.argv
    topo = load_topology(topo_path)
    tmp = Path(tempfile.mkdtemp(prefix="rec", dir="/tmp"))
    rendered = render(topo, scratch_dir=tmp, mgmt_mac="52:54:00:12:34:56")
    for disk in rendered.scratch_disks:
        subprocess.run(["qemu-img", "create", "-q", "-f", disk.format, str(disk.path),
                        str(disk.size_bytes)], check=True)
    sock = str(tmp / "qmp.sock")
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-display", "none",
            "-qmp", f"unix:{sock},server=on,wait=off", *(["-S"] if paused else []),
            *rendered.argv]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"QEMU failed: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)
        q = Recorder(sock)
        result: dict[str, Any] = {"topology": topo_path, "argv": argv}
        if paused:
            q.log.clear()
            answers = {}
            for arg in sys.argv[3:]:
                if arg.startswith("--where="):
                    for drv in arg.split("=", 1)[1].split(","):
                        for hp in (False, True):
                            ans = where(q, drv, hotplug_only=hp)
                            answers[f"{drv}{' hotplug' if hp else ''}"] = ans.to_dict()
            unique = {json.dumps([e["execute"], e["arguments"]], sort_keys=True): e
                      for e in q.log}
            result["qmp_log"] = list(unique.values())
            result["where"] = answers
        else:
            time.sleep(4)  # SeaBIOS enumerates and numbers the buses
            qp = q.execute("query-pci")
            result["query-pci"] = qp
            result["qom"] = qom_hotplug_info(qom_pci_buses(q))
            result["config"] = {
                f"{d['bus']:02x}:{d['slot']:02x}.{d['function']}":
                    read_config(q, topo.kind == "q35", d["bus"], d["slot"] << 3 | d["function"])
                for d in walk(qp[0]["devices"], [])}
        q.execute("quit")
        try:
            q.q.close()
        except EOFError:  # QEMU closed the socket first (known qemu.qmp behaviour)
            pass
        Path(out_path).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    finally:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
