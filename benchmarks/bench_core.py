"""The cached view against a plain dict: reads from the cache must cost about what a dict lookup costs."""

from __future__ import annotations

from typing import Any

from aiodurabledict import MemoryDict
from benchmarks._harness import Report, measure_stmt

GROUP = "core"


async def run(report: Report, quick: bool) -> None:
    """Cached reads (``d[k]``, ``d.view[k]``, ``k in d``) vs the same on a plain dict of the same size."""
    n = 1_000 if quick else 100_000
    repeats, inner = (10, 20_000) if quick else (50, 200_000)
    content = {f"key{i}": {"i": i} for i in range(n)}
    async with MemoryDict[Any](watch=False) as d:
        await d.update(content)
        ns = {"d": d, "view": d.view, "plain": dict(content), "key": f"key{n // 2}"}

        def timed(stmt: str) -> Any:
            return measure_stmt(stmt, ns, repeats=repeats, inner=inner)

        base = timed("plain[key]")
        for name, stmt in (("d[key] (cached read)", "d[key]"), ("d.view[key]", "view[key]")):
            report.add(GROUP, name, timed(stmt), n=n, baseline="plain dict[key]", baseline_timing=base)
        report.add(
            GROUP,
            "key in d",
            timed("key in d"),
            n=n,
            baseline="key in plain dict",
            baseline_timing=timed("key in plain"),
        )
        report.add(
            GROUP,
            "len(d)",
            timed("len(d)"),
            n=n,
            baseline="len(plain dict)",
            baseline_timing=timed("len(plain)"),
        )
