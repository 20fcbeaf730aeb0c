"""The nightly over a real SSH gateway: a second host on this machine.

The second host is a network namespace with its own address (a veth pair),
its own SSH server (dropbear, key-only) bound inside it, its own host name
and home (a mount + UTS namespace: `~/.ssh` and `~/.cache/pci-harness` are its
own) and its own checkout + `.venv` at another path.  It is prepared the way
docs/nightly.md says a lab host is prepared: `bin/pci-harness boot --machine
q35` once in its checkout.  Then `pci-harness nightly --tx ssh=...
--tx popen//...` spreads a selection over both hosts, exactly as the docs
show.  These are nightly self-tests (deselected from the nightly itself and
from bin/test: each runs nightlies of its own).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.lab import parse_gateway

CHECKOUT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

#: A handful of quick guest tests (q35 only): enough for both hosts to get work.
#: Not the AHCI-root boots: "test_boot" also matches test_boot_from_ahci, whose
#: disk image `boot --machine q35` does not build, and the host has no network.
SELECTION = "(test_boot or test_shutdown_is_idempotent) and not ahci"
_COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "reports", "artifacts", "__pycache__",
                                      ".mypy_cache", ".ruff_cache", ".tox", "build", "*.egg-info")


def _run(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kwargs)


@dataclass
class SecondHost:
    namespace: str
    address: str
    hostname: str
    checkout: Path
    ssh_config: Path
    server: subprocess.Popen

    @property
    def tx(self) -> str:
        return (f"ssh=remote-host//ssh_config={self.ssh_config}"
                f"//python={self.checkout}/.venv/bin/python//chdir={self.checkout}")

    def pids(self) -> list[int]:
        out = _run("ip", "netns", "pids", self.namespace, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_everything(self) -> None:
        """The host goes away: every process inside it dies at once."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _free_subnet() -> str:
    used = _run("ip", "-o", "addr").stdout
    for _ in range(50):
        prefix = f"10.{random.randint(64, 250)}.{random.randint(0, 255)}"
        if f" {prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.x.y.0/30 for the second host")


def _need_tools() -> None:
    missing = [t for t in ("ip", "unshare", "ssh", "ssh-keygen", "dropbear", "dropbearkey")
               if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the second host needs {', '.join(missing)}: bin/pci-harness installs "
                    "dropbear-bin, openssh-client and iproute2; run it once")


@pytest.fixture(scope="module")
def second_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecondHost]:
    _need_tools()
    tag = f"{os.getpid() % 10000:04d}{random.randint(0, 99):02d}"
    namespace = f"pcih-{tag}"
    made = _run("ip", "netns", "add", namespace, check=False)
    if made.returncode != 0:
        pytest.skip(f"network namespaces cannot be made here: {made.stderr.strip()}")
    root = tmp_path_factory.mktemp("second-host")
    server = None
    try:
        prefix = _free_subnet()
        here, there = f"{prefix}.1", f"{prefix}.2"
        _run("ip", "link", "add", f"vh{tag}", "type", "veth", "peer", "name", f"vn{tag}")
        _run("ip", "link", "set", f"vn{tag}", "netns", namespace)
        _run("ip", "addr", "add", f"{here}/30", "dev", f"vh{tag}")
        _run("ip", "link", "set", f"vh{tag}", "up")
        _run("ip", "-n", namespace, "addr", "add", f"{there}/30", "dev", f"vn{tag}")
        _run("ip", "-n", namespace, "link", "set", f"vn{tag}", "up")
        _run("ip", "-n", namespace, "link", "set", "lo", "up")

        # Its own checkout and venv, at another path than ours.
        checkout = root / "srv" / "pci-harness"
        shutil.copytree(CHECKOUT, checkout, ignore=_COPY_IGNORE, symlinks=True)
        home = root / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
        env.pop("PCI_HARNESS_CACHE", None)
        # Preparing a host is one command run there (docs/nightly.md); it builds the
        # venv, the guest image into the host's own cache and boots a guest once.
        # It runs before the host is cut off (the namespace has no route to the
        # package mirror), as a lab host is prepared while it is on the network.
        prepared = _run(str(checkout / "bin" / "pci-harness"), "boot", "--machine", "q35",
                        "--timeout-multiplier", "4", check=False, env=env, cwd=checkout,
                        timeout=900)
        assert prepared.returncode == 0, f"preparing the second host failed:\n{prepared.stderr}"

        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client_key"))
        (home / ".ssh" / "authorized_keys").write_text((root / "client_key.pub").read_text())
        (home / ".ssh" / "authorized_keys").chmod(0o600)
        _run("dropbearkey", "-t", "ed25519", "-f", str(root / "host_key"))
        hostname = f"lab-{tag}"
        # Own UTS (host name) and mount namespace: /root is the host's own home there.
        script = (f"mount --make-rprivate / && hostname {hostname} && "
                  f"mount --bind {home} /root && "
                  f"exec dropbear -F -E -s -p {there}:22 -r {root / 'host_key'}")
        server = subprocess.Popen(["ip", "netns", "exec", namespace, "unshare", "--mount",
                                   "--uts", "sh", "-c", script],
                                  stdout=subprocess.DEVNULL,
                                  stderr=(root / "dropbear.log").open("w"))
        config = root / "ssh_config"
        config.write_text(f"""Host remote-host
    HostName {there}
    User root
    IdentityFile {root / 'client_key'}
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    BatchMode yes
    ConnectTimeout 10
    ServerAliveInterval 2
    ServerAliveCountMax 3
""")
        host = SecondHost(namespace, there, hostname, checkout, config, server)
        deadline = time.monotonic() + 30
        while True:
            probe = _run("ssh", "-F", str(config), "remote-host", "hostname", check=False)
            if probe.returncode == 0 and probe.stdout.strip() == hostname:
                break
            assert time.monotonic() < deadline, (
                f"the second host's SSH never answered: {probe.stderr.strip()}\n"
                + (root / "dropbear.log").read_text()[-2000:])
            time.sleep(0.3)
        yield host
    finally:
        for pid in _run("ip", "netns", "pids", namespace, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if server is not None:
            server.wait(timeout=10)
        _run("ip", "netns", "del", namespace, check=False)
        _run("ip", "link", "del", f"vh{tag}", check=False)


def _nightly(output: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "harness", "nightly", "--output", str(output),
            "--machines", "q35", "--timeout-multiplier", "4", *args]


def _report(output: Path) -> dict:
    return json.loads((output / "report.json").read_text())


def test_two_hosts_one_report(second_host: SecondHost, tmp_path: Path) -> None:
    output = tmp_path / "reports" / "two-hosts"
    argv = _nightly(output, "--tx", second_host.tx, "--tx", "popen//python=" + sys.executable,
                    "--", "-k", SELECTION)
    started = time.monotonic()
    done = _run(*argv, check=False, cwd=CHECKOUT, timeout=1200)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    report = _report(output)
    tests = report["tests"]
    hosts = {t["host"] for t in tests}
    assert hosts == {second_host.hostname, socket.gethostname()}, (
        f"tests ran on {hosts}, expected both {second_host.hostname} and "
        f"{socket.gethostname()}")
    assert all(t["worker"] for t in tests), [t["nodeid"] for t in tests if not t["worker"]]
    assert all(t["outcome"] == "passed" for t in tests), [(t["nodeid"], t["outcome"]) for t in tests]
    kinds = sorted(parse_gateway(w["spec"]).kind for w in report["runs"][0]["workers"])
    assert kinds == ["popen", "ssh"], report["runs"][0]["workers"]
    # The same selection on this host alone, with as many workers (docs/nightly.md).
    one = tmp_path / "reports" / "one-host"
    started = time.monotonic()
    alone = _run(*_nightly(one, "--jobs", "2", "--", "-k", SELECTION), check=False,
                 cwd=CHECKOUT, timeout=1200)
    one_s = time.monotonic() - started
    assert alone.returncode == 0, alone.stderr[-4000:]
    assert len(_report(one)["tests"]) == len(tests)
    print(f"nightly of {len(tests)} tests: one host (-n 2) {one_s:.1f} s, two hosts "
          f"(ssh + popen) {elapsed:.1f} s, ratio {elapsed / one_s:.2f}")


def test_a_host_that_is_not_ready_is_named_before_any_test(second_host: SecondHost,
                                                           tmp_path: Path) -> None:
    marker = second_host.checkout / "harness" / "__init__.py"
    original = marker.read_text()
    marker.write_text(original + "\n# another commit\n")
    try:
        output = tmp_path / "reports" / "not-ready"
        done = _run(*_nightly(output, "--tx", second_host.tx, "--", "-k", SELECTION),
                    check=False, cwd=CHECKOUT, timeout=300)
    finally:
        marker.write_text(original)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "remote-host: runs another harness" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not (output / "runs").exists(), "a test ran before the readiness check"


def test_a_host_lost_mid_run_is_named_and_its_tests_rerun(second_host: SecondHost,
                                                          tmp_path: Path) -> None:
    output = tmp_path / "reports" / "lost"
    argv = _nightly(output, "--tx", second_host.tx, "--tx", "popen//python=" + sys.executable,
                    "--", "-k", SELECTION)
    proc = subprocess.Popen(argv, cwd=CHECKOUT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = output / "runs" / "7.2.22" / "pytest.log"
    deadline = time.monotonic() + 600
    try:
        # Wait until the remote worker (gw0, the first --tx) has finished a test and is
        # in the middle of the run (before that xdist is still setting the host up).
        while True:
            text = log.read_text() if log.exists() else ""
            if re.search(r"^\[gw0\] \[ *\d+%\] PASSED", text, re.MULTILINE):
                break
            assert proc.poll() is None, f"the nightly ended first:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "the remote worker never started a test"
            time.sleep(0.2)
        killed = time.monotonic()
        second_host.kill_everything()
        out, _ = proc.communicate(timeout=600)
        ended = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-3000:]
    report = _report(output)
    lost = report["runs"][0]["lost_hosts"]
    assert [h["worker"] for h in lost] == ["gw0"], lost
    assert parse_gateway(lost[0]["spec"]).host == "remote-host", lost
    print(json.dumps(lost, indent=1))
    assert any("host lost" in r for r in report["reasons"]), report["reasons"]
    collected = set(json.loads((output / "runs" / "7.2.22" / "results.json").read_text())
                    ["collected"])
    outcomes = {t["nodeid"]: t["outcome"] for t in report["tests"]}
    assert collected and collected <= set(outcomes), collected - set(outcomes)
    for nodeid, outcome in lost[0]["outcomes"].items():
        assert outcome == "passed", f"{nodeid} re-run on the surviving host: {outcome}"
    leftover = _run("pgrep", "-f", str(output), check=False).stdout.split()
    assert leftover == [], f"processes of the run still alive: {leftover}"
    (tmp_path / "timing.txt").write_text(f"kill to end: {ended - killed:.1f} s\n")
    print(f"lost host: run ended {ended - killed:.1f} s after the kill; "
          f"{len(lost[0]['outcomes'])} test(s) re-run on popen")
