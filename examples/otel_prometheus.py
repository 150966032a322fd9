"""Metrics for Prometheus: every dict of the process reports to OpenTelemetry, exported on loopback.

The dict lives in an SQLite file; a second dict on the same file writes, the watcher follows. The
metrics endpoint is then scraped once and its aiodurabledict lines printed: store call latency by
operation, syncs, notices, reloads, cache size, staleness. Values are never part of a metric.

Needs: pip install 'aiodurabledict[otel,tortoise]' opentelemetry-sdk opentelemetry-exporter-prometheus
Run it: `python examples/otel_prometheus.py`
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.request
from pathlib import Path

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

from aiodurabledict import open_dict, otel


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


async def main() -> None:
    otel.instrument(meter_provider=MeterProvider(metric_readers=[PrometheusMetricReader()]))
    server, thread = start_http_server(0, addr="127.0.0.1")
    try:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{Path(folder) / 'settings.db'}?keyspace=settings"
            async with open_dict(url, poll_interval=0.05) as settings, open_dict(url, watch=False) as admin:
                await settings.set("feature_x", True)
                await admin.update(theme="dark", limit=10)
                await settings.wait_live(timeout=10)
                async with asyncio.timeout(10):
                    while "limit" not in settings:
                        await asyncio.sleep(0.02)
                await settings.sync()
                text = await asyncio.to_thread(scrape, server.server_port)
    finally:
        server.shutdown()
        thread.join(timeout=5)
        otel.uninstrument()
    lines = [line for line in text.splitlines() if line.startswith("aiodurabledict_")]
    print("\n".join(lines))
    assert any(line.startswith("aiodurabledict_store_duration_seconds_count") for line in lines)
    assert any(line.startswith("aiodurabledict_cache_size") and line.endswith(" 3.0") for line in lines)


if __name__ == "__main__":
    asyncio.run(main())
