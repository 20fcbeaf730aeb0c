import time

import pytest

from harness.deadline import Deadline, set_timeout_scale, timeout_scale
from harness.errors import GuestCommandFailed, HarnessError, UserError


def test_deadline_scales_with_the_run_factor():
    old = timeout_scale()
    try:
        set_timeout_scale(3.0)
        assert Deadline(2.0, "x").seconds == pytest.approx(6.0)
        assert Deadline(2.0, "x", scaled=False).seconds == pytest.approx(2.0)
    finally:
        set_timeout_scale(old)


def test_deadline_expires_and_describes_itself():
    d = Deadline(0.05, "the thing", scaled=False)
    assert not d.expired() and 0 < d.remaining() <= 0.05
    time.sleep(0.06)
    assert d.expired() and d.remaining() == 0.0
    assert d.describe() == "the thing did not finish within 0.1 s"


def test_scale_must_be_positive():
    with pytest.raises(ValueError):
        set_timeout_scale(0)


def test_error_paragraph_has_message_fix_and_tail():
    err = UserError("unknown machine type 'pcx'", fix="use pc or q35", tail="line1\nline2")
    text = err.describe()
    assert text.startswith("unknown machine type 'pcx'. Use pc or q35.")
    assert text.endswith("line1\nline2\n---")
    assert isinstance(err, HarnessError)


def test_guest_command_failed_carries_output():
    err = GuestCommandFailed("false", 1, "some output")
    assert err.status == 1 and err.output == "some output"
    assert "exited with status 1" in str(err) and "some output" in str(err)
