"""POST /v1/completions and /v1/chat/completions for language models (continuous batching in
`batching.TextEngine`), with streaming by server-sent events.

Chat template (`gpt.CHAT_TEMPLATE`, also in every text model's card): the messages' contents, in
order, one per line, become the prompt the model continues (a prompt/completion model: as its
prompt).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from genforge.models import gpt, item_generators, item_seeds
from genforge.serve import metrics
from genforge.serve.batching import TextJob
from genforge.serve.context import Reservation, admit, bound, family_extras, options, provenance, seed_of, served, state
from genforge.serve.errors import APIError, body
from genforge.serve.feedback import record, text_generations
from genforge.serve.feedback_store import Generation
from genforge.serve.models import Served
from genforge.serve.moderation import StreamGuard, check_prompt, moderated_choice
from genforge.serve.protocol import ChatRequest, CompletionRequest, Sampling

router = APIRouter()
async def _start(request: Request, req: Sampling, prompts: list[str]) -> tuple[Served, list[TextJob], Reservation,
                                                                              asyncio.Queue, int]:
    """Validate, reserve the key's units, and put every sequence on the engine."""
    st = state(request)
    lim = st.config.limits
    current = served(request, req.model, "text")
    if not prompts:
        raise APIError(400, "prompt must hold at least one text", param="prompt", code="invalid_value")
    bound(len(prompts) * req.n, lim.max_n, "n", "max_n")
    max_tokens = req.max_tokens or getattr(req, "max_completion_tokens", None)
    if max_tokens is not None:
        bound(max_tokens, lim.max_tokens, "max_tokens", "max_tokens")
    o: gpt.SampleConfig = options(current, {
        "max_tokens": max_tokens or min(current.model.sample_defaults.max_tokens, lim.max_tokens),
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
        "repetition_penalty": req.repetition_penalty, "stop": req.stops() if req.stop is not None else None,
        **family_extras(request, current, {k: v for k, v in req.extras().items() if k not in ("max_tokens", "stop")})})
    engine = current.engine
    ids = [gpt.prompt_ids(engine.tokenizer, p, current.model.config.format) for p in prompts]
    for p in ids:
        bound(len(p), lim.max_prompt_tokens, "prompt", "max_prompt_tokens")
        if len(p) + o.max_tokens > engine.context:
            raise APIError(400, f"the prompt ({len(p)} tokens) plus max_tokens ({o.max_tokens}) exceeds the model's "
                                f"context of {engine.context} tokens", param="max_tokens", code="context_length_exceeded")
    reservation = await admit(request, sum(len(p) + o.max_tokens for p in ids) * req.n)
    gens = item_generators(item_seeds(seed_of(req.seed), len(ids) * req.n))
    tok, loop, events = engine.tokenizer, asyncio.get_running_loop(), asyncio.Queue()
    mark, stops = gpt.text_mark(o), frozenset({tok.eot, tok.pad})
    jobs = [TextJob(gpt.Sequence(p, o, gens[i * req.n + j], stops, tok.decode, mark=mark), loop, events,
                    req.stream, index=i * req.n + j) for i, p in enumerate(ids) for j in range(req.n)]
    try:
        engine.submit(jobs)
    except APIError:
        await reservation.settle(0)
        raise
    return current, jobs, reservation, events, sum(len(p) for p in ids) * req.n


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _collect(request: Request, current: Served, jobs: list[TextJob], events: asyncio.Queue,
                   reservation: Reservation, started: float) -> list[tuple[str, str, int]]:
    """(text, finish_reason, completion tokens) per choice, once every sequence is done."""
    out: list[Any] = [None] * len(jobs)
    timeout = state(request).config.limits.request_timeout_s
    try:
        async with asyncio.timeout(timeout):
            while any(o is None for o in out):
                index, kind, *rest = await events.get()
                if kind == "error":
                    raise APIError(500, rest[0], code="generation_failed")
                if kind == "done":
                    out[index] = tuple(rest)
    except TimeoutError:
        raise APIError(503, f"the answer took longer than request_timeout_s ({timeout} s)", code="timeout",
                       retry_after=5.0) from None
    finally:
        _cancel(jobs)
        await reservation.settle(_used(jobs))
        _account(current, jobs, started)
    return out


def _used(jobs: list[TextJob]) -> int:
    """Tokens a request used, prompts and completions: what its key's reservation is settled with."""
    return sum(len(j.seq.prompt) + len(j.seq.tokens) for j in jobs)


def _cancel(jobs: list[TextJob]) -> None:
    """Sequences nobody waits for any more (a timeout, a client gone) leave the batch at the next step."""
    for j in jobs:
        if j.seq.finish_reason is None:
            j.seq.cancelled = True


def _account(current: Served, jobs: list[TextJob], started: float) -> None:
    metrics.GENERATED.labels(current.name, "tokens").inc(sum(len(j.seq.tokens) for j in jobs))
    first = min((j.first_token_at for j in jobs if j.first_token_at), default=None)
    if first is not None:
        metrics.FIRST_TOKEN_S.labels(current.name).observe(first - started)


def _provenance(current: Served, jobs: list[TextJob]) -> dict[str, Any]:
    marked = jobs[0].seq.mark is not None
    return provenance(current, watermark="green list, Kirchenbauer et al. 2023 (genforge verify --text)" if marked
                      else None)


def _headers(current: Served) -> dict[str, str]:
    return {"x-genforge-model-version": current.fingerprint}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(request: Request, current: Served, jobs: list[TextJob], events: asyncio.Queue,
                  reservation: Reservation, started: float, chat: bool, prompt_tokens: int,
                  include_usage: bool, describe: Callable[[str, list], list[Generation]]) -> AsyncIterator[str]:
    """Chunks as OpenAI streams them: deltas per choice, a last chunk with each finish_reason,
    then usage (when asked) and [DONE]. A failure mid-stream ends it with an error event.
    The generation log gets the answer once every choice is done (a stream cut short is not logged)."""
    st = state(request)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": current.name, "system_fingerprint": current.fingerprint, "provenance": _provenance(current, jobs)}
    done, completion_tokens, outputs = 0, 0, [("", "")] * len(jobs)
    guard = StreamGuard(request, len(jobs))
    try:
        if chat:
            for j in jobs:
                yield _sse({**head, "choices": [{"index": j.index, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None}]})
        async with asyncio.timeout(st.config.limits.request_timeout_s):
            while done < len(jobs):
                index, kind, *rest = await events.get()
                if index in guard.stopped:
                    continue
                if kind == "delta" and not guard.passes(index, rest[0]):  # moderation ends the choice here
                    jobs[index].seq.cancelled = True
                    kind, rest = "done", ["", "content_filter", len(jobs[index].seq.tokens)]
                if kind == "error":
                    yield _sse(body(500, rest[0], code="generation_failed"))
                    return
                if kind == "delta":
                    piece = {"delta": {"content": rest[0]}} if chat else {"text": rest[0], "logprobs": None}
                    yield _sse({**head, "choices": [{"index": index, **piece, "finish_reason": None}]})
                else:
                    done += 1
                    completion_tokens += rest[2]
                    outputs[index] = (rest[0], rest[1])
                    piece = {"delta": {}} if chat else {"text": "", "logprobs": None}
                    yield _sse({**head, "choices": [{"index": index, **piece, "finish_reason": rest[1]}]})
        await record(request, current, describe(rid, outputs))
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
        yield "data: [DONE]\n\n"
    except TimeoutError:
        yield _sse(body(503, "the answer took longer than request_timeout_s", code="timeout"))
    finally:  # also when the client disconnects: the generator is cancelled, so nothing here awaits
        _cancel(jobs)
        st.streams.release()
        _account(current, jobs, started)
        reservation.settle_soon(_used(jobs))


async def _respond(request: Request, req: Sampling, prompts: list[str], chat: bool) -> Any:
    st, started = state(request), time.perf_counter()
    if req.stream and st.streams.locked():
        metrics.REFUSED.labels("max_streams").inc()
        raise APIError(429, f"this server already streams max_streams ({st.config.limits.max_streams}) responses",
                       code="max_streams", retry_after=1.0)
    prompts = [check_prompt(request, p, "messages" if chat else "prompt") for p in prompts]
    current, jobs, reservation, events, prompt_tokens = await _start(request, req, prompts)

    def describe(rid: str, outputs: list[tuple[str, str]]) -> list[Generation]:
        return text_generations(rid, req, prompts, outputs, request.url.path)

    if req.stream:
        await st.streams.acquire()
        include = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_stream(request, current, jobs, events, reservation, started, chat, prompt_tokens,
                                         include, describe), media_type="text/event-stream", headers=_headers(current))
    out = await _collect(request, current, jobs, events, reservation, started)
    out = [(*moderated_choice(request, text, reason), tokens) for text, reason, tokens in out]
    completion_tokens = sum(o[2] for o in out)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    await record(request, current, describe(rid, [(text, reason) for text, reason, _ in out]))
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                    "logprobs": None} for i, (text, reason, _) in enumerate(out)]
    else:
        choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                   for i, (text, reason, _) in enumerate(out)]
    return JSONResponse({"id": rid,
                         "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                         "model": current.name, "system_fingerprint": current.fingerprint,
                         "provenance": _provenance(current, jobs), "choices": choices,
                         "usage": _usage(prompt_tokens, completion_tokens)}, headers=_headers(current))


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request) -> Any:
    return await _respond(request, req, [req.prompt] if isinstance(req.prompt, str) else list(req.prompt), chat=False)


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, request: Request) -> Any:
    return await _respond(request, req, [gpt.chat_prompt([m.text() for m in req.messages])], chat=True)
