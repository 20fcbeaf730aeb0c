"""The QMP client against a scripted QMP peer on a socketpair (no QEMU)."""

import json
import socket
import threading

import pytest

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded
from harness.qemu.qmp import Qmp, QmpCommandError, QmpConnectionLost

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
                    "capabilities": []}}


def _commands(sock):
    """JSON objects as the client sends them (QMP needs no newline between them)."""
    decoder, buffer = json.JSONDecoder(), ""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buffer += data.decode()
        while buffer.strip():
            try:
                obj, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break
            buffer = buffer.lstrip()[end:]
            yield obj


def _serve(sock, script):
    """Answer commands per `script`: name -> list of messages to send back."""
    sock.sendall(json.dumps(GREETING).encode() + b"\n")
    for cmd in _commands(sock):
        replies = script.get(cmd["execute"], [{"return": {}}])
        if replies == "hangup":
            sock.close()
            return
        for reply in replies:
            if "return" in reply or "error" in reply:
                reply = dict(reply, id=cmd.get("id"))
            sock.sendall(json.dumps(reply).encode() + b"\n")


@pytest.fixture
def qmp_pair(tmp_path):
    def make(script):
        ours, theirs = socket.socketpair()
        threading.Thread(target=_serve, args=(theirs, script), daemon=True).start()
        return Qmp(ours, tmp_path / "qmp.log", name="fake")
    return make


def _event(name, **data):
    return {"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 0}}


def test_execute_returns_value_and_logs_transcript(qmp_pair, tmp_path):
    qmp = qmp_pair({"query-status": [{"return": {"status": "running", "running": True}}]})
    assert qmp.execute("query-status") == {"status": "running", "running": True}
    qmp.close()
    lines = [json.loads(x) for x in (tmp_path / "qmp.log").read_text().splitlines()]
    directions = [(x["dir"], x["msg"].get("execute") if isinstance(x["msg"], dict) else None)
                  for x in lines]
    assert (">", "query-status") in directions
    assert any(x["dir"] == "<" and x["msg"].get("return", {}).get("status") == "running"
               for x in lines)


def test_error_carries_qemu_text(qmp_pair):
    qmp = qmp_pair({"device_del": [{"error": {"class": "GenericError",
                                               "desc": "Device 'nope' not found"}}]})
    with pytest.raises(QmpCommandError) as info:
        qmp.execute("device_del", {"id": "nope"})
    assert info.value.desc == "Device 'nope' not found"
    assert "QEMU refused device_del: Device 'nope' not found" in str(info.value)
    qmp.close()


def test_wait_event_keeps_unmatched_events(qmp_pair):
    # One command triggers three events; waiting for the second must not
    # lose the first and third.
    qmp = qmp_pair({"device_del": [_event("DEVICE_DELETED", path="/x/virtio-backend"),
                                   _event("DEVICE_DELETED", device="d1", path="/x"),
                                   _event("STOP"),
                                   {"return": {}}]})
    qmp.execute("device_del", {"id": "d1"})
    got = qmp.wait_event("DEVICE_DELETED", Deadline(5, "unplug", scaled=False),
                         match=lambda e: e["data"].get("device") == "d1")
    assert got["data"]["device"] == "d1"
    remaining = [e["event"] for e in qmp.events()]
    assert remaining == ["DEVICE_DELETED", "STOP"]
    assert qmp.wait_event("STOP", Deadline(1, "stop", scaled=False))["event"] == "STOP"
    qmp.close()


def test_wait_event_deadline_names_what_was_seen(qmp_pair):
    qmp = qmp_pair({"cont": [_event("RESUME"), {"return": {}}]})
    qmp.execute("cont")
    with pytest.raises(DeadlineExceeded) as info:
        qmp.wait_event("DEVICE_DELETED", Deadline(0.3, "unplug of d1", scaled=False))
    assert "no DEVICE_DELETED event" in str(info.value) and "RESUME" in str(info.value)
    qmp.close()


def test_dead_peer_is_connection_lost(qmp_pair):
    qmp = qmp_pair({"quit": "hangup"})
    with pytest.raises(QmpConnectionLost):
        qmp.execute("quit", timeout=5)
    qmp.close()
    qmp.close()  # idempotent
