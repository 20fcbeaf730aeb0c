"""A nightly spread over several hosts: the gateways, their readiness, lost hosts.

No scheduler of our own: pytest-xdist runs the tests on its `--tx` gateways.
This module adds what plain xdist lacks for a lab:

- before any test runs, each `ssh=` gateway's host is asked (over the same SSH
  path and with the same Python xdist will use) what it has: the QEMU version
  at the path the run will use, the guest image (the same key as the
  controller's: same recipe, same Debian packages), and what it runs (a hash
  per part -- harness code, conformance suite, topologies, guest recipes --
  since the package version is a constant, and the same for a wheel and a
  checkout of one commit).  A host that differs is named with
  the reason before anything starts (exit 2);
- a host lost in the middle is named in the report with the tests it was
  running and what became of them (`LostHost`).

`host` in a report means the name the worker's own machine reports
(`socket.gethostname()` where the test ran); the gateway (`ssh=kvm1...` or
`popen`) that reached it is in the run's `workers`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError

#: How long a host may take to answer the readiness question (SSH login, Python start).
READY_TIMEOUT_S = 60.0


_KINDS = ("ssh", "popen", "socket", "vagrant_ssh")


@dataclass(frozen=True)
class Gateway:
    """One `--tx` spec, split into what the readiness check needs."""

    spec: str
    kind: str                    # "ssh" or "popen" (others are passed through unchecked)
    host: str | None = None      # the ssh destination
    python: str | None = None
    chdir: str | None = None
    ssh_config: str | None = None
    count: int = 1

    @property
    def remote(self) -> bool:
        return self.kind == "ssh"


def parse_gateway(spec: str) -> Gateway:
    """`[N*]ssh=HOST//python=P//chdir=D//ssh_config=F` or `[N*]popen//...`."""
    count, body = 1, spec
    head, star, rest = spec.partition("*")
    if star and head.isdigit():
        count, body = int(head), rest
    fields: dict[str, str] = {}
    kind = ""
    for part in body.split("//"):
        key, eq, value = part.partition("=")
        if key in _KINDS and not kind:  # xdist writes "execmodel=...//ssh=HOST//..." back
            kind = key
            if key == "ssh":
                if not value:
                    raise UserError(f"--tx {spec!r}: ssh= needs a host",
                                    fix="write --tx ssh=HOST//python=PATH//chdir=PATH")
                fields["host"] = value
            continue
        if not eq:
            raise UserError(f"--tx {spec!r}: {part!r} is not KEY=VALUE")
        fields[key] = value
    return Gateway(spec=spec, kind=kind, host=fields.get("host"), python=fields.get("python"),
                   chdir=fields.get("chdir"), ssh_config=fields.get("ssh_config"), count=count)


#: Subtrees of the package that are package data of another part (a wheel puts
#: the suite and the recipes under harness/; a checkout keeps them beside it).
_DATA_IN_PACKAGE = ("guest_images", "suite/tests", "suite/topologies")


def harness_parts() -> dict[str, Path]:
    """What a worker runs besides QEMU, by part: the harness code, the
    conformance suite it collects (tests/pci, topologies/) and the guest
    recipes its images are built from."""
    from harness.paths import guest_images_root, suite_root

    suite = suite_root()
    return {"code": Path(__file__).resolve().parent, "suite": suite / "tests" / "pci",
            "topologies": suite / "topologies", "recipes": guest_images_root()}


def _tree_hash(base: Path, skip: tuple[str, ...] = ()) -> str:
    digest = hashlib.sha256()
    for path in sorted(base.rglob("*")) if base.is_dir() else ():
        rel = path.relative_to(base)
        if (not path.is_file() or path.suffix == ".pyc"
                or any(part == "__pycache__" or part.startswith(".") for part in rel.parts)
                or any(rel.as_posix().startswith(prefix + "/") for prefix in skip)):
            continue
        digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def part_hashes(roots: Mapping[str, Path] | None = None) -> dict[str, str]:
    """{part: digest of its files} for `harness_parts()` (or the given roots): the
    same for a wheel and a checkout of one commit."""
    return {name: _tree_hash(root, _DATA_IN_PACKAGE if name == "code" else ())
            for name, root in (roots or harness_parts()).items()}


def harness_hash(roots: Mapping[str, Path] | None = None) -> str:
    """One digest of every part a worker runs (code, suite, topologies, recipes)."""
    return _combined(part_hashes(roots))


def _combined(parts: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def describe_this_host(qemu_binary: str | None) -> dict[str, Any]:
    """What this host offers a nightly: printed as JSON by `python -m harness.lab`."""
    from harness.errors import HarnessError
    from harness.guest.image import cached_image
    from harness.qemu.binary import find_qemu

    parts = part_hashes()
    facts: dict[str, Any] = {"hostname": socket.gethostname(), "python": sys.executable,
                             "harness": _combined(parts), "harness_parts": parts}
    try:
        binary = find_qemu(qemu_binary)
        facts.update(qemu_path=str(binary.path), qemu_version=binary.version)
    except HarnessError as exc:
        facts["qemu_error"] = exc.message
    try:
        image = cached_image()
        facts["image"] = image.key if image is not None else None
    except HarnessError as exc:
        facts["image"] = None
        facts["image_error"] = exc.message
    return facts


def ssh_argv(gateway: Gateway, command: str) -> list[str]:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    if gateway.ssh_config:
        argv += ["-F", gateway.ssh_config]
    return argv + [str(gateway.host), command]


def ask_host(gateway: Gateway, qemu_binary: str) -> dict[str, Any]:
    """Run the readiness question on the gateway's host with its Python and checkout."""
    python = gateway.python or "python3"
    command = f"{shlex.quote(python)} -m harness.lab --qemu-binary {shlex.quote(qemu_binary)}"
    if gateway.chdir:
        command = f"cd {shlex.quote(gateway.chdir)} && {command}"
    try:
        done = subprocess.run(ssh_argv(gateway, command), capture_output=True, text=True, check=False,
                              timeout=READY_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {READY_TIMEOUT_S:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: " + " / ".join(tail)}
    try:
        answer: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        return {"error": f"unreadable answer: {lines[-1][:200]}"}
    return answer


def readiness_problems(mine: Mapping[str, Any], theirs: Mapping[str, Any],
                       gateway: Gateway) -> list[str]:
    """Why the gateway's host cannot run this nightly (empty: ready)."""
    name = gateway.host or gateway.spec
    if "error" in theirs:
        return [f"{name}: could not ask it ({theirs['error']})"]
    problems = []
    if theirs.get("qemu_error"):
        problems.append(f"{name}: no usable QEMU at {mine.get('qemu_path')} "
                        f"({theirs['qemu_error']})")
    elif theirs.get("qemu_version") != mine.get("qemu_version"):
        problems.append(f"{name}: QEMU {theirs.get('qemu_version')} at "
                        f"{theirs.get('qemu_path')}, the controller runs {mine.get('qemu_version')}")
    if not theirs.get("image"):
        problems.append(f"{name}: no guest image built "
                        f"({theirs.get('image_error') or 'run `bin/pci-harness boot --machine q35` there once'})")
    elif theirs.get("image") != mine.get("image"):
        problems.append(f"{name}: its guest image {theirs.get('image')} is not the controller's "
                        f"{mine.get('image')} (another recipe or other Debian package versions "
                        "in it): build it there from the same commit and apt state")
    if theirs.get("harness") != mine.get("harness"):
        ours, their_parts = mine.get("harness_parts") or {}, theirs.get("harness_parts") or {}
        differ = [p for p in sorted(set(ours) | set(their_parts))
                  if ours.get(p) != their_parts.get(p)]
        problems.append(f"{name}: runs another harness (files hash {theirs.get('harness')}, "
                        f"the controller's {mine.get('harness')}"
                        + (f"; differing: {', '.join(differ)}" if differ else "")
                        + "): deploy the same commit there")
    return problems


def check_gateways(specs: Sequence[str], qemu_binary: str,
                   progress: Any = None) -> list[Gateway]:
    """Parse every --tx and ask each ssh host; UserError naming every host not ready."""
    gateways = [parse_gateway(s) for s in specs]
    remote = [g for g in gateways if g.remote]
    if not remote:
        return gateways
    mine = describe_this_host(qemu_binary)
    problems: list[str] = []
    for gateway in {g.host: g for g in remote}.values():
        if progress:
            progress(f"asking {gateway.host} whether it is ready")
        problems += readiness_problems(mine, ask_host(gateway, qemu_binary), gateway)
    if problems:
        raise UserError("not every host of the run is ready: " + "; ".join(problems),
                        fix="prepare each host with `bin/pci-harness boot --machine q35` in "
                            "the same commit of the harness, with the same QEMU at the same path")
    return gateways


# ---- hosts lost in the middle ----

@dataclass(frozen=True)
class LostHost:
    """A worker whose host went away while tests ran."""

    worker: str                  # xdist gateway id
    spec: str                    # its --tx spec
    error: str                   # what xdist said
    running: tuple[str, ...] = ()            # the test(s) it was running
    not_run: tuple[str, ...] = ()            # collected tests with no outcome when it was lost
    rerun_on: tuple[str, ...] = ()           # gateways the tests were re-run on
    outcomes: Mapping[str, str] = field(default_factory=dict)  # nodeid -> final outcome

    def words(self) -> str:
        names = [parse_gateway(s).host or parse_gateway(s).kind for s in self.rerun_on]
        fate = (f"re-run on {', '.join(names)}" if self.rerun_on
                else "failed as host lost (no other host left)")
        gateway = parse_gateway(self.spec)
        where = f"ssh={gateway.host}" if gateway.remote else gateway.kind
        return (f"worker {self.worker} ({where}) lost: {self.error}; running "
                f"{', '.join(self.running) or 'nothing'}; {len(self.not_run)} test(s) without "
                f"an outcome {fate}")

    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "spec": self.spec, "error": self.error,
                "running": list(self.running), "not_run": list(self.not_run),
                "rerun_on": list(self.rerun_on), "outcomes": dict(self.outcomes),
                "words": self.words()}


def surviving(specs: Sequence[str], lost_specs: Sequence[str]) -> list[str]:
    """The --tx specs whose host was not lost: an ssh host lost once is lost for all of
    its workers; a lost popen worker takes the controller's own gateways with it."""
    lost = [parse_gateway(s) for s in lost_specs]
    lost_hosts = {g.host for g in lost if g.remote}
    local_lost = any(not g.remote for g in lost)
    keep = []
    for spec in specs:
        gateway = parse_gateway(spec)
        if (gateway.host in lost_hosts) if gateway.remote else local_lost:
            continue
        keep.append(spec)
    return keep


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.lab",
                                     description="print what this host offers a nightly")
    parser.add_argument("--qemu-binary", default=None)
    args = parser.parse_args(argv)
    print(json.dumps(describe_this_host(args.qemu_binary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
