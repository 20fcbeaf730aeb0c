"""Debian archive plumbing for `qemu-get`, without touching the system's apt.

Pure functions (tested without network): read the mirror the machine already
uses from its apt sources (one-line and deb822 formats), build a private apt
configuration for one other suite of that mirror, parse `apt-cache show`
stanzas and dependency relations, and compare Debian versions (dpkg's
algorithm).  harness/qemu/get.py runs apt with them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError


@dataclass(frozen=True)
class Source:
    """One apt source: `deb URI SUITE COMPONENT...` (+ its signing keyring)."""

    types: tuple[str, ...]
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None


def parse_one_line(text: str) -> list[Source]:
    """sources.list lines: `deb [opt=val ...] URI SUITE COMPONENT...`."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        match = re.match(r"(\S+)\s+\[([^\]]*)\]\s+(.*)", line)
        if match:
            kind, opts, rest = match.groups()
            for item in opts.split():
                key, _, value = item.partition("=")
                options[key.lower()] = value
        else:
            kind, _, rest = line.partition(" ")
        fields = rest.split()
        if len(fields) < 2:
            continue
        out.append(Source((kind,), fields[0].rstrip("/"), (fields[1],), tuple(fields[2:]),
                          options.get("signed-by")))
    return out


def parse_deb822(text: str) -> list[Source]:
    """*.sources files: stanzas with Types, URIs, Suites, Components, Signed-By."""
    out = []
    for stanza in parse_stanzas(text, comments=True):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        types = tuple(stanza.get("types", "").split())
        signed = stanza.get("signed-by")
        # Signed-By may hold an inline key block instead of a path: keep only a path.
        signed_by = signed.strip() if signed and "\n" not in signed.strip() else None
        for uri in stanza.get("uris", "").split():
            out.append(Source(types, uri.rstrip("/"), tuple(stanza.get("suites", "").split()),
                              tuple(stanza.get("components", "").split()), signed_by))
    return out


def system_sources(etc_apt: Path = Path("/etc/apt")) -> list[Source]:
    """Every apt source the machine is configured with."""
    found: list[Source] = []
    paths = [etc_apt / "sources.list"]
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        paths += sorted(parts.iterdir())
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            found += parse_deb822(text)
        elif path.suffix == ".list" or path.name == "sources.list":
            found += parse_one_line(text)
    return found


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "VERSION_CODENAME" and value.strip('"'):
                return value.strip('"')
    except OSError:
        pass
    raise UserError(f"{os_release} names no VERSION_CODENAME: this does not look like Debian",
                    fix="qemu-get needs a Debian host with the Debian archive in its apt sources")


def source_for(sources: Iterable[Source], suite: str, codename: str) -> Source:
    """The configured source that already serves `suite` (bookworm-security from
    the security archive), else the main archive's, asked for `suite`."""
    listed = list(sources)
    for source in listed:
        if "deb" in source.types and suite in source.suites and "main" in source.components:
            return source
    return archive_source(listed, codename)


def archive_source(sources: Iterable[Source], codename: str) -> Source:
    """The source of the main Debian archive: the one that serves `codename`
    itself (not -security, not a third-party repository) with `main`."""
    for source in sources:
        if "deb" in source.types and codename in source.suites and "main" in source.components:
            return source
    raise UserError(f"no apt source of this machine serves the Debian suite {codename!r} "
                    "with component main, so there is no mirror to fetch another suite from",
                    fix="add the Debian archive to /etc/apt/sources.list(.d) as for "
                        "`apt-get install`")


@dataclass(frozen=True)
class AptConfig:
    """A private apt state directory: its own sources, lists and cache, an
    empty dpkg status (so only the suite's versions are seen), and the system's
    apt.conf.d kept (proxy settings apply)."""

    root: Path

    @property
    def sources_list(self) -> Path:
        return self.root / "sources.list"

    def source_line(self, source: Source, suite: str) -> str:
        options = f"[signed-by={source.signed_by}] " if source.signed_by else ""
        return f"deb {options}{source.uri} {suite} main\n"

    def options(self, sandbox_user: str | None = None) -> list[str]:
        settings = {
            "Dir::Etc::sourcelist": str(self.sources_list),
            "Dir::Etc::sourceparts": "-",
            "Dir::State::Lists": str(self.root / "lists"),
            "Dir::State::status": str(self.root / "status"),
            "Dir::Cache": str(self.root / "cache"),
            "Acquire::Languages": "none",
        }
        if sandbox_user:
            settings["APT::Sandbox::User"] = sandbox_user
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def prepare(self, source: Source, suite: str) -> None:
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        self.sources_list.write_text(self.source_line(source, suite))


# ---- apt-cache show ----

def parse_stanzas(text: str, comments: bool = False) -> list[dict[str, str]]:
    """RFC822-style stanzas; keys lower-cased, continuation lines joined with \\n."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if comments and line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key is not None:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


@dataclass(frozen=True)
class Relation:
    name: str
    op: str | None = None       # "=", ">=", "<=", ">>", "<<"
    version: str | None = None

    def holds(self, version: str) -> bool:
        if self.op is None or self.version is None:
            return True
        order = compare_versions(version, self.version)
        return {"=": order == 0, ">=": order >= 0, "<=": order <= 0,
                ">>": order > 0, "<<": order < 0}[self.op]


def parse_relations(text: str) -> list[list[Relation]]:
    """`a (>= 1), b | c` -> [[a>=1], [b, c]] (architecture qualifiers dropped)."""
    out = []
    for group in text.split(","):
        alternatives = []
        for item in group.split("|"):
            match = re.match(r"\s*([a-z0-9][a-z0-9+.-]*)(?::\S+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?",
                             item)
            if match and match.group(1):
                op = match.group(2)
                alternatives.append(Relation(match.group(1), {"<": "<=", ">": ">="}.get(op, op)
                                             if op else None, match.group(3)))
        if alternatives:
            out.append(alternatives)
    return out


# ---- Debian version comparison (dpkg's verrevcmp) ----

def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.partition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version a sorts before, equal to or after b."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def upstream_version(version: str) -> str:
    """1:10.0.2+ds-2+deb13u1~bpo12+1 -> 10.0.2 (what `qemu -version` says)."""
    return re.split(r"[+~-]", _split(version)[1])[0]
