"""Record a booted guest's views for the unit tests (development tool, not run by pytest).

    .venv/bin/python tests/unit/data/record_guest.py topologies/q35-mixed.toml [q35 | pc ...]

Boots each topology (a file, or "pc"/"q35" for the default one) under TCG, runs
GUEST_DUMP_SCRIPT over SSH and collects query-pci plus the QOM hotplug info,
and writes tests/unit/data/guest/<name>.json: {"topology", "query-pci", "qom",
"guest_dump"}.  test_views_guest.py replays them: the parsers and the model must
agree with what a real Debian 6.1 guest and QEMU 7.2 said.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from harness.factory import GuestFactory, RunSettings
from harness.scenarios.threeview import collect_guest_view
from harness.topology import default_topology, load_topology
from harness.views import qom_hotplug_info, qom_pci_buses

OUT = Path(__file__).parent / "guest"
ROOT = Path(__file__).parents[3]


def main(names: list[str]) -> None:
    factory = GuestFactory(RunSettings(accel="tcg"))
    for name in names:
        topo = default_topology(name) if name in ("pc", "q35") else load_topology(name)
        stem = f"default-{name}" if name in ("pc", "q35") else Path(name).stem
        with tempfile.TemporaryDirectory() as tmp, factory.guest(topo, Path(tmp)) as guest:
            assert guest.qmp is not None
            _, dump = collect_guest_view(guest, lspci=False)
            record = {
                "topology": name if name in ("pc", "q35")
                else str(Path(name).resolve().relative_to(ROOT)),
                "qemu_version": factory.binary.version,
                "firmware": factory.settings.firmware,
                "query-pci": guest.qmp.execute("query-pci"),
                "qom": qom_hotplug_info(qom_pci_buses(guest.qmp)),
                "guest_dump": dump,
            }
        OUT.mkdir(exist_ok=True)
        (OUT / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"recorded {OUT / stem}.json", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
