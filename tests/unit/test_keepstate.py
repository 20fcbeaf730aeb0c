"""--keep-states pieces without QEMU: the relay keeps exactly what it passes on,
and the replay script starts the destination from the kept stream and disk copies."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path

from harness.scenarios.migration.keepstate import (
    KeptState,
    StreamTee,
    copy_disks,
    prune,
    write_replay,
)


def test_relay_passes_every_byte_on_and_keeps_the_same_bytes(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="pcih-t-"))
    target = socket.socket(socket.AF_UNIX)
    target.bind(str(short / "dst.sock"))
    target.listen(1)
    received = bytearray()

    def destination() -> None:
        conn, _ = target.accept()
        with conn:
            while data := conn.recv(65536):
                received.extend(data)

    reader = threading.Thread(target=destination)
    reader.start()
    kept = KeptState(3, tmp_path)
    tee = StreamTee(short / "tee.sock", f"unix:{short / 'dst.sock'}", 3, kept)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src = socket.socket(socket.AF_UNIX)
    src.connect(str(short / "tee.sock"))
    src.sendall(payload)
    src.close()
    tee.close()
    reader.join(10)
    assert bytes(received) == payload
    assert (tmp_path / "stream").read_bytes() == payload
    assert kept.stream_bytes == len(payload)


def test_replay_script_loads_the_kept_stream_into_copies_of_the_kept_disks(tmp_path):
    run_dir, artifacts = tmp_path / "run", tmp_path / "g03"
    disk = tmp_path / "disks" / "ahci.qcow2"
    disk.parent.mkdir()
    disk.write_bytes(b"qcow2 bytes")
    kept = KeptState(3, tmp_path / "states" / "hop03")
    kept.directory.mkdir(parents=True)
    copy_disks([disk], kept)
    assert (kept.directory / "disks" / "ahci.qcow2").read_bytes() == b"qcow2 bytes"
    assert kept.disk_bytes == len(b"qcow2 bytes")
    argv = ["/usr/bin/qemu-system-x86_64", "-chardev", f"socket,id=qmp,path={run_dir}/qmp.sock",
            "-blockdev", f"driver=qcow2,file.filename={disk}",
            "-netdev", f"user,id=m,guestfwd=tcp:10.0.2.100:2222-unix:{run_dir}/ssh-hop.sock",
            "-S", "-incoming", "defer"]
    script = tmp_path / "replay-hop03.sh"
    write_replay(script, kept, argv, run_dir, artifacts, [disk])
    text = script.read_text()
    assert f"exec:cat {kept.directory / 'stream'}" in text
    assert '"-incoming" "defer"' not in text
    # paused after loading, once: a developer attaches, dumps, then sends cont
    assert text.count('"-S"') == 1 and "cont" in text
    assert "file.filename=$RUN/ahci.qcow2" in text and str(disk) not in text.split("cp ")[0]
    assert f"cp {kept.directory / 'disks' / 'ahci.qcow2'}" in text
    assert "unix:$RUN/ssh-hop.sock" in text and os.access(script, os.X_OK)


def test_only_the_last_k_states_stay(tmp_path):
    states = []
    for hop in range(1, 5):
        kept = KeptState(hop, tmp_path / f"hop{hop:02d}")
        kept.directory.mkdir()
        states.append(kept)
    prune(states, 2)
    assert [k.hop for k in states] == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hop03", "hop04"]
