"""The two ways requests share the model, each on its own thread so the event loop never waits.

- `TextEngine`: continuous batching at the token level (Orca, Yu et al. 2022, OSDI): a request's
  sequences join the running batch at the next decoding step and leave the step they finish, so a
  short answer never waits for a long one and a new request never waits for a batch to drain.
- `ItemBatcher`: images and tables batch whole requests: those that arrive within `max_wait_ms`
  are merged, up to `max_batch` images or `max_rows` rows, into one `Model.sample` call and split
  again. A merged call that fails is run again request by request, so one request's failure (a
  condition no row meets) is its own and not its batch-mates'.

Either way every item keeps its own seed, so a response is what the same request gets alone. One
exception, by design: a table's `rules.unique` holds across the rows of one `Model.sample` call, so
in a merged call it holds across the merged requests too, and a row that would repeat a batch-mate's
value is drawn again.
Results cross back to asyncio with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from genforge.devices import autocast
from genforge.models import SampleRequest, split_samples
from genforge.models import gpt
from genforge.sampling import Model
from genforge.serve.errors import APIError
from genforge.tokenizer import TextTokenizer

log = logging.getLogger("genforge.serve")


def _overloaded(what: str, depth: int) -> APIError:
    return APIError(429, f"the server is at capacity ({depth} {what} queued for this model); retry shortly",
                    code="overloaded", retry_after=1.0)


# ----------------------------------------------------------------------------- text

@dataclass
class TextJob:
    """One sequence of a completion request, and where its events go: ("delta", text) while it
    streams, then ("done", text, finish_reason, completion_tokens) or ("error", message)."""

    seq: gpt.Sequence
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    stream: bool
    index: int = 0  # the choice it is in its request (events are tagged with it)
    sent: int = 0  # characters of the answer already sent as deltas
    first_token_at: float | None = None

    def emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, *event))


class TextEngine:
    def __init__(self, model: Model, slots: int, max_queue: int, on_step: Callable[[int, int], None] | None = None):
        net = model.modules["model"]
        if model.sample_defaults.quantize == "int8":
            net = gpt.quantized(net)
        self.model, self.slots, self.on_step = model, slots, on_step
        self.tokenizer = TextTokenizer.from_fitted(model.fitted)
        self.context = net.config.block_size
        self.generation = gpt.Generation(net, slots, self.context)
        self.pending: queue.Queue[TextJob] = queue.Queue()
        self.max_queue = max_queue
        self.jobs: dict[int, TextJob] = {}
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"text-engine-{id(self):x}", daemon=True)
        self.thread.start()

    def submit(self, jobs: list[TextJob]) -> None:
        if self.closing.is_set():
            raise APIError(503, "this model version is being replaced; retry", code="reloading", retry_after=1.0)
        if self.pending.qsize() + len(jobs) > self.max_queue:
            raise _overloaded("sequences", self.pending.qsize())
        for job in jobs:
            self.pending.put(job)

    def depth(self) -> int:
        return self.pending.qsize()

    def close(self) -> None:
        """Finish what was submitted, then stop (a replaced version drains; nothing in flight fails)."""
        self.closing.set()

    def _admit(self) -> None:
        idle = not self.generation.rows
        while len(self.generation.rows) < self.slots:
            try:
                job = self.pending.get(timeout=0.05) if idle else self.pending.get_nowait()
            except queue.Empty:
                return
            idle = False
            try:
                self.generation.join(job.seq)
            except Exception as e:  # a prompt the route should have refused: fail that job only
                job.emit("error", str(e))
                continue
            self.jobs[id(job.seq)] = job

    def _run(self) -> None:
        with torch.inference_mode(), autocast(self.model.device, self.model.precision):
            while not (self.closing.is_set() and not self.generation.rows and self.pending.empty()):
                self._admit()
                if not self.generation.rows:
                    continue
                try:
                    rows = len(self.generation.rows)
                    done = self.generation.step()
                except Exception as e:  # the model failed: fail every job in the batch, keep serving
                    log.exception("text engine step failed")
                    for seq in list(self.generation.rows):
                        self.jobs.pop(id(seq)).emit("error", f"generation failed: {type(e).__name__}")
                    self.generation = gpt.Generation(self.generation.decoder.model, self.slots, self.context)
                    continue
                if self.on_step:
                    self.on_step(rows, self.pending.qsize())
                now = time.perf_counter()
                for seq in self.generation.rows:
                    job = self.jobs[id(seq)]
                    job.first_token_at = job.first_token_at or now
                    if job.stream:
                        self._delta(job, final=False)
                for seq in done:
                    job = self.jobs.pop(id(seq))
                    job.first_token_at = job.first_token_at or now
                    text = self._delta(job, final=True)
                    job.emit("done", text, seq.finish_reason, len(seq.tokens))

    def _delta(self, job: TextJob, final: bool) -> str:
        """The answer so far; on a stream, send what can no longer change: not a half-decoded
        character (U+FFFD at the end) nor a tail that may still become a stop sequence."""
        stops = job.seq.options.stop
        text = gpt.cut_at_stop(self.tokenizer.decode(job.seq.tokens), stops)
        if not job.stream:
            return text
        safe = len(text)
        if not final:
            safe = len(text.rstrip("\ufffd")) - max((len(s) - 1 for s in stops), default=0)
        if safe > job.sent:
            job.emit("delta", text[job.sent:safe])
            job.sent = safe
        return text


# ----------------------------------------------------------------------------- images and tables

@dataclass
class ItemJob:
    """One request. Requests merged into one call must agree on which per-item fields they set (a
    table request always sets `conditions`, `{}` for a row without one)."""

    request: SampleRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    options_key: str = field(default="")


class ItemBatcher:
    def __init__(self, model: Model, max_items: int, max_wait_ms: float, max_queue: int,
                 on_batch: Callable[[int, int], None] | None = None):
        self.model, self.max_items, self.max_wait = model, max_items, max_wait_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self.pending: queue.Queue[ItemJob] = queue.Queue()
        self.carry: deque[ItemJob] = deque()  # taken while filling a batch, but with other options
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"item-batcher-{id(self):x}", daemon=True)
        self.thread.start()

    def submit(self, job: ItemJob) -> None:
        if self.closing.is_set():
            raise APIError(503, "this model version is being replaced; retry", code="reloading", retry_after=1.0)
        if self.pending.qsize() >= self.max_queue:
            raise _overloaded("requests", self.pending.qsize())
        self.pending.put(job)

    def depth(self) -> int:
        return self.pending.qsize() + len(self.carry)

    def close(self) -> None:
        self.closing.set()

    def _next(self, timeout: float) -> ItemJob | None:
        if self.carry:
            return self.carry.popleft()
        try:
            return self.pending.get(timeout=max(timeout, 0.0)) if timeout > 0 else self.pending.get_nowait()
        except queue.Empty:
            return None

    def _run(self) -> None:
        while not (self.closing.is_set() and self.pending.empty() and not self.carry):
            first = self._next(0.05)
            if first is None:
                continue
            batch, items, deadline, other = [first], first.request.n, time.monotonic() + self.max_wait, []
            while items < self.max_items:
                job = self._next(deadline - time.monotonic())
                if job is None:
                    break
                if job.options_key != first.options_key or items + job.request.n > self.max_items:
                    other.append(job)  # another call's options, or too many items: the next batch
                    continue
                batch.append(job)
                items += job.request.n
            self.carry.extend(other)
            self._sample(batch, items)

    def _sample(self, batch: list[ItemJob], items: int) -> None:
        reqs = [j.request for j in batch]
        join = lambda name: None if getattr(reqs[0], name) is None else tuple(  # noqa: E731
            x for r in reqs for x in getattr(r, name))
        merged = SampleRequest(join("seeds"), join("labels"), None, join("conditions"), reqs[0].options)
        try:
            samples = self.model.sample(merged, batch_size=max(self.max_items, 1))
            parts = split_samples(samples, [r.n for r in reqs])
        except Exception as e:  # noqa: BLE001 - handed to the waiting request, which maps it
            if len(batch) > 1:  # whose failure is it? each request alone
                for j in batch:
                    self._sample([j], j.request.n)
            else:
                batch[0].loop.call_soon_threadsafe(_fail, batch[0].future, e)
            return
        if self.on_batch:
            self.on_batch(items, self.depth())
        for j, part in zip(batch, parts):
            j.loop.call_soon_threadsafe(_resolve, j.future, part)


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, e: Exception) -> None:
    if not future.done():
        future.set_exception(e)
