"""OpenTelemetry metrics and spans for every dict of the process (``pip install 'aiodurabledict[otel]'``).

``instrument()`` reports, each labelled with the dict's name (``dict``: store kind and keyspace):

- ``aiodurabledict.store.duration`` (histogram, s): each store call, by ``operation`` and ``outcome``;
- ``aiodurabledict.syncs``, ``.reloads``, ``.notices``, ``.gaps``, ``.reconnects``, ``.rewinds``
  (counters): checks of the store, full reloads, notices applied, gaps in the notices, watchers
  back after losing the store, stores found gone back in time;
- ``aiodurabledict.cache.size`` (gauge, keys) and ``aiodurabledict.staleness`` (gauge, s: how long
  the cache has gone unconfirmed); dicts of one process on the same store and keyspace share a
  name, and these gauges show the largest of them;

and a span ``aiodurabledict <operation>`` around each store call. Values are never recorded.
Nothing of OpenTelemetry is imported unless this module is. ``uninstrument()`` stops it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Status, StatusCode
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "aiodurabledict.otel needs OpenTelemetry: pip install 'aiodurabledict[otel]'", name=_exc.name
    ) from _exc

from . import _observe

__all__ = ["instrument", "uninstrument"]

_SCOPE = "aiodurabledict"
_EVENTS = ("sync", "reload", "notice", "gap", "reconnect", "rewind")


class _OpenTelemetry:
    """The ``Instrumentation`` that turns the core's reports into OpenTelemetry metrics and spans."""

    def __init__(self, meter_provider: Any = None, tracer_provider: Any = None) -> None:
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        self._duration = meter.create_histogram(
            "aiodurabledict.store.duration", unit="s", description="Time of one call to the store"
        )
        self._counters = {
            kind: meter.create_counter(f"aiodurabledict.{kind}s", description=f"{kind} events")
            for kind in _EVENTS
        }
        meter.create_observable_gauge(
            "aiodurabledict.cache.size", callbacks=[_sizes], unit="{key}", description="Keys in the cache"
        )
        meter.create_observable_gauge(
            "aiodurabledict.staleness",
            callbacks=[_staleness],
            unit="s",
            description="How long the cache has gone unconfirmed by its store",
        )

    @contextlib.contextmanager
    def span(self, name: str, operation: str) -> Iterator[None]:
        attributes = {"dict": name, "operation": operation}
        started = time.perf_counter()
        outcome = "ok"
        with self._tracer.start_as_current_span(
            f"aiodurabledict {operation}", attributes=attributes, record_exception=False
        ) as current:
            try:
                yield
            except BaseException as exc:
                outcome = "error"
                # The type only: a message may quote a value.
                current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                self._duration.record(time.perf_counter() - started, {**attributes, "outcome": outcome})

    def event(self, name: str, kind: str) -> None:
        counter = self._counters.get(kind)
        if counter is not None:
            counter.add(1, {"dict": name})


def _largest(values: Iterable[tuple[str, float]]) -> list[Observation]:
    # Dicts of one process on the same store and keyspace share a name: the gauge shows the largest.
    largest: dict[str, float] = {}
    for name, value in values:
        largest[name] = max(value, largest.get(name, value))
    return [Observation(value, {"dict": name}) for name, value in largest.items()]


def _sizes(_options: CallbackOptions) -> Iterable[Observation]:
    return _largest((d.name, d.size()) for d in _observe.observed())


def _staleness(_options: CallbackOptions) -> Iterable[Observation]:
    return _largest((d.name, d.unconfirmed_for()) for d in _observe.observed())


_current: _OpenTelemetry | None = None


def instrument(*, meter_provider: Any = None, tracer_provider: Any = None) -> None:
    """Report every dict of the process to OpenTelemetry (the global providers unless given)."""
    global _current
    uninstrument()
    _current = _OpenTelemetry(meter_provider, tracer_provider)
    _observe.register(_current)


def uninstrument() -> None:
    """Stop reporting."""
    global _current
    if _current is not None:
        _observe.unregister(_current)
        _current = None
