"""A failing test always gets its report, whatever formatting its traceback raises.

pytest turns a failure into a report by formatting the traceback
(`item.repr_failure`), which parses source with `ast`.  On CPython 3.11.2
(Debian 12) that parse can raise "SystemError: AST constructor recursion depth
mismatch" (a race fixed in 3.11.8); raised inside `pytest_runtest_makereport`
it is an INTERNALERROR: the xdist worker dies (exit 3) and every test it still
had is lost.  This plugin makes the report first (tryfirst, so pytest's own
`skipping` wrapper still turns a strict xfail into a known failure) and, when
formatting raises, writes a plain traceback built without `ast` or
`traceback`'s caret anchors (which parse with `ast` too), plus a line naming
the formatting error.  Other tests run on.
"""

from __future__ import annotations

import linecache
import os
from types import TracebackType
from typing import Any, Literal

import _pytest
import pluggy
import pytest
from _pytest.outcomes import Skipped

_MACHINERY = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (_pytest, pluggy))
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"
#: First line of a fallback report: the report collector and people can find it.
FALLBACK_NOTE = "pci-harness: pytest could not format this failure"


def plain_traceback(exc: BaseException, limit: int = 64) -> str:
    """`Traceback (most recent call last): ...` from frames and linecache only,
    following __cause__/__context__ like the interpreter does."""
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link: str | None = None
    while current is not None and id(current) not in seen and len(chain) < 8:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    parts: list[str] = []
    for error, leads_to_next in reversed(chain):  # the innermost cause first
        parts.append(_one(error, error.__traceback__, limit))
        if leads_to_next:
            parts.append(f"\n{leads_to_next}\n\n")
    return "".join(parts)


def _one(exc: BaseException, tb: TracebackType | None, limit: int) -> str:
    lines = ["Traceback (most recent call last):\n"]
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    # pytest's and pluggy's own frames say nothing about the test (pytest cuts them too).
    frames = [f for f in frames if not f[0].startswith(_MACHINERY)] or frames
    if len(frames) > limit:
        lines.append(f"  ... {len(frames) - limit} frames left out ...\n")
        frames = frames[-limit:]
    for filename, lineno, name in frames:
        lines.append(f'  File "{filename}", line {lineno}, in {name}\n')
        source = linecache.getline(filename, lineno).strip()
        if source:
            lines.append(f"    {source}\n")
    lines.append(exception_text(exc) + "\n")
    return "".join(lines)


def exception_text(exc: BaseException) -> str:
    """`Type: message`, as the interpreter's last traceback line."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the report
        message = "<exception str() failed>"
    name = type(exc).__qualname__
    return f"{name}: {message}" if message else name


class FailureReportGuard:
    """Registered by harness.pytestplugin.plugin in every process (xdist workers too)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> pytest.TestReport | None:
        if call.excinfo is None:
            return None  # nothing to format: pytest's own implementation
        try:
            return pytest.TestReport.from_item_and_call(item, call)
        except Exception as formatting:  # noqa: BLE001 - any of them would kill the worker
            return fallback_report(item, call, formatting)


def fallback_report(item: pytest.Item, call: pytest.CallInfo[None],
                    formatting: BaseException) -> pytest.TestReport:
    excinfo = call.excinfo
    assert excinfo is not None
    sections = [(f"Captured {key} {when}", content)
                for when, key, content in getattr(item, "_report_sections", [])]
    longrepr: Any
    outcome: Literal["skipped", "failed"]
    if isinstance(excinfo.value, Skipped):
        outcome = "skipped"
        path, lineno, _ = item.location
        longrepr = (path, (lineno or 0) + 1, f"Skipped: {excinfo.value.msg}")
    else:
        outcome = "failed"
        plain = plain_traceback(excinfo.value)
        # The exception's own line first: short summaries and reports show line one.
        longrepr = (f"{exception_text(excinfo.value).splitlines()[0]}\n\n{FALLBACK_NOTE} "
                    f"({type(formatting).__name__}: {formatting}); its plain traceback:\n\n"
                    f"{plain}")
    when = call.when
    assert when != "collect"  # runtest phases only
    return pytest.TestReport(
        item.nodeid, item.location, dict.fromkeys(item.keywords, 1), outcome, longrepr, when,
        sections, call.duration, call.start, call.stop, user_properties=item.user_properties)
