"""reproduce.sh: the same QEMU as a run started, by hand, from its artifacts
(`write_reproduce_script`), or the same harness run again (`write_reproduce`)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.plan import FIRMWARE_LOG

if TYPE_CHECKING:
    from harness.topology.render import ScratchDisk

__all__ = ["write_reproduce", "write_reproduce_script"]


def write_reproduce_script(path: Path, argv: Sequence[str], run_dir: Path,
                           artifacts: Path, overlays: Sequence[ScratchDisk] = (),
                           copies: Sequence[tuple[Path, Path]] = ()) -> None:
    """A script that starts the same QEMU by hand: QMP and console become
    server sockets in a fresh directory, so a person can attach to them.

    Overlays over a read-only image (a boot disk) are made afresh in that
    directory, so the script boots the same disk the same way as the run did,
    not the disk the run left behind; so is the firmware log.  COPIES (template,
    file the run used: OVMF's variable store) are copied afresh the same way.
    """
    prepare = "".join(
        f"qemu-img create -q -f {d.format} -b {shlex.quote(str(d.backing))} "
        f"-F {d.backing_format} \"$RUN/{d.path.name}\"\n" for d in overlays)
    prepare += "".join(f"cp {shlex.quote(str(src))} \"$RUN/{used.name}\"\n"
                       for src, used in copies)
    rewritten = []
    for arg in argv:
        arg = arg.replace(str(run_dir / "authorized_keys"), str(artifacts / "authorized_keys"))
        arg = arg.replace(f"path={artifacts / FIRMWARE_LOG}", f"path=$RUN/{FIRMWARE_LOG}")
        for disk in overlays:
            arg = arg.replace(_escape_comma(str(disk.path)), f"$RUN/{disk.path.name}")
        for _, used in copies:
            arg = arg.replace(_escape_comma(str(used)), f"$RUN/{used.name}")
        if arg.startswith("socket,id=qmp,"):
            arg = "socket,id=qmp,path=$RUN/qmp.sock,server=on,wait=off"
        elif arg.startswith("pipe,id=console,"):
            arg = "stdio,id=console,signal=off"
        rewritten.append(arg)
    quoted = " ".join('"' + a.replace('"', '\\"').replace("`", "\\`") + '"' for a in rewritten)
    path.write_text(
        "#!/bin/sh\n"
        "# Starts the same QEMU as the test did.  The serial console is on this\n"
        "# terminal; QMP listens on $RUN/qmp.sock (e.g. `qmp-shell $RUN/qmp.sock`);\n"
        f"# SSH: ssh -i {artifacts / 'id_ed25519'} -p PORT root@127.0.0.1 where PORT is\n"
        "# in `info usernet`.\n"
        "set -e\nRUN=$(mktemp -d)\necho \"QMP socket: $RUN/qmp.sock\" >&2\n"
        f"{prepare}exec {quoted}\n")
    os.chmod(path, 0o755)


def _escape_comma(value: str) -> str:
    return value.replace(",", ",,")


def write_reproduce(path: Path, argv: Sequence[str], cwd: Path,
                    replay: Path | None = None) -> None:
    """reproduce.sh: reruns the same topology, seed and hops; after a failure whose
    state was kept (--keep-states), it starts the failing hop's destination from
    that state instead (`reproduce.sh --rerun` still reruns the whole run)."""
    text = "#!/bin/sh\n"
    if replay is not None:
        text += ("# Starts the destination of the failing hop from its kept state\n"
                 f"# ({replay.name}); with --rerun, reruns the whole ping-pong.\n"
                 f"if [ \"$1\" != --rerun ]; then exec {shlex.quote(str(replay))}; fi\n"
                 "shift\n")
    text += ("# Replays the same topology, seed and hop sequence.\n"
             f"cd {shlex.quote(str(cwd))}\nexec {shlex.join(argv)} \"$@\"\n")
    path.write_text(text)
    os.chmod(path, 0o755)
