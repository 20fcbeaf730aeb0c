"""The verb runner: the skeleton every guest-starting verb shares.

settings (from the common options) -> the guest factory -> the run's artifact
directory -> the verb's body -> artifacts kept or removed -> one JSON object
(--json) or the verb's text.  A verb writes only its body (what to do with a
guest, returning a result dict with "ok") and how to show the result.

The factory and the artifact directory are made on first use, so input a body
checks before it touches them fails with no QEMU started and nothing left on
disk.  The JSON contract is kept here for every verb: "ok", "failures" (always
a list) and "artifacts" (the kept directory, or null).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.errors import QemuRefused, UserError
from harness.factory import GuestFactory
from harness.options import RunSettings, run_settings
from harness.progress import Progress, stderr_progress
from harness.pytestplugin.artifacts import new_run_dir, settle_artifacts

Result = dict[str, Any]

#: What verbs report their steps with (stderr; stdout is the verb's answer).
progress: Progress = stderr_progress


def settings_from(args: argparse.Namespace) -> RunSettings:
    """RunSettings from a verb's parsed common options (see harness.options)."""
    return run_settings(lambda flag: getattr(args, flag.lstrip("-").replace("-", "_")))


class VerbRun:
    """What a verb's body works with: its settings, and, made on first use, the
    guest factory and the run's artifact directory."""

    def __init__(self, verb: str, settings: RunSettings, say: Progress = progress):
        self.verb = verb
        self.settings = settings
        self.progress = say
        self._artifacts: Path | None = None

    @cached_property
    def factory(self) -> GuestFactory:
        return GuestFactory(self.settings, progress=self.progress)

    @property
    def artifacts(self) -> Path:
        if self._artifacts is None:
            self._artifacts = new_run_dir(self.verb)
        return self._artifacts

    def discard(self) -> None:
        """Bad input (a UserError): the run's artifact directory goes, and nothing
        says FAILED -- the one-paragraph error is the whole answer."""
        if self._artifacts is not None:
            shutil.rmtree(self._artifacts, ignore_errors=True)
            self._artifacts = None

    def finish(self, ok: bool) -> Path | None:
        """Keep or remove the artifact directory; the kept one, else None."""
        if self._artifacts is None:
            return None
        if not settle_artifacts(self._artifacts, ok=ok, keep=self.settings.keep_artifacts):
            return None
        if ok:
            self.progress(f"artifacts kept in {self._artifacts}")
        else:
            self.progress(f"{self.verb} FAILED; artifacts in {self._artifacts}")
        return self._artifacts


def _result_ok(result: Result) -> bool:
    return bool(result["ok"])


def run_verb(args: argparse.Namespace, verb: str, body: Callable[[VerbRun], Result],
             show: Callable[[Result], None], *,
             passed: Callable[[Result], bool] = _result_ok,
             json_default: Callable[[Any], Any] | None = None) -> int:
    """Run `body` as verb `verb`: exit status 0 when the run passed (by default:
    its result says "ok"), 1 when not.  Errors it raises (HarnessError: status
    2) go to harness.cli.app.main, after the artifact directory was kept -- or
    removed, for bad input (a UserError other than QEMU's own refusal)."""
    run = VerbRun(verb, settings_from(args))
    ok = False
    try:
        result = body(run)
        ok = passed(result)
    except QemuRefused:
        raise  # QEMU's own refusal: its command line and stderr are the artifacts to read
    except UserError:
        run.discard()
        raise
    finally:
        kept = run.finish(ok)
    result["artifacts"] = None if kept is None else str(kept)
    if "factory" in vars(run):  # guests ran: their firmware next to QEMU's version
        result.setdefault("firmware", run.factory.firmware.as_dict())
        result.setdefault("firmware_label", run.factory.firmware.label())
    emit(result, args.json, show, json_default=json_default)
    return 0 if ok else 1


def emit(result: Result, as_json: bool, show: Callable[[Result], None], *,
         json_default: Callable[[Any], Any] | None = None) -> None:
    """A verb's answer on stdout: one JSON object (with "failures", always a
    list) as the last line, or the verb's text.  Verbs that start no guest
    (qemu-get, nightly) call this directly."""
    result.setdefault("failures", [])
    if as_json:
        print(json.dumps(result, default=json_default))
    else:
        show(result)
