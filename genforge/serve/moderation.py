"""Content moderation in the service (`genforge.moderation`, configured by the serve config's
`moderation:` section): prompts are checked before any work is queued, text outputs before they
are sent. A refused prompt is a 400 with OpenAI's code `content_policy_violation`; a blocked
output ends its choice with finish_reason `content_filter`. Every refusal is counted in
`genforge_moderation_refusals_total` by rule, list and where."""

from __future__ import annotations

from typing import Any, Sequence

from fastapi import Request

from genforge.moderation import Verdict
from genforge.moderation.moderator import Where
from genforge.serve import metrics
from genforge.serve.context import state
from genforge.serve.errors import APIError


def check(request: Request, text: str, where: Where) -> Verdict:
    verdict = state(request).moderator.check(text, where)
    if not verdict.allowed:
        metrics.MODERATED.labels(verdict.rule, verdict.list, where).inc()
    return verdict


def _allowed_prompt(request: Request, text: str, param: str) -> Verdict:
    verdict = check(request, text, "prompt")
    if not verdict.allowed:
        raise APIError(400, verdict.message("prompt"), param=param, code="content_policy_violation")
    return verdict


def check_prompt(request: Request, text: str, param: str) -> str:
    """The prompt the model may see (personal data redacted, if so configured), or a 400 naming the rule."""
    verdict = _allowed_prompt(request, text, param)
    return text if verdict.redacted_text is None else verdict.redacted_text


def check_values(request: Request, conditions: Sequence[dict[str, Any]], param: str) -> None:
    """A table request's string values, as prompts. Only refusals apply: a redacted value would
    name no category of the model."""
    for value in {v for c in conditions for v in c.values() if isinstance(v, str)}:
        _allowed_prompt(request, value, param)


def moderated_choice(request: Request, text: str, finish_reason: str) -> tuple[str, str]:
    """A whole answer as it may be sent: emptied with 'content_filter', redacted, or as it is."""
    verdict = check(request, text, "output")
    if not verdict.allowed:
        return "", "content_filter"
    return (text if verdict.redacted_text is None else verdict.redacted_text), finish_reason


class StreamGuard:
    """A streamed answer is checked as it grows, before each delta is sent. Sent text cannot be
    taken back, so personal data in a stream ends the choice too, under `pii: redact` as well."""

    def __init__(self, request: Request, choices: int):
        self.request, self.text = request, [""] * choices
        self.stopped: set[int] = set()  # choices moderation ended; their later events are dropped

    def passes(self, index: int, delta: str) -> bool:
        self.text[index] += delta
        verdict = check(self.request, self.text[index], "output")
        if verdict.allowed and verdict.redacted_text is None:
            return True
        if verdict.allowed:  # redaction would change what was sent: count it as the refusal it becomes
            metrics.MODERATED.labels(verdict.rule, verdict.list, "output").inc()
        self.stopped.add(index)
        return False
