"""HopSocket: the socket under the SSH session that follows a guest across migrations."""

import socket

import pytest

from harness.guest.hopsocket import HopSocket, guest_command, guestfwd_option


def _pair():
    ours, qemu = socket.socketpair()
    return ours, qemu


def test_reads_and_writes_the_current_connection():
    ours, qemu = _pair()
    hop = HopSocket(ours)
    hop.settimeout(0.1)
    hop.sendall(b"client")
    assert qemu.recv(100) == b"client"
    qemu.sendall(b"server")
    assert hop.recv(100) == b"server"


def test_after_follow_writes_go_to_the_new_connection_only():
    old_ours, old_qemu = _pair()
    new_ours, new_qemu = _pair()
    hop = HopSocket(old_ours)
    hop.settimeout(0.1)
    hop.follow(new_ours)
    hop.sendall(b"after")
    assert new_qemu.recv(100) == b"after"
    old_qemu.setblocking(False)
    with pytest.raises(BlockingIOError):
        old_qemu.recv(100)


def test_what_the_previous_qemu_sent_is_read_before_the_new_one():
    old_ours, old_qemu = _pair()
    new_ours, new_qemu = _pair()
    hop = HopSocket(old_ours)
    hop.settimeout(0.1)
    old_qemu.sendall(b"first")
    hop.follow(new_ours)
    new_qemu.sendall(b"second")
    assert hop.recv(100) == b"first"
    assert hop.recv(100) == b"second"


def test_the_previous_qemu_quitting_is_not_the_end_of_the_session():
    old_ours, old_qemu = _pair()
    new_ours, new_qemu = _pair()
    hop = HopSocket(old_ours)
    hop.settimeout(0.1)
    hop.follow(new_ours)
    old_qemu.close()                      # the source QEMU quits after the hop
    with pytest.raises(TimeoutError):     # paramiko retries on a timeout; no EOF
        hop.recv(100)
    new_qemu.sendall(b"still here")
    assert hop.recv(100) == b"still here"


def test_eof_of_the_current_connection_is_eof():
    ours, qemu = _pair()
    hop = HopSocket(ours)
    hop.settimeout(0.1)
    qemu.close()
    assert hop.recv(100) == b""


def test_timeout_carries_over_to_the_next_connection():
    old_ours, _old_qemu = _pair()
    new_ours, _new_qemu = _pair()
    hop = HopSocket(old_ours)
    hop.settimeout(0.05)
    hop.follow(new_ours)
    assert new_ours.gettimeout() == 0.05
    with pytest.raises(TimeoutError):
        hop.recv(100)


def test_close_closes_every_connection():
    old_ours, _ = _pair()
    new_ours, _ = _pair()
    hop = HopSocket(old_ours)
    hop.follow(new_ours)
    hop.close()
    assert old_ours.fileno() == -1 and new_ours.fileno() == -1
    assert hop._closed  # paramiko's Transport.close() looks at it


def test_netdev_option_and_guest_command_agree_on_the_address():
    option = guestfwd_option("/run/x/ssh-hop.sock")
    assert option == "guestfwd=tcp:10.0.2.100:2222-unix:/run/x/ssh-hop.sock"
    assert "nc 10.0.2.100 2222 -e /run/sshd" in guest_command("/run/sshd")
