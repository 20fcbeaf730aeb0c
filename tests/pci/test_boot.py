"""Foundation smoke: real guests boot on pc and q35 and the verbs behave."""

import re

import pytest

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, GuestCommandFailed
from harness.topology import expected_view

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_guest_boots_and_sees_the_topology_devices(guest, machine, topology, harness_factory):
    # Independent expectations: the kernel release comes from the image
    # manifest (the Debian package), the PCI ids from the topology model.
    assert guest.succeed("uname -r").strip() == harness_factory.image.kernel_release
    seen = set(re.findall(r"\b([0-9a-f]{4}:[0-9a-f]{4})\b", guest.succeed("lspci -n")))
    model = {f"{f.vendor:04x}:{f.device:04x}" for f in expected_view(topology).functions
             if f.vendor is not None and f.device is not None}
    assert model, "the model of the default topology predicts no PCI ids"
    assert model <= seen, f"model ids {sorted(model)} vs guest lspci {sorted(seen)}"
    # The QEMU view: QEMU runs the machine type the topology asked for.  An alias
    # ("pc", "q35") stands for the binary's newest type, whose version is the
    # binary's own (a QEMU convention), so the expectation comes from the version
    # -version printed, not from QEMU's alias table.
    status = guest.qmp_execute("query-status")
    assert status["status"] == "running", status
    major_minor = ".".join(harness_factory.binary.version.split(".")[:2])
    expected = {"pc": f"pc-i440fx-{major_minor}",
                "q35": f"pc-q35-{major_minor}"}.get(topology.machine, topology.machine)
    assert machine_type_problem(guest, expected) is None, machine_type_problem(guest, expected)
    # Fed the wrong type, the check says so.
    assert machine_type_problem(guest, "pc-q35-2.4") == (
        f"QEMU runs machine type {expected!r}, expected 'pc-q35-2.4'")


def machine_type_problem(guest, expected: str) -> str | None:
    """None when QEMU runs machine type EXPECTED (QOM type of /machine is
    "<type>-machine"), else what it runs instead."""
    qom_type = guest.qmp_execute("qom-get", {"path": "/machine", "property": "type"})
    running = qom_type.removesuffix("-machine")
    return None if running == expected else (
        f"QEMU runs machine type {running!r}, expected {expected!r}")


def test_verbs_execute_succeed_wait(guest):
    status, output = guest.execute("echo out; echo err >&2; exit 3")
    assert (status, output.split()) == (3, ["out", "err"])
    with pytest.raises(GuestCommandFailed) as info:
        guest.succeed("echo nope; false")
    assert info.value.status == 1 and "nope" in info.value.output
    # wait_until_succeeds: a file that appears later is waited for...
    guest.succeed("(sleep 1; touch /tmp/flag) >/dev/null 2>&1 &")
    guest.wait_until_succeeds("test -e /tmp/flag", timeout=20)
    # ...and one that never appears ends at the deadline with the last output.
    with pytest.raises(DeadlineExceeded) as info:
        guest.wait_until_succeeds("echo still-missing; test -e /tmp/never", timeout=2)
    assert "still-missing" in info.value.describe()


def test_console_is_readable_and_logged(guest):
    # The serial console has a root shell: drive it with pexpect.
    guest.console.send_line("echo console-$((6*7))")
    assert guest.console.expect(r"console-42", Deadline(20, "console echo")) == "console-42"
    # A cold guest logs init's READY marker; a restored one the fix-up's marker.
    marker = "HARNESS-RESTORED" if guest.timings.restored else "HARNESS-READY"
    assert marker in guest.console.log_path.read_text()
    assert guest.console.trouble() == []


def test_shutdown_is_idempotent_and_reports_exit(guest):
    first = guest.shutdown()
    assert first == 0, f"QEMU exit status after quit: {first}"
    assert guest.shutdown() == 0
    assert not guest.process.alive()
