"""Gateways of a nightly over several hosts: parsing, readiness, lost hosts (no SSH)."""

from __future__ import annotations

import pytest

from harness.errors import UserError
from harness.lab import (
    LostHost,
    harness_hash,
    harness_parts,
    parse_gateway,
    part_hashes,
    readiness_problems,
    surviving,
)

SSH = "ssh=kvm1//python=/srv/ph/.venv/bin/python//chdir=/srv/ph//ssh_config=/etc/lab.cfg"


def test_gateway_specs_are_split_as_xdist_writes_them():
    g = parse_gateway("2*" + SSH)
    assert (g.kind, g.host, g.python, g.chdir, g.ssh_config, g.count) == (
        "ssh", "kvm1", "/srv/ph/.venv/bin/python", "/srv/ph", "/etc/lab.cfg", 2)
    # xdist reports the spec back with its execmodel first.
    back = parse_gateway("execmodel=main_thread_only//" + SSH)
    assert (back.kind, back.host) == ("ssh", "kvm1")
    assert parse_gateway("popen//python=.venv/bin/python").remote is False
    with pytest.raises(UserError, match="needs a host"):
        parse_gateway("ssh=//python=x")
    with pytest.raises(UserError, match="not KEY=VALUE"):
        parse_gateway("ssh=kvm1//chdir")


MINE = {"qemu_path": "/usr/bin/qemu-system-x86_64", "qemu_version": "7.2.22",
        "image": "abc", "harness": "h1"}


def test_a_ready_host_has_no_problems_and_each_difference_is_named():
    gateway = parse_gateway(SSH)
    assert readiness_problems(MINE, dict(MINE), gateway) == []
    other_image = readiness_problems(MINE, dict(MINE, image="other-key"), gateway)
    assert other_image == [("kvm1: its guest image other-key is not the controller's abc (another "
                           "recipe or other Debian package versions in it): build it there from "
                           "the same commit and apt state")], other_image
    problems = readiness_problems(MINE, {"qemu_path": MINE["qemu_path"], "qemu_version": "8.2.1",
                                         "image": None, "harness": "h2"}, gateway)
    assert len(problems) == 3, problems
    assert "kvm1: QEMU 8.2.1" in problems[0] and "controller runs 7.2.22" in problems[0]
    assert "kvm1: no guest image built" in problems[1]
    assert "kvm1: runs another harness" in problems[2]
    assert readiness_problems(MINE, {"error": "exit 255: Connection refused"}, gateway) == [
        "kvm1: could not ask it (exit 255: Connection refused)"]
    assert "no usable QEMU" in readiness_problems(
        MINE, dict(MINE, qemu_error="not found"), gateway)[0]


def test_a_lost_ssh_host_takes_all_its_workers_and_popen_survives():
    specs = [SSH, SSH.replace("kvm1", "kvm2"), "popen//python=p"]
    lost = ["execmodel=main_thread_only//" + SSH]
    assert surviving(specs, lost) == [SSH.replace("kvm1", "kvm2"), "popen//python=p"]
    assert surviving(specs, ["execmodel=main_thread_only//popen//python=p"]) == specs[:2]


def test_lost_host_words_name_the_running_test_and_the_fate():
    host = LostHost("gw0", "execmodel=x//" + SSH, "Not properly terminated",
                    running=("t.py::a",), not_run=("t.py::b",), rerun_on=("popen//python=p",),
                    outcomes={"t.py::a": "passed", "t.py::b": "passed"})
    words = host.words()
    assert "worker gw0 (ssh=kvm1) lost: Not properly terminated" in words
    assert "running t.py::a" in words and "1 test(s) without an outcome re-run on popen" in words
    alone = LostHost("gw0", SSH, "gone", not_run=("t.py::b",))
    assert "failed as host lost (no other host left)" in alone.words()


def _tree(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def parts(tmp_path):
    """A harness checkout in miniature: code, suite, topologies, recipes."""
    return {"code": _tree(tmp_path / "harness", {"a.py": "x = 1\n"}),
            "suite": _tree(tmp_path / "tests" / "pci", {"test_a.py": "def test(): pass\n"}),
            "topologies": _tree(tmp_path / "topologies", {"t.toml": "machine = 'q35'\n"}),
            "recipes": _tree(tmp_path / "guest-images", {"debian12/init.sh": "echo\n"})}


@pytest.mark.parametrize("part, name", [("code", "a.py"), ("suite", "test_a.py"),
                                        ("topologies", "t.toml"),
                                        ("recipes", "debian12/init.sh")])
def test_harness_hash_follows_every_part_a_worker_runs(parts, part, name):
    first, before = harness_hash(parts), part_hashes(parts)
    (parts[part] / "__pycache__").mkdir(exist_ok=True)
    (parts[part] / "__pycache__" / "a.pyc").write_bytes(b"junk")
    assert harness_hash(parts) == first, "compiled files do not count"
    (parts[part] / name).write_text("changed\n")
    assert harness_hash(parts) != first, f"a change in {part} ({name}) went unseen"
    after = part_hashes(parts)
    assert [p for p in before if before[p] != after[p]] == [part], (before, after)


def test_a_wheel_and_a_checkout_of_one_commit_hash_alike(parts, tmp_path):
    """A wheel carries the suite and recipes under harness/; the code part skips them."""
    wheel = tmp_path / "wheel" / "harness"
    _tree(wheel, {"a.py": "x = 1\n", "suite/tests/pci/test_a.py": "def test(): pass\n",
                  "suite/topologies/t.toml": "machine = 'q35'\n",
                  "guest_images/debian12/init.sh": "echo\n"})
    installed = {"code": wheel, "suite": wheel / "suite" / "tests" / "pci",
                 "topologies": wheel / "suite" / "topologies", "recipes": wheel / "guest_images"}
    assert harness_hash(installed) == harness_hash(parts)


def test_another_suite_on_a_host_is_named(parts):
    gateway = parse_gateway(SSH)
    mine = dict(MINE, harness=harness_hash(parts), harness_parts=part_hashes(parts))
    (parts["suite"] / "test_a.py").write_text("def test(): assert False\n")
    theirs = dict(MINE, harness=harness_hash(parts), harness_parts=part_hashes(parts))
    problems = readiness_problems(mine, theirs, gateway)
    assert len(problems) == 1 and "kvm1: runs another harness" in problems[0] \
        and "differing: suite)" in problems[0], problems


def test_this_hosts_hash_covers_the_checkouts_suite_and_recipes():
    roots = harness_parts()
    assert (roots["suite"] / "seed").is_dir(), roots
    assert (roots["recipes"] / "debian12" / "recipe.toml").is_file(), roots
