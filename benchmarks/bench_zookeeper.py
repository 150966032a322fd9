"""ZookeeperDict: open, sync, propagation from another process, and a leader's death on an ensemble.

Needs a ZooKeeper server (AIODURABLEDICT_ZOOKEEPER, default 127.0.0.1:2181); the sync rows also run
on the shared ensemble when AIODURABLEDICT_ZOOKEEPER_ENSEMBLE names it, and the failover rows start a
private ensemble of their own (Debian's ZooKeeper jars). Baselines, measured in the same run: open
against one ``get`` per key in turn (what a naive reload does); ``sync()`` against one raw ``get``
(timed in alternation); propagation against a raw data watch fired by the same writer process, and
against that watch followed by the read of the node (the least a follower needs for the value); the
time from killing the leader to every dict equal to the tree against the election itself (the
time until a quorum with a new leader serves), medians over several kills.

Run alone: ``python -m benchmarks.run --only zookeeper``. ``python -m benchmarks.bench_zookeeper
writer ADDRESS PATH RAW`` is the writer process the propagation figures use.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._harness import Report, compare_async, measure_async, timing_of

ADDRESS = os.environ.get("AIODURABLEDICT_ZOOKEEPER", "127.0.0.1:2181")
ENSEMBLE = os.environ.get("AIODURABLEDICT_ZOOKEEPER_ENSEMBLE", "")
ROOT = Path(__file__).resolve().parent.parent
GROUP = "zookeeper"


async def _client(address: str = ADDRESS) -> Any:
    import aiozk

    client = aiozk.ZKClient(address, session_timeout=10)
    async with asyncio.timeout(5):
        await client.start()
    return client


async def _populate(backend: Any, n: int) -> None:
    for start in range(0, n, 1000):
        await backend.update(
            {f"key{i}": b'{"enabled": true, "n": %d}' % i for i in range(start, min(n, start + 1000))}
        )


async def _delete_tree(client: Any, path: str) -> None:
    from aiozk import exc, protocol

    try:
        children = await client.get_children(path)
    except exc.NoNode:
        return
    for child in children:
        if child == ".log":
            await _delete_tree(client, f"{path}/{child}")
    paths = [f"{path}/{c}" for c in children if c != ".log"]
    for start in range(0, len(paths), 1000):
        request = protocol.TransactionRequest()
        for p in paths[start : start + 1000]:
            request.add(protocol.DeleteRequest(path=client.normalize_path(p), version=-1))
        await client.send(request)
    await client.delete(path, force=True)


async def run(report: Report, quick: bool) -> None:
    """Every figure at each N, on a fresh znode per N; then the ensemble's rows."""
    from aiodurabledict.backends.zookeeper import ZookeeperBackend, close_client

    try:
        client = await _client()
    except Exception as exc:  # noqa: BLE001 - report and move on to the other stores
        print(f"   ZooKeeper at {ADDRESS} is unreachable ({type(exc).__name__}); skipped", file=sys.stderr)
        return
    sizes = (200, 1000) if quick else (1000, 10_000)
    repeats = 3 if quick else 10
    try:
        for n in sizes:
            path = f"/aiodurabledict-bench/{uuid.uuid4().hex}"
            backend = ZookeeperBackend(path, client)
            await backend.start()
            await _populate(backend, n)
            try:
                await _bench_open(report, client, path, n, repeats)
                await _bench_sync(report, client, ADDRESS, path, n, repeats, "")
                await _bench_propagation(report, client, path, n, 20 if quick else 200)
            finally:
                await _delete_tree(client, path)
    finally:
        await close_client(client, 2.0)
    if ENSEMBLE:
        await _bench_ensemble_sync(report, repeats)
    await _bench_failover(report, kills=3 if quick else 7)


async def _bench_ensemble_sync(report: Report, repeats: int) -> None:
    """sync() on the shared ensemble: its sync goes through the leader, a raw get does not."""
    from aiodurabledict.backends.zookeeper import ZookeeperBackend, close_client

    client = await _client(ENSEMBLE)
    path = f"/aiodurabledict-bench/{uuid.uuid4().hex}"
    try:
        backend = ZookeeperBackend(path, client)
        await backend.start()
        await _populate(backend, 1000)
        await _bench_sync(report, client, ENSEMBLE, path, 1000, repeats, " (ensemble)")
    finally:
        await _delete_tree(client, path)
        await close_client(client, 2.0)


async def _bench_open(report: Report, client: Any, path: str, n: int, repeats: int) -> None:
    from aiodurabledict.backends.zookeeper import ZookeeperDict

    async def open_close() -> None:
        d = ZookeeperDict[Any](path, client, watch=False)
        await d.open()
        assert len(d) == n
        await d.aclose()

    async def one_get_each() -> None:
        for name in await client.get_children(path):
            if not name.startswith("."):
                await client.get(f"{path}/{name}")

    timing = await measure_async(open_close, repeats=repeats, warmup=1)
    base = await measure_async(one_get_each, repeats=max(1, repeats // 5), warmup=0)
    report.add(GROUP, "open (load every key)", timing, n=n, baseline="one get per key", baseline_timing=base)


async def _bench_sync(
    report: Report, client: Any, address: str, path: str, n: int, repeats: int, where: str
) -> None:
    """sync() after one change and with nothing changed (without and with a live watcher), each
    timed in alternation with one raw ``get`` of the dict's node on the same client."""
    from aiodurabledict.backends.zookeeper import ZookeeperBackend, ZookeeperDict, close_client

    other = await _client(address)
    writer = ZookeeperBackend(path, other)
    counter = 0

    async def get() -> None:
        await client.get(path)

    try:
        async with ZookeeperDict[Any](path, client, watch=False) as d:

            async def change() -> None:
                nonlocal counter
                counter += 1
                await writer.set("key1", b"%d" % counter)

            changed = await measure_async(d.sync, repeats=repeats * 3, setup=change)
            base = await measure_async(get, repeats=repeats * 3)
            report.add(
                GROUP,
                f"sync() after one change{where}",
                changed,
                n=n,
                baseline="one raw get",
                baseline_timing=base,
            )
            assert d["key1"] == counter
            same, base = await compare_async(d.sync, get, repeats=repeats * 3, inner=10)
            report.add(
                GROUP,
                f"sync() unchanged, no watcher{where}",
                same,
                n=n,
                baseline="one raw get",
                baseline_timing=base,
                note="one request" if not where else "a sync pipelined with the read: one round trip",
            )
        async with ZookeeperDict[Any](path, client) as live:
            while not live.live:
                await asyncio.sleep(0.01)
            same, base = await compare_async(live.sync, get, repeats=repeats * 3, inner=10)
            report.add(
                GROUP,
                f"sync() unchanged, live watcher{where}",
                same,
                n=n,
                baseline="one raw get",
                baseline_timing=base,
            )
    finally:
        await close_client(other, 2.0)


async def _bench_propagation(report: Report, client: Any, path: str, n: int, count: int) -> None:
    """A writer process alternates a raw ``set`` of a plain node and a dict write; we time arrivals."""
    from aiozk import protocol

    from aiodurabledict.backends.zookeeper import ZookeeperDict

    raw_path = f"{path}-raw"
    await client.create(raw_path, b"0")
    full_raw = client.normalize_path(raw_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.bench_zookeeper",
        "writer",
        ADDRESS,
        path,
        raw_path,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    raw_delays: list[float] = []
    read_delays: list[float] = []
    dict_delays: list[float] = []
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        async with ZookeeperDict[Any](path, client) as d:
            arrivals: dict[int, int] = {}
            arrived = asyncio.Event()

            async def follow() -> None:
                async for change in d.changes():
                    if change.key == "probe" and isinstance(change.new, int):
                        arrivals[change.new] = time.perf_counter_ns()
                        arrived.set()

            follower = asyncio.create_task(follow())
            fired: list[int] = []
            bell = asyncio.Event()

            def ring(_path: str) -> None:
                fired.append(time.perf_counter_ns())
                bell.set()

            client.session.add_watch_callback(protocol.WatchEvent.DATA_CHANGED, full_raw, ring)
            try:
                await client.get(raw_path, watch=True)
                for i in range(1, count + 1):
                    # The raw watch: the writer sets the node; we read it (re-arming the watch).
                    bell.clear()
                    proc.stdin.write(b"raw %d\n" % i)
                    await asyncio.wait_for(bell.wait(), 10)
                    data, _ = await client.get(raw_path, watch=True)
                    read_at = time.perf_counter_ns()
                    started = int((await asyncio.wait_for(proc.stdout.readline(), 10)).split()[1])
                    assert data == b"%d" % i
                    raw_delays.append(fired[-1] - started)
                    read_delays.append(read_at - started)
                    # The dict: the writer sets the key through its own ZookeeperDict.
                    arrived.clear()
                    proc.stdin.write(b"dict %d\n" % i)
                    started = int((await asyncio.wait_for(proc.stdout.readline(), 10)).split()[1])
                    while i not in arrivals:
                        await asyncio.wait_for(arrived.wait(), 10)
                        arrived.clear()
                    dict_delays.append(arrivals[i] - started)
            finally:
                client.session.remove_watch_callback(protocol.WatchEvent.DATA_CHANGED, full_raw, ring)
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await client.delete(raw_path, force=True)
    raw = timing_of(raw_delays)
    read = timing_of(read_delays)
    propagation = timing_of(dict_delays)
    report.add(GROUP, "raw data watch fired (another process)", raw, n=n)
    report.add(GROUP, "raw data watch, then get", read, n=n, baseline="raw data watch", baseline_timing=raw)
    report.add(
        GROUP,
        "propagation (another process)",
        propagation,
        n=n,
        baseline="raw data watch",
        baseline_timing=raw,
        keep_samples=True,
    )
    report.add(
        GROUP,
        "propagation (another process)",
        propagation,
        n=n,
        baseline="raw watch, then get",
        baseline_timing=read,
    )


async def _bench_failover(report: Report, kills: int) -> None:
    """Kill the leader of a private 3-peer ensemble ``kills`` times; each time, time the election
    (until a quorum with a new leader serves) and the time until every dict (4 watching dicts, each
    with its own client) holds the value a writer wrote right after the kill."""
    try:
        from tests.servers import ZookeeperEnsemble
    except ImportError as exc:
        print(f"   no private ensemble ({exc}); failover rows skipped", file=sys.stderr)
        return
    from aiodurabledict.backends.zookeeper import ZookeeperDict

    try:
        ensemble = await ZookeeperEnsemble().astart()
    except Exception as exc:  # noqa: BLE001 - the ensemble's own failure is reported, the rest runs
        print(
            f"   the private ensemble did not start ({type(exc).__name__}: {exc}); skipped", file=sys.stderr
        )
        return
    elections: list[float] = []
    recoveries: list[float] = []
    try:
        path = f"/aiodurabledict-bench/{uuid.uuid4().hex}"
        servers = ensemble.connect_string
        dicts = [ZookeeperDict[Any](path, _unstarted(servers), owns_client=True) for _ in range(4)]
        writer = ZookeeperDict[Any](path, _unstarted(servers), owns_client=True, watch=False, timeout=2.0)
        for d in (*dicts, writer):
            await d.open()
        try:
            for kill in range(kills):
                await writer.set("k", -kill)
                while not all(d.view.get("k") == -kill for d in dicts):
                    await asyncio.sleep(0.005)
                leader = await ensemble.await_for_quorum()
                started = time.perf_counter_ns()
                leader.kill()
                election = asyncio.create_task(_election(ensemble, started))
                while True:
                    try:
                        await writer.set("k", kill + 1)
                        break
                    except Exception:  # noqa: BLE001 - the writer retries until the ensemble takes it
                        await asyncio.sleep(0.01)
                while not all(d.view.get("k") == kill + 1 for d in dicts):
                    await asyncio.sleep(0.002)
                recoveries.append(time.perf_counter_ns() - started)
                elections.append(await election)
                await leader.astart()
                await ensemble.await_for_quorum()
        finally:
            for d in (*dicts, writer):
                await d.aclose()
    finally:
        ensemble.close()
    election_timing, recovery = timing_of(elections), timing_of(recoveries)
    report.add(GROUP, "leader killed: election (quorum serves again)", election_timing, n=kills)
    report.add(
        GROUP,
        "leader killed: every dict equal to the tree",
        recovery,
        n=kills,
        baseline="election",
        baseline_timing=election_timing,
        note=f"median {(recovery.median - election_timing.median) / 1e9:+.2f} s over the election (goal: +1 s at most)",
    )


def _unstarted(servers: str) -> Any:
    import aiozk

    return aiozk.ZKClient(servers, session_timeout=10)


async def _election(ensemble: Any, started: int) -> float:
    """Nanoseconds from ``started`` until a peer that was a follower serves as leader."""
    while True:
        try:
            await asyncio.to_thread(ensemble.leader)
        except LookupError:
            await asyncio.sleep(0.01)
            continue
        return float(time.perf_counter_ns() - started)


async def _writer(address: str, path: str, raw_path: str) -> None:
    """Read "raw I" / "dict I" lines; print "I <perf_counter_ns before the write>" for each."""
    from aiodurabledict.backends.zookeeper import ZookeeperDict, close_client

    client = await _client(address)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async with ZookeeperDict[Any](path, client, watch=False) as d:
            print("ready", flush=True)
            while line := await reader.readline():
                kind, number = line.split()
                started = time.perf_counter_ns()
                if kind == b"raw":
                    await client.set(raw_path, number, -1)
                else:
                    await d.set("probe", int(number))
                print(f"{int(number)} {started}", flush=True)
    finally:
        await close_client(client, 2.0)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "writer":
        asyncio.run(_writer(*sys.argv[2:5]))
    else:
        sys.exit(__doc__)
