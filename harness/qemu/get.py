"""`pci-harness qemu-get SUITE`: a second QEMU from another suite of the Debian
archive this machine already uses, unpacked into the cache, ready to run.

`apt-get download` resolves nothing, so the packages are named here from
qemu-system-x86's own relations: `qemu-system-common (= V)`, the
`qemu-system-data` and `seabios` it depends on (bookworm's SeaBIOS is too old
for 10.0), and the module packages it recommends at exactly V -- QEMU also
searches the system's module directory, and a 10.0.2 that finds a 7.2 module
there aborts at the first qom-list-types.  apt runs with a private state
directory (harness/qemu/apt.py), never the system's lists or status.  The
result is a launcher script (QEMU_MODULE_DIR and -L set) that must start and
answer qom-list-types before its path is printed.  A second call finds it in
the cache and touches no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from harness.errors import HarnessError, UserError
from harness.paths import cache_root
from harness.progress import Progress
from harness.qemu import apt
from harness.qemu import install as qemu_install

PACKAGE = "qemu-system-x86"
#: Packages of QEMU's own build fetched with it when its relations name them.
COMPANIONS = ("qemu-system-common", "qemu-system-data", "seabios", "qemu-system-modules-opengl",
              "qemu-system-modules-spice", "qemu-block-extra", "qemu-system-gui")
#: Wall-clock limits (network work, unscaled).
UPDATE_S = 600.0
DOWNLOAD_S = 900.0
_SUITE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")


@dataclass(frozen=True)
class Fetched:
    path: str              # the launcher to hand to --qemu / --qemu-binary
    version: str           # what the binary says (-version): 10.0.2
    package_version: str   # 1:10.0.2+ds-2+deb13u1~bpo12+1
    suite: str


@dataclass(frozen=True)
class Pick:
    name: str
    version: str
    stanza: dict[str, str]


# ---- pure steps (unit-tested) ----

def newest(stanzas: Sequence[dict[str, str]], name: str, arch: str,
           relation: apt.Relation | None = None) -> Pick | None:
    """The newest version of `name` for `arch` (or all) that satisfies `relation`."""
    best: Pick | None = None
    for stanza in stanzas:
        if stanza.get("package") != name or stanza.get("architecture") not in (arch, "all"):
            continue
        version = stanza.get("version", "")
        if relation is not None and not relation.holds(version):
            continue
        if best is None or apt.compare_versions(version, best.version) > 0:
            best = Pick(name, version, stanza)
    return best


def companion_relations(stanza: dict[str, str]) -> list[apt.Relation]:
    """What qemu-system-x86 says about the companions (Depends, then Recommends)."""
    wanted: dict[str, apt.Relation] = {}
    for field in ("pre-depends", "depends", "recommends"):
        for group in apt.parse_relations(stanza.get(field, "")):
            for relation in group:
                if relation.name in COMPANIONS and relation.name not in wanted:
                    wanted[relation.name] = relation
    return list(wanted.values())


def glibc_needed(picks: Sequence[Pick]) -> tuple[str, str] | None:
    """(package, libc6 version) of the strictest `libc6 (>= X)` among the picks."""
    found: tuple[str, str] | None = None
    for pick in picks:
        text = ", ".join(pick.stanza.get(f, "") for f in ("pre-depends", "depends"))
        for group in apt.parse_relations(text):
            for relation in group:
                if (relation.name == "libc6" and relation.version
                        and relation.op in (">=", ">>")
                        and (found is None
                             or apt.compare_versions(relation.version, found[1]) > 0)):
                    found = (pick.name, relation.version)
    return found


def check_glibc(picks: Sequence[Pick], host_libc: str, suite: str) -> None:
    needed = glibc_needed(picks)
    if needed and apt.compare_versions(host_libc, needed[1]) < 0:
        package, version = needed
        raise UserError(
            f"{suite}'s {package} {picks[0].version} is built for a newer C library: it needs "
            f"libc6 >= {version} and this host has {host_libc}, so it cannot run here",
            fix="pick a suite built for this release (on Debian 12: bookworm-backports), or "
                "build QEMU from source and pass its build directory's binary to --qemu-binary")


def resolve(qemu_stanzas: Sequence[dict[str, str]], companion_stanzas: Sequence[dict[str, str]],
            arch: str, suite: str, host_has: Callable[[apt.Relation], bool]) -> list[Pick]:
    """qemu-system-x86 (newest for `arch`) and the companions it names, each at
    the newest version of the suite that satisfies its relation.  A companion
    missing from the suite is fine only when the host already satisfies it."""
    qemu = newest(qemu_stanzas, PACKAGE, arch)
    if qemu is None:
        raise UserError(f"the suite {suite} has no {PACKAGE} for this machine's architecture "
                        f"({arch})", fix="pick a suite that ships QEMU for it, such as "
                                         "bookworm-backports, trixie or sid")
    picks = [qemu]
    for relation in companion_relations(qemu.stanza):
        pick = newest(companion_stanzas, relation.name, arch, relation)
        if pick is not None:
            picks.append(pick)
        elif not host_has(relation):
            want = f" ({relation.op} {relation.version})" if relation.op else ""
            raise UserError(f"{PACKAGE} {qemu.version} from {suite} needs {relation.name}{want}, "
                            f"which neither {suite} nor this host has",
                            fix="pick another suite")
    return picks


# ---- running apt ----

def _run(argv: Sequence[str], timeout: float, cwd: Path | None = None
         ) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              cwd=cwd, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"`{' '.join(argv[:2])}` did not finish within {timeout:.0f} s",
                           fix="check the network and the apt proxy settings") from None


def host_arch() -> str:
    return _run(["dpkg", "--print-architecture"], 30).stdout.strip() or "amd64"


def installed_version(name: str) -> str | None:
    proc = _run(["dpkg-query", "-W", "-f=${Status}\t${Version}", name], 30)
    status, _, version = proc.stdout.partition("\t")
    return version if proc.returncode == 0 and status.endswith(" installed") else None


class Fetcher:
    """One suite's QEMU in the cache: <cache>/qemu/get/<suite>/."""

    def __init__(self, suite: str, progress: Progress, base: Path | None = None):
        if not _SUITE.fullmatch(suite):
            raise UserError(f"{suite!r} is not a Debian suite name",
                            fix="name a suite such as bookworm-backports, trixie or sid")
        self.suite = suite
        self.progress = progress
        self.base = base or cache_root() / "qemu" / "get" / suite
        self.config = apt.AptConfig(self.base / "apt")

    @property
    def marker(self) -> Path:
        return self.base / "current.json"

    def cached(self) -> Fetched | None:
        try:
            fetched = Fetched(**json.loads(self.marker.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return fetched if os.access(fetched.path, os.X_OK) else None

    def get(self, refresh: bool = False) -> Fetched:
        if not refresh and (hit := self.cached()) is not None:
            return hit
        self.base.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.base / "lock")):
            if not refresh and (hit := self.cached()) is not None:
                return hit  # another process fetched it while we waited
            try:
                return self._fetch()
            except BaseException:
                if not self.marker.exists():  # nothing worth keeping: no lists of a bad suite
                    shutil.rmtree(self.base, ignore_errors=True)
                raise

    def _apt(self, *argv: str, timeout: float = 120.0, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
        sandbox = "root" if os.geteuid() == 0 else None  # _apt cannot enter root's cache
        return _run([argv[0], *self.config.options(sandbox), *argv[1:]], timeout, cwd)

    def _update(self) -> None:
        source = apt.source_for(apt.system_sources(), self.suite, apt.host_codename())
        self.config.prepare(source, self.suite)
        self.progress(f"reading the package list of {self.suite} (private apt state in "
                      f"{self.config.root})")
        proc = self._apt("apt-get", "-q", "update", timeout=UPDATE_S)
        text = proc.stdout + proc.stderr
        if re.search(r"does not have a Release file|404\s+Not Found", text):
            raise UserError(f"the Debian archive this machine uses has no suite {self.suite!r}",
                            fix="name an existing suite, such as bookworm-backports, trixie "
                                "or sid")
        if proc.returncode != 0 or re.search(r"^(E:|W: Failed to fetch)", text, re.MULTILINE):
            raise HarnessError(f"apt-get update for {self.suite} failed",
                               fix="check the network and apt's proxy settings",
                               tail=text[-1500:])

    def _show(self, names: Sequence[str]) -> list[dict[str, str]]:
        proc = self._apt("apt-cache", "show", *names)
        return apt.parse_stanzas(proc.stdout)  # a name the suite lacks is simply absent

    def _fetch(self) -> Fetched:
        self._update()
        arch = host_arch()
        qemu_stanzas = self._show([PACKAGE])
        companions = list(COMPANIONS)
        picks = resolve(qemu_stanzas, self._show(companions) if qemu_stanzas else [], arch,
                        self.suite, _host_satisfies)
        host_libc = installed_version("libc6") or _libc_from_confstr()
        check_glibc(picks, host_libc, self.suite)
        package_version = picks[0].version
        target = self.base / re.sub(r"[^A-Za-z0-9.+~_-]", "_", package_version)
        launcher = target / "qemu-system-x86_64"
        if not (target / "root" / "usr" / "bin" / "qemu-system-x86_64").exists():
            self._download_and_unpack(picks, target)
        found = qemu_install.detect(target / "root" / "usr" / "bin" / "qemu-system-x86_64")
        qemu_install.write_launcher(found, launcher,
                                   f"QEMU {package_version} from {self.suite} (pci-harness "
                                   f"qemu-get); packages: "
                                   + ", ".join(f"{p.name}={p.version}" for p in picks))
        from harness.qemu.binary import check_starts, find_qemu

        self.progress(f"checking that QEMU {package_version} starts and answers qom-list-types")
        types = check_starts(launcher, f"QEMU {package_version} from {self.suite}")
        binary = find_qemu(launcher)
        self.progress(f"QEMU {binary.version} answers ({types} QOM types); launcher {launcher}")
        fetched = Fetched(str(launcher), binary.version, package_version, self.suite)
        self.marker.write_text(json.dumps(asdict(fetched), indent=1) + "\n")
        return fetched

    def _download_and_unpack(self, picks: Sequence[Pick], target: Path) -> None:
        debs = self.base / "debs"
        shutil.rmtree(debs, ignore_errors=True)
        debs.mkdir(parents=True)
        wanted = [f"{p.name}={p.version}" for p in picks]
        self.progress(f"downloading {' '.join(wanted)}")
        proc = self._apt("apt-get", "-q", "download", *wanted, timeout=DOWNLOAD_S, cwd=debs)
        files = sorted(debs.glob("*.deb"))
        if proc.returncode != 0 or len(files) != len(picks):
            raise HarnessError(f"apt-get download fetched {len(files)} of {len(picks)} packages",
                               fix="check the network and retry", tail=proc.stderr[-1500:])
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "root").mkdir(parents=True)
        for deb in files:
            self.progress(f"unpacking {deb.name}")
            unpacked = _run(["dpkg-deb", "-x", str(deb), str(staging / "root")], 300)
            if unpacked.returncode != 0:
                raise HarnessError(f"dpkg-deb could not unpack {deb.name}",
                                   tail=unpacked.stderr[-1500:])
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
        shutil.rmtree(debs, ignore_errors=True)


def _host_satisfies(relation: apt.Relation) -> bool:
    version = installed_version(relation.name)
    return version is not None and relation.holds(version)


def _libc_from_confstr() -> str:
    text = os.confstr("CS_GNU_LIBC_VERSION") or "glibc 0"
    return text.split()[-1]
