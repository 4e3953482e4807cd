"""The checks every HTTP request passes before its body is read, as one plain ASGI middleware.

- A request id: the client's `X-Request-Id` (1-64 characters of A-Z a-z 0-9 _ -; anything else is
  a 400) or a new one. It is put in `request.state.request_id` and sent back as `X-Request-Id`.
- The bearer token, when the server has one: `Authorization: Bearer <token>`, the scheme in any
  case (RFC 7235), compared in constant time; the page, its assets and /health are open
  (`web_page.is_open`).
- The body size, enforced while the body streams in: a `Content-Length` above the limit is refused
  before anything is read, and a chunked body is counted as it arrives and refused at the first
  chunk that crosses the limit (the rest is never read).

A plain ASGI class rather than `@app.middleware("http")`: Starlette's HTTP middleware wraps the
receive channel in ways that hide a streaming body and the client's disconnect from the endpoint.
"""
from __future__ import annotations

import hmac
import re
import secrets

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ldm_system.serving.web_page import is_open

REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_request_id() -> str:
    return secrets.token_hex(8)


def bearer_matches(header: str | None, token: str) -> bool:
    """`Bearer <token>` with the scheme in any case and any run of spaces after it."""
    scheme, _, value = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


class Guards:
    def __init__(self, app: ASGIApp, max_body_bytes: int, token: str | None = None) -> None:
        self.app, self.max_body_bytes, self.token = app, max_body_bytes, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id")
        valid = given is not None and REQUEST_ID.fullmatch(given) is not None
        rid = given if valid else new_request_id()
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        async def refuse(status: int, detail: str, extra: dict[str, str] | None = None) -> None:
            await JSONResponse({"detail": detail, "request_id": rid}, status, headers=extra)(scope, receive, send_with_id)

        if given is not None and not valid:
            return await refuse(400, "X-Request-Id must be 1-64 characters of A-Z a-z 0-9 _ -")
        if self.token is not None and not is_open(scope["path"]) and not bearer_matches(headers.get("authorization"), self.token):
            return await refuse(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await refuse(400, f"Content-Length must be a number of bytes, got {length!r}")
            if int(length) > self.max_body_bytes:
                return await refuse(413, self._too_large(f"{length} bytes"))
        await self.app(scope, self._counted(receive), send_with_id)

    def _too_large(self, size: str) -> str:
        return f"request body of {size} exceeds the server limit of {self.max_body_bytes} bytes (max_body_bytes)"

    def _counted(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:  # answered 413 by the app's HTTPException handler
                    raise HTTPException(413, self._too_large(f"more than {self.max_body_bytes} bytes"))
            return message

        return counted


__all__ = ["Guards", "REQUEST_ID", "bearer_matches", "new_request_id"]
