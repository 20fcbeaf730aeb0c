"""How a hop classifies what happened, with scripted QMP and fake processes.

The expectations come from the facts file: a destination that cannot load the
device state exits with status 1 and says why on stderr while the source says
completed; a killed process is named with its signal.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from harness.errors import QemuExited
from harness.scenarios.migration.hop import HopFailure, migrate


class FakeProcess:
    def __init__(self, name: str, stderr: str = ""):
        self.pid = {"src": 100, "dst": 200}[name]
        self.returncode: int | None = None
        self.stderr = stderr

    def alive(self) -> bool:
        return self.returncode is None

    def wait(self, deadline: Any) -> int | None:
        return self.returncode

    def exited_error(self, during: str) -> QemuExited:
        from harness.qemu.process import describe_returncode

        return QemuExited(f"QEMU (pid {self.pid}) {describe_returncode(self.returncode)} "
                          f"during {during}", returncode=self.returncode, stderr=self.stderr)


class FakeQmp:
    """Answers from a script; `on_poll` may change the world after N polls."""

    def __init__(self, guest: FakeGuest):
        self.guest = guest
        self.sent: list[str] = []

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float = 60.0) -> Any:
        self.sent.append(command)
        return self.guest.answer(command, arguments or {})


class FakeGuest:
    def __init__(self, name: str, script: dict[str, list[Any]], stderr: str = ""):
        self.name = name
        self.run_dir = Path("/run/fake") / name
        self.process = FakeProcess(name, stderr)
        self.qmp = FakeQmp(self)
        self.console = None
        self.shell = None
        self.script = script
        self.events: dict[str, Any] = {}

    def answer(self, command: str, args: dict[str, Any]) -> Any:
        if not self.process.alive():
            from harness.qemu.qmp import QmpConnectionLost

            raise QmpConnectionLost("EOF")
        queue = self.script.get(command)
        if not queue:
            return {}
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        return item(self) if callable(item) else item


def _pair(src_polls: list[Any], dst_status: list[Any], dst_stderr: str = ""):
    src = FakeGuest("src", {"query-status": [{"running": True, "status": "running"}],
                            "query-migrate": src_polls})
    dst = FakeGuest("dst", {"query-status": dst_status}, stderr=dst_stderr)
    return src, dst


def test_destination_exit_status_is_a_failed_load_with_qemu_text():
    stderr = ("qemu-system-x86_64: AHCI: Failed to start FIS receive engine: bad FIS receive "
              "buffer address\nqemu-system-x86_64: load of migration failed: Operation not "
              "permitted\n")

    src, dst = _pair([{"status": "active"}, {"status": "completed"}],
                     [{"status": "inmigrate"}], stderr)
    dst.script["query-status"] = [{"status": "inmigrate"}, {"status": "inmigrate"}]

    def completed_then_dst_exits(guest):
        dst.process.returncode = 1
        return {"status": "completed", "downtime": 5}

    src.script["query-migrate"] = [{"status": "active"}, completed_then_dst_exits]
    with pytest.raises(HopFailure) as info:
        migrate(src, dst, 3)  # type: ignore[arg-type]
    f = info.value
    assert (f.kind, f.hop, f.process) == ("destination-load-failed", 3, "dst")
    assert "AHCI: Failed to start FIS receive engine" in f.detail
    assert "exited with status 1" in f.detail and "completed" in f.detail


def test_destination_killed_by_signal_is_a_death():
    src, dst = _pair([{"status": "active"}], [{"status": "inmigrate"}])

    def killed(guest):
        dst.process.returncode = -signal.SIGKILL
        return {"status": "active"}

    src.script["query-migrate"] = [killed]
    with pytest.raises(HopFailure) as info:
        migrate(src, dst, 1)  # type: ignore[arg-type]
    assert info.value.kind == "qemu-died"
    assert "SIGKILL" in info.value.detail and "dst" in info.value.detail


def test_source_failed_status_is_a_failed_migration_with_its_error():
    src, dst = _pair([{"status": "failed", "error-desc": "Unable to write to socket"}],
                     [{"status": "inmigrate"}])
    with pytest.raises(HopFailure) as info:
        migrate(src, dst, 2)  # type: ignore[arg-type]
    assert info.value.kind == "migration-failed"
    assert "Unable to write to socket" in info.value.detail


def test_source_killed_is_a_death_of_the_source():
    src, dst = _pair([{"status": "active"}], [{"status": "inmigrate"}])

    def killed(guest):
        src.process.returncode = -signal.SIGSEGV
        return {"status": "active"}

    src.script["query-migrate"] = [killed]
    with pytest.raises(HopFailure) as info:
        migrate(src, dst, 4)  # type: ignore[arg-type]
    assert info.value.kind == "qemu-died" and "SIGSEGV" in info.value.detail
    assert info.value.process == "src"


def test_completed_hop_reports_query_migrate_figures():
    src, dst = _pair([{"status": "completed", "downtime": 17, "total-time": 120,
                       "setup-time": 2, "ram": {"transferred": 88_000_000}}],
                     [{"status": "inmigrate"}, {"status": "paused"}])
    src.script["query-status"] = [{"running": False, "status": "io-error"}]  # a halted VM
    stats = migrate(src, dst, 5, connect=False)  # type: ignore[arg-type]
    assert (stats.downtime_ms, stats.qemu_total_ms, stats.ram_bytes) == (17.0, 120.0, 88_000_000)
    assert stats.destination_status == "paused"
    # The bandwidth cap is lifted before the stream starts, not after.
    sent = src.qmp.sent
    assert sent.index("migrate-set-parameters") < sent.index("migrate")


def test_running_source_but_paused_destination_is_a_failed_load():
    src, dst = _pair([{"status": "completed"}], [{"status": "paused"}])
    with pytest.raises(HopFailure) as info:
        migrate(src, dst, 6)  # type: ignore[arg-type]
    assert info.value.kind == "destination-load-failed" and "'paused'" in info.value.detail


class FakeSession:
    """The SSH session that follows the guest: records follow() and ping()."""

    migrates = True

    def __init__(self) -> None:
        self.followed: list[Any] = []
        self.pings = 0

    def follow(self, sock: Any, log_path: Path, name: str = "next") -> None:
        self.followed.append(sock)

    def ping(self, deadline: Any) -> float:
        self.pings += 1
        return 0.01

    def ledger(self) -> str:
        return "g03: sent 96 B (last 0.40 s ago); g04: sent 0 B"


def test_the_session_follows_the_guest_to_the_destination():
    src, dst = _pair([{"status": "completed", "downtime": 7, "ram": {"transferred": 5}}],
                     [{"status": "running"}])
    session = FakeSession()
    src.shell = session  # type: ignore[assignment]
    dst.hop_sock = "dst-connection"  # type: ignore[attr-defined]
    dst.artifacts = Path("/run/fake/dst")  # type: ignore[attr-defined]
    stats = migrate(src, dst, 1)  # type: ignore[arg-type]
    assert session.followed == ["dst-connection"]
    assert session.pings == 1, "the hop must end with the guest answering on the session"
    assert (src.shell, dst.shell, dst.hop_sock) == (None, session, None)  # type: ignore[attr-defined]
    assert stats.downtime_ms == 7 and stats.ram_bytes == 5


def test_a_destination_without_its_guestfwd_connection_is_named():
    src, dst = _pair([{"status": "completed"}], [{"status": "running"}])
    src.shell = FakeSession()  # type: ignore[assignment]
    dst.hop_sock = None  # type: ignore[attr-defined]
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="no guestfwd connection"):
        migrate(src, dst, 1)  # type: ignore[arg-type]


def _binary(version: str, aliases: dict[str, str]) -> Any:
    from harness.qemu.binary import QemuBinary

    names = set(aliases) | set(aliases.values()) | {"pc-q35-7.2", "pc-i440fx-7.2"}
    return QemuBinary(Path(f"/opt/qemu-{version}"), version, f"QEMU emulator version {version}",
                      frozenset(names), tuple(aliases.items()))


def test_cross_version_pins_the_alias_to_what_the_source_means():
    from dataclasses import replace as dc_replace

    from harness.scenarios.migration.hop import pin_machine
    from harness.topology import topology_from_dict

    src = _binary("7.2.22", {"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"})
    dst = _binary("10.0.2", {"q35": "pc-q35-10.0", "pc": "pc-i440fx-10.0"})
    plan = mock_plan(src, topology_from_dict({"machine": "q35"}))
    pinned = pin_machine(plan, dst)
    assert pinned.topology.machine == "pc-q35-7.2", pinned.topology.machine
    assert pinned.topology.kind == "q35"
    versioned = dc_replace(plan, topology=pinned.topology)
    assert pin_machine(versioned, dst) == versioned  # already versioned: unchanged


def test_cross_version_from_the_newer_qemu_pins_what_the_older_means():
    from harness.scenarios.migration.hop import pin_machine
    from harness.topology import topology_from_dict

    new = _binary("10.0.2", {"q35": "pc-q35-10.0"})  # offers pc-q35-7.2 too
    old = _binary("7.2.22", {"q35": "pc-q35-7.2"})
    plan = mock_plan(new, topology_from_dict({"machine": "q35"}))
    assert pin_machine(plan, old).topology.machine == "pc-q35-7.2"


def test_cross_version_without_a_shared_machine_is_a_user_error():
    from dataclasses import replace as dc_replace

    from harness.errors import UserError
    from harness.scenarios.migration.hop import pin_machine
    from harness.topology import topology_from_dict

    new = dc_replace(_binary("10.0.2", {"q35": "pc-q35-10.0"}),
                     machines=frozenset({"q35", "pc-q35-10.0", "pc-q35-8.0"}))
    old = _binary("7.2.22", {"q35": "pc-q35-7.2"})
    plan = mock_plan(new, topology_from_dict({"machine": "q35"}))
    with pytest.raises(UserError, match="has no machine type pc-q35-10.0"):
        pin_machine(plan, old)
    with pytest.raises(UserError, match="has no machine type pc-q35-7.2"):
        pin_machine(mock_plan(old, topology_from_dict({"machine": "q35"})), new)


def mock_plan(binary: Any, topology: Any) -> Any:
    from harness.guest.running import LaunchPlan

    return LaunchPlan(binary=binary, accel=None, image=None,  # type: ignore[arg-type]
                      topology=topology)


class BrokenSession(FakeSession):
    def ping(self, deadline: Any) -> float:
        from harness.guest.ssh import SshUnavailable

        raise SshUnavailable("the guest's sshd does not answer (EOF)")


class FakeLogin:
    def __init__(self) -> None:
        self.closed = False

    def succeed(self, command: str, timeout: float = 60.0) -> str:
        return ""

    def close(self) -> None:
        self.closed = True


def _broken_session_hop(login: Any) -> Any:
    src, dst = _pair([{"status": "completed"}], [{"status": "running"}])
    src.shell = BrokenSession()  # type: ignore[assignment]
    dst.hop_sock = "dst-connection"  # type: ignore[attr-defined]
    dst.artifacts = Path("/run/fake/dst")  # type: ignore[attr-defined]
    dst.login = login  # type: ignore[attr-defined]
    with pytest.raises(HopFailure) as info:
        migrate(src, dst, 4)  # type: ignore[arg-type]
    return info.value


def test_broken_session_but_a_new_login_works_blames_the_migrated_connection():
    logins: list[FakeLogin] = []

    def login(deadline: Any) -> FakeLogin:
        logins.append(FakeLogin())
        return logins[-1]

    failure = _broken_session_hop(login)
    assert failure.kind == "ssh-dead" and failure.hop == 4
    assert "does not answer on its SSH session" in failure.detail
    assert "a new SSH login works" in failure.detail and "slirp guestfwd" in failure.detail
    # The session's bytes per QEMU are part of the verdict: lost or doubled bytes show.
    assert "(session bytes: g03: sent 96 B (last 0.40 s ago); g04: sent 0 B)" \
        in failure.detail, failure.detail
    assert logins and logins[0].closed


def test_broken_session_and_no_new_login_says_so():
    from harness.guest.ssh import SshUnavailable

    def login(deadline: Any) -> FakeLogin:
        raise SshUnavailable("cannot SSH to the guest on 127.0.0.1:1234")

    failure = _broken_session_hop(login)
    assert failure.kind == "ssh-dead"
    assert "a new SSH login fails too: cannot SSH" in failure.detail, failure.detail
