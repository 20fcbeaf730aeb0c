"""Keep what each destination was given, so a failing hop can be replayed alone.

`--keep-states K` keeps, for the last K hops, the migration stream exactly as
the destination read it and the disks exactly as they were when it finished
loading, and writes `replay-hopNN.sh`, which starts that destination again
from them (`-incoming exec:cat STREAM`), paused before it runs its first
instruction (-S: attach a debugger, dump its RAM, then `cont` over QMP).  A QEMU
developer can rerun the failing step alone, under gdb or with traces, as often
as needed: the script works on copies, the kept files stay as they were.  A hop
that fails after its state was kept (lost dirty pages found at the switchover,
a crash right after resume) gets its script like any other.

How: the source migrates into a relay (`StreamTee`) that copies every byte
to the destination's socket and to the stream file; the destination is started
paused (-S), so after it has loaded the harness copies the disks and only then
lets it run (`cont`).  The cost per hop (bytes kept, time for the copies) is
recorded with the hop.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from harness.errors import HarnessError
from harness.guest.running import Guest

RELAY_BUF = 1 << 20


@dataclass
class KeptState:
    hop: int
    directory: Path       # stream + disks/
    stream_bytes: int = 0
    disk_bytes: int = 0
    stream_s: float = 0.0   # time the relay spent writing the stream file
    disks_s: float = 0.0    # time the disk copies added to the hop (destination paused)

    def as_dict(self) -> dict[str, float | int | str]:
        return {"hop": self.hop, "stream_bytes": self.stream_bytes,
                "disk_bytes": self.disk_bytes, "stream_write_s": round(self.stream_s, 3),
                "disk_copy_s": round(self.disks_s, 3), "directory": str(self.directory)}


class StreamRewrite(Protocol):
    def feed(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...
    def verify(self, hop: int) -> None: ...   # HarnessError when it did not do its job


class StreamTee:
    """A unix socket the source migrates into; every byte goes on to the destination
    (`target`, a QEMU migration URI: unix:PATH or tcp:HOST:PORT) and into the kept
    state's `stream` file, if any; `rewrite` may change it on the way (switchstop's
    RunstateRewrite), and the kept stream is what the destination read."""

    def __init__(self, listen_path: Path, target: str, hop: int, kept: KeptState | None = None,
                 rewrite: StreamRewrite | None = None):
        self.listen_path = listen_path
        self.target = target
        self.hop = hop
        self.stream = kept.directory / "stream" if kept is not None else None
        self.kept = kept
        self.rewrite = rewrite
        self.error: BaseException | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(listen_path))
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._run, name="stream-tee", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"unix:{self.listen_path}"

    def _connect(self) -> socket.socket:
        kind, _, where = self.target.partition(":")
        if kind == "unix":
            out = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            out.connect(where)
            return out
        host, _, port = where.rpartition(":")
        return socket.create_connection((host, int(port)), timeout=30)

    def _run(self) -> None:
        try:
            self._listener.settimeout(120)
            src, _ = self._listener.accept()
            dst = self._connect()
            dst.settimeout(None)
            back = threading.Thread(target=_copy_back, args=(dst, src), daemon=True)
            back.start()  # the destination's return path (nothing to keep)
            with src, dst, open(self.stream or os.devnull, "wb") as out:
                while True:
                    data = src.recv(RELAY_BUF)
                    end = not data
                    if self.rewrite is not None:
                        data = self.rewrite.flush() if end else self.rewrite.feed(data)
                    if data:
                        dst.sendall(data)
                        self._keep(out, data)
                    if end:
                        break
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        except BaseException as exc:  # noqa: BLE001 -- reported by close()
            self.error = exc
        finally:
            self._listener.close()

    def _keep(self, out: IO[bytes], data: bytes) -> None:
        if self.kept is None:
            return
        t0 = time.monotonic()
        out.write(data)
        self.kept.stream_s += time.monotonic() - t0
        self.kept.stream_bytes += len(data)

    def close(self, timeout: float = 30.0) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise HarnessError(f"the stream relay for hop {self.hop} did not finish "
                               f"within {timeout:g} s")
        if self.error is not None:
            raise HarnessError(f"the stream relay for hop {self.hop} failed: "
                               f"{self.error!r}")


def _copy_back(dst: socket.socket, src: socket.socket) -> None:
    try:
        while True:
            data = dst.recv(65536)
            if not data:
                return
            src.sendall(data)
    except OSError:
        return


def copy_disks(disks: Sequence[Path], kept: KeptState) -> None:
    """Copy the disk images (the destination is paused: nothing writes them)."""
    target = kept.directory / "disks"
    target.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for disk in disks:
        shutil.copyfile(disk, target / disk.name)
        kept.disk_bytes += (target / disk.name).stat().st_size
    kept.disks_s = time.monotonic() - t0


def prune(kept: list[KeptState], keep: int) -> None:
    """Remove all but the newest `keep` kept states."""
    while len(kept) > keep:
        old = kept.pop(0)
        shutil.rmtree(old.directory, ignore_errors=True)


# Holds the guestfwd socket while its parent (the shell, then QEMU by exec) lives.
_LISTENER = ("import os,socket,sys,time\n"
             "p=os.getppid();s=socket.socket(socket.AF_UNIX);s.bind(sys.argv[1]);s.listen(1)\n"
             "while os.getppid()==p: time.sleep(0.5)\n")


def write_replay(path: Path, kept: KeptState, argv: Sequence[str], run_dir: Path,
                 artifacts: Path, disks: Sequence[Path]) -> None:
    """replay-hopNN.sh: start hop NN's destination from its kept stream and disks.

    The command line is the destination's own (qemu.cmdline), with the stream
    file as `-incoming`, copies of the kept disks, QMP as a server socket and
    the console on the terminal.  Paused (-S, as the destination was): once the
    stream is loaded the guest waits for `cont` over QMP.
    """
    disk_map = {str(d): f"$RUN/{d.name}" for d in disks}
    out: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg == "-incoming":
            skip_next = True
            continue
        arg = arg.replace(str(run_dir / "authorized_keys"), str(artifacts / "authorized_keys"))
        arg = arg.replace(str(run_dir / "ssh-hop.sock"), "$RUN/ssh-hop.sock")
        for host, copy in disk_map.items():
            arg = arg.replace(host, copy)
        if arg.startswith("socket,id=qmp,"):
            arg = "socket,id=qmp,path=$RUN/qmp.sock,server=on,wait=off"
        elif arg.startswith("pipe,id=console,"):
            arg = "stdio,id=console,signal=off"
        out.append(arg)
    stream = kept.directory / "stream"
    if "-S" not in out:
        out.append("-S")
    out += ["-incoming", f"exec:cat {shlex.quote(str(stream))}"]
    quoted = " ".join('"' + a.replace('"', '\\"').replace("`", "\\`") + '"' for a in out)
    copies = " ".join(shlex.quote(str(kept.directory / "disks" / d.name)) for d in disks)
    path.write_text(
        "#!/bin/sh\n"
        f"# Starts the destination of hop {kept.hop} from exactly what it was given: the\n"
        f"# migration stream ({kept.stream_bytes} bytes) and the disks as they were when\n"
        "# it had loaded it.  It stays paused after loading (-S): attach gdb or dump its\n"
        "# RAM (dump-guest-memory), then send `cont` over QMP ($RUN/qmp.sock) to run it.\n"
        "# The serial console is on this terminal.  Run it as often as you like (it works\n"
        "# on copies); put `gdb --args` before the QEMU binary or add -trace options.\n"
        "set -e\nRUN=$(mktemp -d)\necho \"QMP socket: $RUN/qmp.sock\" >&2\n"
        f"cp {copies} \"$RUN\"/\n"
        "# The guest's migrated SSH session ends in this socket (the harness's relay).\n"
        f"python3 -c {shlex.quote(_LISTENER)} \"$RUN/ssh-hop.sock\" &\n"
        "while [ ! -S \"$RUN/ssh-hop.sock\" ]; do sleep 0.05; done\n"
        f"exec {quoted}\n")
    os.chmod(path, 0o755)


class HopRelay:
    """The relay between one hop's QEMUs: it keeps the stream (`kept`, for
    --keep-states) and/or rewrites it on the way (`rewrite`, a switch point).

    `wrap_uri` goes to `migrate` (the source sends into the relay), `before_resume`
    runs once the destination has loaded: the relay has finished by then.
    """

    def __init__(self, hop: int, destination: Guest, kept: KeptState | None = None,
                 rewrite: StreamRewrite | None = None) -> None:
        self.hop = hop
        self.destination = destination
        self.kept = kept
        self.rewrite = rewrite
        self.tee: StreamTee | None = None

    def wrap_uri(self, uri: str) -> str:
        self.tee = StreamTee(self.destination.run_dir / "tee.sock", uri, self.hop, self.kept,
                             self.rewrite)
        return self.tee.uri

    def before_resume(self, loaded: Guest) -> None:
        if self.tee is not None:
            self.tee.close()
        if self.rewrite is not None:
            self.rewrite.verify(self.hop)


class HopKeeper:
    """Keeps one hop's state: the stream the destination reads (relayed into a file
    by HopRelay) and its disks as they are once it has loaded, paused, before it runs.

    `before_resume` runs while the destination is paused, `write_replay` once the
    hop is kept.
    """

    def __init__(self, kept: KeptState, destination: Guest) -> None:
        self.kept = kept
        self.destination = destination
        self.disks = [d.path for d in destination.rendered.scratch_disks]
        self.loaded = False   # stream and disks kept: the hop can be replayed

    def before_resume(self, loaded: Guest) -> None:
        copy_disks(self.disks, self.kept)
        self.loaded = True

    def write_replay(self, artifacts: Path) -> Path:
        path = artifacts / f"replay-hop{self.kept.hop:02d}.sh"
        dst = self.destination
        write_replay(path, self.kept, dst.argv, dst.run_dir, dst.artifacts, self.disks)
        return path
