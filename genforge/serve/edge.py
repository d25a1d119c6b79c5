"""What every request passes through before a route: a request id, the body-size bound, the key
check for every path not on the public list, a JSON log line and the request metrics. Written as
plain ASGI so a refused body is never read past the bound and streamed responses are timed to
their end."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genforge.serve import metrics
from genforge.serve.errors import APIError, response
from genforge.serve.keys import KeyStore

log = logging.getLogger("genforge.serve")
ROUTES = {"/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/images/generations",
          "/v1/tables/generations", "/v1/feedback", "/v1/reviews", "/v1/reviews/{review_id}",
          "/v1/reviews/{review_id}/ratings", "/v1/reviews/{review_id}/summary", "/healthz", "/readyz", "/metrics"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with the record's extra fields (request_id, key, model, ...)."""

    SKIP = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "pid": record.process,
               "msg": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self.SKIP})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class Edge:
    def __init__(self, app: ASGIApp, keys: KeyStore, public: set[str], max_body_bytes: int,
                 public_prefixes: tuple[str, ...] = ()):
        self.app, self.keys, self.public, self.max_body = app, keys, public, max_body_bytes
        self.public_prefixes = public_prefixes  # the page's static files: no key, GET only

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body exceeds max_body_bytes ({self.max_body} bytes)", code="max_body_bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, path = time.perf_counter(), scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = {"code": 500}

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            length = headers.get("content-length", "0")
            if not length.isdigit():
                raise APIError(400, "the Content-Length header is not a number", code="invalid_header")
            if int(length) > self.max_body:
                raise self._too_large()
            if path not in self.public and not (scope["method"] in ("GET", "HEAD")
                                                and path.startswith(self.public_prefixes)):
                scope["state"]["key"] = await self._authenticate(headers.get("authorization", ""))
            seen = 0

            async def bounded() -> Message:
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # a body without Content-Length: stop reading at the bound
                    raise self._too_large()
                return message
        except APIError as e:  # refused before any route ran
            metrics.REFUSED.labels(e.code or str(e.status)).inc()
            await response(e)(scope, receive, send_logged)
        else:
            await self.app(scope, bounded, send_logged)
        finally:
            template = getattr(scope.get("route"), "path", path)  # the route's own path: one label for every id
            route = template if template in ROUTES else "other"
            seconds = time.perf_counter() - started
            metrics.REQUESTS.labels(route, str(status["code"])).inc()
            metrics.LATENCY_S.labels(route).observe(seconds)
            key = scope["state"].get("key")
            log.info("request", extra={"request_id": rid, "method": scope["method"], "path": path,
                                       "status": status["code"], "seconds": round(seconds, 4),
                                       "key": getattr(key, "id", None), **scope["state"].get("log", {})})

    async def _authenticate(self, header: str) -> Any:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise APIError(401, "no API key: send the header 'Authorization: Bearer <key>' (an administrator "
                                "creates keys with `genforge keys create NAME`)", code="missing_api_key")
        key = await run_in_threadpool(self.keys.authenticate, secret.strip())
        if key is None:
            raise APIError(401, "the API key is unknown or revoked", code="invalid_api_key")
        return key
