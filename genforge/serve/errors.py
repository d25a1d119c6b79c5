"""Every failure as OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, from one
place, so clients written for OpenAI read genforge's errors unchanged. Messages are fit to show a
person and never echo a secret or a whole offending input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.errors import GenforgeError

log = logging.getLogger("genforge.serve")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class APIError(Exception):
    """A refusal with its HTTP status, the request field at fault and a machine-readable code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after


def body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error" if status >= 500 else
                                                               "invalid_request_error"),
                      "param": param, "code": code}}


def response(e: APIError) -> JSONResponse:
    headers = {} if e.retry_after is None else {"Retry-After": str(max(1, round(e.retry_after)))}
    return JSONResponse(body(e.status, e.message, e.param, e.code), status_code=e.status, headers=headers)


def install(app: FastAPI) -> None:
    """Map every exception the app can raise onto the envelope."""

    @app.exception_handler(APIError)
    async def _api(request: Request, e: APIError) -> JSONResponse:
        return response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's default is a 422 with its own body; OpenAI clients expect a 400 naming the field.
        first = e.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request body")
        return response(APIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return response(APIError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(GenforgeError)
    async def _genforge(request: Request, e: GenforgeError) -> JSONResponse:
        return response(APIError(400, str(e), code="invalid_value"))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
        return response(APIError(500, "the server failed on this request; it is logged under the request id "
                                      f"{getattr(request.state, 'request_id', '?')}", code="internal_error"))
