"""Record the three views around one real hotplug (development tool, not run by pytest).

    .venv/bin/python tests/unit/data/record_hotplug.py

Boots a q35 guest with two empty root ports, takes the three views, plugs a
virtio-blk-pci into rp1 slot 0, takes them again, unplugs it and takes them a
third time; writes tests/unit/data/hotplug/q35-rp1.json: {"topology", "spec",
"path", "before", "plugged", "unplugged"}.  test_hotplug_stepcheck.py replays
it: the step check must pass on what a real QEMU 7.2 and guest did, and must
fail when a view is changed to miss what the model predicts.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from harness.factory import GuestFactory, RunSettings
from harness.scenarios.hotplug.plug import Hotplugger, PlugSpec
from harness.scenarios.threeview import collect_views
from harness.topology import topology_from_dict

OUT = Path(__file__).parent / "hotplug" / "q35-rp1.json"
TOPOLOGY = {"machine": "q35", "device": [
    {"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"},
    {"id": "rp2", "driver": "pcie-root-port", "addr": "3.0"},
]}
SPEC = PlugSpec("hd1", "virtio-blk-pci", "rp1", 0)


def main() -> None:
    factory = GuestFactory(RunSettings(accel="tcg", timeout_multiplier=4))
    with tempfile.TemporaryDirectory() as tmp, \
            factory.guest(topology_from_dict(TOPOLOGY), Path(tmp) / "guest") as guest:
        hp = Hotplugger(guest, Path(tmp) / "hotplug")
        before = collect_views(guest, hp.topology, lspci=False)
        plugged = hp.plug(SPEC)
        after = collect_views(guest, hp.topology, lspci=False)
        hp.unplug(SPEC.id)
        gone = collect_views(guest, hp.topology, lspci=False)
    OUT.write_text(json.dumps({
        "topology": TOPOLOGY, "spec": asdict(SPEC), "path": list(plugged.path),
        "before": before.to_dict(), "plugged": after.to_dict(), "unplugged": gone.to_dict(),
    }, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
