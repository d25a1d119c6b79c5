"""genforge's GPT against Hugging Face transformers' `GPT2LMHeadModel` at the same configuration.

    .venv/bin/python benchmarks/bench_gpt.py --write        # -> results/gpt.md
    .venv/bin/python benchmarks/bench_gpt.py --quick        # every code path in a minute

Both models are built from one GPT-2 configuration (default about 30M parameters: 8 layers, width
512, 8 heads, 512 positions, an 8,000-token vocabulary) and hold the same weights (genforge's are
exported to transformers' layout by `genforge.interop`, so the two compute the same function).

- Training: tokens/s of a full step (forward, cross-entropy, backward, AdamW), batch x block tokens
  of random ids, fp32; transformers' step is `model(input_ids, labels=...)` as its Trainer runs it.
- Generation: tokens/s for `--new` (256) new tokens at batch 1 and batch 8, sampling at temperature
  1 with no top-k/top-p cut and no stop token, so both produce exactly `--new` tokens; transformers
  with `model.generate(do_sample=True, top_k=0, min_new_tokens=new, max_new_tokens=new)`, its KV
  cache on (the default); genforge with `genforge.models.gpt.generate` (its KV cache, per-item
  generators), in fp32 and with int8 dynamic quantisation.
- The batch-1 ceiling: each new token reads every weight once, so tokens/s <= memory bandwidth /
  weight bytes. Bandwidth is measured here as the rate of summing a 1 GiB fp32 tensor, and, closer
  to what decoding can reach, as the time of the model's own linear layers alone at one row (the
  GEMV floor: every fp32 implementation pays its kernel's, whatever it does around the layers),
  through MKL's sgemm (the plain layers) and through oneDNN's packed layout (genforge's decoder).
- int8's cost in quality (`--run RUN`, a trained GPT run): held-out perplexity of the run's model in
  fp32 and with int8 linear layers, over its whole validation split (the figure `genforge evaluate`
  reports).

Contenders alternate within each repetition (so load from elsewhere falls on both), medians and
ranges over `--reps`; ratios are genforge / transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

try:
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError:
    sys.exit("transformers is missing: install the test or bench extra (bash scripts/setup.sh test,bench)")

from genforge.devices import cpu_flags
from genforge.interop import hf_state_dict
from genforge.models import gpt
from genforge.workspace import atomic_write_text

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "gpt.md"
FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}  # what kernels use


def models(layers: int, width: int, heads: int, block: int, vocab: int) -> tuple[gpt.GPT, GPT2LMHeadModel]:
    torch.manual_seed(0)
    ours = gpt.GPT(gpt.Config(family="gpt", vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads,
                              n_embd=width), vocab)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=block, n_embd=width, n_layer=layers, n_head=heads,
                                    activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                    bos_token_id=0, eos_token_id=0, pad_token_id=0))
    hf.load_state_dict(hf_state_dict(ours), strict=False)  # the same weights (lm_head is tied to wte)
    return ours, hf


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor, hf: bool) -> None:
    if hf:
        loss = model(input_ids=ids, labels=ids).loss
    else:
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bandwidth_gbs() -> float:
    x = torch.ones(256 * 1024 * 1024)  # 1 GiB
    x.sum()
    best = min(timed(lambda: x.sum()) for _ in range(5))
    return x.numel() * 4 / best / 1e9


def gemv_floor_ms(model: torch.nn.Module) -> dict[str, float]:
    """Milliseconds for one row through every Linear layer of the model (the lm_head included):
    plain (MKL's sgemm, what transformers runs) and oneDNN-packed (what genforge's decoder runs)."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    packs = [m for m in gpt.packed(model).modules() if isinstance(m, gpt.PackedLinear)]
    inputs = {m.in_features: torch.randn(1, m.in_features) for m in layers}

    def chain(plain: bool) -> None:
        for m in (layers if plain else packs):
            m(inputs[m.weight.shape[1]])
    floors = {}
    with torch.inference_mode():
        for name, plain in (("mkl", True), ("onednn", False)):
            chain(plain)
            floors[name] = 1e3 * statistics.median(timed(lambda: chain(plain)) for _ in range(50))
    return floors


def int8_perplexity(ref: str) -> dict[str, Any]:
    """Held-out perplexity of a trained run's model, fp32 against int8 linear layers."""
    from dataclasses import replace

    from genforge.data.store import open_dataset
    from genforge.evaluation.pipeline import heldout_perplexity
    from genforge.runs import load_run
    run = load_run(ref)
    model = run.model()
    dataset = open_dataset(run.dataset_ref)
    heldout = model.family.encode(model.config, model.spec, model.fitted, dataset, run.config.data.val_split)
    fp32 = heldout_perplexity(model, heldout)
    int8 = heldout_perplexity(replace(model, modules={"model": gpt.quantized(model.modules["model"])}, precision="fp32"),
                              heldout)
    return {"run": run.id, "split": run.config.data.val_split, "rows": int(heldout["tokens"].shape[0]),
            "fp32": fp32, "int8": int8}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    ours, hf = models(args.layers, args.width, args.heads, args.block, args.vocab)
    params = sum(p.numel() for p in ours.parameters())
    g = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {"params": params, "train": {}, "generate": {}}

    # training: both in train mode, one AdamW each (fused, as genforge's trainer runs it)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for name, m in (("genforge", ours), ("transformers", hf))}
    for m in (ours, hf):
        m.train()
    for name, m in (("genforge", ours), ("transformers", hf)):  # warm-up
        train_step(m, opts[name], ids, name == "transformers")
    times: dict[str, list[float]] = {"genforge": [], "transformers": []}
    for _ in range(args.reps):
        for name, m in (("genforge", ours), ("transformers", hf)):
            times[name].append(timed(lambda: train_step(m, opts[name], ids, name == "transformers")))
    tokens = args.batch * args.seq
    results["train"] = {k: [tokens / t for t in v] for k, v in times.items()}

    # generation
    for m in (ours, hf):
        m.eval()
    o = gpt.SampleConfig(max_tokens=args.new, temperature=1.0)
    q = gpt.quantized(ours)
    for batch in (1, 8):
        prompt = torch.randint(1, args.vocab, (batch, args.prompt), generator=g)
        contenders = {
            "genforge": lambda: gpt.generate(ours, prompt.tolist(), [torch.Generator().manual_seed(i) for i in range(batch)],
                                             o, frozenset()),
            "genforge int8": lambda: gpt.generate(q, prompt.tolist(), [torch.Generator().manual_seed(i) for i in range(batch)],
                                                  o, frozenset()),
            "transformers": lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                                                min_new_tokens=args.new, max_new_tokens=args.new, pad_token_id=0),
        }
        with torch.inference_mode():
            for fn in contenders.values():  # warm-up
                fn()
            gen: dict[str, list[float]] = {k: [] for k in contenders}
            for _ in range(args.reps):
                for k, fn in contenders.items():
                    gen[k].append(batch * args.new / timed(fn))
        results["generate"][batch] = gen
    results["bandwidth_gbs"] = bandwidth_gbs()
    results["gemv_floor_ms"] = gemv_floor_ms(ours)
    if args.run:
        results["int8_perplexity"] = int8_perplexity(args.run)
    results["weight_mb"] = {"fp32": params * 4 / 1e6, "int8": (params - ours.wte.weight.numel() - ours.wpe.weight.numel())
                            * 1 / 1e6 + (ours.wte.weight.numel() + ours.wpe.weight.numel()) * 4 / 1e6}
    return results


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def report(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    lines = [f"## GPT against transformers, {info['date']}", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {args.threads} threads; flags: {info['flags']}; "
             f"load before {info['load_before']}; torch {info['torch']}, transformers {info['transformers']}, "
             f"git {info['git']}.", "",
             f"Model: {args.layers} layers, width {args.width}, {args.heads} heads, block {args.block}, vocabulary "
             f"{args.vocab}: {results['params'] / 1e6:.1f}M parameters (tied embeddings counted once). "
             f"Medians (min-max) of {args.reps} alternating repetitions.", "",
             "| | genforge | transformers | ratio |", "|---|---|---|---|"]
    tr = results["train"]
    lines.append(f"| training tokens/s (batch {args.batch} x {args.seq}) | {summary(tr['genforge'])} | "
                 f"{summary(tr['transformers'])} | {statistics.median(tr['genforge']) / statistics.median(tr['transformers']):.2f}x |")
    for batch, gen in results["generate"].items():
        base = statistics.median(gen["transformers"])
        for k in ("genforge", "genforge int8"):
            lines.append(f"| generation tokens/s, batch {batch}, {args.new} new ({k}) | {summary(gen[k])} | "
                         f"{summary(gen['transformers'])} | {statistics.median(gen[k]) / base:.2f}x |")
    bw, mb = results["bandwidth_gbs"], results["weight_mb"]
    lines += ["", f"Memory bandwidth (summing 1 GiB of fp32): {bw:.1f} GB/s. Batch-1 ceiling: fp32 weights "
              f"{mb['fp32']:.0f} MB -> {bw * 1e3 / mb['fp32']:.0f} tokens/s; int8 linear layers "
              f"({mb['int8']:.0f} MB with fp32 embeddings) -> {bw * 1e3 / mb['int8']:.0f} tokens/s. "
              "GEMV floor (the model's linear layers alone, one row, fp32): "
              + ", ".join(f"{k} {v:.2f} ms -> {1e3 / v:.0f} tokens/s at most"
                          for k, v in results["gemv_floor_ms"].items())
              + " (mkl: the plain layers transformers runs; onednn: genforge's packed decoding layers).", ""]
    if "int8_perplexity" in results:
        q = results["int8_perplexity"]
        lines += [f"int8's cost in quality: run `{q['run']}`, held-out perplexity over its whole {q['split']} split "
                  f"({q['rows']} rows): fp32 {q['fp32']:.2f}, int8 {q['int8']:.2f} "
                  f"({100 * (q['int8'] / q['fp32'] - 1):+.2f}%).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--block", type=int, default=512, help="positions: prompt + 256 new tokens must fit")
    p.add_argument("--seq", type=int, default=256, help="training sequence length")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=8, help="training batch (rows of --block tokens)")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens for generation")
    p.add_argument("--new", type=int, default=256, help="new tokens generated")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--run", help="a trained GPT run: report int8's effect on its held-out perplexity")
    p.add_argument("--quick", action="store_true", help="a small model, 2 reps: checks every path")
    p.add_argument("--write", action="store_true", help=f"append to {RESULTS.relative_to(ROOT.parent)}")
    args = p.parse_args()
    if args.quick:
        args.layers, args.width, args.heads, args.block, args.seq, args.new, args.reps = 2, 64, 2, 64, 32, 16, 2
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": platform.processor() or "?",
            "cores": os.cpu_count(), "flags": ", ".join(sorted(cpu_flags() & FLAGS)) or "none of " + ", ".join(sorted(FLAGS)), "load_before": os.getloadavg(),
            "torch": torch.__version__, "transformers": version("transformers"),
            "git": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()}
    results = run(args)
    text = report(results, args, info)
    print(text)
    print(json.dumps(results, default=str))
    if args.write and not args.quick:
        RESULTS.parent.mkdir(exist_ok=True)
        old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# GPT benchmarks\n\n"
        atomic_write_text(RESULTS, old + text + "\n")


if __name__ == "__main__":
    main()
