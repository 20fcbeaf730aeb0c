"""Model, QEMU and guest agree on every example topology (real guests, TCG).

Each topology boots once per module (`views_of`): the three views are taken
and the guest shut down; the tests then read the views.  The seed-item tests
check their facts against the topology data and the guest view directly, not
through the model, so a wrong model rule cannot make them pass.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.factory import GuestFactory
from harness.report.collect import note_machine
from harness.scenarios.threeview import ThreeViews, collect_views
from harness.topology import Topology, default_topology, load_topology
from harness.views import PciFunction
from harness.views.pciview import Bar

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY_FILES = sorted((ROOT / "topologies").glob("*.toml"))
ViewsOf = Callable[[str], tuple[Topology, ThreeViews, list[str]]]


def topology_named(name: str) -> Topology:
    """"default-pc" / "default-q35", or a file stem under topologies/."""
    if name.startswith("default-"):
        return default_topology(name.removeprefix("default-"))
    return load_topology(ROOT / "topologies" / f"{name}.toml")


@pytest.fixture(scope="module")
def views_of(harness_factory: GuestFactory,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewsOf]:
    """Boot each named topology once per module: (topology, views, console trouble)."""
    cache: dict[str, tuple[Topology, ThreeViews, list[str]]] = {}
    base = tmp_path_factory.mktemp("compare-guests")

    def get(name: str) -> tuple[Topology, ThreeViews, list[str]]:
        note_machine(topology_named(name).machine)  # booted now or for an earlier test
        if name not in cache:
            topology = topology_named(name)
            with harness_factory.guest(topology, base / name, name=name) as guest:
                views = collect_views(guest)
                assert guest.console is not None
                trouble = guest.console.trouble()
            views.save(base / name)
            cache[name] = (topology, views, trouble)
        return cache[name]

    yield get
    shutil.rmtree(base, ignore_errors=True)


def differences_text(views: ThreeViews) -> str:
    return "\n".join(str(d) for d in views.differences())


def check_clean(views_of: ViewsOf, name: str, artifacts: Path) -> ThreeViews:
    topology, views, trouble = views_of(name)
    views.save(artifacts)  # kept with the test's artifacts when it fails
    assert views.differences() == [], (
        f"{name}: model, QEMU and guest differ:\n{differences_text(views)}")
    # Independent of the model: every topology device is in QEMU's view under its id,
    # and the guest lists exactly the functions QEMU lists.
    ids = {f.id for f in views.qemu.functions}
    assert {d.id for d in topology.devices} <= ids, (sorted(d.id for d in topology.devices),
                                                    sorted(i for i in ids if i))
    assert [f.path for f in views.guest.functions] == [f.path for f in views.qemu.functions]
    assert trouble == [], f"guest console reported trouble: {trouble}"
    return views


@pytest.mark.smoke
def test_default_q35_compares_clean(views_of: ViewsOf, artifacts: Path) -> None:
    views = check_clean(views_of, "default-q35", artifacts)
    assert views.function_count >= 6  # mch, disk1, mgmt, 1f.0, 1f.2, 1f.3


def test_default_pc_compares_clean(views_of: ViewsOf, artifacts: Path) -> None:
    check_clean(views_of, "default-pc", artifacts)


@pytest.mark.parametrize("name", [p.stem for p in TOPOLOGY_FILES])
def test_topology_compares_clean(views_of: ViewsOf, artifacts: Path, name: str) -> None:
    check_clean(views_of, name, artifacts)


def test_the_example_topologies_cover_the_issue() -> None:
    """The acceptance list, checked on the data: both machines, bridges three deep,
    root port -> pcie-pci-bridge -> pci-bridge, multifunction, virtio net/blk/scsi,
    AHCI, e1000e, several x-speed/x-width values."""
    topologies = [topology_named(p.stem) for p in TOPOLOGY_FILES]
    assert len(topologies) >= 6 and {t.kind for t in topologies} == {"pc", "q35"}
    drivers = {d.driver for t in topologies for d in t.devices}
    assert {"virtio-net-pci", "virtio-blk-pci", "virtio-scsi-pci", "ich9-ahci",
            "e1000e"} <= drivers

    def depth(t: Topology, dev_id: str, driver: str) -> int:
        """How many DRIVER devices are stacked from dev_id up to the root bus."""
        dev = t.device(dev_id)
        if dev.driver != driver:
            return 0
        on_root = dev.bus is None or dev.bus == t.root_bus
        return 1 + (0 if on_root else depth(t, dev.bus or "", driver))

    assert any(depth(t, d.id, "pci-bridge") >= 3 for t in topologies for d in t.devices)
    assert any(d.driver == "pci-bridge" and t.device(d.bus or "").driver == "pcie-pci-bridge"
               and t.device(t.device(d.bus or "").bus or "").driver == "pcie-root-port"
               for t in topologies for d in t.devices if d.bus)
    assert any(d.flag("multifunction") for t in topologies for d in t.devices)
    speeds = {(d.prop("x-speed"), d.prop("x-width")) for t in topologies for d in t.devices
              if d.driver == "pcie-root-port" and d.prop("x-speed") is not None}
    assert len(speeds) >= 3, speeds


def _by_id(views: ThreeViews) -> dict[str, PciFunction]:
    """Guest functions keyed by topology id (QEMU's view maps path -> id)."""
    guest = views.guest.by_path()
    return {f.id: guest[f.path] for f in views.qemu.functions if f.id}


@pytest.mark.seed("virtio-pcie-memory-bars")
def test_virtio_behind_a_port_is_modern_only(views_of: ViewsOf, artifacts: Path) -> None:
    """Behind a PCIe port virtio has no I/O BAR, a 64-bit prefetchable memory BAR,
    the modern id 0x1040 + type and a PCIe capability; on pcie.0 it stays
    transitional (I/O BAR0, id 0x1000 + n, no PCIe capability)."""
    topology, views, _ = views_of("q35-mixed")
    views.save(artifacts)
    funcs = _by_id(views)
    checked = 0
    for dev in topology.devices:
        if not dev.driver.startswith("virtio-"):
            continue
        f = funcs[dev.id]
        bars = {b.index: b for b in f.bars or ()}
        behind_port = dev.bus is not None and topology.device(dev.bus).driver == "pcie-root-port"
        io_bars = [b for b in bars.values() if b.kind == "io"]
        if behind_port:
            assert f.device is not None and f.device >= 0x1040, (dev.id, hex(f.device or 0))
            assert io_bars == [], (dev.id, io_bars)
            assert "pcie" in (f.capabilities or ()), (dev.id, f.capabilities)
            assert bars[4] == Bar(4, "mem", 16384, True, True, bars[4].address), (dev.id, bars)
        else:
            assert f.device is not None and 0x1000 <= f.device < 0x1040, (dev.id, f.device)
            assert bars[0].kind == "io", (dev.id, bars)
            assert "pcie" not in (f.capabilities or ()), (dev.id, f.capabilities)
        assert f.driver == "virtio-pci", (dev.id, f.driver)
        checked += 1
    assert checked >= 3


@pytest.mark.seed("link-speed-width")
def test_port_links_follow_x_speed_and_x_width(views_of: ViewsOf, artifacts: Path) -> None:
    """LnkCap of every root port is its x-speed/x-width (16 GT/s x32 when unset);
    LnkSta is the endpoint's 2.5 GT/s x1 when occupied, the port's own maximum
    when empty; endpoints below report 2.5 GT/s x1."""
    speeds = {"2_5": 2.5, "5": 5.0, "8": 8.0, "16": 16.0}
    topology, views, _ = views_of("q35-link-speeds")
    views.save(artifacts)
    funcs = _by_id(views)
    children = {d.bus: d for d in topology.devices if d.bus}
    seen = set()
    for port in (d for d in topology.devices if d.driver == "pcie-root-port"):
        speed = speeds[str(port.prop("x-speed") or "16")]
        width = int(port.prop("x-width") or 32)
        f = funcs[port.id]
        assert (f.link_cap_speed, f.link_cap_width) == (speed, width), (port.id, f)
        child = children.get(port.id)
        if child is None:
            assert (f.link_speed, f.link_width) == (speed, width), (port.id, f)
        else:
            c = funcs[child.id]
            assert (c.link_cap_speed, c.link_cap_width) == (2.5, 1), (child.id, c)
            assert (f.link_speed, f.link_width) == (2.5, 1), (port.id, f)
        seen.add((speed, width))
    assert len(seen) >= 4, seen
