"""API keys: accepted as `Authorization: Bearer <key>`, kept only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    requests_per_minute: int | None
    tokens_per_minute: int | None


class KeyRing:
    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def identify(self, authorization: str | None) -> ApiKey | None:
        """The key an `Authorization` header carries, or None if it carries no valid one."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = digest(token.strip())
        found = None
        for key in self.keys:  # compare with every key, in constant time each
            if hmac.compare_digest(presented, key.sha256):
                found = key
        return found


def presents(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `token` as its bearer token."""
    scheme, _, presented = (authorization or "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(digest(presented.strip()), digest(token))


def key_digest_from(sha256: str | None, key_env: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """A key's digest, from the spec's `sha256` or the environment variable it names."""
    if sha256:
        return sha256.lower()
    if key_env and environ.get(key_env):
        return digest(environ[key_env])
    raise ValueError(f"environment variable {key_env} holding an API key is not set")
