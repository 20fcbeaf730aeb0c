"""A failure whose traceback pytest cannot format never takes pytest down.

The inner runs make pytest's traceback formatting raise CPython 3.11.2's
"SystemError: AST constructor recursion depth mismatch" for chosen failures
(seen on 10.0.2 nightlies: an xdist worker died with INTERNALERROR, exit 3).
They run as subprocesses: the patch must not reach this pytest.
"""

from __future__ import annotations

import pytest

from harness.pytestplugin.failure_report import FALLBACK_NOTE, plain_traceback

pytest_plugins = ["pytester"]

CONFTEST = '''
import _pytest._code.code as code

_real = code.ExceptionInfo.getrepr


def getrepr(self, *args, **kwargs):
    if "FORMAT-BOOM" in str(self.value):
        raise SystemError("AST constructor recursion depth mismatch (before=48, after=47)")
    return _real(self, *args, **kwargs)


code.ExceptionInfo.getrepr = getrepr
'''

TESTS = '''
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("FORMAT-BOOM in setup")


def test_a_fails():
    assert 1 == 2, "FORMAT-BOOM first"


def test_b_passes():
    pass


@pytest.mark.xfail(strict=True, reason="seed-x: QEMU does y")
def test_c_known_failure():
    raise ValueError("FORMAT-BOOM known")


def test_d_setup_error(broken):
    pass


def test_e_passes():
    pass


def test_f_skips():
    pytest.skip("FORMAT-BOOM skip reason")


def test_g_plain_failure_is_formatted_as_usual():
    assert [1] == [2]
'''


@pytest.fixture
def boom(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_boom=TESTS)
    return pytester


@pytest.mark.parametrize("jobs", [["-n", "0"], ["-n", "2"], ["-p", "no:xdist"]],
                         ids=["serial", "xdist", "without-xdist"])
def test_every_test_gets_its_report_when_formatting_raises(boom, jobs):
    result = boom.runpytest_subprocess(*jobs, "-rfEsx", "--junitxml=junit.xml")
    out = result.stdout.str()
    assert "INTERNALERROR" not in out, out
    result.assert_outcomes(passed=2, failed=2, xfailed=1, errors=1, skipped=1)
    assert result.ret == 1
    # The fallback report: what went wrong with formatting, then a plain traceback
    # with the failing line and the exception.
    assert f"{FALLBACK_NOTE} (SystemError: AST constructor recursion depth mismatch" in out
    assert 'assert 1 == 2, "FORMAT-BOOM first"' in out, out
    assert "AssertionError: FORMAT-BOOM first" in out, out
    assert "RuntimeError: FORMAT-BOOM in setup" in out, out
    assert "test_boom.py:31: FORMAT-BOOM skip reason" in out, out
    assert "_pytest" not in out.split(FALLBACK_NOTE)[1], out  # pytest's own frames left out
    # A failure that formats fine still gets pytest's own report (assertion diff).
    assert "At index 0 diff: 1 != 2" in out, out
    assert "FAILED test_boom.py::test_a_fails - AssertionError: FORMAT-BOOM first" in out, out
    junit = (boom.path / "junit.xml").read_text()
    assert "FORMAT-BOOM first" in junit and 'errors="1"' in junit


def test_without_the_guard_the_same_run_dies(boom):
    """The red side: pytest alone hits INTERNALERROR and loses the later tests."""
    result = boom.runpytest_subprocess("-n", "0", "-p", "no:pci_harness")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR, out
    assert "SystemError: AST constructor recursion depth mismatch" in out
    assert "test_e_passes" not in out and " passed" not in out, out


def test_plain_traceback_follows_the_chain_without_ast():
    def inner():
        raise KeyError("k")

    try:
        try:
            inner()
        except KeyError as exc:
            raise RuntimeError("outer") from exc
    except RuntimeError as exc:
        text = plain_traceback(exc)
    first, second = text.split("The above exception was the direct cause")
    assert 'in inner\n    raise KeyError("k")\nKeyError: \'k\'' in first, first
    assert second.rstrip().endswith("RuntimeError: outer"), second
    assert 'raise RuntimeError("outer") from exc' in second


def test_plain_traceback_survives_a_broken_str():
    class Odd(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    try:
        raise Odd()
    except Odd as exc:
        assert plain_traceback(exc).endswith("Odd: <exception str() failed>\n")
