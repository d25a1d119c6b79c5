"""POST /v1/feedback: rate a generation (1-5), with an optional comment and corrected output; and `record`, which
every generation route calls to log what it answered with (`feedback_store`).

Generation ids: a completion or chat answer's `id` (`<id>-<index>` per choice when it has several), each image's
`generation_id`, a table response's `generation_id`. A key may rate only what it generated itself; any other id is
a 404, whether it exists or not. Rating counts as one request against the key's requests_per_minute.
`genforge feedback export` turns the rated texts into a dataset version (`feedback_export`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from genforge.serve.context import admit
from genforge.serve.errors import APIError
from genforge.serve.feedback_store import (MAX_COMMENT_CHARS, MAX_CORRECTED_CHARS, RATINGS, FeedbackStore,
                                           Generation)
from genforge.serve.models import Served
from genforge.serve.protocol import Open, Sampling

log = logging.getLogger("genforge.serve")
router = APIRouter()
MAX_ID_CHARS = 100  # longer than any id genforge makes


class FeedbackRequest(Open):
    generation_id: str
    rating: int = Field(strict=True)  # "4", 4.5 and true are refused, not read as 4 or 1
    comment: str | None = None
    corrected_output: str | None = None  # what the answer should have been; exported in place of the generated text


def _store(request: Request) -> FeedbackStore:
    return request.app.state.feedback


def _check(req: FeedbackRequest) -> None:
    """Refuse, naming the field and its limit, and never echo the text."""
    if req.rating not in RATINGS:
        raise APIError(400, f"rating must be an integer from 1 to 5, got {req.rating}", param="rating",
                       code="invalid_value")
    if not 1 <= len(req.generation_id) <= MAX_ID_CHARS:
        raise APIError(400, f"generation_id must be 1-{MAX_ID_CHARS} characters, got {len(req.generation_id)}",
                       param="generation_id", code="invalid_value")
    for param, value, limit in (("comment", req.comment, MAX_COMMENT_CHARS),
                                ("corrected_output", req.corrected_output, MAX_CORRECTED_CHARS)):
        if value is not None and len(value) > limit:
            raise APIError(400, f"{param} is {len(value)} characters, above the limit of {limit}", param=param,
                           code="too_long")
    if req.corrected_output is not None and not req.corrected_output.strip():
        raise APIError(400, "corrected_output is empty: leave it out to keep the generated output",
                       param="corrected_output", code="invalid_value")


@router.post("/v1/feedback")
async def feedback(req: FeedbackRequest, request: Request) -> Any:
    _check(req)
    if req.extras():
        log.info("unknown request fields ignored", extra={"request_id": request.state.request_id,
                                                          "fields": sorted(req.extras())})
    await admit(request, 0)
    key = request.state.key
    done = await run_in_threadpool(_store(request).rate, key.id, req.generation_id, req.rating, req.comment,
                                   req.corrected_output)
    if done is None:
        raise APIError(404, "no generation with this id was made with this key", param="generation_id",
                       code="generation_not_found")
    rating, replaced = done
    return {"object": "feedback", "generation_id": rating.generation_id, "rating": rating.rating,
            "rated_at": rating.rated_at, "replaced": replaced}


# ----------------------------------------------------------------------------- what the generation routes call

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def choice_ids(response_id: str, count: int) -> list[str]:
    """A text response's generation ids: its own id for one choice, `<id>-<index>` for each of several."""
    return [response_id] if count == 1 else [f"{response_id}-{i}" for i in range(count)]


def text_generations(response_id: str, req: Sampling, prompts: list[str], outputs: list[tuple[str, str]],
                     endpoint: str) -> list[Generation]:
    """One record per choice: choice k answers prompt k // n; `outputs` holds (text, finish_reason) per choice."""
    asked = req.model_dump(exclude={"model", "prompt", "messages", "stream", "stream_options"}, exclude_none=True)
    return [Generation(gid, {"endpoint": endpoint, "prompt": prompts[k // req.n], **asked},
                       {"text": text, "finish_reason": reason})
            for k, (gid, (text, reason)) in enumerate(zip(choice_ids(response_id, len(outputs)), outputs))]


def _asked(req: Open) -> dict[str, Any]:
    return req.model_dump(exclude={"model", "response_format"}, exclude_none=True)


def image_generations(req: Open, data: list[dict[str, Any]]) -> list[Generation]:
    """One record per image of a response's `data`: its class and index, and the PNG's sha256 (never the image)."""
    return [Generation(d["generation_id"], {**_asked(req), "index": i, "class": d["revised_prompt"]},
                       {"png_sha256": hashlib.sha256(base64.b64decode(d["b64_json"])).hexdigest()})
            for i, d in enumerate(data)]


def table_generation(generation_id: str, req: Open, rows: int) -> Generation:
    """A table response is one generation: its request and its row count (never the rows)."""
    return Generation(generation_id, _asked(req), {"rows": rows})


async def record(request: Request, current: Served, generations: list[Generation]) -> None:
    """Log a response's generations before it leaves, so a client never holds an id that cannot be rated."""
    await run_in_threadpool(_store(request).log, request.state.key.id, current.name, current.version, current.kind,
                            generations)
