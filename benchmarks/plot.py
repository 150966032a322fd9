"""Charts from a benchmark run: propagation delay distributions, and sync cost against dict size.

Called by ``benchmarks/run.py`` after each run; also ``python -m benchmarks.plot [results.json]``.
Writes ``propagation.png`` and ``sync_vs_n.png`` beside the results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def charts(results: dict[str, Any], directory: Path) -> list[Path]:
    """Draw what the results hold; return the files written. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    written = [_propagation(results["rows"], directory), _sync_vs_n(results["rows"], directory)]
    return [path for path in written if path is not None]


def _store(row: dict[str, Any]) -> str:
    """The store a row measures: its group, or the database a Tortoise row names ("sqlite: ...")."""
    name = str(row["name"])
    return name.split(":")[0] if ":" in name and row["group"] == "tortoise" else str(row["group"])


def _label(row: dict[str, Any]) -> str:
    name = str(row["name"]).replace("propagation p50 ", "").replace("propagation ", "")
    if row["group"] == "tortoise" and ":" in name:
        name = name.split(":", 1)[1].strip()
    n = f" (N={row['n']:,})" if row.get("n") else ""
    return f"{_store(row)}: {name}{n}"


def _propagation(rows: list[dict[str, Any]], directory: Path) -> Path | None:
    """Cumulative delays, one hue per store: its measured curve solid, its floor (the raw push or
    poll it rides on) dashed, p50 (circle) and p99 (triangle) marked on each curve."""
    import matplotlib.pyplot as plt

    kept = [r for r in rows if r.get("samples_ns")]
    if not kept:
        return None
    palette = plt.get_cmap("tab10")
    hues: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(10, 5.5))
    floors: set[str] = set()
    curves: dict[str, int] = {}
    for row in kept:
        store = _store(row)
        color = hues.setdefault(store, palette(len(hues) % 10))
        # A store's second curve (a larger dict) is drawn thicker, in the same hue.
        width = 1.5 + 1.2 * curves.get(store, 0)
        curves[store] = curves.get(store, 0) + 1
        _cumulative(ax, row["samples_ns"], color=color, linestyle="-", width=width, label=_label(row))
        base = row.get("baseline_samples_ns")
        floor = f"{store}: {row['baseline']}"
        if base and floor not in floors:
            floors.add(floor)
            _cumulative(ax, base, color=color, linestyle="--", width=1.5, label=f"{floor} (floor)")
        elif row.get("baseline") == "poll_interval" and "poll_interval" not in floors:
            # A polled store's floor is its poll interval: one dotted line for them all.
            floors.add("poll_interval")
            ax.axvline(row["baseline_median_ns"] / 1000, color="grey", linestyle=":", label="poll_interval")
    ax.set_xscale("log")
    ax.set_xlabel("delay from the writer process to the reader's cache (µs, log scale)")
    ax.set_ylabel("fraction of writes seen")
    ax.set_title("Propagation between processes on loopback (cumulative; ○ p50, △ p99)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = directory / "propagation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cumulative(
    ax: Any, samples_ns: list[float], *, color: Any, linestyle: str, width: float, label: str
) -> None:
    samples = sorted(s / 1000 for s in samples_ns)
    fractions = [(i + 1) / len(samples) for i in range(len(samples))]
    ax.plot(samples, fractions, color=color, linestyle=linestyle, linewidth=width, label=label)
    for q, marker in ((0.5, "o"), (0.99, "^")):
        i = min(len(samples) - 1, max(0, round(q * len(samples)) - 1))
        ax.plot([samples[i]], [fractions[i]], marker=marker, color=color, markersize=5, linestyle="none")


def _sync_vs_n(rows: list[dict[str, Any]], directory: Path) -> Path | None:
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float]]] = {}
    for row in rows:
        if (
            "after one" not in row["name"]
            or not row.get("n")
            or "full reload" not in str(row.get("baseline"))
        ):
            continue
        store = row["group"] + (": " + row["name"].split(":")[0] if ":" in row["name"] else "")
        series.setdefault(store, []).append((row["n"], row["median_ns"], row["baseline_median_ns"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    for store, points in sorted(series.items()):
        points.sort()
        ns = [p[0] for p in points]
        line = ax.plot(ns, [p[1] / 1e6 for p in points], marker="o", label=f"{store}: delta sync")[0]
        ax.plot(
            ns,
            [p[2] / 1e6 for p in points],
            marker="x",
            linestyle="--",
            color=line.get_color(),
            label=f"{store}: full reload",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("keys in the dict (N)")
    ax.set_ylabel("sync() after one remote change (ms, median, log scale)")
    ax.set_title("Delta sync stays flat; a full reload grows with N")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = directory / "sync_vs_n.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "latest.json"
    for written in charts(json.loads(source.read_text(encoding="utf-8")), source.parent):
        print(written)
