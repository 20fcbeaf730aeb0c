"""GuestShell error mapping with a mocked paramiko transport (no guest)."""

from unittest import mock

import paramiko
import pytest

from harness.guest.ssh import GuestShell, SshKey, SshUnavailable


def _shell(tmp_path, transport):
    shell = GuestShell(2222, SshKey(), tmp_path / "ssh.log")
    client = mock.Mock()
    client.get_transport.return_value = transport
    shell._client = client
    return shell


def test_channel_failure_is_ssh_unavailable_not_a_paramiko_traceback(tmp_path):
    transport = mock.Mock()
    transport.is_active.return_value = True
    transport.open_session.side_effect = paramiko.SSHException("Timeout opening channel.")
    shell = _shell(tmp_path, transport)
    with pytest.raises(SshUnavailable, match="Timeout opening channel"):
        shell.execute("dmesg")
    assert "$ dmesg" in (tmp_path / "ssh.log").read_text()


def test_status_and_combined_output(tmp_path):
    channel = mock.Mock()
    channel.recv.side_effect = [b"out\n", b"err\n", b""]
    channel.recv_exit_status.return_value = 3
    transport = mock.Mock()
    transport.is_active.return_value = True
    transport.open_session.return_value = channel
    shell = _shell(tmp_path, transport)
    assert shell.execute("cmd") == (3, "out\nerr\n")
    channel.set_combine_stderr.assert_called_once_with(True)
    assert "# status 3" in (tmp_path / "ssh.log").read_text()


def test_inactive_transport(tmp_path):
    transport = mock.Mock()
    transport.is_active.return_value = False
    with pytest.raises(SshUnavailable, match="gone"):
        _shell(tmp_path, transport).execute("true")


def test_ping_round_trip_opens_and_closes_a_channel(tmp_path):
    channel = mock.Mock()
    transport = mock.Mock()
    transport.is_active.return_value = True
    transport.open_session.return_value = channel
    shell = _shell(tmp_path, transport)
    from harness.deadline import Deadline

    assert shell.ping(Deadline(5, "ping", scaled=False)) >= 0
    channel.close.assert_called_once()
    assert "# ping: sshd answered" in (tmp_path / "ssh.log").read_text()


def test_ping_without_answer_is_ssh_unavailable(tmp_path):
    transport = mock.Mock()
    transport.is_active.return_value = True
    transport.open_session.side_effect = paramiko.SSHException("Timeout opening channel.")
    from harness.deadline import Deadline

    with pytest.raises(SshUnavailable, match="does not answer"):
        _shell(tmp_path, transport).ping(Deadline(1, "ping", scaled=False))


def test_a_login_session_cannot_follow_a_migration(tmp_path):
    shell = _shell(tmp_path, mock.Mock())
    assert not shell.migrates
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="cannot follow"):
        shell.follow(mock.Mock(), tmp_path / "other.log")


def test_output_ended_but_no_exit_status_ends_at_the_deadline(tmp_path):
    """A guest that freezes after closing a command's output never sends its exit
    status: execute must give up at its deadline, not wait forever."""
    import threading

    from harness.errors import DeadlineExceeded

    channel = mock.Mock()
    channel.recv.side_effect = [b"half", b""]
    channel.status_event = threading.Event()  # never set
    channel.recv_exit_status.side_effect = AssertionError("would block forever")
    transport = mock.Mock()
    transport.is_active.return_value = True
    transport.open_session.return_value = channel
    shell = _shell(tmp_path, transport)
    with pytest.raises(DeadlineExceeded, match="no exit status came") as info:
        shell.execute("frozen", timeout=0.3)
    assert "half" in (info.value.tail or "")
    assert "# status TIMEOUT" in (tmp_path / "ssh.log").read_text()


def test_a_migrating_session_settles_only_when_qemu_has_read_every_byte(tmp_path):
    """paramiko marks a channel closed before its thread writes the CLOSE answer:
    settle must not end on `closed` alone.  It pings (a round trip behind that
    answer) and then waits until the QEMU end has read all (the send queue)."""
    import socket

    from harness.deadline import Deadline
    from harness.guest.hopsocket import HopSocket

    ours, qemu = socket.socketpair()
    hop_socket = HopSocket(ours, "g01")
    events: list[str] = []
    ping_channel = mock.Mock()
    ping_channel.close.side_effect = lambda: (events.append("ping"),
                                              hop_socket.sendall(b"c" * 96))
    transport = mock.Mock()
    transport.is_active.return_value = True
    transport.open_session.return_value = ping_channel
    shell = GuestShell(None, SshKey(), tmp_path / "ssh.log")
    shell._session = transport
    shell._hop_socket = hop_socket
    shell._last_channel = mock.Mock(closed=True)
    # QEMU has not read the ping's CLOSE: not settled.
    assert shell.settle(Deadline(0.3, "settle", scaled=False)) is False
    assert events == ["ping"]
    # A QEMU that reads what arrives: settled.
    import threading

    threading.Thread(target=lambda: [qemu.recv(4096) for _ in range(3)], daemon=True).start()
    assert shell.settle(Deadline(2, "settle", scaled=False)) is True
    assert hop_socket.unsent() == 0
    assert events == ["ping", "ping"]
    # A channel still open (no CLOSE from sshd yet) is not settled either, and no ping.
    shell._last_channel = mock.Mock(closed=False)
    assert shell.settle(Deadline(0.2, "settle", scaled=False)) is False
    assert events == ["ping", "ping"]
