"""The ``aiodurabledict`` command: read, write, watch, back up and move a dict from a shell.

The store comes from ``--url``, else ``AIODURABLEDICT_URL``, else an SQLite file in the current
directory (so it works with no server). Values are JSON. Every failure is one line on stderr and an
exit code (below); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import suppress
from typing import Any, TextIO

from . import _urls
from ._codecs import RawCodec
from ._dict import AsyncDurableDict
from ._types import MISSING, Change
from .errors import BackendError, DurableDictError, EncodeError, InvalidKeyError

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_MISSING_KEY",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "main",
]

DEFAULT_URL = "sqlite:///aiodurabledict.db"
ENV_URL = "AIODURABLEDICT_URL"

EXIT_OK = 0
EXIT_ERROR = 1  # anything else: a value that cannot be decoded, a missing extra, an unexpected failure
EXIT_USAGE = 2  # bad arguments, a bad URL, invalid JSON, an invalid key or value
EXIT_MISSING_KEY = 3  # get/delete of a key that is not there
EXIT_UNREACHABLE = 4  # the store failed or could not be reached (including max_staleness passed)
EXIT_INTERRUPTED = 130  # Ctrl-C outside `watch`

EPILOG = f"""\
store URLs:
  sqlite:///file.db                         an SQLite file (default: {DEFAULT_URL})
  redis://host:6379/0?keyspace=settings     Redis (rediss:// for TLS, redis+unix:///path/sock)
  zookeeper://host:2181/app/settings        ZooKeeper, the dict at that znode
  postgres://user@host:5432/db?keyspace=x   PostgreSQL
  memory://                                 this process only (for trying things out)

exit codes:
  0 success   1 error   2 bad usage, URL, JSON or key   3 key not found   4 store unreachable
"""


class _UsageError(Exception):
    """Bad input from the user: exit code 2."""


class _MissingKeyError(Exception):
    """A key the command needed is not in the dict: exit code 3."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script passes it to ``sys.exit``)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already explained
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.debug:
        # Debug output from this library only: some client libraries log connection settings,
        # credentials included, at their debug level.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("aiodurabledict").setLevel(logging.DEBUG)
    try:
        asyncio.run(args.command(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error worth a message.
        with suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        code, message = _explain(exc)
        if args.debug:
            logging.getLogger("aiodurabledict").exception("failed")
        # Whatever a client library put in its message, no credential of the URLs given is shown.
        for url in (getattr(args, name, None) for name in ("url", "src", "dst")):
            if isinstance(url, str):
                message = _urls.scrub(message, url)
        _print(f"aiodurabledict: error: {message}", err=True)
        return code
    return EXIT_OK


def _explain(exc: Exception) -> tuple[int, str]:
    """The exit code and one-line message for a failure."""
    if isinstance(exc, _MissingKeyError):
        return EXIT_MISSING_KEY, str(exc)
    if isinstance(exc, BackendError):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, _UsageError | InvalidKeyError | EncodeError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, DurableDictError | ImportError):
        return EXIT_ERROR, str(exc)
    if isinstance(exc, OSError):
        return EXIT_ERROR, str(exc)
    return EXIT_ERROR, f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"


def _common_options() -> argparse.ArgumentParser:
    """The options every command takes; a fresh parser each time, as argparse shares action objects."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the store (default: ${ENV_URL}, else {DEFAULT_URL})",
    )
    common.add_argument(
        "--timeout",
        type=_positive,
        default=argparse.SUPPRESS,
        help="seconds one store call may take (default 5)",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs"
    )
    return common


def _parser() -> argparse.ArgumentParser:
    # Accepted before and after the command: `aiodurabledict get KEY --url ...` works too.
    parser = argparse.ArgumentParser(
        prog="aiodurabledict",
        description="Read and write an aiodurabledict store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options()],
    )
    # No timeout default here: the URL's ?timeout= (else the dict's own default) applies unless given.
    parser.set_defaults(url=os.environ.get(ENV_URL) or DEFAULT_URL, timeout=None, debug=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], Coroutine[Any, Any, None]], help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help, parents=[_common_options()])
        p.set_defaults(command=func)
        return p

    p = command("get", _get, "print the value of KEY as JSON")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--str", action="store_true", help="print a string value as is, without JSON quotes")

    p = command("set", _set, "store VALUE (JSON) under KEY")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE", help='JSON: 42, true, "text", [1, 2], {"a": 1}')
    p.add_argument("--str", action="store_true", help="store VALUE as a string, not JSON")

    p = command("delete", _delete, "remove KEY")
    p.add_argument("key", metavar="KEY")

    p = command("list", _list, "print every key and value")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    command("watch", _watch, "print each change as a JSON line until Ctrl-C or SIGTERM")

    command("dump", _dump, "print the whole dict as one JSON object (a backup)")

    p = command("load", _load, "write a JSON object (from FILE or stdin) in one atomic batch")
    p.add_argument("file", metavar="FILE", nargs="?", default="-", help="the JSON file (default: stdin)")
    p.add_argument("--replace", action="store_true", help="also remove keys the input lacks")

    p = command("copy", _copy, "copy every entry from SRC_URL to DST_URL, byte for byte")
    p.add_argument("src", metavar="SRC_URL")
    p.add_argument("dst", metavar="DST_URL")
    p.add_argument("--replace", action="store_true", help="also remove keys SRC lacks from DST")
    return parser


def _print(text: str, *, err: bool = False) -> None:
    """One line to stdout (data) or stderr (messages), flushed so pipes see it at once."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _positive(text: str) -> float:
    try:
        return _urls.seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: {text!r}") from None


def _open(url: str, args: argparse.Namespace, **opts: Any) -> AsyncDurableDict[Any]:
    """An unopened dict on ``url``; the CLI's short-lived commands need no watcher."""
    opts.setdefault("watch", False)
    if args.timeout is not None:
        opts["timeout"] = args.timeout
    try:
        return _urls.open_dict(url, **opts)
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc


# Characters JSON leaves raw (DEL and the C1 controls, ESC's 8-bit twin CSI among them) that a
# terminal would obey: written as \u escapes, which keeps the JSON valid and the terminal safe.
_RAW_CONTROLS = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _dumps(value: Any, **kw: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, **kw)
    return _RAW_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _shown(text: str) -> str:
    """``text`` for a terminal table: control and invisible characters escaped, never obeyed."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise _UsageError(f"{what} is nested too deeply to be read as JSON") from None
    except ValueError as exc:
        raise _UsageError(f"{what} is not valid JSON ({exc})") from None


def _warn_undecodable(d: AsyncDurableDict[Any]) -> None:
    bad = sorted(d.undecodable)
    if bad:
        shown = ", ".join(map(repr, bad[:5])) + (", …" if len(bad) > 5 else "")
        _print(
            f"aiodurabledict: warning: {len(bad)} value(s) cannot be decoded, left out: {shown}",
            err=True,
        )


async def _get(args: argparse.Namespace) -> None:
    async with _open(args.url, args) as d:
        try:
            value = d[args.key]
        except KeyError:
            raise _MissingKeyError(f"key {args.key!r} not found") from None
    _print(value if args.str and isinstance(value, str) else _dumps(value))


async def _set(args: argparse.Namespace) -> None:
    value: Any
    if args.str:
        value = args.value
    else:
        try:
            value = _loads(args.value, "VALUE")
        except _UsageError as exc:
            raise _UsageError(f"{exc}; add --str to store it as a string") from None
    async with _open(args.url, args) as d:
        await d.set(args.key, value)


async def _delete(args: argparse.Namespace) -> None:
    async with _open(args.url, args) as d:
        try:
            await d.delete(args.key)
        except KeyError:
            raise _MissingKeyError(f"key {args.key!r} not found") from None


async def _list(args: argparse.Namespace) -> None:
    async with _open(args.url, args) as d:
        entries = dict(d.view)
        _warn_undecodable(d)
    if args.json:
        _print(_dumps(entries, sort_keys=True))
        return
    rows = [(_shown(key), _shown(_dumps(entries[key]))) for key in sorted(entries)]
    width = min(max((len(key) for key, _ in rows), default=0), 40)
    for key, value in rows:
        _print(f"{key:<{width}}  {value}")


async def _dump(args: argparse.Namespace) -> None:
    async with _open(args.url, args) as d:
        entries = dict(d.view)
        _warn_undecodable(d)
    _print(_dumps(entries, sort_keys=True, indent=2))


async def _load(args: argparse.Namespace) -> None:
    text = _read(args.file)
    entries = _loads(text, "the input")
    if not isinstance(entries, dict):
        raise _UsageError(
            f"the input must be a JSON object of key: value, not a JSON {type(entries).__name__}"
        )
    async with _open(args.url, args) as d:
        await _write_all(d, entries, args.replace, "the input")


async def _copy(args: argparse.Namespace) -> None:
    # Bytes as stored: a copy needs no codec, and works for values written with any codec.
    async with _open(args.src, args, codec=RawCodec()) as src, _open(args.dst, args, codec=RawCodec()) as dst:
        await _write_all(dst, dict(src.view), args.replace, "SRC_URL")


async def _write_all(
    d: AsyncDurableDict[Any], entries: Mapping[str, Any], replace: bool, source: str
) -> None:
    """Write ``entries`` in one atomic batch; with ``replace``, then remove the keys they lack.

    No store offers an atomic "replace everything" through the dict, so the removal comes after the
    batch, one key at a time: readers may briefly see old extra keys, but never an empty dict.
    """
    await d.update(entries)
    removed = 0
    if replace:
        for key in [k for k in d.view if k not in entries] + sorted(d.undecodable):
            if key not in entries and await d.pop(key, MISSING) is not MISSING:
                removed += 1
    message = f"wrote {len(entries)} key(s) in one batch"
    if replace:
        message += f", then removed {removed} key(s) absent from {source} one by one (not atomic)"
    _print(f"aiodurabledict: {message}", err=True)


def _read(path: str) -> str:
    if path == "-":
        if sys.stdin.isatty():
            raise _UsageError("load reads a JSON object from stdin: aiodurabledict load < file.json")
        return sys.stdin.read()
    with open(path, encoding="utf-8") as file:
        return file.read()


async def _watch(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    d = _open(args.url, args, watch=True)
    async with d:
        stream = d.changes()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            _print(
                f"aiodurabledict: watching {_urls.redact(args.url)} (Ctrl-C to stop)",
                err=True,
            )
            pump = asyncio.create_task(_print_changes(stream, sys.stdout))
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({pump, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if pump in done:
                pump.result()  # the stream ended; raises what stopped the printing, if anything
            else:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)


async def _print_changes(stream: AsyncIterator[Change[Any]], out: TextIO) -> None:
    async for change in stream:
        line: dict[str, Any] = {"key": change.key, "version": change.version}
        if change.new is MISSING:
            line["op"] = "delete"
        else:
            line["op"] = "set"
            line["new"] = change.new
        if change.old is not MISSING:
            line["old"] = change.old
        out.write(_dumps(line) + "\n")
        out.flush()
