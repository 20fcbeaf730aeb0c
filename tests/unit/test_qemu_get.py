"""qemu-get without network: apt sources and private configuration, version
resolution from qemu-system-x86's own relations, the glibc check, the cache."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.qemu import apt, get

DEB822 = """\
Types: deb
# a comment line between fields (the parser must skip it)
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

ONE_LINE = """\
# a comment
deb http://security.example/debian-security bookworm-security main
deb [arch=amd64 signed-by=/etc/apt/keyrings/x.gpg] https://thirdparty.example/apt bookworm stable
deb-src http://one.example/debian bookworm main
deb http://one.example/debian/ bookworm main contrib
"""

V = "1:10.0.2+ds-2+deb13u1~bpo12+1"
QEMU_STANZAS = f"""\
Package: qemu-system-x86
Version: {V}
Architecture: amd64
Depends: libaio1 (>= 0.3.93), libc6 (>= 2.34), libfdt1 (>= 1.6.1), qemu-system-common (= {V}), qemu-system-data (>> 1:10.0.2+ds~), seabios (>> 1.16.3-1~), ipxe-qemu
Recommends: qemu-utils, ovmf, qemu-system-gui (= {V}), qemu-system-modules-spice (= {V}), qemu-system-modules-opengl (= {V}), qemu-block-extra (= {V})
Description: QEMU full system emulation binaries (x86)
 a continuation line

Package: qemu-system-x86
Version: 1:9.2.1+ds-1~bpo12+1
Architecture: amd64
Depends: libc6 (>= 2.34), qemu-system-common (= 1:9.2.1+ds-1~bpo12+1)

Package: qemu-system-x86
Version: 1:11.0.0+ds-1
Architecture: arm64
Depends: libc6 (>= 2.34)
"""


def _companions(version: str = V, seabios: tuple[str, ...] = ("1.16.3-2~bpo12+1", "1.16.3-1"),
                libc: str = "2.34") -> str:
    stanzas = [f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
               f"Depends: libc6 (>= {libc})\n"
               for name, arch in (("qemu-system-common", "amd64"), ("qemu-system-data", "all"),
                                  ("qemu-system-gui", "amd64"),
                                  ("qemu-system-modules-spice", "amd64"),
                                  ("qemu-system-modules-opengl", "amd64"),
                                  ("qemu-block-extra", "amd64"))]
    stanzas += [f"Package: seabios\nVersion: {s}\nArchitecture: all\n" for s in seabios]
    # an older common that must not be taken: the relation says = V
    stanzas.append("Package: qemu-system-common\nVersion: 1:9.2.1+ds-1~bpo12+1\n"
                   "Architecture: amd64\n")
    return "\n".join(stanzas)


# ---- sources ----

def test_deb822_sources_give_the_archive_that_serves_the_hosts_codename():
    sources = apt.parse_deb822(DEB822)
    assert [s.suites for s in sources] == [("bookworm", "bookworm-updates"),
                                           ("bookworm-security",)]
    chosen = apt.archive_source(sources, "bookworm")
    assert chosen.uri == "http://mirror.example/debian"
    assert chosen.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_one_line_sources_skip_security_third_party_and_deb_src():
    sources = apt.parse_one_line(ONE_LINE)
    assert len(sources) == 4
    assert sources[1].signed_by == "/etc/apt/keyrings/x.gpg"
    chosen = apt.archive_source(sources, "bookworm")
    assert (chosen.uri, chosen.components) == ("http://one.example/debian", ("main", "contrib"))


def test_a_suite_the_machine_already_lists_comes_from_its_own_source():
    sources = apt.parse_deb822(DEB822)
    assert apt.source_for(sources, "bookworm-security", "bookworm").uri == \
        "http://mirror.example/debian-security"
    assert apt.source_for(sources, "bookworm-backports", "bookworm").uri == \
        "http://mirror.example/debian"


def test_no_archive_source_is_a_user_error():
    with pytest.raises(UserError, match="no apt source of this machine serves the Debian "
                                        "suite 'trixie-nothing'"):
        apt.archive_source(apt.parse_one_line(ONE_LINE), "trixie-nothing")
    with pytest.raises(UserError):
        apt.archive_source(apt.parse_deb822(DEB822.replace("Components: main", "Components: x")),
                           "bookworm")


def test_system_sources_reads_both_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "ignored.save").write_text(ONE_LINE)
    found = apt.system_sources(tmp_path)
    assert len(found) == 4 + 2


def test_host_codename(tmp_path):
    release = tmp_path / "os-release"
    release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n')
    assert apt.host_codename(release) == "bookworm"
    release.write_text("ID=alpine\n")
    with pytest.raises(UserError, match="names no VERSION_CODENAME"):
        apt.host_codename(release)


def test_private_apt_config_never_points_at_the_systems_state(tmp_path):
    config = apt.AptConfig(tmp_path / "apt")
    source = apt.archive_source(apt.parse_deb822(DEB822), "bookworm")
    config.prepare(source, "bookworm-backports")
    assert config.sources_list.read_text() == (
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.example/debian bookworm-backports main\n")
    options = config.options("root")
    settings = dict(o.split("=", 1) for o in options[1::2])
    assert set(options[0::2]) == {"-o"}
    assert settings["Dir::Etc::sourceparts"] == "-"
    for key in ("Dir::Etc::sourcelist", "Dir::State::Lists", "Dir::State::status",
                "Dir::Cache"):
        assert settings[key].startswith(str(tmp_path)), (key, settings[key])
    assert settings["APT::Sandbox::User"] == "root"
    assert (tmp_path / "apt" / "status").read_text() == ""  # nothing installed, as apt sees it
    assert "APT::Sandbox::User=root" not in " ".join(config.options(None))


# ---- stanzas, relations, versions ----

def test_stanzas_and_relations():
    stanzas = apt.parse_stanzas(QEMU_STANZAS)
    assert [s["version"] for s in stanzas] == [V, "1:9.2.1+ds-1~bpo12+1", "1:11.0.0+ds-1"]
    assert stanzas[0]["description"].endswith("\na continuation line")
    groups = apt.parse_relations("a (>= 1.2), b | c:any (<< 3), d (>> 1~), e (= 2)")
    assert groups == [[apt.Relation("a", ">=", "1.2")],
                      [apt.Relation("b"), apt.Relation("c", "<<", "3")],
                      [apt.Relation("d", ">>", "1~")], [apt.Relation("e", "=", "2")]]


VERSION_PAIRS = [
    ("1:10.0.2+ds-2+deb13u1~bpo12+1", "1:7.2+dfsg-7+deb12u18+b3"),
    ("1.16.3-2~bpo12+1", "1.16.3-1~"), ("1.16.3-2~bpo12+1", "1.16.3-2"),
    ("2.36-9+deb12u14", "2.38"), ("2.36-9+deb12u14", "2.34"), ("1.0~rc1", "1.0"),
    ("1.0", "1.0-0"), ("1.0a", "1.0+"), ("0:1.2", "1.2"), ("1.10", "1.9"), ("1.001", "1.1"),
    ("2:0", "1:99"), ("1.0-1", "1.0-1"), ("10.0.2+ds", "10.0.2+ds~"), ("7.2", "7.2.22"),
]


@pytest.mark.parametrize("a,b", VERSION_PAIRS)
def test_version_comparison_agrees_with_dpkg(a, b):
    ours = apt.compare_versions(a, b)
    for op, holds in (("lt", ours < 0), ("eq", ours == 0), ("gt", ours > 0)):
        dpkg = subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode
        assert (dpkg == 0) == holds, f"{a} {op} {b}: dpkg says {dpkg == 0}, we say {holds}"


def test_relation_holds():
    assert apt.Relation("seabios", ">>", "1.16.3-1~").holds("1.16.3-2~bpo12+1")
    assert not apt.Relation("seabios", ">>", "1.16.3-1~").holds("1.16.2-1")  # bookworm's
    assert apt.Relation("x", "=", V).holds(V) and not apt.Relation("x", "=", V).holds(V + "1")
    assert apt.upstream_version(V) == "10.0.2"


# ---- resolution ----

def _resolve(companions: str = _companions(), host_has=lambda r: False):
    return get.resolve(apt.parse_stanzas(QEMU_STANZAS), apt.parse_stanzas(companions),
                       "amd64", "bookworm-backports", host_has)


def test_resolution_takes_the_newest_qemu_and_its_exact_companions():
    picks = {p.name: p.version for p in _resolve()}
    assert picks == {
        "qemu-system-x86": V, "qemu-system-common": V, "qemu-system-data": V,
        "seabios": "1.16.3-2~bpo12+1", "qemu-system-gui": V, "qemu-system-modules-spice": V,
        "qemu-system-modules-opengl": V, "qemu-block-extra": V}
    assert next(iter(picks)) == "qemu-system-x86"


def test_a_module_package_at_another_version_is_not_taken():
    other = _companions().replace(f"Package: qemu-system-gui\nVersion: {V}",
                                  "Package: qemu-system-gui\nVersion: 1:10.0.2+ds-1")
    with pytest.raises(UserError, match=r"needs qemu-system-gui \(= 1:10.0.2"):
        _resolve(other)


def test_seabios_missing_from_the_suite_is_fine_only_when_the_host_satisfies_it():
    without = _companions(seabios=())
    with pytest.raises(UserError, match=r"needs seabios \(>> 1.16.3-1~\), which neither "
                                        r"bookworm-backports nor this host has"):
        _resolve(without, host_has=lambda r: r.holds("1.16.2-1"))  # bookworm's 1.16.2
    picks = _resolve(without, host_has=lambda r: r.holds("1.16.3-1"))
    assert "seabios" not in {p.name for p in picks}


def test_a_suite_without_qemu_for_this_architecture():
    only_arm = "\n".join(QEMU_STANZAS.split("\n\n")[2:])
    with pytest.raises(UserError, match=r"has no qemu-system-x86 for this machine's "
                                        r"architecture \(amd64\)"):
        get.resolve(apt.parse_stanzas(only_arm), [], "amd64", "sid", lambda r: False)


def test_glibc_check_uses_the_strictest_libc6_relation():
    picks = _resolve(_companions(libc="2.38"))
    assert get.glibc_needed(picks) == ("qemu-system-common", "2.38")
    with pytest.raises(UserError, match=r"needs libc6 >= 2.38 and this host has "
                                        r"2.36-9\+deb12u14"):
        get.check_glibc(picks, "2.36-9+deb12u14", "trixie")
    get.check_glibc(picks, "2.38-1", "trixie")  # new enough: no error
    get.check_glibc(_resolve(), "2.36-9+deb12u14", "bookworm-backports")


def test_bad_suite_names_are_refused_before_any_apt(tmp_path):
    for bad in ("", "../etc", "Bookworm", "a b"):
        with pytest.raises(UserError, match="is not a Debian suite name"):
            get.Fetcher(bad, print, base=tmp_path)


def test_a_cached_fetch_answers_without_apt(tmp_path, monkeypatch):
    launcher = tmp_path / "v" / "qemu-system-x86_64"
    launcher.parent.mkdir()
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    fetcher = get.Fetcher("bookworm-backports", print, base=tmp_path)
    fetcher.marker.write_text(json.dumps({"path": str(launcher), "version": "10.0.2",
                                          "package_version": V, "suite": "bookworm-backports"}))

    def no_apt(*args, **kwargs):
        raise AssertionError("apt must not run for a cached QEMU")

    monkeypatch.setattr(get.Fetcher, "_fetch", no_apt)
    assert fetcher.get().path == str(launcher)
    launcher.unlink()  # a cache whose launcher is gone is refetched
    with pytest.raises(AssertionError, match="apt must not run"):
        fetcher.get()


def test_a_failed_first_fetch_leaves_nothing_behind(tmp_path, monkeypatch):
    fetcher = get.Fetcher("nosuchsuite", print, base=tmp_path / "nosuchsuite")

    def fail(self):
        (self.base / "apt" / "lists").mkdir(parents=True)
        raise UserError("no suite")

    monkeypatch.setattr(get.Fetcher, "_fetch", fail)
    with pytest.raises(UserError):
        fetcher.get()
    assert not (tmp_path / "nosuchsuite").exists()


def test_cli_prints_only_the_path_on_stdout(tmp_path, monkeypatch, capsys):
    from harness import cli

    monkeypatch.setattr(get.Fetcher, "get", lambda self, refresh=False: get.Fetched(
        "/c/qemu-system-x86_64", "10.0.2", V, self.suite))
    assert cli.main(["qemu-get", "bookworm-backports"]) == 0
    assert capsys.readouterr().out == "/c/qemu-system-x86_64\n"
    assert cli.main(["qemu-get", "bookworm-backports", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out == {"path": "/c/qemu-system-x86_64", "version": "10.0.2",
                   "package_version": V, "suite": "bookworm-backports", "ok": True,
                   "failures": []}


def test_cli_error_is_one_paragraph_and_exit_2(capsys):
    from harness import cli

    assert cli.main(["qemu-get", "../x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "is not a Debian suite name" in captured.err and "Traceback" not in captured.err


def test_fetched_paths_live_under_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PCI_HARNESS_CACHE", str(tmp_path))
    assert get.Fetcher("trixie", print).base == Path(tmp_path) / "qemu" / "get" / "trixie"
