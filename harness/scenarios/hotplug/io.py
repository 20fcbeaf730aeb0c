"""A hot-plugged disk's data and I/O: the guest's write loop for surprise
removal, and the host's check of the block the guest wrote (its pattern is
loads.block_bytes, made independently by host and guest)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded
from harness.guest.running import Guest
from harness.workloads.blocks import BLOCK_SIZE, block_bytes

__all__ = ["IO_DIR", "IoLoad", "IoState", "host_block_ok"]

IO_DIR = "/tmp/pcih-hpio"


@dataclass(frozen=True)
class IoState:
    ok: int          # completed 64 KiB synchronous writes
    errors: int      # writes that failed (the application saw an error)
    stopped: bool    # the loop ended on its own (after 3 errors) or was stopped
    error_text: str  # what dd printed for the failures


class IoLoad:
    """Synchronous writes to a hot-plugged disk in a guest background loop, for
    surprise removal: the loop holds the device open on fd 3 (a vanished /dev
    node must not turn into a regular file that `dd of=` would happily create),
    counts failures the application sees and ends by itself after three."""

    def __init__(self, guest: Guest, device: str):
        self.guest = guest
        self.device = device

    def start(self) -> None:
        script = (f"exec 3>{shlex.quote(self.device)} || exit 1\n"
                  "ok=0; err=0\n"
                  f"while [ ! -e {IO_DIR}/stop ] && [ $err -lt 3 ]; do\n"
                  f"  if dd if=/dev/zero bs=65536 count=1 conv=fsync >&3 2>>{IO_DIR}/err; "
                  "then ok=$((ok+1)); else err=$((err+1)); fi\n"
                  f"  echo \"ok=$ok err=$err\" > {IO_DIR}/state.new; "
                  f"mv {IO_DIR}/state.new {IO_DIR}/state\n"
                  "done\n"
                  f"echo stopped > {IO_DIR}/stopped\n")
        self.guest.succeed(f"rm -rf {IO_DIR}; mkdir -p {IO_DIR} && cat > {IO_DIR}/run.sh "
                           f"<<'PCIH_EOF'\n{script}PCIH_EOF\n"
                           f"echo 'ok=0 err=0' > {IO_DIR}/state")
        self.guest.succeed(f"setsid sh {IO_DIR}/run.sh </dev/null >/dev/null 2>&1 &")

    def state(self) -> IoState:
        out = self.guest.succeed(f"cat {IO_DIR}/state; test -e {IO_DIR}/stopped && "
                                 f"echo STOPPED; echo @@err; tail -5 {IO_DIR}/err 2>/dev/null;"
                                 " true")
        head, _, err = out.partition("@@err")
        fields = dict(x.split("=", 1) for x in head.split() if "=" in x)
        return IoState(int(fields.get("ok", 0)), int(fields.get("err", 0)),
                       "STOPPED" in head, err.strip())

    def wait(self, until: Callable[[IoState], bool], deadline: Deadline) -> IoState:
        while True:
            state = self.state()
            if until(state):
                return state
            if deadline.expired():
                raise DeadlineExceeded(f"{deadline.describe()}: I/O loop on {self.device} "
                                       f"is at {state}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.guest.execute(f"touch {IO_DIR}/stop")


def host_block_ok(image: Path, spec_id: str, seed: int) -> bool:
    """After the unplug: does the image hold the guest's block 1 pattern exactly?"""
    with open(image, "rb") as fh:
        fh.seek(BLOCK_SIZE)
        return fh.read(BLOCK_SIZE) == block_bytes(spec_id, seed, 1, 1)
