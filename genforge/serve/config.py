"""`genforge serve`'s configuration: what is served, how requests are batched, and every bound.

Each bound has a default that keeps one small CPU server responsive and can be raised in the file;
a request over a bound is refused with a 4xx that names it, never silently cut.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from genforge.config import StrictModel, load_config
from genforge.moderation import ModerationConfig

PUBLIC_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect")


class ServedModel(StrictModel):
    """One model clients can call, by `name`: a registered model's alias (production), or a run's
    newest checkpoint (development)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    registry: str | None = None  # registered model name; its `alias` version is served and followed
    alias: str = "champion"
    run: str | None = None  # a run id or name (its newest checkpoint), instead of the registry

    @model_validator(mode="after")
    def _one_source(self) -> "ServedModel":
        if (self.registry is None) == (self.run is None):
            raise ValueError(f"model {self.name!r} needs exactly one of `registry` or `run`")
        return self


class Batching(StrictModel):
    max_batch: int = Field(default=32, ge=1, le=256)  # text: rows decoding together; images: images per call
    max_rows: int = Field(default=10_000, ge=1, le=100_000)  # tables: rows per call (rows are cheap)
    max_wait_ms: float = Field(default=10.0, ge=0.0, le=1000.0)  # images/tables: how long a batch waits to fill
    max_queue: int = Field(default=256, ge=1, le=100_000)  # requests waiting per model; beyond: 429


class Limits(StrictModel):
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_prompt_tokens: int = Field(default=1024, ge=1)
    max_tokens: int = Field(default=512, ge=1)  # per completion
    max_n: int = Field(default=8, ge=1)  # completions per request
    max_images: int = Field(default=16, ge=1)  # images per request
    max_rows: int = Field(default=10_000, ge=1)  # table rows per request
    max_streams: int = Field(default=64, ge=1)  # concurrent streaming responses per worker
    request_timeout_s: float = Field(default=120.0, gt=0)  # a request not answered by then: 503


class ServeConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)  # uvicorn worker processes; keys and limits are shared
    models: list[ServedModel] = Field(min_length=1)
    batching: Batching = Batching()
    limits: Limits = Limits()
    public_paths: list[str] = list(PUBLIC_PATHS)  # reachable without a key
    metrics_public: bool = False  # /metrics without a key (a scraper inside the network)
    page: bool = True  # the web page at / (static files, public; every action it takes needs a key)
    reload_interval_s: float = Field(default=5.0, ge=0.0)  # how often aliases are checked; 0: never
    keys_db: Path | None = None  # default: <workspace>/serve/keys.db
    moderation: ModerationConfig = ModerationConfig()  # prompts and text outputs; see genforge.moderation
    feedback_db: Path | None = None  # the generation log and ratings; default: <workspace>/serve/feedback.db
    reviews_db: Path | None = None  # human review sets and ratings; default: <workspace>/reviews/reviews.db

    @model_validator(mode="after")
    def _unique(self) -> "ServeConfig":
        names = [m.name for m in self.models]
        if len(set(names)) < len(names):
            raise ValueError(f"served model names must be unique, got {names}")
        return self


def load_serve_config(path: str | Path | None, overrides: list[str] | None = None) -> ServeConfig:
    return load_config(ServeConfig, path, overrides)
