"""The verb runner, the one settings builder and refusal attribution, without QEMU.

The runner is fed a fake factory and bodies that pass, fail or raise; each test
states what the user must see (exit status, the JSON contract, artifacts kept
or removed) independently of the runner's code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from harness import factory as factory_module
from harness.cli import app, build_parser, runner
from harness.cli.common import add_common_options
from harness.cli.runner import Result, VerbRun, run_verb
from harness.errors import QemuExited, QemuRefused, UserError
from harness.options import RunSettings, run_settings
from harness.pytestplugin import plugin
from harness.qemu.firmware import Firmware
from harness.topology import topology_from_dict

pytest_plugins = ["pytester"]

SHARED = ["--qemu-binary", "/opt/qemu/bin/qemu-system-x86_64", "--accel", "tcg",
          "--timeout-multiplier", "3", "--keep-artifacts", "--no-snapshot"]
EXPECTED = RunSettings(qemu_binary="/opt/qemu/bin/qemu-system-x86_64", accel="tcg",
                       timeout_multiplier=3.0, keep_artifacts=True, snapshot=False)


# --------------------------------------------------------------------------- settings

def test_cli_and_plugin_build_the_same_settings(pytester: pytest.Pytester) -> None:
    args = build_parser().parse_args(["where", "e1000", *SHARED])
    assert runner.settings_from(args) == EXPECTED
    config = pytester.parseconfig(*SHARED)
    assert plugin.settings_from_config(config) == EXPECTED


def test_defaults_are_the_same_on_both_faces(pytester: pytest.Pytester) -> None:
    args = build_parser().parse_args(["where", "e1000"])
    assert runner.settings_from(args) == RunSettings()
    assert plugin.settings_from_config(pytester.parseconfig()) == RunSettings()


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_a_non_positive_timeout_multiplier_is_a_user_error(value: float) -> None:
    values = {"--qemu-binary": None, "--accel": "auto", "--timeout-multiplier": value,
              "--keep-artifacts": False, "--no-snapshot": False}
    with pytest.raises(UserError, match="--timeout-multiplier must be positive"):
        run_settings(values.__getitem__)


def test_pytest_refuses_a_bad_multiplier_before_any_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--timeout-multiplier", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--timeout-multiplier must be positive*"])


# --------------------------------------------------------------------------- runner

class FakeFactory:
    made: ClassVar[list[RunSettings]] = []

    def __init__(self, settings: RunSettings, progress: Any = None) -> None:
        FakeFactory.made.append(settings)
        self.firmware = Firmware(settings.firmware, "seabios", None, version="1.16.2-test")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Runs under tmp_path/runs with the fake factory; returns that directory."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("PCI_HARNESS_ARTIFACTS", str(runs))
    monkeypatch.setattr(runner, "GuestFactory", FakeFactory)
    FakeFactory.made = []
    return runs


def _args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_options(parser)
    return parser.parse_args(list(flags))


def _body(ok: bool, seen: dict[str, Any]) -> Any:
    def body(run: VerbRun) -> Result:
        seen["factory"] = run.factory
        seen["artifacts"] = run.artifacts
        (run.artifacts / "console.log").write_text("log")
        return {"ok": ok, "answer": 42}
    return body


def _last_json(out: str) -> dict[str, Any]:
    last: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return last


def test_a_passing_verb_prints_the_contract_and_removes_its_artifacts(
        fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}
    status = run_verb(_args("--json"), "demo", _body(True, seen), print)
    out = capsys.readouterr().out
    assert status == 0
    # The factory was used: the firmware it resolved goes next to the result.
    assert _last_json(out) == {"ok": True, "answer": 42, "failures": [], "artifacts": None,
                               "firmware_label": "SeaBIOS 1.16.2-test",
                               "firmware": {"spec": "seabios", "kind": "seabios",
                                            "version": "1.16.2-test", "image": None,
                                            "vars_template": None}}
    assert seen["artifacts"].parent == fake and not seen["artifacts"].exists()
    assert FakeFactory.made == [RunSettings()]


def test_a_failing_verb_exits_1_and_keeps_its_artifacts(
        fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}
    status = run_verb(_args("--json"), "demo", _body(False, seen), print)
    captured = capsys.readouterr()
    result = _last_json(captured.out)
    assert status == 1 and result["ok"] is False and result["failures"] == []
    assert result["artifacts"] == str(seen["artifacts"])
    assert (seen["artifacts"] / "console.log").read_text() == "log"
    assert f"demo FAILED; artifacts in {seen['artifacts']}" in captured.err


def test_keep_artifacts_keeps_a_passing_run(fake: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}
    status = run_verb(_args("--json", "--keep-artifacts"), "demo", _body(True, seen), print)
    result = _last_json(capsys.readouterr().out)
    assert status == 0 and result["artifacts"] == str(seen["artifacts"])
    assert seen["artifacts"].is_dir()


def test_an_error_keeps_the_artifacts_and_propagates(fake: Path) -> None:
    made: list[Path] = []

    def body(run: VerbRun) -> Result:
        made.append(run.artifacts)
        raise QemuExited("QEMU died", returncode=-6)

    with pytest.raises(QemuExited):
        run_verb(_args(), "demo", body, print)
    assert made and made[0].is_dir()


def test_bad_input_in_the_body_leaves_no_directory_and_starts_nothing(fake: Path) -> None:
    def body(run: VerbRun) -> Result:
        raise UserError("no such topology")

    with pytest.raises(UserError):
        run_verb(_args(), "demo", body, print)
    assert not fake.exists() or list(fake.iterdir()) == []
    assert FakeFactory.made == []


def test_bad_input_found_after_the_artifacts_were_made_leaves_none(
        fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`where no-such-driver`: QEMU was asked, the driver is unknown: a user error,
    so no artifact directory and no "FAILED"."""
    made: list[Path] = []

    def body(run: VerbRun) -> Result:
        made.append(run.artifacts)
        (run.artifacts / "qmp.log").write_text("{}")
        raise UserError("'no-such-driver' is not a PCI device this QEMU knows")

    with pytest.raises(UserError):
        run_verb(_args(), "demo", body, print)
    err = capsys.readouterr().err
    assert made and not made[0].exists(), f"{made[0]} left behind"
    assert "FAILED" not in err, err


def test_qemus_own_refusal_keeps_its_artifacts(fake: Path) -> None:
    made: list[Path] = []

    def body(run: VerbRun) -> Result:
        made.append(run.artifacts)
        raise QemuRefused("QEMU refused the command line")

    with pytest.raises(QemuRefused):
        run_verb(_args(), "demo", body, print)
    assert made and made[0].is_dir()


def test_text_mode_shows_the_result_and_prints_no_json(
        fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown: list[Result] = []
    status = run_verb(_args(), "demo", lambda run: {"ok": True, "answer": 7}, shown.append)
    assert status == 0 and capsys.readouterr().out == ""
    assert shown == [{"ok": True, "answer": 7, "failures": [], "artifacts": None}]


def test_a_verb_can_say_what_passing_means(fake: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # boot-stress: an interrupted run with no figures is not "ok", yet no failure.
    status = run_verb(_args("--json"), "demo", lambda run: {"ok": False, "failures": []},
                      print, passed=lambda result: not result["failures"])
    assert status == 0 and _last_json(capsys.readouterr().out)["ok"] is False
    status = run_verb(_args("--json"), "demo", lambda run: {"ok": True, "failures": ["x"]},
                      print, passed=lambda result: not result["failures"])
    assert status == 1


def test_the_cli_reports_a_body_error_as_status_2(
        fake: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def body(run: VerbRun) -> Result:
        raise UserError("bad driver", fix="name another")

    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="pci-harness")
        verbs = parser.add_subparsers(dest="verb", required=True)
        demo = verbs.add_parser("demo")
        add_common_options(demo)
        demo.set_defaults(func=lambda args: run_verb(args, "demo", body, print))
        return parser

    monkeypatch.setattr(app, "build_parser", build)
    status = app.main(["demo", "--json"])
    out = capsys.readouterr().out
    assert status == 2
    assert _last_json(out) == {"ok": False, "error": "bad driver", "fix": "name another",
                               "failures": ["bad driver"]}


# --------------------------------------------------------------------------- refusal

class _RefusingGuest:
    stderr = ""

    def __init__(self, plan: Any, artifacts: Path, name: str) -> None:
        pass

    def launch(self) -> Any:
        raise QemuExited("QEMU exited at start-up", returncode=1, stderr=self.stderr)


def _refusing_factory(monkeypatch: pytest.MonkeyPatch, stderr: str) -> Any:
    guest = type("Guest", (_RefusingGuest,), {"stderr": stderr})
    monkeypatch.setattr(factory_module, "Guest", guest)
    made = factory_module.GuestFactory.__new__(factory_module.GuestFactory)
    made.snapshots = None
    monkeypatch.setattr(made, "plan", lambda topology, **overrides: "plan")
    return made


TOPOLOGY = {"machine": "q35", "device": [{"id": "nic1", "driver": "e1000", "addr": "2.0"}]}


def test_the_factory_names_the_topology_device_qemu_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made = _refusing_factory(monkeypatch, (
        "qemu-system-x86_64: -device e1000,id=nic1,bus=pcie.0,addr=0x2: PCI: slot 2 "
        "function 0 not available for e1000, in use by VGA\n"))
    topology = topology_from_dict(TOPOLOGY, source="two.toml")
    with pytest.raises(QemuRefused) as caught:
        made.launch(topology, tmp_path)
    message = caught.value.message
    assert message.startswith("QEMU refused device 'nic1' in two.toml (e1000): PCI: slot 2"), \
        message


def test_a_refusal_naming_no_topology_device_stays_qemus(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made = _refusing_factory(monkeypatch, (
        "qemu-system-x86_64: -device virtio-net-pci,id=mgmt,netdev=n0: no netdev\n"))
    with pytest.raises(QemuExited) as caught:
        made.launch(topology_from_dict(TOPOLOGY), tmp_path)
    assert type(caught.value) is QemuExited
