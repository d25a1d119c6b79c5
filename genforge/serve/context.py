"""What routes share: the served models, the key's scope and rate limits, and the bounds."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from genforge.errors import ConfigError
from genforge.moderation import Moderator
from genforge.models import SampleRequest, Samples
from genforge.serve import metrics
from genforge.serve.batching import ItemJob
from genforge.serve.config import ServeConfig
from genforge.serve.errors import APIError
from genforge.serve.keys import Key, RateLimiter
from genforge.serve.models import Served, Slot

log = logging.getLogger("genforge.serve")


@dataclass
class State:
    config: ServeConfig
    slots: dict[str, Slot]
    limiter: RateLimiter
    streams: asyncio.Semaphore
    ready: bool = False
    errors: dict[str, str] = field(default_factory=dict)  # model -> why it is not loaded
    moderator: Moderator = field(init=False)  # compiled once per process from config.moderation

    def __post_init__(self) -> None:
        self.moderator = Moderator(self.config.moderation)


def provenance(current: Served, **labels: Any) -> dict[str, Any]:
    """The `provenance` object on every generation response: content labelling rules (China's for
    AI-generated content among them) ask that generated content say so, and which model made it."""
    return {"ai_generated": True, "generator": "genforge", "model": current.name, "version": current.version,
            **labels}


def state(request: Request) -> State:
    return request.app.state.genforge


def served(request: Request, name: str, kind: str) -> Served:
    """The model a request names, if the caller's key may use it and it makes `kind`."""
    st, key = state(request), request.state.key
    slot = st.slots.get(name)
    if slot is None or not key.allows(name):  # a model the key may not use is as good as absent
        known = sorted(n for n in st.slots if key.allows(n))
        raise APIError(404, f"model {name!r} does not exist or this key may not use it; models: {known}",
                       param="model", code="model_not_found")
    current = slot.current
    if current is None:
        raise APIError(503, f"model {name!r} is not loaded yet: {st.errors.get(name, 'loading')}",
                       code="model_not_ready", retry_after=5.0)
    if current.kind != kind:
        raise APIError(400, f"model {name!r} makes {current.kind}s, not {kind}s: use its endpoint", param="model",
                       code="wrong_model_kind")
    request.state.log = {"model": name, "version": current.version}
    return current


@dataclass
class Reservation:
    limiter: RateLimiter
    key: Key
    units: int

    async def settle(self, used: int) -> None:
        """Give back what the request did not use (a sqlite write: off the event loop)."""
        await run_in_threadpool(self.limiter.settle, self.key, self.units, used)

    def settle_soon(self, used: int) -> None:
        """`settle` as a task of its own: for code that must not await (a cancelled stream's cleanup)."""
        task = asyncio.get_running_loop().create_task(self.settle(used))
        _SETTLING.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(_SETTLING.discard)


_SETTLING: set[asyncio.Task] = set()


async def admit(request: Request, units: int) -> Reservation:
    """Take one request and `units` (the most the request can generate) from the key's limits."""
    st, key = state(request), request.state.key
    if key.units_per_minute is not None and units > key.units_per_minute:
        metrics.REFUSED.labels("units_per_minute").inc()
        raise APIError(400, f"this request needs up to {units} units (tokens, images or rows), more than key {key.id}'s "
                            f"units_per_minute of {key.units_per_minute}: it can never fit; ask for less (max_tokens, "
                            f"n)", code="units_per_minute")
    decision = await run_in_threadpool(st.limiter.acquire, key, units)
    if not decision.allowed:
        metrics.REFUSED.labels(decision.limit).inc()
        limit = getattr(key, decision.limit)
        raise APIError(429, f"rate limit reached: {decision.limit} is {limit} for key {key.id} (this request needs "
                            f"{units if decision.limit == 'units_per_minute' else 1}); retry in "
                            f"{decision.retry_after:.0f} s", code=decision.limit, retry_after=decision.retry_after)
    return Reservation(st.limiter, key, units)


def bound(value: int, limit: int, param: str, what: str) -> None:
    if value > limit:
        metrics.REFUSED.labels(what).inc()
        raise APIError(400, f"{param} is {value}, above this server's {what} of {limit}", param=param, code=what)


def options(current: Served, overrides: dict[str, Any]) -> Any:
    """The run's sample defaults with the request's overrides, validated by the family."""
    try:
        return current.model.options({k: v for k, v in overrides.items() if v is not None})
    except ConfigError as e:
        raise APIError(400, str(e).replace("sample options: ", ""), code="invalid_value") from None


def family_extras(request: Request, current: Served, extras: dict[str, Any]) -> dict[str, Any]:
    """The extra fields that are the family's request options; the rest are logged and ignored."""
    allowed = set(current.model.family.REQUEST_OPTIONS)
    unknown = sorted(set(extras) - allowed)
    if unknown:
        log.info("unknown request fields ignored", extra={"request_id": request.state.request_id, "fields": unknown})
    return {k: v for k, v in extras.items() if k in allowed}


def seed_of(seed: int | None) -> int:
    return secrets.randbits(63) if seed is None else seed


async def generate_items(request: Request, current: Served, sample: SampleRequest, unit: str) -> tuple[Samples, Served]:
    """Images or table rows: `sample.n` units from the key's limits, the request queued on the
    model's ItemBatcher (merged with those of the same options), and its own share of the batch;
    with the version that made them. The version is looked up again after the key's limits (a
    sqlite transaction, which a busy disk makes slow): a promotion in between sends the request to
    the new version rather than to the old one, which takes no new work once it is replaced."""
    reservation = await admit(request, sample.n)
    current = served(request, current.name, current.kind)
    loop = asyncio.get_running_loop()
    job = ItemJob(sample, loop, loop.create_future(), json.dumps(sample.options, sort_keys=True))
    try:
        current.engine.submit(job)
    except APIError:
        await reservation.settle(0)
        raise
    timeout, samples = state(request).config.limits.request_timeout_s, None
    try:
        samples = await asyncio.wait_for(job.future, timeout)
    except TimeoutError:
        raise APIError(503, f"the {unit} took longer than request_timeout_s ({timeout} s)", code="timeout",
                       retry_after=5.0) from None
    finally:
        await reservation.settle(0 if samples is None else len(samples))
    metrics.GENERATED.labels(current.name, unit).inc(len(samples))
    return samples, current
