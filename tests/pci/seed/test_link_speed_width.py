"""link-speed-width: root ports at every x-speed and x-width this QEMU accepts;
the guest's LnkCap/LnkSta (config space) and sysfs link files of each port and
endpoint match the model, and a link trains to the lower of the two ends'
capabilities (PCIe Base spec 4.2.6, link training).

The accepted values are learned from QEMU: device-list-properties describes
x-speed/x-width ("2_5/5/8/16"), and every described value is then tried on a
QMP-only QEMU; refused ones fail the test (QEMU advertising what it refuses).
"""

from __future__ import annotations

import json

import pytest

from harness.errors import HarnessError
from harness.guest.functions import functions_by_path
from harness.topology import expected_view, topology_from_dict
from harness.topology.expect import PORT_SPEEDS
from harness.views import GUEST_DUMP_SCRIPT, parse_guest_view

LINK_FILES = ("max_link_speed", "max_link_width", "current_link_speed", "current_link_width")


def _advertised(make_guest) -> dict[str, list[str]]:
    probe = make_guest(topology_from_dict({"machine": "q35"}), name="props",
                       boot_guest=False, extra_args=("-S",))
    props = probe.qmp.execute("device-list-properties", {"typename": "pcie-root-port"})
    out = {p["name"]: p.get("description", "").split("/") for p in props
           if p["name"] in ("x-speed", "x-width")}
    probe.shutdown()
    if set(out) != {"x-speed", "x-width"} or not all(out.values()):
        raise HarnessError(f"pcie-root-port has no described x-speed/x-width: {props}")
    return out


def _accepted(make_guest, prop: str, values: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, refused = [], {}
    for value in values:
        topo = topology_from_dict({"machine": "q35", "device": [
            {"id": "rp", "driver": "pcie-root-port", prop: value}]})
        try:
            make_guest(topo, name=f"try-{prop}-{value}", boot_guest=False,
                       extra_args=("-S",)).shutdown()
            ok.append(value)
        except HarnessError as exc:
            refused[value] = exc.message
    return ok, refused


def _sysfs_links(guest) -> dict[str, dict[str, str]]:
    script = ("for d in /sys/bus/pci/devices/*; do for f in " + " ".join(LINK_FILES) +
              "; do [ -r $d/$f ] && echo \"$(basename $d) $f $(cat $d/$f)\"; done; done; true")
    out: dict[str, dict[str, str]] = {}
    for line in guest.succeed(script).splitlines():
        bdf, name, value = line.split(" ", 2)
        out.setdefault(bdf, {})[name] = value
    return out


def _number(text: str) -> float:
    return float(text.split()[0])


@pytest.mark.seed("link-speed-width")
def test_root_port_link_speed_and_width(make_guest, request):
    advertised = _advertised(make_guest)
    speeds, bad_speeds = _accepted(make_guest, "x-speed", advertised["x-speed"])
    widths, bad_widths = _accepted(make_guest, "x-width", advertised["x-width"])
    assert not bad_speeds and not bad_widths, (
        f"QEMU describes x-speed {advertised['x-speed']} and x-width {advertised['x-width']} "
        f"but refuses {bad_speeds} {bad_widths}")
    devices: list[dict[str, object]] = []
    for i in range(max(len(speeds), len(widths))):
        devices.append({"id": f"lp{i}", "driver": "pcie-root-port", "addr": f"{i + 2:x}.0",
                        "x-speed": speeds[i % len(speeds)], "x-width": int(widths[i % len(widths)])})
        if i % 2 == 0:
            devices.append({"id": f"le{i}", "bus": f"lp{i}",
                            "driver": "e1000e" if i % 4 == 0 else "virtio-net-pci"})
    topology = topology_from_dict({"machine": "q35", "device": devices})
    guest = make_guest(topology)
    model = expected_view(topology)
    view = parse_guest_view(guest.succeed(GUEST_DUMP_SCRIPT))
    sysfs = _sysfs_links(guest)
    functions = functions_by_path(guest)
    problems, table = [], []
    for want in model.functions:
        if want.id is None or not want.id.startswith(("lp", "le")):
            continue
        got = view.by_path().get(want.path)
        bdf = functions[want.path].bdf if want.path in functions else None
        if got is None:
            problems.append(f"{want.id}: not in the guest")
            continue
        fields = ("link_cap_speed", "link_cap_width", "link_speed", "link_width")
        seen = {f: getattr(got, f) for f in fields}
        wanted = {f: getattr(want, f) for f in fields}
        files = sysfs.get(bdf or "", {})
        from_files = {"link_cap_speed": _number(files["max_link_speed"]) if files else None,
                      "link_cap_width": int(files["max_link_width"]) if files else None,
                      "link_speed": _number(files["current_link_speed"]) if files else None,
                      "link_width": int(files["current_link_width"]) if files else None}
        table.append({"id": want.id, "model": wanted, "config": seen, "sysfs": from_files})
        if seen != wanted:
            problems.append(f"{want.id}: LnkCap/LnkSta {seen}, model {wanted}")
        if from_files != wanted:
            problems.append(f"{want.id}: sysfs link files {files}, model {wanted}")
    # Negotiation, from the values the guest read: port LnkSta = min(port, endpoint LnkCap).
    by_path = view.by_path()
    for want in model.functions:
        if want.id and want.id.startswith("le"):
            port, dev = by_path[want.path[:-1]], by_path[want.path]
            trained = (port.link_speed, port.link_width)
            lower = (min(port.link_cap_speed or 0, dev.link_cap_speed or 0),
                     min(port.link_cap_width or 0, dev.link_cap_width or 0))
            if trained != lower:
                problems.append(f"{want.id}: port link trained to {trained}, the lower of port "
                                f"{(port.link_cap_speed, port.link_cap_width)} and device "
                                f"{(dev.link_cap_speed, dev.link_cap_width)} is {lower}")
    request.node.user_properties.append(("link_table", json.dumps(table)))
    request.node.user_properties.append(("accepted", json.dumps(
        {"x-speed": speeds, "x-width": widths, "speeds_gt": [PORT_SPEEDS[s] for s in speeds]})))
    assert not problems, "\n".join(problems) + f"\n{json.dumps(table)}"
