"""pytest plugin `-p harness.report.collect`: one result record per test.

Loaded by `pci-harness nightly` (and usable by hand:
`pytest -p harness.report.collect --report-results out.json`).  It works the
same with and without pytest-xdist because it splits its work by where the
facts are:

- on the process that runs the test (an xdist worker, possibly on another
  host), it annotates each TestReport with what only that process knows: the
  machine type of the first guest the test planned (else the one its
  `topology`/`machine` fixtures resolved to), the host name, and for a
  failure the tail of every guest console.log under the test's artifact
  directory (an artifact path on a remote host is no use to the reader);
- on the controller, it folds the setup/call/teardown reports it receives into
  TestResults (harness.report.results) and writes them as JSON at the end,
  with the QEMU binary and version of the run and the workers that ran it.

`--report-machines pc,q35` deselects tests whose machine kind is known at
collection (a `machine` or `topology` parameter, or the default `machine`
fixture, q35) and is not listed; tests without a machine always run.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError
from harness.report.results import REPORT_ATTRIBUTE, TestResult, result_from_reports
from harness.topology import Topology

_ANNOTATION = pytest.StashKey[dict[str, Any]]()
_FAILED = pytest.StashKey[bool]()
_CPU_AT_SETUP = pytest.StashKey[float]()

_CONSOLE_LINES = 40
_CONSOLE_CHARS = 6000
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def cpu_seconds() -> float:
    """User + system CPU of this process and of every child it has reaped (each
    guest's QEMU, a CLI run's whole tree): a test's share is the difference.  On a
    saturated host the wall time of a test says little; this says what it costs."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pci-harness report")
    group.addoption("--report-results", metavar="PATH", default=None,
                    help="write one JSON record per test (outcome, machine, seed item, ...)")
    group.addoption("--report-machines", metavar="KINDS", default=None,
                    help="comma-separated machine kinds to run (pc,q35); others are deselected")
    group.addoption("--report-label", metavar="LABEL", default=None,
                    help="name of this run in the results (default: the QEMU version)")
    group.addoption("--report-only-nodeids", metavar="FILE", default=None,
                    help="run only the tests whose node ids FILE lists, one per line (the "
                         "nightly's re-run of a lost host's tests; xdist refuses test paths)")
    group.addoption("--report-order-by", metavar="FILE", default=None,
                    help="run the longest tests first, by the durations in FILE (a JSON "
                         "object node id -> seconds, from an earlier night)")


def machine_kind_of(machine: str | None) -> str | None:
    """"pc"/"q35" for a machine type, the name itself when unknown, None for None."""
    if not machine:
        return None
    from harness.topology.data import machine_kind

    try:
        return machine_kind(machine)
    except HarnessError:
        return machine


def _param_machine(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    params: dict[str, Any] = callspec.params if callspec is not None else {}
    from_topology = getattr(params.get("topology"), "machine", None)
    if isinstance(from_topology, str):
        return from_topology
    machine = params.get("machine")
    return machine if isinstance(machine, str) else None


def _default_machine(item: pytest.Item) -> str | None:
    """q35 when the test uses the plugin's own `machine` fixture (not an override)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None or "machine" not in getattr(item, "fixturenames", ()):
        return None
    defs = info.name2fixturedefs.get("machine") or ()
    func = getattr(defs[-1], "func", None) if defs else None
    return "q35" if getattr(func, "__module__", "") == "harness.pytestplugin.plugin" else None


def machine_at_collection(item: pytest.Item) -> str | None:
    return _param_machine(item) or _default_machine(item)


def machine_after_setup(item: pytest.Item) -> str | None:
    """The machine the fixtures resolved to; the topology wins over `machine`."""
    funcargs: dict[str, Any] = getattr(item, "funcargs", {}) or {}
    from_topology = getattr(funcargs.get("topology"), "machine", None)
    if isinstance(from_topology, str):
        return from_topology
    machine = funcargs.get("machine")
    if isinstance(machine, str):
        return machine
    return machine_at_collection(item)


def longest_first(items: list[pytest.Item], durations: dict[str, float]) -> list[pytest.Item]:
    """ITEMS by earlier duration, longest first; a test with no record counts as
    the median, so a new slow test is not left to the end.  Stable, and the same
    on every worker (xdist requires one collection order)."""
    known = sorted(durations.values())
    typical = known[len(known) // 2] if known else 0.0
    return sorted(items, key=lambda item: -durations.get(item.nodeid, typical))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order_by = config.getoption("--report-order-by")
    if order_by:
        # One long test started last sets the wall time of the whole run (the
        # 24-hop memory ping-pong: 205 s of 305 on 10.0.2); started first, the
        # other workers finish everything else meanwhile.
        items[:] = longest_first(items, json.loads(Path(str(order_by)).read_text()))
    only = config.getoption("--report-only-nodeids")
    if only:
        ids = {line for line in Path(str(only)).read_text().splitlines() if line}  # ids hold spaces
        unwanted = [item for item in items if item.nodeid not in ids]
        if unwanted:
            config.hook.pytest_deselected(items=unwanted)
            items[:] = [item for item in items if item.nodeid in ids]
    wanted = config.getoption("--report-machines")
    if not wanted:
        return
    kinds = {k.strip() for k in str(wanted).split(",") if k.strip()}
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        kind = machine_kind_of(machine_at_collection(item))
        (drop if kind is not None and kind not in kinds else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ---- the process that runs the test (xdist worker or plain pytest) ----

#: Machine types of the guests the running test planned, in order (one test at a
#: time runs in a worker process).  Filled by watching GuestFactory.plan: most
#: tests build their own topologies and hand them to `make_guest`, so neither
#: fixtures nor parameters name the machine that really ran.
_PLANNED: list[str] = []
_OBSERVED = "_pci_report_observed"


def note_machine(machine: str) -> None:
    """The running test uses a guest of this machine type that it did not plan
    itself: one a module- or session-scoped fixture booted for an earlier test
    and keeps.  Without it the test's machine column depended on which test of
    the module the xdist worker ran first (8 tests changed columns between two
    nights, and their matrix cells read "pass -> not-run")."""
    _PLANNED.append(machine)


def _observe_plans(item: pytest.Item) -> None:
    """Wrap the session's GuestFactory.plan once to note each planned machine type."""
    funcargs: dict[str, Any] = getattr(item, "funcargs", {}) or {}
    factory = funcargs.get("harness_factory")
    if factory is None or getattr(factory, _OBSERVED, False):
        return
    original = factory.plan

    def plan(topology: Topology, **overrides: Any) -> Any:
        machine = getattr(topology, "machine", None)
        if isinstance(machine, str):
            _PLANNED.append(machine)
        return original(topology, **overrides)

    factory.plan = plan
    setattr(factory, _OBSERVED, True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    _PLANNED.clear()
    item.stash[_CPU_AT_SETUP] = cpu_seconds()
    try:
        return (yield)
    finally:
        _observe_plans(item)
        item.stash[_ANNOTATION] = {"machine": machine_after_setup(item),
                                   "host": socket.gethostname()}


def _annotation(item: pytest.Item) -> dict[str, Any]:
    annotation: dict[str, Any] = {}
    if _ANNOTATION in item.stash:
        found: dict[str, Any] = item.stash[_ANNOTATION]
        annotation.update(found)
    if _PLANNED:  # the first guest the test really planned beats the fixtures' guess
        annotation["machine"] = _PLANNED[0]
    annotation["machine_kind"] = machine_kind_of(annotation.get("machine"))
    return annotation


def console_tails(artifacts: Path) -> dict[str, str]:
    """Last lines of every console.log under a test's artifact dir, by guest name."""
    tails: dict[str, str] = {}
    if not artifacts.is_dir():
        return tails
    for log in sorted(artifacts.rglob("console.log")):
        text = _CONTROL.sub("", log.read_text(errors="replace"))
        tail = "\n".join(text.splitlines()[-_CONSOLE_LINES:])[-_CONSOLE_CHARS:]
        name = str(log.parent.relative_to(artifacts)) if log.parent != artifacts else "guest"
        tails[name] = tail
    return tails


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    annotation = _annotation(item)
    if report.when == "teardown" and item.stash.get(_FAILED, False):
        # The artifacts fixture records its path when it tears down, before this report.
        path = dict(item.user_properties).get("artifacts")
        if path:
            annotation["console_tail"] = console_tails(Path(str(path)))
    if report.when == "teardown" and _CPU_AT_SETUP in item.stash:
        # A QEMU a fixture keeps for later tests counts for the test that reaps it.
        annotation["cpu_s"] = round(cpu_seconds() - item.stash[_CPU_AT_SETUP], 2)
    setattr(report, REPORT_ATTRIBUTE, annotation)
    return report


# ---- the controller: fold reports into results, write them at the end ----

class _Collector:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.started = time.time()
        self.phases: dict[str, list[Any]] = {}
        self.workers: dict[str, str | None] = {}
        self.nodes: list[dict[str, Any]] = []
        self.collected: set[str] = set()
        self.lost: list[dict[str, Any]] = []
        self.crashed: dict[str, str] = {}   # worker id -> the test it was running

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.phases.setdefault(report.nodeid, []).append(report)
        node = getattr(report, "node", None)
        gateway = getattr(node, "gateway", None)
        if gateway is not None:
            self.workers[report.nodeid] = str(gateway.id)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.phases.setdefault(report.nodeid or "<collection>", []).append(report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:  # xdist hook
        info = dict(getattr(node, "workerinfo", {}) or {})
        self.nodes.append({"id": str(info.get("id", "")), "spec": str(info.get("spec", "")),
                           "executable": info.get("executable"), "cwd": info.get("cwd"),
                           "platform": info.get("platform")})

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.collected.update(ids)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not hasattr(self.config, "workerinput"):  # plain pytest: the items are the tests
            self.collected.update(item.nodeid for item in session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:  # xdist hook
        if error:
            gateway = getattr(node, "gateway", None)
            info = dict(getattr(node, "workerinfo", {}) or {})
            self.lost.append({"worker": str(getattr(gateway, "id", info.get("id", "?"))),
                              "spec": str(getattr(gateway, "spec", info.get("spec", "?"))),
                              "error": str(error).strip()[-500:]})

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        gateway = getattr(getattr(report, "node", None), "gateway", None)
        self.crashed[str(getattr(gateway, "id", "?"))] = crashitem

    def results(self, run: str, qemu: dict[str, Any]) -> list[TestResult]:
        return [result_from_reports(nodeid, reports, run=run, qemu_version=qemu.get("version"),
                                    qemu_binary=qemu.get("binary"),
                                    worker=self.workers.get(nodeid))
                for nodeid, reports in self.phases.items()]

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        target = self.config.getoption("--report-results")
        if not target:
            return
        qemu = _qemu_facts(self.config)
        label = self.config.getoption("--report-label") or qemu.get("version") or "qemu"
        data = {
            "label": label, "qemu": qemu, "pytest_exit": int(exitstatus),
            "started": self.started, "duration_s": round(time.time() - self.started, 3),
            "workers": self.nodes,
            "collected": sorted(self.collected),
            "lost_workers": [w | {"running": self.crashed.get(w["worker"])} for w in self.lost],
            "tests": [r.to_dict() for r in self.results(label, qemu)],
        }
        path = Path(str(target))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)


def _qemu_facts(config: pytest.Config) -> dict[str, Any]:
    """QEMU binary/version of the run; the accelerator line the harness plugin wrote."""
    facts: dict[str, Any] = {"binary": None, "version": None, "accel": None}
    try:
        from harness.qemu.binary import find_qemu

        binary = find_qemu(config.getoption("--qemu-binary", default=None))
        facts.update(binary=str(binary.path), version=binary.version)
    except (HarnessError, ValueError) as exc:
        facts["error"] = str(exc)
    base = config.getoption("--artifacts-dir", default=None)
    accel = Path(str(base)) / "accelerator.txt" if base else None
    if accel is not None and accel.exists():
        facts["accel"] = accel.read_text().strip()
    return facts


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is None:
        config.pluginmanager.register(_Collector(config), "pci-harness-report-collector")
