"""``open_dict(url)``: a dict on any store, named by one URL (as the CLI and twelve-factor apps want).

The URL is parsed once here (``StoreURL``: scheme, parts, the dict's options typed, the store's options
left); the scheme's opener module (``backends/*_url.py``) builds the store's client from it. An opener
imports its client library only when called, so a missing extra fails for that scheme alone, with the
``pip install`` line that fixes it. URLs are never logged or echoed with a credential (see ``redact``).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Unpack
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from ._codecs import JSONCodec, RawCodec
from ._types import DEFAULT_KEYSPACE, DictOptions

if TYPE_CHECKING:
    from ._dict import AsyncDurableDict

__all__ = [
    "DEFAULT_KEYSPACE",
    "SCHEMES",
    "Factory",
    "StoreURL",
    "join",
    "open_dict",
    "optional_seconds",
    "redact",
    "scrub",
    "seconds",
    "secrets_in",
]

Factory = Callable[[dict[str, Any]], "AsyncDurableDict[Any]"]
"""What an opener returns: builds the dict from the dict's options (no I/O)."""


class _Opener(Protocol):
    def open_url(self, url: StoreURL) -> Factory: ...


# scheme -> (opener module, the extra that brings its client library)
_OPENERS: Mapping[str, tuple[str, str]] = {
    "redis": (".backends.redis.url", "redis"),
    "rediss": (".backends.redis.url", "redis"),
    "redis+unix": (".backends.redis.url", "redis"),
    "redis+cluster": (".backends.redis.url", "redis"),
    "redis+sentinel": (".backends.redis.url", "redis"),
    "zookeeper": (".backends.zookeeper.url", "zookeeper"),
    "sqlite": (".backends.tortoise.opener", "tortoise"),
    "postgres": (".backends.tortoise.opener", "postgres"),
    "postgresql": (".backends.tortoise.opener", "postgres"),
    "mysql": (".backends.tortoise.opener", "mysql"),
    "memory": (".backends.memory_url", ""),
}
SCHEMES = tuple(_OPENERS)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def seconds(value: str) -> float:
    """A positive, finite number of seconds; ``ValueError`` otherwise."""
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("expected a positive number of seconds")
    return number


def optional_seconds(value: str) -> float | None:
    """Like ``seconds``, with ``none``/``null``/empty for ``None``."""
    return None if value.strip().lower() in {"", "none", "null"} else seconds(value)


def _codec(value: str) -> JSONCodec | RawCodec:
    # Pickle is deliberately absent: whoever can edit a URL in a config file should not be able to
    # make the application unpickle the store's bytes. Pass codec=PickleCodec() in code instead.
    codecs: dict[str, Callable[[], JSONCodec | RawCodec]] = {"json": JSONCodec, "raw": RawCodec}
    try:
        return codecs[value.strip().lower()]()
    except KeyError:
        raise ValueError("expected json or raw (PickleCodec is opt-in: pass codec= in code)") from None


# The dict's own options, valid on every scheme, with the parser that types each.
COMMON: Mapping[str, Callable[[str], Any]] = {
    "autosync": _bool,
    "watch": _bool,
    "max_staleness": optional_seconds,
    "heartbeat": seconds,
    "poll_interval": seconds,
    "timeout": seconds,
    "codec": _codec,
}


# Query options whose values are credentials, whatever their spelling (?PASSWORD=, ?ssl_password=...).
_SECRET_OPTION = re.compile(r"(?i)([^=&;?#]*(?:pass|pwd|secret|token|auth|credential)[^=&;#]*=)([^&;#]*)")


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """``(userinfo, the rest after it)`` of what follows ``scheme://``.

    A generated password often holds ``/``, ``?``, ``#`` or ``@`` unencoded, which standard parsing
    reads as the path, query or fragment. So the userinfo is taken to run to the LAST ``@`` whenever
    what precedes it holds a ``:`` (``user:password``): masking too much is safe, too little is not.
    """
    if rest.startswith("/") or "@" not in rest:
        return None, rest
    userinfo, _, after = rest.rpartition("@")
    if ":" not in userinfo and any(c in userinfo for c in "/?#"):
        # An @ further on (a query value) with no user:password before it.
        return None, rest
    return userinfo, after


def redact(url: str) -> str:
    """``url`` with every credential masked: the password (all of it, even unencoded ``/?#@`` in it)
    and the value of any option named like a credential (``password``, ``ssl_password``, ``token``...).
    The fragment is dropped; a URL that cannot be parsed is not shown at all."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparsable URL>" if "@" in url or not url.strip() else url
    userinfo, after = _split_userinfo(rest)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        if any(c in user for c in "/?#") or (not colon and any(c in userinfo for c in "/?#")):
            shown = "***"
        else:
            shown = f"{user}:***" if colon else user
        rest = f"{shown}@{after}"
    rest = rest.partition("#")[0]
    head, q, query = rest.partition("?")
    if q:
        rest = head + "?" + _SECRET_OPTION.sub(lambda m: m.group(1) + "***", query)
    shown_url = f"{scheme}://{rest}"
    try:
        urlsplit(shown_url)
    except ValueError:
        return "<unparsable URL>"
    return shown_url


def secrets_in(url: str) -> list[str]:
    """The credentials ``url`` holds, as written and percent-decoded: text that no message may show."""
    found: list[str] = []
    _, sep, rest = url.partition("://")
    userinfo, _ = _split_userinfo(rest) if sep else (None, rest)
    if userinfo is not None and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    found += [m.group(2) for m in _SECRET_OPTION.finditer(rest.partition("?")[2])]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with every credential of ``url`` replaced by ``***`` (for messages from elsewhere)."""
    for secret in secrets_in(url):
        text = text.replace(secret, "***")
    return text


def join(scheme: str, netloc: str, path: str, query: str) -> str:
    """A URL from its parts (not ``urlunsplit``: it drops an empty authority, turning
    ``sqlite:////abs.db`` into ``sqlite://abs.db``)."""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


@dataclass
class StoreURL:
    """A store URL, parsed once: what every opener needs, with the store's own options still in
    ``query`` (an opener takes those it knows, then refuses the rest)."""

    raw: str
    scheme: str
    parts: SplitResult
    query: dict[str, str]
    keyspace: str | None
    extra: str

    @property
    def redacted(self) -> str:
        """The URL without its credentials, for messages."""
        return redact(self.raw)

    def error(self, message: str) -> ValueError:
        """A ``ValueError`` about this URL (credentials masked)."""
        return ValueError(f"{message} (store URL {self.redacted!r})")

    def take(self, parsers: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
        """Pop and type the options ``parsers`` knows."""
        typed: dict[str, Any] = {}
        for name, parse in parsers.items():
            if name in self.query:
                raw = self.query.pop(name)
                try:
                    typed[name] = parse(raw)
                except ValueError as exc:
                    raise self.error(f"bad value {raw!r} for option {name!r}: {exc}") from None
        return typed

    def refuse_unknown(self, allowed: frozenset[str] = frozenset()) -> None:
        """Raise ``ValueError`` for any option left in ``query`` that is not ``allowed``."""
        unknown = sorted(set(self.query) - allowed)
        if unknown:
            known = sorted({*COMMON, "keyspace", *allowed})
            raise self.error(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"known options: {', '.join(known)}"
            )

    def missing_extra(self, exc: ImportError) -> ImportError:
        """The ``ImportError`` to raise when this scheme's client library is not installed."""
        return ImportError(
            f"{self.scheme}:// URLs need the {self.extra!r} extra (missing module {exc.name!r}): "
            f"pip install 'aiodurabledict[{self.extra}]'"
        )


def parse(url: str) -> tuple[StoreURL, dict[str, Any]]:
    """Parse ``url`` once: the ``StoreURL`` for its opener, and the dict's options, typed."""
    if not isinstance(url, str):
        raise TypeError(f"open_dict() takes a URL string, not {type(url).__name__}")
    if url.strip().lower().startswith("sqlite://:memory:"):
        raise ValueError(
            "sqlite://:memory: would be a database that only the dict's own connection sees: use "
            "memory:// for a store in this process, or an SQLite file (sqlite:///file.db)"
        )
    try:
        parts = urlsplit(url.strip())
        if "," not in parts.netloc:
            # Touch the port now: urlsplit parses it lazily and raises on a bad one. (A list of
            # servers, h1:p1,h2:p2, is the opener's to check.)
            _ = parts.port
    except ValueError:
        # Not shown, nor the parser's reason: both may quote part of a password.
        raise ValueError(
            "malformed store URL (not shown: it may hold a credential); a password holding "
            "/ ? # or @ must be percent-encoded (%2F %3F %23 %40)"
        ) from None
    userinfo, _ = _split_userinfo(url.strip().partition("://")[2])
    if userinfo is not None and not parts.netloc.startswith(userinfo + "@"):
        # The password holds / ? # or @: standard parsing would take part of it for the path.
        raise ValueError(
            f"malformed store URL {redact(url)!r}: its password holds / ? # or @, which must be "
            "percent-encoded (%2F %3F %23 %40)"
        )
    scheme = parts.scheme.lower()
    if scheme not in _OPENERS:
        given = f"{scheme}://" if scheme else "no scheme"
        raise ValueError(
            f"unsupported store URL {redact(url)!r} ({given}); "
            f"expected one of: {', '.join(s + '://' for s in SCHEMES)}"
        )
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name in query:
            raise ValueError(f"option {name!r} given twice in store URL {redact(url)!r}")
        query[name] = value
    keyspace = query.pop("keyspace", None)
    if keyspace is not None and not keyspace:
        raise ValueError(f"empty keyspace in store URL {redact(url)!r}")
    store_url = StoreURL(url, scheme, parts, query, keyspace, _OPENERS[scheme][1])
    return store_url, store_url.take(COMMON)


def open_dict(url: str, **opts: Unpack[DictOptions]) -> AsyncDurableDict[Any]:
    """An unopened dict on the store ``url`` names; it owns, and closes, the client it makes.

    Schemes: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS),
    ``redis+unix:///path/to/socket``, ``zookeeper://[user:password@]host:port[,host:port…]/path``,
    ``sqlite:///relative.db`` or ``sqlite:////absolute.db``, ``postgres://`` (or ``postgresql://``)
    ``user:password@host:port/database``, ``mysql://user:password@host:port/database`` (MySQL or
    MariaDB), ``memory://[name]`` (one store per name and process).

    Query options, on every scheme: ``keyspace`` (where the path does not name the dict; default
    ``default``), ``autosync``, ``watch`` (true/false), ``max_staleness`` (seconds or ``none``),
    ``heartbeat``, ``poll_interval``, ``timeout`` (seconds), ``codec`` (``json`` or ``raw``).
    Keyword ``opts`` are the dict's options too and win over the URL's.

    Raises ``ValueError`` for a malformed URL, an unknown scheme or option, or a bad option value;
    ``ImportError`` naming the extra to install when the scheme's client library is missing.

    Usage::

        async with open_dict("redis://localhost:6379/0?keyspace=settings") as settings:
            await settings.set("feature_x", True)
    """
    store_url, dict_opts = parse(url)
    opener: _Opener = importlib.import_module(_OPENERS[store_url.scheme][0], __package__)
    factory = opener.open_url(store_url)
    return factory({**dict_opts, **opts})
