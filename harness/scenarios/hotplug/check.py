"""The three-view check of one hotplug step: did QEMU and the guest change by
exactly what the model derives from the plug or unplug, and nothing else?

Pure data (ThreeViews before and after); no QEMU, no guest.
"""

from __future__ import annotations

from harness.scenarios.threeview import ThreeViews, changes
from harness.views import Change, PciView

__all__ = ["step_problems"]


def _keyed(changes: list[Change], before: PciView, after: PciView) -> dict[tuple[str, str], Change]:
    """{(path "04.0/01.0", field): change}: ids (QEMU, model) and paths (guest) both map."""
    names = {f.name: "/".join(f.path) for v in (before, after) for f in v.functions}
    return {(names.get(c.device, c.device), c.field): c for c in changes}


def _knows(view: PciView, where: str, field_name: str) -> bool:
    """Can VIEW show FIELD of the function at path WHERE?  (QEMU's view has no link
    fields, for example: a predicted link change cannot be looked for there.)"""
    if field_name == "present":
        return True
    if where == "root bus":
        return view.root_bus_hotplug is not None
    f = view.by_path().get(tuple(where.split("/")))
    if f is None:
        return True  # the function itself is missing: the change did not happen
    if field_name.startswith("bars["):
        return f.bars is not None
    return getattr(f, field_name, None) is not None


def step_problems(before: ThreeViews, after: ThreeViews, path: tuple[str, ...],
                  added: bool) -> list[str]:
    """What is wrong with one hotplug step, [] when it is right.

    The expectation is the model's own before/after diff (the topology plus or
    minus the device): it holds the device's presence and whatever the rules
    derive from it (a port's link status, a slot's state).  Checked both ways in
    QEMU's and the guest's diffs: every predicted change must have happened, to
    the predicted value, in each view that can show that field; and no change
    the model did not predict may appear.  After the step the three views must
    agree on the whole machine as far as they agreed before it (a plug must not
    make anything else disagree); after a plug, on the new function entirely.
    """
    where = "/".join(path)
    diff = changes(before, after)
    views = {"model": (diff.model, before.model, after.model),
             "qemu": (diff.qemu, before.qemu, after.qemu),
             "guest": (diff.guest, before.guest, after.guest)}
    expected = _keyed(*views["model"])
    problems: list[str] = []
    for name, (chs, b, a) in views.items():
        keyed = _keyed(chs, b, a)
        presence = keyed.get((where, "present"))
        if presence is None or presence.after is not added:
            problems.append(f"{name} view: {where} should be {'added' if added else 'removed'}"
                            f", diff shows {presence or 'no presence change'}")
        for key, ch in sorted(keyed.items()):
            if key not in expected:
                problems.append(f"{name} view: unexpected change {key[0]}: {ch.field}: "
                                f"{ch.before!r} -> {ch.after!r} (the model predicts none)")
        if name == "model":
            continue
        for key, want in sorted(expected.items()):
            # A view that shows the field before or after the step: a value that
            # became unknown (None, e.g. a LnkSta code the decoder does not know)
            # is a predicted change that did not happen.
            if key == (where, "present") or not (_knows(b, *key) or _knows(a, *key)):
                continue
            got = keyed.get(key)
            if got is None or got.after != want.after:
                shown = (f"{got.before!r} -> {got.after!r}" if got is not None
                         else "no change")
                problems.append(f"{name} view: predicted change {key[0]}: {key[1]}: "
                                f"{want.before!r} -> {want.after!r} did not happen "
                                f"(the view shows {shown})")
    already = {str(d) for d in before.differences()}
    for d in after.differences():
        f = next((fn for v in (after.model, after.qemu, after.guest) for fn in v.functions
                  if fn.name == d.device), None)
        if added and f is not None and f.path == path:
            problems.append(f"three views disagree on the new function: {d}")
        elif str(d) not in already:
            problems.append(f"three views disagree after the {'plug' if added else 'unplug'}"
                            f": {d}")
    return problems
