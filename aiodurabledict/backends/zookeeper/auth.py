"""Digest credentials: what a client sends to authenticate, and the ACL that gives their user (and
nobody else) every right over the nodes a dict creates."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from aiozk.protocol.acl import ACL

__all__ = ["Credentials"]


@dataclass(frozen=True)
class Credentials:
    """A ZooKeeper ``digest`` user and password; the password never shows in a repr."""

    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.user or ":" in self.user:
            raise ValueError("a ZooKeeper digest user must be non-empty and hold no ':'")

    @classmethod
    def of(cls, given: Credentials | tuple[str, str]) -> Credentials:
        """Credentials from themselves or a ``(user, password)`` pair."""
        if isinstance(given, Credentials):
            return given
        user, password = given
        return cls(user, password)

    @property
    def scheme(self) -> str:
        return "digest"

    @property
    def auth(self) -> bytes:
        """What an ``AuthRequest`` carries: ``user:password``."""
        return f"{self.user}:{self.password}".encode()

    @property
    def digest(self) -> str:
        """The id ZooKeeper's digest scheme gives this user: ``user:base64(sha1(user:password))``."""
        hashed = base64.b64encode(hashlib.sha1(self.auth).digest()).decode()  # noqa: S324 - ZooKeeper's scheme
        return f"{self.user}:{hashed}"

    def acl(self) -> list[Any]:
        """Every right for this user, none for anybody else."""
        return [ACL.make("digest", self.digest, read=True, write=True, create=True, delete=True, admin=True)]
