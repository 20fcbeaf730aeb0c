"""Switch points without QEMU: spec parsing, kallsyms lookups, the stream's runstate
rewrite, the RSP client against a scripted stub, the CLI's plan and replay rows."""

from __future__ import annotations

import argparse
import socket
import threading

import pytest

from harness.cli.switching import add_switch_options, boundaries, sweep_hops, switch_plan
from harness.deadline import Deadline
from harness.errors import UserError
from harness.qemu.gdbstub import BreakpointNotHit, GdbError, GdbStub, frame
from harness.scenarios.migration.data import HopRecord, PingPongResult
from harness.scenarios.migration.hop import HopFailure, HopStats
from harness.scenarios.migration.switchpoint import (
    Kallsyms,
    SwitchPlan,
    SwitchPoint,
    parse_switch_spec,
)
from harness.scenarios.migration.switchstop import (
    RunstateRewrite,
    StopRecord,
    disassemble,
    session_queues,
)

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000100 t helper
ffffffff81000180 D some_data
ffffffffc0310c80 t ahci_qc_issue\t[libahci]
ffffffffc0310d40 t ahci_qc_fill_rtf\t[libahci]
ffffffffc0400000 t vp_notify\t[virtio_pci]
"""


@pytest.mark.parametrize(("text", "point"), [
    ("ahci_qc_issue", SwitchPoint("ahci_qc_issue")),
    ("ahci_qc_issue+0x10", SwitchPoint("ahci_qc_issue", 0x10)),
    ("ahci_qc_issue+16", SwitchPoint("ahci_qc_issue", 16)),
    ("ahci_qc_issue@3", SwitchPoint("ahci_qc_issue", nth=3)),
    ("ahci_qc_issue:return", SwitchPoint("ahci_qc_issue", at_return=True)),
    ("vp_notify:return@2", SwitchPoint("vp_notify", nth=2, at_return=True)),
])
def test_specs_parse_and_print_back(text, point):
    assert parse_switch_spec(text) == point
    assert parse_switch_spec(point.spec()) == point   # the replay text names the same stop


@pytest.mark.parametrize("text", ["", "ahci_qc_issue+", "1abc", "x@0", "x+0x10:return",
                                  "random:", "random:a,1b", "ahci qc"])
def test_bad_specs_are_user_errors_that_say_the_forms(text):
    with pytest.raises(UserError) as err:
        parse_switch_spec(text)
    assert "--switch-at" in err.value.message, err.value.message


def test_random_plan_is_reproducible_per_hop_from_the_seed():
    plan = SwitchPlan("random", symbols=("a", "b", "c"), max_steps=40, seed=7)
    first = [plan.for_hop(h) for h in range(1, 30)]
    assert first == [plan.for_hop(h) for h in range(1, 30)]
    assert plan.for_hop(12) == SwitchPlan("random", symbols=("a", "b", "c"), max_steps=40,
                                          seed=7).for_hop(12)
    assert {p.symbol for p in first} == {"a", "b", "c"}
    assert all(0 <= p.steps < 40 for p in first)
    other = [SwitchPlan("random", symbols=("a", "b", "c"), max_steps=40, seed=8).for_hop(h)
             for h in range(1, 30)]
    assert other != first


def test_sweep_adds_one_step_per_hop():
    plan = SwitchPlan("sweep", point=SwitchPoint("ahci_qc_issue"))
    assert [plan.for_hop(h).steps for h in (1, 2, 40)] == [0, 1, 39]


def test_kallsyms_resolves_and_names_module_functions():
    syms = Kallsyms(KALLSYMS)
    assert len(syms) == 5  # the data symbol is not text
    assert syms.function("ahci_qc_issue") == (0xffffffffc0310c80, 0xc0, "libahci")
    assert syms.resolve(SwitchPoint("ahci_qc_issue", 0xbf)) == 0xffffffffc0310d3f
    assert str(syms.locate(0xffffffffc0310c8b)) == "ahci_qc_issue+0xb [libahci]"
    assert str(syms.locate(0xffffffff81000104)) == "helper+0x4"


def test_kallsyms_bad_inputs_name_the_problem():
    syms = Kallsyms(KALLSYMS)
    with pytest.raises(UserError, match="no function 'ahci_qc_isue'.*similar: ahci_qc_issue"):
        syms.function("ahci_qc_isue")
    with pytest.raises(UserError, match=r"offset 0xc0 is outside ahci_qc_issue, which is "
                                        r"0xc0 bytes"):
        syms.resolve(SwitchPoint("ahci_qc_issue", 0xc0))
    hidden = "\n".join("0000000000000000 " + line.split(" ", 1)[1]
                       for line in KALLSYMS.splitlines())
    with pytest.raises(UserError, match="every address as 0"):
        Kallsyms(hidden)


SECTION = b"\x04\x00\x00\x00\x21\x0bglobalstate\x00\x00\x00\x00\x00\x00\x00\x01"


def _stream(runstate: bytes) -> bytes:
    buffer = runstate + b"\x00" * (100 - len(runstate))
    return b"RAM" * 1000 + SECTION + len(runstate + b"\x00").to_bytes(4, "big") + buffer + \
        b"\x7e\x00\x00\x00\x21" + b"tail" * 50


@pytest.mark.parametrize("chunk", [1, 7, 39, 40, 41, 4096])
def test_runstate_rewrite_changes_only_the_globalstate_field_across_any_split(chunk):
    stream = _stream(b"debug")
    rewrite = RunstateRewrite()
    out = b"".join(rewrite.feed(stream[i:i + chunk]) for i in range(0, len(stream), chunk))
    out += rewrite.flush()
    assert out == _stream(b"paused"), (len(out), len(stream))
    assert rewrite.count == 1


def test_runstate_rewrite_leaves_other_runstates_and_lookalikes_alone():
    for stream in (_stream(b"running"), _stream(b"io-error"),
                   b"globalstate\x00\x00\x00\x06debug\x00\x00" * 3):
        rewrite = RunstateRewrite()
        assert rewrite.feed(stream) + rewrite.flush() == stream
        assert rewrite.count == 0


def test_disassembly_of_the_bytes_read_at_the_pc():
    text = disassemble(bytes.fromhex("488b91f8350000"), 0xffffffffc0310c8b)
    if text is None:
        pytest.skip("no objdump (binutils) on this host")
    assert text == "mov 0x35f8(%rcx),%rdx", text


class ScriptedStub:
    """A gdbstub that answers each request from a script (request -> replies)."""

    def __init__(self, script: dict[str, list[str]], greeting: list[str] | None = None):
        self.ours, theirs = socket.socketpair()
        self.script = script
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._serve, args=(theirs, greeting or []),
                                        daemon=True)
        self._thread.start()

    def _serve(self, sock: socket.socket, greeting: list[str]) -> None:
        buf = b""
        with sock:
            while True:
                data = sock.recv(4096)
                if not data:
                    return
                buf += data
                while buf[:1] in (b"+", b"\x03"):
                    if buf[:1] == b"\x03":   # an interrupt: the VM stops (SIGINT)
                        sock.sendall(frame("T02thread:01;"))
                    buf = buf[1:]
                while b"#" in buf and len(buf) >= buf.index(b"#") + 3:
                    end = buf.index(b"#")
                    packet = buf[buf.index(b"$") + 1:end].decode()
                    buf = buf[end + 3:]
                    self.seen.append(packet)
                    sock.sendall(b"+")
                    for reply in (greeting if packet == "?" else []) + \
                            self.script.get(packet, [""]):
                        sock.sendall(frame(reply))


def test_rsp_client_attach_break_continue_step_registers_memory():
    regs = (b"\x00" * 8 * 7 + (0x1000).to_bytes(8, "little") + b"\x00" * 8 * 8 +
            (0xffffffffc0310c8b).to_bytes(8, "little") + b"\x00" * 40)
    stub = ScriptedStub({"?": ["T05thread:01;"], "Z0,ffffffffc0310c80,1": ["OK"],
                         "c": ["T05thread:01;"], "s": ["T05thread:01;"], "g": [regs.hex()],
                         "mffffffffc0310c8b,4": ["488b91f8"], "z0,ffffffffc0310c80,1": ["OK"]},
                        greeting=["T02thread:01;"])
    gdb = GdbStub(stub.ours)
    d = Deadline(5, "test", scaled=False)
    # QEMU 7.2's own report of the stop comes first; the answer to `?` after it
    # is stale for the next request, which skips it (10.0.2 sends no report).
    assert gdb.request("?", d, stop_reply=True) == "T02thread:01;"
    gdb.insert_breakpoint(0xffffffffc0310c80, d)
    assert gdb.cont(d).signal == 5 and gdb.stop is not None and gdb.stop.thread == 1
    gdb.step(d)
    assert gdb.pc(d) == 0xffffffffc0310c8b
    assert gdb.register(7, d) == 0x1000
    assert gdb.read_memory(0xffffffffc0310c8b, 4, d) == bytes.fromhex("488b91f8")
    gdb.remove_breakpoint(0xffffffffc0310c80, d)
    assert stub.seen == ["?", "Z0,ffffffffc0310c80,1", "c", "s", "g", "g",
                         "mffffffffc0310c8b,4", "z0,ffffffffc0310c80,1"]
    gdb.close(detach=False)


def test_rsp_client_errors_and_a_breakpoint_never_hit():
    stub = ScriptedStub({"Z0,10,1": [""], "Z1,10,1": ["E22"], "c": [], "m10,4": ["E14"]})
    gdb = GdbStub(stub.ours)
    d = Deadline(5, "test", scaled=False)
    with pytest.raises(GdbError, match="does not support 'Z0'"):
        gdb.insert_breakpoint(0x10, d)
    with pytest.raises(GdbError, match="answered 'E22'"):
        gdb.insert_breakpoint(0x10, d, hardware=True)
    with pytest.raises(GdbError, match="cannot read 4 bytes at 0x10"):
        gdb.read_memory(0x10, 4, d)
    with pytest.raises(BreakpointNotHit, match="no breakpoint was hit"):
        gdb.cont(Deadline(0.3, "c", scaled=False))
    assert gdb.stop is not None and gdb.stop.signal == 2   # interrupted: stopped again
    gdb.close(detach=False)


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_switch_options(p)
    return p.parse_args(list(argv))


def test_cli_plans_and_their_conflicts():
    assert switch_plan(_args(), 1) is None
    plan = switch_plan(_args("--switch-sweep", "ahci_qc_issue", "--steps", "5"), 1)
    assert plan is not None and plan.kind == "sweep" and sweep_hops(
        _args("--switch-sweep", "x", "--steps", "5")) == 5
    at = switch_plan(_args("--switch-at", "vp_notify+0x4", "--step", "2"), 1)
    assert at is not None and at.point == SwitchPoint("vp_notify", 4, steps=2)
    rnd = switch_plan(_args("--switch-at", "random:a,b", "--steps", "9"), 5)
    assert rnd == SwitchPlan("random", symbols=("a", "b"), max_steps=9, seed=5)
    for bad in (("--switch-at", "a", "--switch-sweep", "b"), ("--step", "2"),
                ("--switch-sweep", "a+0x4"), ("--switch-at", "random:a", "--step", "1"),
                ("--switch-sweep", "a", "--steps", "0")):
        with pytest.raises(UserError):
            switch_plan(_args(*bad), 1)


def test_boundary_rows_name_the_failing_stop_and_its_replay(tmp_path):
    plan = SwitchPlan("sweep", point=SwitchPoint("ahci_qc_issue"))
    stats = HopStats(1, "g00", "g01", 0.1, 0.2, 0.0, 0.1, 0.5, 10.0, 200.0, 1.0, 1, "running")
    stop1 = StopRecord(plan.for_hop(1), 0x10, "ahci_qc_issue+0x0", "nopl", "0f1f", 0.25)
    stop2 = StopRecord(plan.for_hop(2), 0x15, "ahci_qc_issue+0x5", "push", "55", 0.25)
    result = PingPongResult(ok=False, records=[HopRecord(stats, 0.1, stop=stop1)],
                            failure=HopFailure("qemu-died", 2, "boom"), artifacts=tmp_path,
                            stops={1: stop1, 2: stop2})
    rows = boundaries(result, plan, ["pci-harness", "pingpong"])
    assert [(r["hop"], r["verdict"], r["where"]) for r in rows] == [
        (1, "ok", "ahci_qc_issue+0x0"), (2, "qemu-died", "ahci_qc_issue+0x5")]
    assert rows[0]["hop_s"] == 0.75
    assert rows[1]["replay"] == ("pci-harness pingpong --hops 1 --switch-at ahci_qc_issue "
                                 "--step 1")
    # never reached: no stop record, the plan still names the point
    result.stops = {1: stop1}
    result.failure = HopFailure("switch-point-not-reached", 2, "not hit")
    assert boundaries(result, plan, ["p"])[-1]["replay"] == "p --hops 1 --switch-at " \
                                                            "ahci_qc_issue --step 1"


USERNET = """Hub -1 (mgmt):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[ESTABLISHED]   -1       10.0.2.15 39858      10.0.2.100  2222     0    96
  TCP[TIME_WAIT]     19       127.0.0.1 36041       10.0.2.15    22     0     0
  TCP[HOST_FORWARD]  13       127.0.0.1 36041       10.0.2.15    22     0     0
"""


def test_session_queues_read_the_guestfwd_row_of_info_usernet():
    assert session_queues(USERNET) == (0, 96)
    assert session_queues(USERNET.replace("    96", "     0")) == (0, 0)
    assert session_queues(USERNET, port=2223) is None


def test_a_failed_switched_hop_says_where_the_source_was_stopped():
    """A sweep's pytest failure showed only "hop 2: ssh-dead: ...": the hop whose
    source a switch point stopped now names the place and the options to stop
    there again; a hop without a stop is left as it was."""
    from harness.scenarios.migration.pingpong import PingPong

    plan = SwitchPlan("sweep", point=SwitchPoint("ahci_qc_issue"))
    run = PingPong.__new__(PingPong)   # guarded() needs only the stops and the hop
    run.stops = {2: StopRecord(plan.for_hop(2), 0x15, "ahci_qc_issue+0x5 [libahci]", "push %rbp",
                               "55", 0.25)}
    run._hop, run.live, run.current = 2, [], None

    def failing(hop: int):
        def step():
            raise HopFailure("ssh-dead", hop, "no answer")
        return step

    with pytest.raises(HopFailure) as info:
        run.guarded(failing(2))
    assert str(info.value).startswith(
        "hop 2: ssh-dead: no answer; the source was stopped at ahci_qc_issue+0x5 [libahci] "
        "(push %rbp) [--switch-at ahci_qc_issue --step 1]"), str(info.value)
    assert info.value.detail.endswith("[--switch-at ahci_qc_issue --step 1]")
    with pytest.raises(HopFailure) as info:
        run.guarded(failing(3))
    assert str(info.value) == "hop 3: ssh-dead: no answer.", str(info.value)


def test_a_mismatch_or_stall_found_before_a_hop_is_a_hop_failure_of_its_kind():
    """make_room and inject may check a full ring before the hop: what they find is
    the hop's data-mismatch or load-stalled, not a harness error."""
    from harness.scenarios.migration.pingpong import PingPong
    from harness.workloads.disk import DataMismatch, LoadStalled

    run = PingPong.__new__(PingPong)
    run._hop, run.current = 3, None
    assert run._between_hops(lambda: "ok") == "ok"
    for exc, kind in ((DataMismatch("ahci: block 7 read back wrong", disk="ahci", block=7),
                       "data-mismatch"), (LoadStalled("the ahci load is stuck"), "load-stalled")):
        def step(exc=exc):
            raise exc
        with pytest.raises(HopFailure) as info:
            run._between_hops(step)
        assert (info.value.kind, info.value.hop) == (kind, 3), info.value
        assert info.value.detail == f"before the hop: {exc.message}", info.value.detail
