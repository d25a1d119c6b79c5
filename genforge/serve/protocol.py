"""Request bodies of the OpenAI API as genforge serves it, validated at the edge (pydantic).

Unknown fields are accepted, as OpenAI's clients send fields a server may not know (`user`,
`logprobs`, new ones every release); the route logs them. genforge's own sampling knobs (`top_k`,
`repetition_penalty`, a diffusion model's `steps` and `guidance`) ride along as extra fields, the
way the `openai` client's `extra_body` sends them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Open(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StreamOptions(Open):
    include_usage: bool = False


class Sampling(Open):
    """The fields completions and chat share."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=10.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=1.0, le=10.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(Sampling):
    prompt: str | list[str]


class TextPart(Open):
    type: Literal["text"]
    text: str


class Message(Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens


class ImageRequest(Open):
    model: str
    prompt: str = ""  # the class to draw (a conditional model); empty: the classes in turn
    n: int = Field(default=1, ge=1)
    size: str | None = None  # "WxH"; only the model's own size
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: int | None = None


Condition = dict[str, Any]  # column -> the value a row must have, or -> {"min": a, "max": b}


class TableRequest(Open):
    model: str
    n: int = Field(default=100, ge=1)  # rows
    conditions: Condition | list[Condition] | None = None  # one for every row, or one per row
    response_format: Literal["json", "csv"] = "json"  # rows as objects in `data`, or one csv text in `csv`
    seed: int | None = None
