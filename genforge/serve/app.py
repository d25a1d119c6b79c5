"""The FastAPI application: `create_app(config)` for one process, `app_from_env` for uvicorn's
worker processes (`genforge serve --workers N`), which read the same config file.

Models load in the background when the server starts (/readyz answers 503 until every one is
loaded); a background task follows each model's registry alias or run every
`reload_interval_s` and swaps versions without a restart (`models.Slot`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from genforge import __version__
from genforge.review.store import ReviewStore
from genforge.serve import errors, feedback, images, metrics, page, reviews, tables, text
from genforge.serve.config import ServeConfig, load_serve_config
from genforge.serve.context import State, admit, state
from genforge.serve.edge import Edge, JSONFormatter
from genforge.serve.errors import APIError
from genforge.serve.feedback_store import FeedbackStore
from genforge.serve.keys import KeyStore, RateLimiter
from genforge.serve.models import Slot

log = logging.getLogger("genforge.serve")
CONFIG_ENV = "GENFORGE_SERVE_CONFIG"  # for worker processes: {"path": ..., "overrides": [...]}


def _logging() -> None:
    if not any(isinstance(h.formatter, JSONFormatter) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JSONFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


async def _load(st: State, name: str, slot: Slot) -> None:
    try:
        await run_in_threadpool(slot.refresh)
        st.errors.pop(name, None)
    except Exception as e:  # noqa: BLE001 - reported by /readyz and the log; the loop retries
        st.errors[name] = f"{type(e).__name__}: {e}"
        log.warning("model not loaded", extra={"model": name, "error": st.errors[name]})


async def _follow(st: State) -> None:
    """Load every model, then check their sources every reload_interval_s."""
    while True:
        await asyncio.gather(*(_load(st, n, s) for n, s in st.slots.items()))
        st.ready = all(s.current is not None for s in st.slots.values())
        if not st.config.reload_interval_s:
            if st.ready:
                return
            await asyncio.sleep(5.0)
        else:
            await asyncio.sleep(st.config.reload_interval_s)


def create_app(config: ServeConfig) -> FastAPI:
    _logging()
    keys = KeyStore(config.keys_db)
    st = State(config, {m.name: Slot(m, config) for m in config.models}, RateLimiter(config.keys_db),
               asyncio.Semaphore(config.limits.max_streams))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_follow(st))
        yield
        task.cancel()
        for slot in st.slots.values():
            if slot.current is not None:
                slot.current.engine.close()

    app = FastAPI(title="genforge", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible generation of text, images and tables from genforge's models.")
    app.state.genforge = st
    app.state.feedback = FeedbackStore(config.feedback_db)
    app.state.reviews = ReviewStore(config.reviews_db)
    errors.install(app)
    app.include_router(text.router)
    app.include_router(images.router)
    app.include_router(tables.router)
    app.include_router(feedback.router)
    app.include_router(reviews.router)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        key = request.state.key
        await admit(request, 0)  # a request like any other for the key's requests_per_minute
        cards = [s.current.card() for n, s in st.slots.items() if s.current is not None and key.allows(n)]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model}")
    async def retrieve_model(model: str, request: Request) -> Any:
        """OpenAI's retrieve-model, with genforge's details (model card, options, classes or columns)."""
        await admit(request, 0)
        slot = st.slots.get(model)
        if slot is None or slot.current is None or not request.state.key.allows(model):
            raise APIError(404, f"no model {model[:100]!r} is served to this key", param="model", code="model_not_found")
        return slot.current.details()

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Any:
        s = state(request)
        models = {n: (slot.current.version if slot.current else None) for n, slot in s.slots.items()}
        if not s.ready:
            return JSONResponse({"status": "loading", "models": models, "errors": s.errors}, status_code=503)
        return {"status": "ready", "models": models}

    @app.get("/metrics")
    async def prometheus() -> Response:  # the queue gauge is set by each engine as it steps
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    if config.page:
        page.install(app)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    async def unknown(path: str) -> Any:
        raise APIError(404, f"no route /{path[:100]}", code="not_found")

    public = set(config.public_paths) | ({"/metrics"} if config.metrics_public else set())
    prefixes = (page.PREFIX,) if config.page else ()
    app.add_middleware(Edge, keys=keys, public=public | ({"/"} if config.page else set()), public_prefixes=prefixes,
                       max_body_bytes=config.limits.max_body_bytes)
    return app


def app_from_env() -> FastAPI:
    """For uvicorn's workers: the config `genforge serve` put in the environment."""
    spec = json.loads(os.environ[CONFIG_ENV])
    return create_app(load_serve_config(spec["path"], spec["overrides"]))
