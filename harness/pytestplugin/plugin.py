"""pytest plugin (entry point `pytest11`): options, markers, artifacts, guests.

Fixtures
- `harness_factory` (session, per xdist worker): the GuestFactory; resolves
  the QEMU binary, guest image (built once under a file lock) and accelerator
  (KVM probe verdict cached per host boot) on first use only, so unit tests
  never touch QEMU.
- `artifacts` (function): this test's artifact directory; kept when the test
  fails (its path is added to the report) or with --keep-artifacts.
- `machine` (function): "q35" unless a test parametrizes it.
- `topology` (function): the default topology of `machine`; override it in a
  test module or parametrize it.
- `guest` (function): a booted guest of `topology`.
- `make_guest` (function): boot more guests in one test; all are shut down
  at teardown.

Everything a test file needs comes from here, so a test in any directory works
with no conftest of ours: markers, options, the `pci_harness_artifacts_dir`
ini key, and assertion rewriting of the harness's comparison helpers.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.errors import HarnessError
from harness.options import RunSettings, add_shared_options, run_settings
from harness.paths import cache_root
from harness.pytestplugin.artifacts import settle_artifacts
from harness.pytestplugin.seed_index import SEED_ITEMS
from harness.report.figures import record_figure

if TYPE_CHECKING:  # the QEMU side loads only when a test asks for a guest
    from harness.factory import GuestFactory
    from harness.guest.running import Guest
    from harness.topology import Topology

# Before any test module imports them: their asserts show both sides.
pytest.register_assert_rewrite("harness.views")

_OUTCOME = pytest.StashKey[dict[str, pytest.TestReport]]()
ARTIFACTS_INI = "pci_harness_artifacts_dir"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pci-harness")
    add_shared_options(group.addoption)
    group.addoption("--artifacts-dir", metavar="DIR", default=None,
                    help=f"where per-test artifact directories go (default: the {ARTIFACTS_INI} "
                         "ini key, else artifacts/<run> under the rootdir when run from "
                         "inside it, else under the current directory)")
    group.addoption("--explore-examples", type=int, default=4, metavar="N",
                    help="tests/pci/test_explore.py: drawn machines, one test each (default 4)")
    group.addoption("--explore-seed", type=int, default=1, metavar="S",
                    help="tests/pci/test_explore.py: the seed the machines are drawn from")
    group.addoption("--explore-minutes", type=float, default=None, metavar="M",
                    help="tests/pci/test_explore.py: stop booting drawn machines after M "
                         "minutes (the rest skip); with it --explore-examples is a maximum")
    parser.addini(ARTIFACTS_INI, "directory for per-test artifact directories (relative to "
                  "the rootdir); --artifacts-dir overrides it", default="")


def artifact_base(config: pytest.Config, run: str) -> Path:
    """Where this run's artifact directories go: never into the installed package.

    --artifacts-dir, else the ini key, else `artifacts/<run>` under the rootdir
    when pytest runs from inside it (a checkout: unchanged), else under the
    current directory (a rootdir elsewhere, e.g. an installed suite).
    """
    given = config.getoption("--artifacts-dir")
    if given:
        return Path(given).absolute()
    ini = str(config.getini(ARTIFACTS_INI) or "")
    if ini:
        return (config.rootpath / ini) / run
    here = config.invocation_params.dir
    root = config.rootpath
    base = root if here == root or root in here.parents else here
    return base / "artifacts" / run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smoke: the real-QEMU subset bin/test runs")
    config.addinivalue_line("markers", "seed(item_id): the KVM PCI TODO item this test checks")
    config.addinivalue_line("markers", "qemu: the test starts real QEMU")
    config.addinivalue_line("markers", "known_gap(gap_id, raises=AssertionError): a strict xfail "
                            "on the QEMU versions the gap holds for (harness/qemu/known.py)")
    # A failure whose traceback pytest cannot format still gets a report
    # (CPython 3.11.2's ast race killed xdist workers): harness/pytestplugin/failure_report.py.
    from harness.pytestplugin.failure_report import FailureReportGuard

    if not config.pluginmanager.has_plugin("pci-harness-failure-report"):
        config.pluginmanager.register(FailureReportGuard(), "pci-harness-failure-report")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        base = Path(workerinput["pci_harness_artifacts"])
    else:
        base = artifact_base(config, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    config.stash[_ARTIFACT_BASE] = base
    try:  # a bad shared option or an unusable cache is a usage error before any test runs
        config.stash[_SETTINGS] = settings_from_config(config)
        cache_root()
    except HarnessError as exc:
        raise pytest.UsageError(exc.describe()) from None


_ARTIFACT_BASE = pytest.StashKey[Path]()
_SETTINGS = pytest.StashKey[RunSettings]()


@pytest.hookimpl(optionalhook=True)  # `-p no:xdist` must not make it an unknown hook
def pytest_configure_node(node: Any) -> None:  # xdist hook, controller side
    node.workerinput["pci_harness_artifacts"] = str(node.config.stash[_ARTIFACT_BASE])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in item.iter_markers("seed"):
            if not mark.args or mark.args[0] not in SEED_ITEMS:
                raise pytest.UsageError(
                    f"{item.nodeid}: unknown seed item {mark.args[:1]}; known ids: "
                    f"{', '.join(SEED_ITEMS)}")
            item.user_properties.append(("seed", mark.args[0]))
    _mark_known_gaps(config, [i for i in items if i.get_closest_marker("known_gap")])


def _mark_known_gaps(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Strict xfails for the known gaps that hold on the QEMU under test (its version
    from the binary the run's guests use: the same find_qemu as the factory)."""
    if not items:
        return
    from harness.pytestplugin.marking import mark_known_failures
    from harness.qemu.binary import find_qemu
    from harness.qemu.firmware import resolve_firmware
    from harness.report.collect import machine_at_collection

    settings = config.stash[_SETTINGS]
    try:
        binary = find_qemu(settings.qemu_binary)  # as GuestFactory does
        firmware = resolve_firmware(settings.firmware, binary.path, binary.given)
    except HarnessError:
        return  # no QEMU to judge by: harness_factory says why at the first guest

    def machine_of(item: pytest.Item) -> str | None:
        machine = machine_at_collection(item)
        return binary.resolve_machine(machine) if machine else None

    try:
        mark_known_failures(items, binary.version, machine_of,
                            (firmware.family, firmware.version))
    except HarnessError as exc:
        raise pytest.UsageError(exc.describe()) from None


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outside pytest's xfail handling
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    from harness.pytestplugin.marking import judge

    judge(item, call, report)  # a known gap's failure with another signature is a FAIL
    item.stash.setdefault(_OUTCOME, {})[report.when] = report
    return report


def settings_from_config(config: pytest.Config) -> RunSettings:
    """The run's settings, built by the same builder as the CLI's (harness.options)."""
    return run_settings(config.getoption)


@pytest.fixture(scope="session")
def harness_settings(pytestconfig: pytest.Config) -> RunSettings:
    return pytestconfig.stash[_SETTINGS]


@pytest.fixture(scope="session")
def harness_factory(harness_settings: RunSettings, pytestconfig: pytest.Config) -> GuestFactory:
    from harness.factory import GuestFactory

    try:
        factory = GuestFactory(harness_settings, announce_accel=False)
    except HarnessError as exc:
        pytest.exit(f"pci-harness cannot start guests: {exc.describe()}", returncode=2)
    # Every worker writes the same line; the controller shows it once.
    base: Path = pytestconfig.stash[_ARTIFACT_BASE]
    base.mkdir(parents=True, exist_ok=True)
    (base / "accelerator.txt").write_text(
        f"{factory.accel.name}: {factory.accel.reason}; QEMU {factory.binary.version} "
        f"({factory.binary.path})\n")
    return factory


def _safe_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid)[-150:]


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Iterator[Path]:
    base: Path = request.config.stash[_ARTIFACT_BASE]
    path = base / _safe_name(request.node.nodeid)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    yield path
    reports = request.node.stash.get(_OUTCOME, {})
    failed = any(r.failed for r in reports.values())
    if failed:
        request.node.user_properties.append(("artifacts", str(path)))
    settle_artifacts(path, ok=not failed, keep=request.config.getoption("--keep-artifacts"))


@pytest.fixture
def machine() -> str:
    return "q35"


@pytest.fixture
def topology(machine: str) -> Topology:
    from harness.topology import default_topology

    return default_topology(machine)


@pytest.fixture
def make_guest(harness_factory: GuestFactory, artifacts: Path,
               request: pytest.FixtureRequest) -> Iterator[Callable[..., Guest]]:
    """`make_guest(topology, name="guest", **plan_overrides)` -> booted Guest."""
    started: list[Guest] = []

    def make(topology: Topology, name: str = "guest", **overrides: Any) -> Guest:
        # Recorded before the boot, so a guest that never boots still names its machine.
        request.node.user_properties.append((f"machine:{name}", topology.machine))
        guest = harness_factory.launch(topology, artifacts / name, name=name, **overrides)
        started.append(guest)
        request.node.user_properties.append((f"boot_s:{name}", round(guest.timings.ssh_connected, 3)))
        record_figure(request, "boot_restored_s" if guest.timings.restored else "boot_cold_s",
                      guest.timings.ssh_connected)
        return guest

    yield make
    for guest in reversed(started):
        guest.shutdown()


@pytest.fixture
def guest(make_guest: Callable[..., Guest], topology: Topology) -> Guest:
    return make_guest(topology)


@pytest.fixture
def migrate(harness_factory: GuestFactory, artifacts: Path) -> Iterator[Callable[..., Guest]]:
    """`migrate(source, qemu=None, connect=None)` -> the running destination.

    Starts a destination with the source's devices, disks and MAC (on another QEMU
    binary with `qemu=PATH`; pin the machine type first), migrates the source into
    it and waits until the guest answers there.  The fixture owns every
    destination and shuts it down at teardown; the source stays make_guest's.
    A failed hop raises HopFailure, whose `kind` names what happened
    (destination-load-failed, qemu-died, ssh-dead, ...).
    """
    from harness.qemu.binary import find_qemu
    from harness.scenarios.migration.hop import destination_plan, start_destination
    from harness.scenarios.migration.hop import migrate as migrate_hop

    started: list[Guest] = []

    def run(source: Guest, qemu: str | Path | None = None,
            connect: bool | None = None) -> Guest:
        hop = len(started) + 1
        binary = find_qemu(qemu) if qemu is not None else None
        destination = start_destination(source, artifacts / f"dst{hop}", f"dst{hop}", hop,
                                        plan=destination_plan(source, binary))
        started.append(destination)
        migrate_hop(source, destination, hop, connect=connect)
        return destination

    yield run
    for destination in reversed(started):
        destination.shutdown()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        for key, value in report.user_properties:
            if key == "artifacts":
                report.sections.append(("pci-harness artifacts", str(value)))
            elif key == "known_gap_outside":
                report.sections.append(("pci-harness known gap", str(value)))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is not None:
        return
    base: Path = config.stash[_ARTIFACT_BASE]
    accel = base / "accelerator.txt"
    if accel.exists():
        terminalreporter.write_line(f"pci-harness accelerator {accel.read_text().strip()}")
        accel.unlink()
    if base.exists() and any(base.iterdir()):
        terminalreporter.write_line(f"pci-harness artifacts: {base}")
    elif base.exists():
        base.rmdir()
