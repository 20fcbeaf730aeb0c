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


def test_the_ledger_counts_each_qemus_bytes_both_ways():
    old_ours, old_qemu = _pair()
    new_ours, new_qemu = _pair()
    hop = HopSocket(old_ours, "g00")
    hop.settimeout(0.1)
    hop.sendall(b"12345")             # 5 B to g00
    old_qemu.sendall(b"abc")          # 3 B from g00, read after the follow
    hop.follow(new_ours, "g01")
    hop.sendall(b"1234567")           # 7 B to g01
    new_qemu.sendall(b"xy")
    assert hop.recv(100) == b"abc"
    assert hop.recv(100) == b"xy"
    ledger = hop.ledger()
    g00, g01 = ledger.split("; ")
    assert g00.startswith("g00: sent 5 B (last ") and "received 3 B" in g00 and "left" in g00, \
        ledger
    assert g01.startswith("g01: sent 7 B (last ") and "received 2 B" in g01 \
        and "left" not in g01, ledger


def test_unsent_counts_what_the_qemu_end_has_not_read():
    ours, qemu = _pair()
    hop = HopSocket(ours)
    assert hop.unsent() == 0
    hop.sendall(b"x" * 96)            # the size of a channel CLOSE
    assert hop.unsent() > 0
    assert qemu.recv(40) == b"x" * 40
    assert hop.unsent() > 0           # part of it still waits
    assert qemu.recv(100) == b"x" * 56
    assert hop.unsent() == 0


def test_the_ledger_without_the_current_connection():
    old_ours, _ = _pair()
    new_ours, _ = _pair()
    hop = HopSocket(old_ours, "g00")
    hop.follow(new_ours, "g01")
    assert hop.ledger(1, current=False).startswith("g00: sent 0 B"), hop.ledger(1, current=False)
    assert hop.ledger(1).startswith("g01: "), hop.ledger(1)


def test_a_closed_connection_has_nothing_unsent():
    ours, _ = _pair()
    hop = HopSocket(ours)
    hop.sendall(b"x")
    hop.close()
    assert hop.unsent() == 0
