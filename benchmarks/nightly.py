#!/usr/bin/env python3
"""Wall time of a nightly and where it goes: CPU use over time and the long poles.

    .venv/bin/python benchmarks/nightly.py [--json] -- NIGHTLY ARGS
    e.g. benchmarks/nightly.py -- --qemu /usr/bin/qemu-system-x86_64 \\
             --qemu "$(pci-harness qemu-get bookworm-backports)" --explore-minutes 2

Runs `python -m harness nightly NIGHTLY ARGS --output <temp dir>` while sampling
/proc/stat once a second (--report-dir: next to earlier nights, whose
durations order the tests), then reads the report it wrote.  Prints the wall time
against the goal (8 minutes for the two-QEMU nightly with exploration on 2
cores), the share of CPU busy overall and per minute (idle cores in a slice
mean the schedule, not the work, set the wall time there), each suite's pytest
time, test-seconds and CPU-seconds (each test's own and its reaped QEMUs'), the
boot-stress cells, the longest tests, and the CPU by test file and test.
The 1-minute load average before the run is printed too: on a shared host the
figure is only worth what the host's quiet was.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GOAL_S = 8 * 60


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def sample(stop: threading.Event, out: list[tuple[float, int, int]]) -> None:
    while not stop.is_set():
        busy, total = cpu_times()
        out.append((time.monotonic(), busy, total))
        stop.wait(1.0)


def busy_share(samples: list[tuple[float, int, int]], start: int, end: int) -> float:
    if end <= start or end >= len(samples):
        end = len(samples) - 1
    d_busy = samples[end][1] - samples[start][1]
    d_total = samples[end][2] - samples[start][2]
    return d_busy / d_total if d_total else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report-dir", default=None,
                        help="where earlier nights are (their durations order the tests "
                             "longest first, as in a real nightly); default a new temp dir")
    parser.add_argument("nightly_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    rest = [a for a in args.nightly_args if a != "--"]
    base = Path(args.report_dir) if args.report_dir else Path(
        tempfile.mkdtemp(prefix="bench-nightly-"))
    output = base / time.strftime("%Y%m%d-%H%M%S")
    load0 = os.getloadavg()[0]
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(stop, samples), daemon=True)
    sampler.start()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness", "nightly", *rest,
                           "--output", str(output)], check=False)
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    report = json.loads((output / "report.json").read_text())
    minutes = []
    step = 60
    for i in range(0, len(samples) - 1, step):
        minutes.append(round(busy_share(samples, i, i + step), 2))
    suites = []
    for run in report.get("runs", []):
        tests = [t for t in report["tests"] if t.get("run") == run["label"]]
        suites.append({"label": run["label"], "pytest_s": run["duration_s"],
                       "tests": len(tests),
                       "test_seconds": round(sum(t["duration"] or 0 for t in tests), 1),
                       "test_cpu_s": round(sum(t.get("cpu_s") or 0 for t in tests), 1)})
    cells = [{"run": b["run"], "s": b["duration_s"]} for b in report.get("boot_stress", [])]
    longest = sorted(report["tests"], key=lambda t: -(t["duration"] or 0))[:10]
    costliest = sorted(report["tests"], key=lambda t: -(t.get("cpu_s") or 0))[:15]
    by_file: dict[str, float] = {}
    for t in report["tests"]:
        name = t["nodeid"].split("::")[0]
        by_file[name] = by_file.get(name, 0.0) + (t.get("cpu_s") or 0)
    result = {"wall_s": round(wall, 1), "goal_s": GOAL_S, "ratio": round(wall / GOAL_S, 2),
              "exit": proc.returncode, "ok": report.get("ok"),
              "cpu_busy": round(busy_share(samples, 0, len(samples) - 1), 2),
              "cpu_busy_per_minute": minutes, "cpus": os.cpu_count(),
              "loadavg_before": round(load0, 2), "suites": suites, "boot_stress": cells,
              "counts": report.get("counts"),
              "longest": [{"test": t["nodeid"], "run": t["run"], "s": t["duration"]}
                          for t in longest],
              "costliest": [{"test": t["nodeid"], "run": t["run"], "cpu_s": t.get("cpu_s")}
                            for t in costliest],
              "cpu_s_by_file": dict(sorted(by_file.items(), key=lambda kv: -kv[1])[:15]),
              "report": str(output)}
    if args.json:
        print(json.dumps(result))
        return 0 if proc.returncode == 0 else 1
    print(f"nightly: {wall:.0f} s wall ({wall / 60:.1f} min; goal {GOAL_S // 60} min, "
          f"ratio {result['ratio']}), exit {proc.returncode}, load before {load0:.2f}")
    print(f"CPU busy {result['cpu_busy']:.0%} of {os.cpu_count()} CPUs; per minute: "
          + " ".join(f"{m:.0%}" for m in minutes))
    for s in suites:
        print(f"  suite {s['label']}: pytest {s['pytest_s']:.0f} s, {s['tests']} tests, "
              f"{s['test_seconds']:.0f} test-seconds, {s['test_cpu_s']:.0f} CPU-seconds")
    for c in cells:
        print(f"  boot-stress {c['run']}: {c['s']:.0f} s")
    print("  longest tests:")
    for t in result["longest"]:
        print(f"    {t['s']:6.1f} s  {t['run']:>8}  {t['test']}")
    print("  CPU-seconds by test file (both QEMUs):")
    for name, cpu in result["cpu_s_by_file"].items():
        print(f"    {cpu:6.1f} s  {name}")
    print("  costliest tests (CPU):")
    for t in result["costliest"]:
        print(f"    {t['cpu_s'] or 0:6.1f} s  {t['run']:>8}  {t['test']}")
    print(f"report: {output}")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
