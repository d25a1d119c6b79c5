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

Generation. Prompts of different lengths are left-padded into one batch; each row's positions start
at its first real token and padded keys are masked, so a row sees exactly what it would see alone,
and its sampling draws come from its own generator: an item's output does not depend on its batch.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genforge.config import StrictModel
from genforge.errors import DataError, ModelError
from genforge.models import (Batch, DataSpec, Fitted, Optimizer, OptimizerSpec, SampleRequest, TextSamples,
                             item_generators)
from genforge.models.lora import LoraConfig, apply_lora
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


KINDS = ("text",)
EMA = ("model",)
HEADLINE = "loss"
GRAD_SYNC = "ddp"
# Fields an init_from run may change: they change what the model is fed, not the weights' shapes.
TUNABLE = ("dropout", "format", "label_prompts", "lora")


# ----------------------------------------------------------------------------- the network

class Attention(nn.Module):
    """Causal multi-head self-attention; with a KV cache at generation time."""

    def __init__(self, c: Config):
        super().__init__()
        self.n_head, self.dropout = c.n_head, c.dropout
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)
        self.resid_drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: "KVCache | None", layer: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))  # (B, H, T, D) each
        if cache is None:  # training: the whole sequence at once
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            k, v = cache.update(layer, k, v)  # (B, H, S, D): every key so far
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: "KVCache | None", layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
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

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: "KVCache | None" = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V). Training passes tokens only (causal); generation passes
        each row's positions (B, T), the attention mask (B, 1, T, S) and the cache."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(positions))
        for i, block in enumerate(self.h):
            x = block(x, mask, cache, i)
        return self.lm_head(self.ln_f(x))


class KVCache:
    """Keys and values of every layer for a batch of rows that all append at the same index (left
    padding puts every prompt's end at the same column), preallocated for `length` positions."""

    def __init__(self, model: GPT, batch: int, length: int, like: torch.Tensor):
        c = model.config
        shape = (c.n_layer, batch, c.n_head, length, c.n_embd // c.n_head)
        self.k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v = torch.zeros_like(self.k)
        self.size = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.size + k.shape[2]
        self.k[layer, :, :, self.size:end] = k
        self.v[layer, :, :, self.size:end] = v
        if layer == len(self.k) - 1:
            self.size = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# ----------------------------------------------------------------------------- generation

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


def _filter(logits: torch.Tensor, seen: torch.Tensor, o: SampleConfig) -> torch.Tensor:
    """Repetition penalty, temperature, top-k and top-p on (B, V) float logits; cut tokens get -inf."""
    if o.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / o.repetition_penalty, logits * o.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    logits = logits / o.temperature
    if o.top_k and o.top_k < logits.shape[-1]:
        kth = torch.topk(logits, o.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if o.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > o.top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return logits


@dataclass
class Generated:
    tokens: list[list[int]]
    finish_reasons: list[str]


@torch.inference_mode()
def generate(model: GPT, prompts: list[list[int]], generators: list[torch.Generator], o: SampleConfig,
             stop_ids: frozenset[int], stop_texts: list[str] | None = None,
             decode: "callable | None" = None) -> Generated:
    """New tokens for each prompt until a stop token, a stop text, or o.max_tokens. Row i's draws
    come from generators[i] only, so its output does not depend on the other rows."""
    B, device = len(prompts), model.wte.weight.device
    L = max(len(p) for p in prompts)
    if L + o.max_tokens > model.config.block_size:
        raise ModelError(f"a prompt of {L} tokens plus max_tokens {o.max_tokens} exceeds the model's context of "
                         f"{model.config.block_size} tokens; shorten the prompt or lower max_tokens")
    pads = torch.tensor([L - len(p) for p in prompts], device=device)  # (B,)
    tokens = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=device)  # (B, L)
    real = torch.arange(L + o.max_tokens, device=device)[None, :] >= pads[:, None]  # (B, S): keys that exist
    positions = (torch.arange(L, device=device)[None, :] - pads[:, None]).clamp(min=0)  # (B, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    # a padded query attends to itself only, so no softmax row is empty; its output is never used
    mask = (causal[None] & real[:, None, :L]) | torch.eye(L, dtype=torch.bool, device=device)[None]  # (B, L, L)
    cache = KVCache(model, B, L + o.max_tokens, model.wte.weight)
    logits = model(tokens, positions, mask[:, None], cache)[:, -1].float()  # (B, V)
    seen = torch.zeros(B, model.vocab_size, dtype=torch.bool, device=device)
    seen.scatter_(1, tokens, real[:, :L])
    out: list[list[int]] = [[] for _ in range(B)]
    reasons: list[str | None] = [None] * B
    greedy = SampleConfig(repetition_penalty=o.repetition_penalty)  # temperature 0: only the penalty applies
    for t in range(o.max_tokens):
        if o.temperature == 0:
            nxt = _filter(logits, seen, greedy).argmax(-1)
        else:
            probs = _filter(logits, seen, o).softmax(-1).cpu()
            nxt = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])
        for i, tok in enumerate(nxt.tolist()):
            if reasons[i] is not None:
                continue
            if tok in stop_ids:
                reasons[i] = "stop"
                continue
            out[i].append(tok)
            if stop_texts and any(s in decode(out[i]) for s in stop_texts):
                reasons[i] = "stop"
            elif len(out[i]) == o.max_tokens:
                reasons[i] = "length"
        if all(r is not None for r in reasons):
            break
        nxt = nxt.to(device)
        seen[torch.arange(B, device=device), nxt] = True
        pos = (L + t - pads)[:, None]  # (B, 1)
        logits = model(nxt[:, None], pos, real[:, None, None, :L + t + 1], cache)[:, -1].float()
    return Generated(out, [r or "length" for r in reasons])


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


def fit(config: Config, dataset) -> tuple[DataSpec, Fitted]:
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
        got = generate(net, ids, item_generators(request.seeds), options, frozenset({tok.eot, tok.pad}),
                       options.stop, tok.decode)
    texts = []
    for toks in got.tokens:
        text = tok.decode(toks)
        cut = min((text.find(s) for s in options.stop if s in text), default=-1)
        texts.append(text if cut < 0 else text[:cut])
    return TextSamples(texts, prompts, got.finish_reasons, [len(t) for t in got.tokens])


def health(config: Config, window: dict[str, float]) -> str | None:
    return None
