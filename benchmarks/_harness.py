"""Timing helpers shared by every benchmark: warm-up, repeats, median and p99, and a report table.

Each figure is compared with a baseline measured in the same run on the same machine, so that the
ratio (not the absolute time) is what a reader takes away.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Report",
    "Row",
    "Timing",
    "compare_async",
    "format_ns",
    "measure",
    "measure_async",
    "measure_stmt",
    "percentile",
    "timing_of",
]


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples`` by nearest rank; exact for small samples."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-operation times in nanoseconds, one sample per repeat."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    @property
    def p50(self) -> float:
        return self.median


def timing_of(samples_ns: Sequence[float]) -> Timing:
    """Wrap samples measured elsewhere (e.g. propagation delays taken across processes)."""
    return Timing(tuple(float(s) for s in samples_ns))


def measure(fn: Callable[[], object], *, repeats: int = 30, warmup: int = 3, inner: int = 1) -> Timing:
    """Time a synchronous call: ``warmup`` untimed batches, then ``repeats`` timed batches.

    Each batch runs ``fn`` ``inner`` times; a sample is the batch time divided by ``inner``, which
    lets calls far shorter than the clock's overhead (a dict lookup) be measured at all.
    """
    perf = time.perf_counter_ns
    loop = range(inner)
    for _ in range(warmup):
        for _ in loop:
            fn()
    samples = []
    for _ in range(repeats):
        start = perf()
        for _ in loop:
            fn()
        samples.append((perf() - start) / inner)
    return Timing(tuple(samples))


def measure_stmt(
    stmt: str, namespace: dict[str, Any], *, repeats: int = 30, warmup: int = 3, inner: int = 100_000
) -> Timing:
    """Time a statement in a compiled loop (``timeit``), free of the per-call cost of a lambda.

    For operations of a few tens of nanoseconds, where a Python call would dominate the figure.
    """
    timer = timeit.Timer(stmt, timer=time.perf_counter, globals=namespace)
    for _ in range(warmup):
        timer.timeit(inner)
    return Timing(tuple(timer.timeit(inner) * 1e9 / inner for _ in range(repeats)))


async def measure_async(
    fn: Callable[[], Awaitable[object]],
    *,
    repeats: int = 30,
    warmup: int = 3,
    inner: int = 1,
    setup: Callable[[], Awaitable[object]] | None = None,
) -> Timing:
    """Time an awaitable call like ``measure``; ``setup`` (untimed) runs before every batch."""
    perf = time.perf_counter_ns
    loop = range(inner)
    for _ in range(warmup):
        if setup is not None:
            await setup()
        for _ in loop:
            await fn()
    samples = []
    for _ in range(repeats):
        if setup is not None:
            await setup()
        start = perf()
        for _ in loop:
            await fn()
        samples.append((perf() - start) / inner)
    return Timing(tuple(samples))


async def compare_async(
    fn: Callable[[], Awaitable[object]],
    baseline: Callable[[], Awaitable[object]],
    *,
    repeats: int = 30,
    warmup: int = 3,
    inner: int = 1,
    setup: Callable[[], Awaitable[object]] | None = None,
) -> tuple[Timing, Timing]:
    """Time ``fn`` and ``baseline`` in alternation, so that a busy machine's drift hits both alike.

    ``setup`` (untimed) runs before every batch of ``fn`` only.
    """
    perf = time.perf_counter_ns
    loop = range(inner)
    samples: tuple[list[float], list[float]] = ([], [])
    for round_ in range(warmup + repeats):
        for side, call in enumerate((fn, baseline)):
            if setup is not None and side == 0:
                await setup()
            start = perf()
            for _ in loop:
                await call()
            if round_ >= warmup:
                samples[side].append((perf() - start) / inner)
    return Timing(tuple(samples[0])), Timing(tuple(samples[1]))


def format_ns(ns: float | None) -> str:
    """A duration with a unit a reader takes in at a glance."""
    if ns is None or math.isnan(ns):
        return "-"
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f} ms"
    return f"{ns / 1_000_000_000:.2f} s"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the report: a measured operation and, when given, its baseline from the same run."""

    group: str
    name: str
    n: int | None
    median_ns: float
    p99_ns: float | None
    baseline: str | None = None
    baseline_median_ns: float | None = None
    note: str = ""
    # Kept only where a distribution is worth plotting (propagation delays).
    samples_ns: tuple[float, ...] | None = None
    baseline_samples_ns: tuple[float, ...] | None = None

    @property
    def ratio(self) -> float | None:
        """Median over baseline median; below 1 is faster than the baseline."""
        if self.baseline_median_ns is None or self.baseline_median_ns <= 0:
            return None
        return self.median_ns / self.baseline_median_ns


@dataclass
class Report:
    """Collects rows as benchmarks run and renders them as a Markdown table or JSON."""

    rows: list[Row] = field(default_factory=list)
    quick: bool = False
    echo: bool = True

    def add(
        self,
        group: str,
        name: str,
        timing: Timing | float,
        *,
        n: int | None = None,
        baseline: str | None = None,
        baseline_timing: Timing | float | None = None,
        p99: bool = True,
        note: str = "",
        keep_samples: bool = False,
    ) -> Row:
        """Record one measurement; a bare float is a median without a distribution (a count, say).

        ``keep_samples`` stores every sample (and the baseline's) in the JSON, for the plots.
        """
        median, tail = _split(timing)
        base_median, _ = _split(baseline_timing) if baseline_timing is not None else (None, None)
        row = Row(
            group=group,
            name=name,
            n=n,
            median_ns=median,
            p99_ns=tail if p99 else None,
            baseline=baseline,
            baseline_median_ns=base_median,
            note=note,
            samples_ns=timing.samples if keep_samples and isinstance(timing, Timing) else None,
            baseline_samples_ns=(
                baseline_timing.samples if keep_samples and isinstance(baseline_timing, Timing) else None
            ),
        )
        self.rows.append(row)
        if self.echo:
            print(_line(row), file=sys.stderr, flush=True)
        return row

    def markdown(self) -> str:
        """A table: operation, N, median, p99, baseline, its median, ratio, note."""
        head = (
            "| group | operation | N | median | p99 | baseline | baseline median | ratio | note |\n"
            "|---|---|---:|---:|---:|---|---:|---:|---|\n"
        )
        return head + "".join(_line(row) + "\n" for row in self.rows)

    def as_json(self) -> dict[str, Any]:
        """Rows plus the machine they ran on, for plotting later."""
        return {
            "quick": self.quick,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "rows": [asdict(row) | {"ratio": row.ratio} for row in self.rows],
        }

    def write(self, directory: Path, stem: str = "latest") -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.json`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        md, js = directory / f"{stem}.md", directory / f"{stem}.json"
        md.write_text(self.markdown(), encoding="utf-8")
        js.write_text(json.dumps(self.as_json(), indent=2) + "\n", encoding="utf-8")
        return md, js


def _split(timing: Timing | float) -> tuple[float, float | None]:
    if isinstance(timing, Timing):
        return timing.median, timing.p99
    return float(timing), None


def _format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    if ratio < 0.1:  # "0.00x" says nothing; "1/450" says how much faster
        return f"1/{1 / ratio:,.0f}"
    return f"{ratio:.2f}x"


def _line(row: Row) -> str:
    ratio = row.ratio
    cells = [
        row.group,
        row.name,
        "" if row.n is None else f"{row.n:,}",
        format_ns(row.median_ns),
        format_ns(row.p99_ns),
        row.baseline or "",
        format_ns(row.baseline_median_ns) if row.baseline else "",
        _format_ratio(ratio),
        row.note,
    ]
    return "| " + " | ".join(cells) + " |"
