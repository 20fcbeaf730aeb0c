"""Top-level conftest: the harness itself is a pytest11 plugin (harness.plugin),
so nothing is registered here beyond assertion rewriting of harness helpers."""

import pytest

pytest.register_assert_rewrite("harness.views")
