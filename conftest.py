"""This checkout's own test run (bin/test, tox, `pytest` in the checkout).

Nothing here is needed by a wheel user: the installed plugin
(harness.pytestplugin, entry point pytest11) brings every fixture, option,
marker and the assertion rewriting of harness.views.  What belongs to this
checkout only:

- the tests must judge this checkout's harness: an editable install of another
  worktree in the same .venv would silently test other code (an installed copy,
  as tox makes from the sdist, is this checkout built and is accepted);
- the run's own leftovers (artifacts/, reports/, build/, dist/) are never collected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent

collect_ignore_glob = ["artifacts/*", "reports/*", "build/*", "dist/*", ".venv/*", ".tox/*"]


def pytest_configure(config: pytest.Config) -> None:
    import harness

    imported = Path(harness.__file__).resolve().parent
    # An installed copy (tox builds the sdist and installs it on purpose) is this
    # checkout built; another source tree (an editable install of a worktree) is not.
    if imported != CHECKOUT / "harness" and "site-packages" not in imported.parts:
        raise pytest.UsageError(
            f"this checkout's tests would judge another harness: {imported} was imported, "
            f"not {CHECKOUT / 'harness'}. Run bin/test (it installs this checkout into its "
            f"own .venv), or `{CHECKOUT / '.venv/bin/pip'} install -e {CHECKOUT}`.")

