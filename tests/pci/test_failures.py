"""Bad input and dying QEMU: one clear paragraph, exit status 2, no traceback,
nothing left running.  Runs the real CLI and real pytest as subprocesses."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.qemu import install
from harness.qemu.binary import find_qemu
from harness.qemu.process import qemu_pids_mentioning

pytestmark = pytest.mark.smoke




def cli(tmp_path, *args, timeout=120):
    env = dict(os.environ, PCI_HARNESS_ARTIFACTS=str(tmp_path))
    # Not from the checkout: `python -m harness` there imports its harness/, not the
    # installed package (tox installs it).
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=tmp_path, check=False)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in stderr:\n{result.stderr}"


def test_unknown_machine(tmp_path):
    result = cli(tmp_path, "boot", "--machine", "pcx", "--accel", "tcg")
    assert_user_error(result, "unknown machine type 'pcx'", "q35")


def test_missing_qemu_binary(tmp_path):
    result = cli(tmp_path, "boot", "--machine", "pc", "--accel", "tcg",
                 "--qemu-binary", str(tmp_path / "no-such-qemu"))
    assert_user_error(result, "does not exist", "--qemu-binary")


def test_json_error_is_the_last_stdout_line(tmp_path):
    result = cli(tmp_path, "boot", "--machine", "pcx", "--json")
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["ok"] is False and last["failures"] and "pcx" in last["error"]


def test_accel_kvm_where_unusable_or_works(tmp_path):
    # The expectation comes from our own probe, run directly: if KVM boots
    # guests here --accel kvm must work, otherwise it must be a clean error.
    from harness.factory import probe_boot
    from harness.guest.image import ensure_image
    from harness.qemu.accel import probe_kvm

    usable, _ = probe_kvm(find_qemu(), probe_boot(ensure_image()))
    result = cli(tmp_path, "boot", "--machine", "pc", "--accel", "kvm", "--json")
    if usable:
        assert result.returncode == 0, result.stderr
    else:
        assert_user_error(result, "KVM is unusable here", "--accel tcg")
    assert qemu_pids_mentioning(str(tmp_path)) == []


def test_guest_never_ready_quotes_console_and_cleans_up(tmp_path):
    # 2 % of the boot deadline: the kernel cannot reach init in time.
    result = cli(tmp_path, "boot", "--machine", "q35", "--accel", "tcg", "--no-snapshot",
                 "--timeout-multiplier", "0.02")
    assert_user_error(result, "never became ready", "console.log", "--- last output ---")
    assert qemu_pids_mentioning(str(tmp_path)) == []


def _wrapper(tmp_path, body, real=None):
    """A fake QEMU that answers -version/-machine help as QEMU does, then `body`."""
    real = real or find_qemu().path
    path = tmp_path / "qemu-system-x86_64-wrapper"
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$1" in -version|-machine) exec {real} "$@";; esac
        {body}
        """))
    path.chmod(0o755)
    return path


def test_a_guest_that_never_boots_is_reported_with_qemus_stderr(tmp_path):
    # QEMU held paused (-S) after a line on its stderr: the console stays silent.
    real = find_qemu().path
    wrapper = _wrapper(tmp_path, f'echo "wrapper: held paused on purpose" >&2; '
                                 f'exec {real} "$@" -S')
    result = cli(tmp_path, "boot", "--machine", "q35", "--accel", "tcg", "--no-snapshot",
                 "--qemu-binary", str(wrapper), "--timeout-multiplier", "0.1")
    assert_user_error(result, "never became ready",
                      "QEMU's stderr: wrapper: held paused on purpose",
                      "--- qemu.stderr ---\nwrapper: held paused on purpose")
    assert qemu_pids_mentioning(str(tmp_path)) == []


ROMS = ("pvh.bin", "kvmvapic.bin")


def _without_option_roms(tmp_path, binary):
    """A wrapper running the QEMU under test in a private mount namespace where
    every firmware directory it reads (its -L directories and the compiled-in
    /usr/share/qemu) lacks pvh.bin and kvmvapic.bin: a build tree without its
    option ROMs, as QEMU meets it."""
    dirs = [*install.detect(binary.real_path).firmware_dirs, Path("/usr/share/qemu")]
    head = binary.path.read_bytes()[:4096]
    if head.startswith(b"#!"):  # a launcher (qemu-get's): the -L directories it passes
        dirs += [Path(d) for d in re.findall(r"-L '([^']+)'", head.decode(errors="replace"))]
    hidden = [d for d in dirs if any((d / rom).is_file() for rom in ROMS)]
    if not hidden or shutil.which("unshare") is None:
        pytest.skip("needs a QEMU data directory holding pvh.bin, and unshare")
    flags = "-m" if os.geteuid() == 0 else "-rm"
    if subprocess.run(["unshare", flags, "true"], capture_output=True, check=False).returncode:
        pytest.skip(f"unshare {flags} is not allowed here")
    lines = ["#!/bin/sh", "set -e"]
    for n, data in enumerate(hidden):
        copy = tmp_path / f"share-{n}"
        shutil.copytree(data, copy, symlinks=True, ignore=shutil.ignore_patterns(*ROMS))
        lines.append(f"mount --bind '{copy}' '{data}'")
    inner = tmp_path / "in-namespace.sh"
    inner.write_text("\n".join([*lines, f"exec '{binary.path}' \"$@\"", ""]))
    inner.chmod(0o755)
    return _wrapper(tmp_path, f'exec unshare {flags} {inner} "$@"', real=binary.path)


def test_a_firmware_file_qemu_could_not_open_is_named_within_seconds(tmp_path,
                                                                      harness_factory):
    binary = harness_factory.binary  # 7.2.22 says "Could not open option rom", 10.0.2 "rom: file"
    wrapper = _without_option_roms(tmp_path, binary)
    started = time.monotonic()
    result = cli(tmp_path, "boot", "--machine", "q35", "--accel", "tcg", "--no-snapshot",
                 "--qemu-binary", str(wrapper))
    took = time.monotonic() - started
    assert_user_error(result, "could not open the firmware file(s) kvmvapic.bin, pvh.bin",
                      "so the guest cannot boot", "-L DIR")
    assert "pvh.bin" in result.stderr.split("QEMU said:")[1], result.stderr
    assert took < 20, f"named after {took:.1f} s (the boot deadline is 60 s)"
    assert qemu_pids_mentioning(str(tmp_path)) == []


def test_qemu_exit_status_and_stderr(tmp_path):
    real = find_qemu().path
    wrapper = _wrapper(tmp_path, f'exec {real} "$@" -device no-such-device-model')
    result = cli(tmp_path, "boot", "--machine", "pc", "--accel", "tcg",
                 "--qemu-binary", str(wrapper))
    assert_user_error(result, "exited with status 1", "no-such-device-model")
    assert qemu_pids_mentioning(str(tmp_path)) == []


def test_qemu_killed_by_signal(tmp_path):
    wrapper = _wrapper(tmp_path, 'echo "about to crash" >&2; kill -SEGV $$')
    result = cli(tmp_path, "boot", "--machine", "q35", "--accel", "tcg",
                 "--qemu-binary", str(wrapper))
    assert_user_error(result, "killed by SIGSEGV (signal 11)", "about to crash")


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_kill_9_of_pytest_mid_boot_leaves_no_qemu(tmp_path, xdist):
    test_file = tmp_path / "test_victim.py"
    test_file.write_text("def test_boot(guest):\n    guest.succeed('sleep 600')\n")
    art = tmp_path / "art"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file),
            "--accel", "tcg", "--artifacts-dir", str(art), "--rootdir", str(tmp_path)]
    if xdist:
        argv += ["-n", "1"]
    victim = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not qemu_pids_mentioning(str(art)) and time.monotonic() < deadline:
            assert victim.poll() is None, "pytest ended before QEMU started"
            time.sleep(0.1)
        assert qemu_pids_mentioning(str(art)), "QEMU never started"
        time.sleep(0.5)  # mid-boot
        victim.send_signal(signal.SIGKILL)  # only pytest itself, not its group
        victim.wait()
        deadline = time.monotonic() + 15
        while qemu_pids_mentioning(str(art)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert qemu_pids_mentioning(str(art)) == []
    finally:
        for pid in qemu_pids_mentioning(str(art)):
            os.kill(pid, signal.SIGKILL)
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)


@pytest.mark.parametrize(("firmware", "fragments"), [
    ("sebios", ("'sebios' is neither a firmware name nor a file", "seabios, qboot, ovmf")),
    ("/nonexistent/bios.bin", ("/nonexistent/bios.bin does not exist", "firmware-get")),
    # OVMF cannot start the PVH vmlinux the kernel-booted guests use: said, not hung.
    ("ovmf", ("--firmware ovmf boots disks only", "boot-stress")),
])
def test_bad_firmware_is_one_paragraph(tmp_path, firmware, fragments):
    result = cli(tmp_path, "boot", "--machine", "q35", "--accel", "tcg", "--no-snapshot",
                 "--firmware", firmware)
    assert_user_error(result, *fragments)
    assert qemu_pids_mentioning(str(tmp_path)) == []
