"""Run every ``benchmarks/bench_*.py`` and print one Markdown table.

    python -m benchmarks.run [--quick] [--only NAME ...]

Each module exposes ``async def run(report, quick: bool) -> None``. ``--quick`` uses small sizes and
few repeats (a CI smoke run). Results go to ``benchmarks/results/latest.md`` and ``latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from benchmarks import plot
from benchmarks._harness import Report

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

BenchFn = Callable[[Report, bool], Awaitable[None]]


def discover() -> list[str]:
    """Names of the benchmark modules, ``core`` first, then alphabetical."""
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return sorted(names, key=lambda n: (n != "core", n))


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI smoke)")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only bench_NAME (repeatable)", default=None
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.md/.json")
    args = parser.parse_args(argv)

    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; known: {names}")
        names = [n for n in names if n in args.only]

    report = Report(quick=args.quick)
    failed: list[str] = []
    for name in names:
        started = time.monotonic()
        print(f"## bench_{name}", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            await cast(BenchFn, module.run)(report, args.quick)
        except Exception:  # noqa: BLE001 - one store being down should not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"   ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)

    md, js = report.write(args.out)
    print(report.markdown())
    print(f"written: {md} {js}", file=sys.stderr)
    try:
        charts = plot.charts(report.as_json(), args.out)
    except ImportError as exc:
        print(f"no charts: {exc} (pip install matplotlib)", file=sys.stderr)
    else:
        print(f"charts: {' '.join(str(c) for c in charts)}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
