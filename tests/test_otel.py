"""OpenTelemetry instrumentation, read back from the SDK's in-memory reader and span exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aiodurabledict import MemoryDict, MemoryStore, otel
from aiodurabledict.testing.conformance import eventually


@pytest.fixture
def telemetry() -> Iterator[tuple[InMemoryMetricReader, InMemorySpanExporter]]:
    """The library instrumented into in-memory readers for the test's duration."""
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    otel.instrument(meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=tracer_provider)
    try:
        yield reader, spans
    finally:
        otel.uninstrument()


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _count(points: dict[str, list[Any]], name: str, dict_name: str) -> int:
    return sum(int(p.value) for p in points.get(name, []) if p.attributes.get("dict") == dict_name)


async def test_metrics_and_spans_of_a_dict(
    telemetry: tuple[InMemoryMetricReader, InMemorySpanExporter],
) -> None:
    """Store calls are timed by operation and traced; syncs, reloads, notices, gaps, reconnects and
    rewinds are counted; cache size and staleness are gauged, each labelled with the dict's name."""
    reader, spans = telemetry
    store = MemoryStore()
    async with MemoryDict(store, heartbeat=0.05) as d, MemoryDict(store, watch=False) as writer:
        name = f"MemoryDict({d.backend!r})"
        await d.wait_live(timeout=5)
        await d.update(a=1, b=2)
        await writer.set("c", 3)
        await eventually(lambda: "c" in d)
        store.drop_notices = True
        await writer.set("gap", 1)
        store.drop_notices = False
        await writer.set("after", 1)
        await eventually(lambda: "gap" in d and "after" in d)
        await d.sync()
        store.failing = True
        await eventually(lambda: not d.live)
        await asyncio.sleep(0.1)
        stale = [p.value for p in _points(reader)["aiodurabledict.staleness"] if p.attributes["dict"] == name]
        assert len(stale) == 1
        assert stale[0] > 0
        store.failing = False
        await d.wait_live(timeout=5)
        backup = (store.version, dict(store.items))
        await writer.set("lost", 1)
        await eventually(lambda: "lost" in d)
        store.rewind(*backup)
        await d.sync()
        await writer.sync()  # it shares the dict's name: both hold the store's keys now
        keys = len(d)
        points = _points(reader)
        sizes = [p.value for p in points["aiodurabledict.cache.size"] if p.attributes["dict"] == name]
        assert sizes == [keys]
    assert _count(points, "aiodurabledict.syncs", name) >= 3
    assert _count(points, "aiodurabledict.reloads", name) >= 1
    assert _count(points, "aiodurabledict.notices", name) >= 2
    assert _count(points, "aiodurabledict.gaps", name) >= 1
    assert _count(points, "aiodurabledict.reconnects", name) >= 1
    assert _count(points, "aiodurabledict.rewinds", name) >= 1
    durations = [p for p in points["aiodurabledict.store.duration"] if p.attributes["dict"] == name]
    operations = {p.attributes["operation"] for p in durations}
    assert {"start", "load", "update", "changes_since"} <= operations
    assert {p.attributes["outcome"] for p in durations} == {"ok", "error"}
    traced = [s for s in spans.get_finished_spans() if s.attributes and s.attributes.get("dict") == name]
    assert {s.name for s in traced} >= {"aiodurabledict update", "aiodurabledict load"}
    # Only names: a span never carries a key's value.
    assert all(set(s.attributes or {}) == {"dict", "operation"} for s in traced)
    await asyncio.sleep(0)


async def test_nothing_is_reported_once_uninstrumented(
    telemetry: tuple[InMemoryMetricReader, InMemorySpanExporter],
) -> None:
    """After uninstrument() the dicts report nothing more."""
    reader, spans = telemetry
    otel.uninstrument()
    async with MemoryDict(watch=False) as d:
        await d.set("k", 1)
        await d.sync()
        name = f"MemoryDict({d.backend!r})"
    data = reader.get_metrics_data()
    assert data is None or _count(_points(reader), "aiodurabledict.syncs", name) == 0
    assert not [s for s in spans.get_finished_spans() if (s.attributes or {}).get("dict") == name]
