"""Where the test suite's CPU time goes: a pytest plugin, and a summary of what it recorded.

The suite's wall time on a few cores is its CPU work, and much of that work happens outside the
pytest process (Ray's processes and actors, subprocesses of the command line), where ``--durations``
cannot see it and where, with two pytest workers, the other worker's tests share the cores. Run in
one process, the machine's busy time around each test (``/proc/stat``: every process, Linux only) is
that test's cost in core-seconds:

    ./run test -n 0 -p bench.suite_cpu               # writes suite_cpu.json (SUITE_CPU_OUT: elsewhere)
    .venv/bin/python -m bench.suite_cpu suite_cpu.json   # core-seconds by test file, then the costliest tests

Keep the machine otherwise idle meanwhile: whatever else runs is counted too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from essence.storage import atomic_write

OUT_ENV = "SUITE_CPU_OUT"
DEFAULT_OUT = "suite_cpu.json"

_recorded: dict[str, tuple[float, float]] = {}  # test id -> (core-seconds, wall seconds)


def busy_core_seconds() -> float:
    """The machine's CPU time spent not idle since boot, summed over its cores (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ARG001 (pytest's signature)
    """Set-up, call and tear-down of one test, as the busy time and wall time they took."""
    busy, start = busy_core_seconds(), time.perf_counter()
    yield
    _recorded[item.nodeid] = (busy_core_seconds() - busy, time.perf_counter() - start)


def pytest_sessionfinish(session):  # noqa: ARG001
    records = {"tests": {k: {"core_seconds": c, "seconds": s} for k, (c, s) in _recorded.items()}}
    with atomic_write(os.environ.get(OUT_ENV) or DEFAULT_OUT) as tmp:  # a stopped run leaves the last file whole
        tmp.write_text(json.dumps(records, indent=1), encoding="utf-8")


def summary(records: dict[str, dict[str, float]], top: int = 30) -> list[str]:
    """Lines: the total, core-seconds by test file, then the ``top`` costliest tests."""
    by_file: Counter[str] = Counter()
    for test, record in records.items():
        by_file[test.split("::")[0]] += record["core_seconds"]
    total = sum(r["core_seconds"] for r in records.values())
    lines = [f"{total:.0f} core-seconds over {len(records)} tests "
             f"({sum(r['seconds'] for r in records.values()):.0f} s of wall time)", "", "by file:"]
    lines += [f"{seconds:8.1f}  {name}" for name, seconds in by_file.most_common()]
    lines += ["", f"the {top} costliest tests (core-seconds, wall seconds):"]
    costliest = sorted(records.items(), key=lambda kv: -kv[1]["core_seconds"])[:top]
    lines += [f"{r['core_seconds']:8.1f} {r['seconds']:7.1f}  {test}" for test, r in costliest]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, nargs="?", default=Path(DEFAULT_OUT),
                        help=f"the plugin's file (default {DEFAULT_OUT})")
    parser.add_argument("--top", type=int, default=30, help="how many of the costliest tests to list")
    args = parser.parse_args(argv)
    print("\n".join(summary(json.loads(args.records.read_text(encoding="utf-8"))["tests"], args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
