"""The failing hop replayed from its kept state (issue 23 point 13), nightly.

Where QEMU loses dirty pages under TCG (the known gap tcg-migration-loses-
dirty-pages: 7.2.22), a ping-pong under the memory load with --keep-states 1
fails at the switchover with lost-dirty-pages.  Its reproduce.sh must start the
failing hop's replay first: the destination from that hop's own kept stream
and disks, paused after loading.  Dumped there, the pages the run named differ
from the source's contents of them (kept in states/hopNN/source-pages.bin) as
they did in the run, and hold what the destination held then.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.deadline import Deadline
from harness.qemu.facts import parse_version
from harness.qemu.known import KNOWN_GAPS
from harness.qemu.qmp import Qmp
from harness.scenarios.migration.ramdiff import core_pages, load_pages

GAP = next(g for g in KNOWN_GAPS if g.id == "tcg-migration-loses-dirty-pages")


def _qmp_when_listening(path: Path, deadline: Deadline, transcript: Path) -> Qmp:
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            return Qmp(sock, transcript, name="replay")
        except OSError:
            sock.close()
            if deadline.expired():
                raise
            time.sleep(0.1)


def test_the_failing_hop_replays_with_the_same_pages_lost(tmp_path, harness_factory,
                                                          harness_settings):
    binary = harness_factory.binary
    if not GAP.holds(parse_version(binary.version), "q35"):
        pytest.skip(f"QEMU {binary.version} does not lose dirty pages ({GAP.scope()}): no "
                    "failing hop to replay")
    env = dict(os.environ, PCI_HARNESS_ARTIFACTS=str(tmp_path / "artifacts"))
    run = subprocess.run(
        [sys.executable, "-m", "harness", "pingpong", "--machine", "q35", "--load", "memory",
         "--memory-rate", "128", "--keep-states", "1", "--hops", "40", "--seed", "51",
         "--qemu-binary", str(binary.path), "--accel", harness_factory.accel.name,
         "--timeout-multiplier", str(harness_settings.timeout_multiplier), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800, check=False)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    failure = report.get("failure")
    assert failure is not None and failure["kind"] == "lost-dirty-pages", (
        report.get("failures"), run.stderr[-2000:])
    hop = failure["hop"]
    artifacts = Path(report["artifacts"])
    replay = artifacts / f"replay-hop{hop:02d}.sh"
    assert replay.exists(), sorted(p.name for p in artifacts.iterdir())
    reproduce = (artifacts / "reproduce.sh").read_text()
    first_exec = next(line for line in reproduce.splitlines() if "exec " in line)
    assert str(replay) in first_exec, reproduce
    source = load_pages(artifacts / "states" / f"hop{hop:02d}" / "source-pages.bin")
    listed = (artifacts / f"ram-diff-hop-{hop}.txt").read_text()
    named = [int(a, 16) for a in re.findall(r"^guest-physical (0x[0-9a-f]+):", listed, re.MULTILINE)]
    assert named and sorted(source) == sorted(named), (sorted(source)[:5], named[:5])

    # reproduce.sh (no argument) execs the replay: paused after loading the stream.
    proc = subprocess.Popen([str(artifacts / "reproduce.sh")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, start_new_session=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("QMP socket: "), line
        qmp = _qmp_when_listening(Path(line.split(": ", 1)[1].strip()),
                                  Deadline(60, "the replay's QMP socket"), tmp_path / "qmp.log")
        deadline = Deadline(300, "the replay loading the kept stream")
        status = qmp.execute("query-status")["status"]
        while status == "inmigrate" and not deadline.expired():
            time.sleep(0.2)
            status = qmp.execute("query-status")["status"]
        assert status in ("paused", "prelaunch"), f"the replay is {status!r}, not paused"
        dump = tmp_path / "replay.core"
        qmp.execute("dump-guest-memory", {"paging": False, "protocol": f"file:{dump}"},
                    timeout=300)
        with open(dump, "rb") as core:
            replayed = core_pages(core.read(), sorted(source))
        qmp.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    same = [a for a in sorted(source) if replayed[a] == source[a]]
    assert not same, (f"{len(same)} of the {len(source)} pages the run found lost are "
                      f"identical to the source in the replay: first {same[0]:#x}")
    words = dict(re.findall(r"^guest-physical (0x[0-9a-f]+): first difference at \+0x[0-9a-f]+, "
                            r"source 0x[0-9a-f]+, destination (0x[0-9a-f]+)", listed, re.MULTILINE))
    for address, word in words.items():
        page = int(address, 16)
        offset = next(i for i in range(4096) if replayed[page][i] != source[page][i])
        got = int.from_bytes(replayed[page][offset - offset % 8:offset - offset % 8 + 8],
                             "little")
        assert got == int(word, 16), (f"page {address}: the replay holds {got:#018x} where the "
                                      f"run's destination held {word}")
