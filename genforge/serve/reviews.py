"""The review routes: list review sets, read one (blind), rate its items, read its summary (genforge/review/).

The reviewer is the API key (its id and name). An item shows its content only: which source is at a or b never
leaves the server. Every route counts as one request against the key's requests_per_minute, as /v1/feedback does.
Any live key may review: review sets are not served models, so a key's `models` scope does not apply.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from genforge.review.store import MAX_COMMENT_CHARS, Review, ReviewStore
from genforge.review.summary import summarise
from genforge.serve.context import admit
from genforge.serve.errors import APIError
from genforge.serve.protocol import Open

router = APIRouter()


class RatingRequest(Open):
    item_id: str
    choice: Literal["a", "b", "tie"] | None = None  # pairs
    score: int | None = Field(default=None, strict=True)  # rubric: "4", 4.5 and true are refused
    comment: str | None = None


def _store(request: Request) -> ReviewStore:
    return request.app.state.reviews


async def _review(request: Request, review_id: str) -> Review:
    """The review, after the request is admitted against the key's limits."""
    await admit(request, 0)
    review = await run_in_threadpool(_store(request).get, review_id)
    if review is None:
        raise APIError(404, f"no review with id {review_id[:100]!r}", param="review_id", code="review_not_found")
    return review


def _listed(review: Review, rated: int) -> dict[str, Any]:
    return {"id": review.id, "object": "review", "name": review.name, "mode": review.mode, "kind": review.kind,
            "items": review.items, "rated_by_you": rated, "created_at": review.created_at}


@router.get("/v1/reviews")
async def list_reviews(request: Request) -> Any:
    await admit(request, 0)
    store = _store(request)
    reviews = await run_in_threadpool(store.list)
    rated = await run_in_threadpool(store.rated_counts, request.state.key.id)
    return {"object": "list", "data": [_listed(r, rated.get(r.id, 0)) for r in reviews]}


@router.get("/v1/reviews/{review_id}")
async def get_review(review_id: str, request: Request) -> Any:
    review = await _review(request, review_id)
    store = _store(request)
    items = await run_in_threadpool(store.items, review.id)
    mine = {r.item_id: r.value() for r in await run_in_threadpool(store.ratings, review.id, request.state.key.id)}
    return {"id": review.id, "object": "review", "name": review.name, "mode": review.mode, "kind": review.kind,
            "items": [{**item.content(), "your_rating": mine.get(item.id)} for item in items]}


def _check(review: Review, req: RatingRequest) -> None:
    """Refuse, naming the field: the rating must be the review's kind of rating."""
    if review.mode == "pairs":
        if req.score is not None:
            raise APIError(400, "this is a side-by-side review: send choice (a, b or tie), not score", param="score",
                           code="invalid_value")
        if req.choice is None:
            raise APIError(400, "choice is required: a, b or tie", param="choice", code="invalid_value")
    else:
        if req.choice is not None:
            raise APIError(400, "this is a rubric review: send score (1-5), not choice", param="choice",
                           code="invalid_value")
        if req.score is None or not 1 <= req.score <= 5:
            raise APIError(400, f"score must be an integer from 1 to 5, got {req.score}", param="score",
                           code="invalid_value")
    if req.comment is not None and len(req.comment) > MAX_COMMENT_CHARS:
        raise APIError(400, f"comment is {len(req.comment)} characters, above the limit of {MAX_COMMENT_CHARS}",
                       param="comment", code="too_long")


@router.post("/v1/reviews/{review_id}/ratings")
async def rate(review_id: str, req: RatingRequest, request: Request) -> Any:
    review = await _review(request, review_id)
    _check(review, req)
    key = request.state.key
    done = await run_in_threadpool(_store(request).rate, review.id, req.item_id, key.id, key.name, choice=req.choice,
                                   score=req.score, comment=req.comment)
    if done is None:
        raise APIError(404, f"review {review.id} has no item {req.item_id[:100]!r}", param="item_id",
                       code="item_not_found")
    rating, replaced = done
    return {"object": "review.rating", "review_id": rating.review_id, "item_id": rating.item_id, **rating.value(),
            "comment": rating.comment, "rated_at": rating.rated_at, "replaced": replaced}


@router.get("/v1/reviews/{review_id}/summary")
async def summary(review_id: str, request: Request) -> Any:
    review = await _review(request, review_id)
    return await run_in_threadpool(summarise, _store(request), review)
