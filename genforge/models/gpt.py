"""GPT family: a decoder-only transformer language model for copy, descriptions and replies.

References:
- GPT-2: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (sec. 2.3: pre-
  LayerNorm blocks, a final LayerNorm, residual projections initialised with 1/sqrt(2 * layers));
  the layout and parameter names follow the released GPT-2 so weights map one to one onto Hugging
  Face's `GPT2LMHeadModel` (`genforge.interop`): learned positions, tied input/output embeddings,
  GELU with the tanh approximation ("gelu_new"), biases everywhere, LayerNorm eps 1e-5.
- Nucleus (top-p) sampling: Holtzman et al. 2020, ICLR, "The Curious Case of Neural Text
  Degeneration", sec. 3.1. Repetition penalty: Keskar et al. 2019, "CTRL", sec. 4.1 (a seen token's
  positive logit divided by the penalty, a negative one multiplied).

Data. A `text` dataset is packed: every text, then <|endoftext|>, concatenated and cut into rows of
block_size + 1 tokens (rows overlap by one token, so every token is a target once); the loss is on
every position. Prompt/completion data (a dataset with those columns, or a labeled text dataset with
`label_prompts`, which turns each class into a prompt) gives one row per example:
<|prompt|> prompt <|completion|> completion <|endoftext|>, padded, with the loss on the completion and
its end only (`model.format: prompt_completion`). Batches: {"tokens": (N, T+1), "mask": (N, T)}.
Validation is weighted by target tokens, so `loss` is nats per token and exp(loss) the perplexity.

Generation (`Decoder`, `Generation`). Each prompt is prefilled alone into its own row of the KV
cache; then every active row is extended by one token per step, each at its own length (its keys
masked beyond it), with draws from its own generator: an item's output does not depend on its
batch, and a new request can join a running batch at the next step (continuous batching).
"""

from __future__ import annotations

import contextlib
import math
from copy import deepcopy
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genforge import kernels
from genforge.config import StrictModel
from genforge.errors import DataError, ModelError
from genforge.models import (Batch, DataSpec, Fitted, Optimizer, OptimizerSpec, SampleRequest, TextSamples,
                             item_generators)
from genforge.models.lora import LoraConfig, apply_lora
from genforge.textmark import TextMark, workspace_key
from genforge.tokenizer import TextTokenizer


class Config(StrictModel):
    """The `model:` section; the GPT-2 small layout is n_layer 12, n_head 12, n_embd 768, block 1024."""

    family: Literal["gpt"]
    vocab_size: int = Field(default=8000, ge=260, le=262_144)  # BPE vocabulary trained on the data
    block_size: int = Field(default=256, ge=8, le=8192)  # context length in tokens
    n_layer: int = Field(default=6, ge=1)
    n_head: int = Field(default=6, ge=1)
    n_embd: int = Field(default=384, ge=8)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    format: Literal["text", "prompt_completion"] = "text"  # see the module docstring
    # A labeled text dataset trained as prompt/completion: class name -> the prompt asking for it
    label_prompts: dict[str, str] | None = None
    lora: LoraConfig | None = None  # train low-rank adapters only (genforge.models.lora), the rest frozen

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        if self.label_prompts is not None and self.format != "prompt_completion":
            raise ValueError("label_prompts needs format: prompt_completion")
        if self.label_prompts is not None and len(set(self.label_prompts.values())) < len(self.label_prompts):
            raise ValueError("label_prompts must give each class its own prompt, or the model cannot tell them apart")
        return self


class SampleConfig(StrictModel):
    """The run's `sample:` section: generation defaults, each overridable per request."""

    max_tokens: int = Field(default=128, ge=1, le=8192)  # new tokens at most
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)  # 0: greedy
    top_k: int = Field(default=0, ge=0)  # 0: no top-k cut
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)  # 1: no nucleus cut
    repetition_penalty: float = Field(default=1.0, ge=1.0, le=10.0)  # 1: none
    stop: list[str] = Field(default=[], max_length=16)  # generation ends before the first of these
    quantize: Literal["none", "int8"] = "none"  # int8: dynamic int8 linear layers (CPU), see `quantized`
    # a statistical watermark (genforge.textmark): green tokens' logits + watermark_delta; the operator's choice
    watermark: bool = False
    watermark_delta: float = Field(default=2.0, gt=0.0, le=10.0)


KINDS = ("text",)
EMA = ("model",)
HEADLINE = "loss"
GRAD_SYNC = "ddp"
# Fields an init_from run may change: they change what the model is fed, not the weights' shapes.
TUNABLE = ("dropout", "format", "label_prompts", "lora")
# Sample options a remote request may set (the service); the rest (quantize) are the operator's.
REQUEST_OPTIONS = ("max_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "stop")


# ----------------------------------------------------------------------------- the network

class Attention(nn.Module):
    """Causal multi-head self-attention; at generation time the decoder holds the keys and values."""

    def __init__(self, c: Config):
        super().__init__()
        self.n_head, self.dropout = c.n_head, c.dropout
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)
        self.resid_drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, cache: "Decoder | None", layer: int) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, D) each
        if cache is None:  # training: the whole sequence at once
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            y = cache.attend(layer, q, k, v)
        return self.resid_drop(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd)
        self.attn = Attention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, cache: "Decoder | None", layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: Config, vocab_size: int):
        super().__init__()
        self.config, self.vocab_size = config, vocab_size
        self.wte = nn.Embedding(vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied (GPT-2)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2 sec. 2.3: residual projections scaled by 1/sqrt(2L)
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                cache: "Decoder | None" = None, last: bool = False) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V). Training passes tokens only (causal); generation passes
        each row's positions (B, T) and the decoder that holds the keys and values, and a prefill
        asks for the `last` position's logits only (B, 1, V), sparing the head T - 1 rows."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(positions))
        for i, block in enumerate(self.h):
            x = block(x, cache, i)
        return self.lm_head(self.ln_f(x[:, -1:] if last else x))


# ----------------------------------------------------------------------------- generation

class Decoder:
    """The KV cache of up to `slots` rows, each at its own length, and the step that extends every
    active row by one token: the engine of both `generate` and the service's continuous batching.

    A row's prompt is prefilled alone (no padding), so what a row computes does not depend on the
    rows beside it. Active rows stay packed in slots 0..n-1 (a row that leaves hands its slot to the
    last one), so a step attends over views of the cache, never over gathered copies of it."""

    def __init__(self, model: "GPT | nn.Module", slots: int, length: int):
        c, like = model.config, model.wte.weight
        self.model, self.length = packed(model), length
        shape = (c.n_layer, slots, c.n_head, length, c.n_embd // c.n_head)
        self.k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v = torch.zeros_like(self.k)
        self.lens = torch.zeros(slots, dtype=torch.long, device=like.device)  # tokens held per slot
        self.n = 0  # active rows: slots 0..n-1
        self._prefill: int | None = None  # the slot being prefilled, during add()
        self._mask: torch.Tensor | None = None  # (n, 1, 1, span) additive, during step(); None: no key masked
        self._span = 0
        self._rows = torch.arange(0)

    def add(self, ids: list[int]) -> torch.Tensor:
        """Prefill a new row with `ids`; the logits (V,) of its next token."""
        if self.n == len(self.lens):
            raise ModelError(f"the decoder's {len(self.lens)} rows are all in use")
        if not 0 < len(ids) <= self.length:
            raise ModelError(f"a row starts from 1 to {self.length} tokens, got {len(ids)}")
        self._prefill = self.n
        try:
            logits = self.model(torch.tensor([ids], device=self.lens.device), None, self, last=True)[0, -1]
        finally:
            self._prefill = None
        self.lens[self.n] = len(ids)
        self.n += 1
        return logits

    def remove(self, row: int) -> None:
        """Free `row`: the last active row moves into its slot."""
        last = self.n - 1
        if row != last:
            span = int(self.lens[last])
            self.k[:, row, :, :span] = self.k[:, last, :, :span]
            self.v[:, row, :, :span] = self.v[:, last, :, :span]
            self.lens[row] = self.lens[last]
        self.n -= 1

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append tokens (n,), one per active row; the logits (n, V) of each row's next token."""
        lens = self.lens[:self.n]
        self._span = int(lens.max()) + 1
        if self._span > self.length:
            raise ModelError(f"a row reached the decoder's length of {self.length} tokens")
        keys = torch.arange(self._span, device=lens.device)[None, :] <= lens[:, None]  # (n, span): keys that exist
        # Rows of equal length (one row, or prompts of one length) write one column and mask nothing.
        self._mask = None if bool(keys.all()) else torch.zeros(keys.shape, device=lens.device).masked_fill(
            ~keys, -math.inf)[:, None, None, :]
        self._rows = torch.arange(self.n, device=lens.device)
        try:
            logits = self.model(tokens[:, None], lens[:, None], self)[:, -1]
        finally:
            self._mask = None
        lens += 1
        return logits

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this layer's new keys and values, and attend (called by `Attention`)."""
        if self._prefill is not None:  # one row, its whole prompt: causal
            row, T = self._prefill, k.shape[2]
            self.k[layer, row, :, :T], self.v[layer, row, :, :T] = k[0], v[0]
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        n, span = q.shape[0], self._span
        if self._mask is None:
            self.k[layer, :n, :, span - 1], self.v[layer, :n, :, span - 1] = k[:, :, 0], v[:, :, 0]
            mask = None
        else:
            at = self.lens[:n]
            self.k[layer, self._rows, :, at], self.v[layer, self._rows, :, at] = k[:, :, 0], v[:, :, 0]  # (n, H, D)
            mask = self._mask.to(q.dtype)
        keys, values = self.k[layer, :n, :, :span], self.v[layer, :n, :, :span]
        return F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)


class PackedLinear(nn.Module):
    """A Linear layer that also keeps its weight in oneDNN's blocked layout, reordered once: the
    layout PyTorch's inductor compiler gives frozen CPU linears, exposed only as its ops
    (torch.ops.mkldnn), hence this layer. The plain fp32 path is MKL's sgemm, which re-packs the
    weight on every call and, on AMD CPUs, takes a generic code path: on the 30M-parameter model's
    layers (2 cores, AMD EPYC, AVX-512) one row took 7.97 ms plain and 2.71 ms here, 8 rows 10.9 and
    3.9 ms, 32 rows 18.4 and 7.1 ms (`benchmarks/bench_gpt.py` prints the floor per machine). One
    layout serves every row count. Where `kernels.applies` says no (too little work, not fp32,
    autocast), and under autograd, it steps aside for the plain layer. Shares the model's weights."""

    HINT = 32  # the row count oneDNN tunes the layout for; it also serves 1..512 rows (measured)

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        self.pack = torch.ops.mkldnn._reorder_linear_weight(base.weight.detach(), self.HINT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if not kernels.applies(flat, self.weight) or (torch.is_grad_enabled() and self.weight.requires_grad):
            return F.linear(x, self.weight, self.bias)
        y = kernels.product(flat, self.pack, self.bias)
        return y.view(*x.shape[:-1], y.shape[-1])


_PACKED: "weakref.WeakKeyDictionary[nn.Module, tuple[int, nn.Module]]" = weakref.WeakKeyDictionary()


def packed(model: nn.Module) -> nn.Module:
    """The model with its plain Linear layers packed for decoding (a copy sharing the weights,
    cached until a weight changes); the model itself off the CPU, outside fp32, without oneDNN, or
    with no plain Linear layer (int8)."""
    if model.wte.weight.device.type != "cpu" or model.wte.weight.dtype != torch.float32 or not kernels.AVAILABLE \
            or not any(type(m) is nn.Linear for m in model.modules()):
        return model
    key = sum(p._version for p in model.parameters())
    if model in _PACKED and _PACKED[model][0] == key:
        return _PACKED[model][1]
    copy = deepcopy(model, memo={id(p): p for p in model.parameters()})  # new modules, the same weights
    for parent in list(copy.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
    _PACKED[model] = (key, copy)
    return copy


_INT8: "weakref.WeakKeyDictionary[GPT, nn.Module]" = weakref.WeakKeyDictionary()


def quantized(model: GPT) -> nn.Module:
    """The model with int8 weights in every Linear layer (activations quantised on the fly per batch:
    PyTorch's dynamic quantisation, fbgemm/oneDNN int8 GEMMs), made once per model and cached. It
    reads a quarter of the bytes per token, which is what bounds generation at small batches; its
    cost in validation perplexity is measured in benchmarks/bench_gpt.py. The API is deprecated in
    favour of torchao, which would be one more dependency for the same kernels."""
    if model not in _INT8:
        from torch.ao.quantization import quantize_dynamic
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice, once per model
            _INT8[model] = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return _INT8[model]


def _filter(logits: torch.Tensor, seen: torch.Tensor, options: list[SampleConfig]) -> torch.Tensor:
    """Repetition penalty, temperature, top-k and top-p on (n, V) float logits, row i with
    options[i] (rows of one batch may come from different requests); cut tokens get -inf."""
    n, V = logits.shape
    column = lambda values: torch.tensor(values, dtype=logits.dtype, device=logits.device)[:, None]  # noqa: E731
    if any(o.repetition_penalty != 1.0 for o in options):
        penalty = column([o.repetition_penalty for o in options])
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    if any(o.temperature not in (0.0, 1.0) for o in options):
        logits = logits / column([o.temperature or 1.0 for o in options])  # 0 (greedy) only penalises
    cut = [o.top_k if 0 < o.top_k < V else 0 for o in options]
    if any(cut):
        top = torch.topk(logits, max(cut), dim=-1).values  # (n, largest k)
        kth = top.gather(1, torch.tensor([max(k, 1) - 1 for k in cut], device=logits.device)[:, None])
        kth = kth.masked_fill(column(cut) == 0, -math.inf)  # rows without a cut keep everything
        logits = logits.masked_fill(logits < kth, -math.inf)
    if any(o.top_p < 1.0 for o in options):
        logits = logits.masked_fill(_outside_nucleus(logits, column([o.top_p for o in options])), -math.inf)
    return logits


def _outside_nucleus(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """(n, V) True for the tokens top-p drops: all but the smallest most-probable prefix whose mass
    reaches top_p (rows with top_p 1 drop nothing). A trained model's nucleus is usually a few
    dozen tokens: when every row's lies within its top 64, only those are ordered (a full sort of
    the vocabulary costs 14 ms per step at 32 rows and 8,000 tokens, top-64 2 ms), with the same
    result; otherwise (a flat distribution) the whole vocabulary is sorted."""
    probs, V = logits.softmax(-1), logits.shape[-1]
    cut = top_p < 1.0  # (n, 1)
    top, order = probs.topk(min(64, V), dim=-1)  # descending
    if not bool(((top.sum(-1, keepdim=True) > top_p) | ~cut).all()):
        top, order = probs.sort(dim=-1, descending=True)  # some row's nucleus reaches past its top 64
    keep = (top.cumsum(-1) - top <= top_p) | ~cut
    inside = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep)
    return ~inside & cut


@dataclass
class Sequence:
    """One item being generated: its prompt, options and random stream, and what it has so far."""

    prompt: list[int]
    options: SampleConfig
    generator: torch.Generator
    stop_ids: frozenset[int] = frozenset()
    decode: "Callable[[list[int]], str] | None" = None  # for stop texts
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" or "length" once done; "cancelled" if cancelled
    cancelled: bool = False  # set from another thread (a client went away): leaves at the next step
    mark: TextMark | None = None  # the text watermark, when sample.watermark is on

    @property
    def last(self) -> int | None:
        """The token the next one follows (what the watermark's green list depends on)."""
        return self.tokens[-1] if self.tokens else self.prompt[-1] if self.prompt else None

    def accept(self, token: int) -> None:
        if self.cancelled:
            self.finish_reason = "cancelled"
            return
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return
        self.tokens.append(token)
        if self.options.stop and any(s in self.decode(self.tokens) for s in self.options.stop):
            self.finish_reason = "stop"
        elif len(self.tokens) == self.options.max_tokens:
            self.finish_reason = "length"


class Generation:
    """Sequences decoding together. A sequence may join before any step (continuous batching: the
    service adds requests as they arrive) and leaves the step it finishes. Row i's draws come from
    its own generator only, so its tokens do not depend on the other rows."""

    def __init__(self, model: "GPT | nn.Module", slots: int, length: int):
        self.decoder = Decoder(model, slots, length)
        self.rows: list[Sequence] = []
        self.logits = torch.zeros(slots, model.vocab_size, device=self.decoder.lens.device)
        self.seen = torch.zeros(slots, model.vocab_size, dtype=torch.bool, device=self.decoder.lens.device)

    def join(self, seq: Sequence) -> None:
        context = min(self.decoder.length, self.decoder.model.config.block_size)
        if len(seq.prompt) + seq.options.max_tokens > context:
            raise ModelError(f"a prompt of {len(seq.prompt)} tokens plus max_tokens {seq.options.max_tokens} exceeds "
                             f"the model's context of {context} tokens; shorten the prompt or lower max_tokens")
        if seq.options.stop and seq.decode is None:
            raise ModelError("stop texts need the tokenizer's decode")
        r = len(self.rows)
        self.logits[r] = self.decoder.add(seq.prompt).float()
        self.seen[r] = False
        self.seen[r, torch.tensor(seq.prompt, device=self.seen.device)] = True
        self.rows.append(seq)

    def step(self) -> list[Sequence]:
        """Draw one token for every row; the sequences that finished (and left)."""
        n = len(self.rows)
        options = [s.options for s in self.rows]
        logits = self.logits[:n]
        marked = [i for i, s in enumerate(self.rows) if s.mark is not None and s.last is not None]
        if marked:
            logits = logits.clone()
            logits[marked] = _watermarked(logits[marked], [self.rows[i] for i in marked])
        logits = _filter(logits, self.seen[:n], options)
        greedy = [o.temperature == 0 for o in options]
        chosen = logits.argmax(-1) if any(greedy) else None
        if not all(greedy):
            # Inverse-CDF sampling, one uniform per row from the row's own generator: what
            # torch.multinomial draws, without its exponential variate per vocabulary entry
            # (a third of a batch-8 decoding step on a 8,000-token vocabulary).
            cdf = logits.softmax(-1).cumsum(-1)
            u = torch.stack([torch.rand((), generator=s.generator) for s in self.rows]).to(cdf.device)
            drawn = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
            drawn = drawn.clamp(max=cdf.shape[1] - 1)
            chosen = drawn if chosen is None else torch.where(torch.tensor(greedy, device=cdf.device), chosen, drawn)
        chosen = chosen.tolist()
        for seq, token in zip(self.rows, chosen):
            seq.accept(token)
        done = []
        for i in reversed(range(n)):  # from the end: the row moved into a freed slot was already kept
            if self.rows[i].finish_reason is not None:
                done.append(self.rows[i])
                self._leave(i)
        if self.rows:
            tokens = torch.tensor([s.tokens[-1] for s in self.rows], device=self.seen.device)
            self.seen[torch.arange(len(self.rows), device=self.seen.device), tokens] = True
            self.logits[:len(self.rows)] = self.decoder.step(tokens).float()
        return done

    def _leave(self, i: int) -> None:
        last = len(self.rows) - 1
        self.decoder.remove(i)
        self.seen[i] = self.seen[last]
        self.rows[i] = self.rows[last]
        self.rows.pop()


@dataclass
class Generated:
    tokens: list[list[int]]
    finish_reasons: list[str]


@torch.inference_mode()
def generate(model: GPT, prompts: list[list[int]], generators: list[torch.Generator], o: SampleConfig,
             stop_ids: frozenset[int], decode: "Callable[[list[int]], str] | None" = None,
             mark: TextMark | None = None) -> Generated:
    """New tokens for each prompt until a stop token, a stop text (o.stop), or o.max_tokens."""
    seqs = [Sequence(p, o, g, stop_ids, decode, mark=mark) for p, g in zip(prompts, generators, strict=True)]
    run = Generation(model, len(seqs), max(len(p) for p in prompts) + o.max_tokens)
    for seq in seqs:
        run.join(seq)
    while run.rows:
        run.step()
    return Generated([s.tokens for s in seqs], [s.finish_reason for s in seqs])


# ----------------------------------------------------------------------------- data

def split_texts(dataset, split: str, config: Config) -> tuple[list[str], list[str] | None]:
    """(texts, None) for packed text; (prompts, completions) for prompt/completion data; a split the
    dataset does not have is empty."""
    frame = dataset.frame(split)
    if frame.columns.empty:
        return [], None if config.format == "text" else []
    if config.format == "text":
        if "text" not in frame:
            raise DataError(f"dataset {dataset.ref} has prompt/completion columns; set model.format: prompt_completion")
        return frame["text"].astype(str).tolist(), None
    if "prompt" in frame and "completion" in frame:
        if config.label_prompts is not None:
            raise DataError(f"dataset {dataset.ref} has its own prompts; remove model.label_prompts")
        return frame["prompt"].astype(str).tolist(), frame["completion"].astype(str).tolist()
    if config.label_prompts is None or "label" not in frame:
        raise DataError(f"dataset {dataset.ref} has no prompt/completion columns; for a labeled text dataset give "
                        f"model.label_prompts (class -> prompt) for its classes {list(dataset.classes)}")
    missing = sorted(set(dataset.classes) - set(config.label_prompts))
    if missing:
        raise DataError(f"model.label_prompts has no prompt for the classes {missing}")
    prompts = [config.label_prompts[dataset.classes[i]] for i in frame["label"].tolist()]
    return prompts, frame["text"].astype(str).tolist()


def prompt_ids(tok: TextTokenizer, prompt: str, format: str) -> list[int]:
    """What generation starts from: <|prompt|> p <|completion|>, or <|endoftext|> p for plain text
    (the document boundary the model saw before every text)."""
    if format == "prompt_completion":
        return [tok.prompt, *tok.encode(prompt), tok.completion]
    return [tok.eot, *tok.encode(prompt)]


def fit(config: Config, dataset, seed: int) -> tuple[DataSpec, Fitted]:
    if dataset.kind != "text":
        raise DataError(f"the gpt family trains on text datasets; {dataset.ref} holds {dataset.kind} data")
    a, b = split_texts(dataset, "train", config)
    if not a:
        raise DataError(f"dataset {dataset.ref} has no texts in its train split")
    tok = TextTokenizer.train(a + (b or []), config.vocab_size)
    return DataSpec("text", vocab_size=tok.vocab_size, block_size=config.block_size), tok.to_fitted()


def encode(config: Config, spec: DataSpec, fitted: Fitted, dataset, split: str) -> Batch:
    if dataset.kind != "text":
        raise DataError(f"the gpt family trains on text datasets; {dataset.ref} holds {dataset.kind} data")
    tok, T = TextTokenizer.from_fitted(fitted), spec.block_size
    a, b = split_texts(dataset, split, config)
    if b is None:  # packed: rows of T + 1 tokens overlapping by one
        stream = np.fromiter((i for ids in tok.encode_batch(a) for i in (*ids, tok.eot)), dtype=np.int64)
        rows = max(len(stream) - 1, 0) // T
        idx = np.arange(rows)[:, None] * T + np.arange(T + 1)[None, :]
        tokens = torch.from_numpy(stream[idx] if rows else np.zeros((0, T + 1), np.int64))
        return {"tokens": tokens, "mask": torch.ones(rows, T)}
    tokens = torch.full((len(a), T + 1), tok.pad, dtype=torch.long)
    mask = torch.zeros(len(a), T)
    for r, (p, c) in enumerate(zip(tok.encode_batch(a), tok.encode_batch(b))):
        head = [tok.prompt, *p, tok.completion]
        row = (head + c + [tok.eot])[:T + 1]  # a too-long example loses its end
        tokens[r, :len(row)] = torch.tensor(row)
        mask[r, len(head) - 1:len(row) - 1] = 1.0  # positions whose next token is the completion or its end
    keep = mask.sum(1) > 0  # a prompt that fills the context leaves nothing to learn
    return {"tokens": tokens[keep], "mask": mask[keep]}


# ----------------------------------------------------------------------------- the family contract

def optimizers(config: Config) -> dict[str, OptimizerSpec]:
    return {"model": OptimizerSpec(("model",))}


def build(config: Config, spec: DataSpec, fitted: Fitted | None) -> dict[str, nn.Module]:
    if spec.kind != "text":
        raise ModelError(f"the gpt family trains on text datasets, got a {spec.kind} dataset")
    if spec.block_size != config.block_size:
        raise ModelError(f"model.block_size {config.block_size} differs from the data spec's {spec.block_size}")
    model = GPT(config, spec.vocab_size)
    return {"model": apply_lora(model, config.lora) if config.lora else model}


def _loss(model: GPT, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, mask = batch["tokens"], batch["mask"]
    logits = model(tokens[:, :-1])  # (B, T, V)
    nll = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    weight = mask.flatten().to(nll.dtype)
    return (nll * weight).sum() / weight.sum().clamp(min=1.0), weight.sum()


def train_step(modules: dict[str, nn.Module], batch: Batch, opt: Optimizer, step: int) -> dict[str, torch.Tensor]:
    loss, _ = _loss(modules["model"], batch)
    opt.step("model", loss)
    return {"loss": loss.detach()}


def val_loss(modules: dict[str, nn.Module], batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
    loss, tokens = _loss(modules["model"], batch)
    return {"loss": loss}, float(tokens)


def sample(modules: dict[str, nn.Module], spec: DataSpec, fitted: Fitted, request: SampleRequest,
           options: SampleConfig) -> TextSamples:
    """A completion per item: item i continues request.prompts[i] (none: a new document) with draws
    from its own seed."""
    model: GPT = modules["model"]
    tok = TextTokenizer.from_fitted(fitted)
    prompts = list(request.prompts) if request.prompts is not None else [""] * request.n
    if len(prompts) != request.n:
        raise ModelError(f"prompts must hold one prompt per item ({request.n}), got {len(prompts)}")
    ids = [prompt_ids(tok, p, model.config.format) for p in prompts]
    net, precision = model, contextlib.nullcontext()
    if options.quantize == "int8":
        if model.wte.weight.device.type != "cpu":
            raise ModelError("sample.quantize: int8 runs on the CPU only")
        net, precision = quantized(model), torch.autocast("cpu", enabled=False)  # int8 kernels take fp32 inputs
    with precision:
        got = generate(net, ids, item_generators(request.seeds), options, frozenset({tok.eot, tok.pad}), tok.decode,
                       text_mark(options))
    texts = [cut_at_stop(tok.decode(toks), options.stop) for toks in got.tokens]
    return TextSamples(texts, prompts, got.finish_reasons, [len(t) for t in got.tokens])


def _watermarked(logits: torch.Tensor, rows: list[Sequence]) -> torch.Tensor:
    """Each row's green tokens (after its last token) raised by its delta; a workspace has one key.

    A stop token keeps its probability: raised on the green list the mark would shorten texts, and merely
    left alone it would lengthen them (the raised greens take mass from it: 28 -> 81 median tokens at delta
    2, benchmarks/results/textmark-eval.md). So the greens are raised among the other tokens only, which then
    share exactly the mass they had. Exact at temperature 1 (the mark is applied before temperature)."""
    prev = torch.tensor([r.last for r in rows], device=logits.device)[:, None]
    delta = torch.tensor([r.mark.delta for r in rows], dtype=logits.dtype, device=logits.device)[:, None]
    green = rows[0].mark.green(prev, torch.arange(logits.shape[1], device=logits.device)[None, :])
    raised = logits + delta * green.to(logits.dtype)
    stops = sorted(set().union(*(r.stop_ids for r in rows)))
    if not stops:
        return raised
    others = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    others[stops] = False
    shift = torch.logsumexp(logits[:, others], -1, keepdim=True) - torch.logsumexp(raised[:, others], -1, keepdim=True)
    return torch.where(others, raised + shift, logits)


def text_mark(options: SampleConfig) -> TextMark | None:
    """The workspace's watermark with the options' strength, when the options turn it on."""
    return TextMark(workspace_key(), delta=options.watermark_delta) if options.watermark else None


CHAT_TEMPLATE = ("the messages' contents, in order, one per line, are the prompt (roles are not rendered: "
                 "genforge's language models learn one turn); the model continues it")


def chat_prompt(contents: list[str]) -> str:
    """A chat's messages as the prompt the model continues (`CHAT_TEMPLATE`; the service's chat route)."""
    return "\n".join(contents)


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text before the first stop sequence in it (OpenAI's `stop`: never part of the output)."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def health(config: Config, window: dict[str, float]) -> str | None:
    return None
