"""The region token, checked in every ASGI app a region serves: its control app and each
model's vLLM replicas.

A region with a token (its SHA-256 digest is in the apps' args, or the token is in the
replica's environment under the variable the args name) answers nothing without it: the
router and the global loop, which hold it, are the region's only clients. Without one
the region is open (an existing cluster whose spec names no token)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from meridian_core.cluster_spec import ENV_VAR
from meridian_host.region_tokens import token_sha256


class RegionTokenSource(BaseModel):
    """Where a region's apps read its token from, in their `serve deploy` args."""

    model_config = ConfigDict(extra="forbid")

    # SHA-256 of the region's token (what `meridian up` writes), or the environment
    # variable the replica reads the token itself from (a Kubernetes Secret in its pod's
    # environment, where no digest can be known at render time). Neither: the region is open.
    control_token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    control_token_env: str | None = Field(default=None, pattern=ENV_VAR)

    @model_validator(mode="after")
    def _one_token_source(self) -> RegionTokenSource:
        if self.control_token_sha256 is not None and self.control_token_env is not None:
            raise ValueError("give at most one of control_token_sha256 and control_token_env")
        return self


def refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": status}}, status)


def presents_token(headers: Headers, digest: str) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token_sha256(token), digest)


def region_token_digest(sha256: str | None, env_name: str | None, environ: Mapping[str, str]) -> str | None:
    """The digest a region's apps check tokens against. A token the args say is in the
    environment but is not there stops the replica: a region must not start open."""
    if env_name is None:
        return sha256
    token = environ.get(env_name, "")
    if not token:
        raise RuntimeError(f"the region token variable {env_name} is empty or unset in the replica's environment")
    return token_sha256(token)


class RegionTokenGuard:
    """Pure ASGI middleware: an HTTP request without the region's token gets an
    OpenAI-shaped 401 and never reaches the app. Streams pass through untouched."""

    def __init__(self, app: ASGIApp, *, digest: str | None) -> None:
        self.app = app
        self.digest = digest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        digest = self.digest
        if scope["type"] == "http" and digest is not None and not presents_token(Headers(scope=scope), digest):
            await refusal(401, "a valid region token is required")(scope, receive, send)
            return
        await self.app(scope, receive, send)
