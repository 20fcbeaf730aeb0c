"""The options every verb declares: the shared ones (harness.options) plus --json.

Verb modules import from here and from harness.cli.runner, never from
harness.cli or harness.cli.app, so the package has no import loop: app imports
the verbs, the verbs import these.
"""

from __future__ import annotations

import argparse

from harness.options import add_shared_options


def add_common_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("common options")
    add_shared_options(group.add_argument, skip)
    group.add_argument("--json", action="store_true",
                       help="print one JSON object as the last thing on stdout")
