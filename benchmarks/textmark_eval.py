"""The text watermark (genforge.textmark, Kirchenbauer et al. 2023) on a trained model: detection
p-values against the number of generated tokens, the false-positive rate on real text, and what the
watermark costs in quality (issue 13).

    .venv/bin/python benchmarks/textmark_eval.py --write    # ~8-10 min on 2 idle cores -> results/textmark-eval.md/json
    .venv/bin/python benchmarks/textmark_eval.py --quick    # every path in ~2 min; figures mean nothing

1. Model: in a fresh temporary GENFORGE_HOME (tracking off), builtin:reviews (Chinese) is ingested and
   configs/gpt-reviews.yaml trained for `--minutes` (4) with `model.block_size=256` (so that a prompt and
   200 new tokens fit the context), batch 16 (the shipped 4,096 tokens per step) and 20 warm-up steps
   (`--train-set`; the shipped 100 are sized for 15 minutes). A trained model matters: a random-weight
   model's flat distributions let the watermark pick green tokens almost freely, which makes detection
   trivially easy; a trained model's peaked ones resist it (Kirchenbauer's sec. 4, spike entropy). The
   model's held-out perplexity is printed beside a unigram baseline's to show how trained it is.
2. Prompts: `--prompts` (100) held-out reviews (the test split, at least 2 x `--prompt-chars` characters),
   their first `--prompt-chars` (10) characters, as `genforge generate` encodes a prompt.
3. Generation: pure sampling (temperature 1, no top-p, no repetition penalty: the paper's multinomial
   sampling; the run's `sample:` defaults would otherwise apply) with `watermark_delta` in 1, 2, 4 and
   without the watermark, the same seeds for all four. The headline texts have exactly `--new` (200)
   new tokens: `genforge.models.gpt.generate` with the workspace's `text_mark` and no stop token, the
   code path `genforge generate` runs except that an end-of-text continues into a next review (as in the
   model's packed training stream) instead of ending the text; reviews are short (median ~48
   characters), so stopped texts rarely reach 64 tokens. Beside them, `genforge.api.generate` with the
   same options and seeds, stopped at end-of-text as a user gets them: detection at their natural length.
4. Detection: each text is decoded, re-encoded with the run's tokenizer (what a verifier holding only
   the text does) and tested (`textmark.detect`, the workspace key) on its first 16, 32, 64, 128 and 200
   tokens: median z and p-value, and the share detected at p < 1e-3. The same on the generated ids as
   they were sampled (no re-encoding) shows what re-encoding costs.
5. False positives at p < 1e-3: the unmarked generations, and every real held-out text (the reviews'
   test split; the English builtin:news val and test articles, with a tokenizer fitted as
   configs/gpt-news.yaml fits it: the test needs a tokenizer and a key, no model), each tested with the
   workspace key and 9 other seeded keys (more trials, and a check that no key is special), at the full
   text and at each length a text reaches; with exact 95% (Clopper-Pearson) bounds, the mean and spread
   of z (N(0, 1) for unmarked text if the test is calibrated), the positives expected if every pair were
   green by independent chance (the real level of `detect`'s normal approximation at that many pairs),
   and the positives of an exact binomial test on the same trials.
6. Quality: the perplexity of each set's new tokens under the model itself without the watermark
   (Kirchenbauer's Fig. 2 measure; the unmarked set's is the model's own entropy), distinct-1/2 and the
   4-gram repetition rate (genforge.evaluation.text), and the share of green tokens.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import beta, binom

from genforge import api
from genforge.config import read_yaml
from genforge.evaluation import text as metrics
from genforge.models import gpt, item_generators, item_seeds
from genforge.runs import load_run
from genforge.textmark import TextMark, detect, workspace_key
from genforge.tokenizer import TextTokenizer
from genforge.workspace import atomic_write_text

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
OUT = ROOT / "out" / "textmark"
LENGTHS = (16, 32, 64, 128, 200)
DELTAS = (1.0, 2.0, 4.0)
THRESHOLD = 1e-3
OTHER_KEYS = 9  # keys besides the workspace's for the false-positive trials


# ----------------------------------------------------------------------------- the model

def prepare(args: argparse.Namespace) -> Any:
    """The trained reviews run: `--run` in `--home`, or ingest and train one now."""
    from rich.console import Console

    if args.run:
        return load_run(args.run)
    api.ingest("builtin:reviews", "reviews")
    overrides = [f"train.minutes={args.minutes}", "model.block_size=256", "train.val_every=0", *args.train_set]
    return api.train(ROOT.parent / "configs" / "gpt-reviews.yaml", overrides=overrides,
                     console=Console(stderr=True, quiet=True))


def heldout_figures(run: Any, model: Any) -> dict[str, Any]:
    """Held-out perplexity of the model and of a unigram baseline (how far training got)."""
    from genforge.data.store import open_dataset
    from genforge.evaluation.pipeline import _targets, heldout_perplexity

    dataset = open_dataset(run.dataset_ref)
    encode = lambda split: model.family.encode(model.config, model.spec, model.fitted, dataset, split)  # noqa: E731
    val, train = encode(run.config.data.val_split), encode(run.config.data.train_split)
    steps = [m["step"] for m in run.metrics() if "step" in m]
    return {"run": run.id, "steps": max(steps) if steps else None, "val_split": run.config.data.val_split,
            "val_tokens": int(_targets(val).numel()), "perplexity": heldout_perplexity(model, val),
            "unigram_perplexity": metrics.unigram_perplexity(_targets(train).numpy(), _targets(val).numpy(),
                                                             model.spec.vocab_size)}


# ----------------------------------------------------------------------------- generation

def choose_prompts(texts: list[str], n: int, chars: int, seed: int) -> list[str]:
    pool = sorted({t for t in texts if len(t) >= 2 * chars})
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} held-out texts have {2 * chars} characters; lower --prompts or --prompt-chars")
    return [t[:chars] for t in random.Random(seed).sample(pool, n)]


def options(delta: float | None, new: int) -> dict[str, Any]:
    o: dict[str, Any] = {"max_tokens": new, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
    return o if delta is None else {**o, "watermark": True, "watermark_delta": delta}


def generate_fixed(model: Any, tok: TextTokenizer, prompts: list[str], opts: dict[str, Any], seed: int,
                   batch: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, exactly max_tokens new ids) per prompt: gpt.sample's path without its stop tokens,
    in the chunks and with the item seeds `genforge.api.generate` uses."""
    o = model.options(opts)
    net, mark = model.modules["model"], gpt.text_mark(o)
    ids = [gpt.prompt_ids(tok, p, model.config.format) for p in prompts]
    gens = item_generators(item_seeds(seed, len(prompts)))
    out: list[list[int]] = []
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            out += gpt.generate(net, ids[i:i + batch], gens[i:i + batch], o, frozenset(), mark=mark).tokens
    return ids, out


@torch.inference_mode()
def new_token_logprobs(model: Any, prompts: list[list[int]], new: list[list[int]], batch: int = 25) -> list[np.ndarray]:
    """Log-probabilities the model (no watermark) gives each new token after its prompt."""
    net, out = model.modules["model"], []
    for i in range(0, len(prompts), batch):
        rows = [p + g for p, g in zip(prompts[i:i + batch], new[i:i + batch])]
        width = max(map(len, rows))
        x = torch.tensor([r + [0] * (width - len(r)) for r in rows])  # right padding: causal, never attended
        logp = net(x[:, :-1]).float().log_softmax(-1)  # (B, T-1, V)
        for r, (p, g) in enumerate(zip(prompts[i:i + batch], new[i:i + batch])):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(g))
            out.append(logp[r, pos, torch.tensor(g)].numpy())
    return out


# ----------------------------------------------------------------------------- detection

def detection(token_lists: list[list[int]], mark: TextMark, lengths: tuple[int, ...]) -> dict[str, Any]:
    """Per length (and "whole": each text whole): how many texts reach it, median z / p-value / scored
    pairs / green share, the share detected at THRESHOLD."""
    rows = {}
    for L in (*lengths, "whole"):
        ds = [detect(t if L == "whole" else t[:L], mark) for t in token_lists if L == "whole" or len(t) >= L]
        rows[str(L)] = {"n": len(ds)} if not ds else {
            "n": len(ds), "median_tokens": statistics.median(len(t) for t in token_lists) if L == "whole" else L,
            "median_z": statistics.median(d.z for d in ds),
            "median_p": statistics.median(d.p_value for d in ds),
            "median_scored": statistics.median(d.scored for d in ds),
            "green_share": sum(d.green for d in ds) / max(1, sum(d.scored for d in ds)),
            "detected": sum(d.p_value < THRESHOLD for d in ds)}
    return rows


def bounds(k: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95% interval of a rate k / n."""
    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return lo, hi


@functools.lru_cache(maxsize=None)
def chance_level(scored: int, gamma: float) -> float:
    """The probability that `detect` (a normal approximation) calls a text of `scored` pairs marked at
    THRESHOLD when each pair is green with probability gamma independently: the test's real level."""
    for g in range(scored + 1):
        z = (g - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))
        if 0.5 * math.erfc(z / math.sqrt(2)) < THRESHOLD:
            return float(binom.sf(g - 1, scored, gamma))
    return 0.0


def false_positives(token_lists: list[list[int]], marks: list[TextMark], lengths: tuple[int, ...]) -> dict[str, Any]:
    """Per length (and "full": each text whole): trials (texts x keys), positives at THRESHOLD with the
    rate's 95% bounds, the positives expected if tokens were green by independent chance (what the
    normal approximation alone costs), the positives of an exact binomial test, and z's mean and sd."""
    out = {}
    for L in (*lengths, "full"):
        texts = [t if L == "full" else t[:L] for t in token_lists if L == "full" or len(t) >= L]
        zs, pos, exact, expected = [], 0, 0, 0.0
        for mark in marks:
            for t in texts:
                d = detect(t, mark)
                if d.scored:
                    zs.append(d.z)
                    pos += d.p_value < THRESHOLD
                    exact += float(binom.sf(d.green - 1, d.scored, mark.gamma)) < THRESHOLD
                    expected += chance_level(d.scored, mark.gamma)
        n = len(zs)
        out[str(L)] = {"texts": len(texts), "trials": n, "positives": pos, "rate": pos / n if n else None,
                       "bounds": bounds(pos, n) if n else None, "expected_by_chance": expected,
                       "exact_binomial_positives": exact,
                       "z_mean": float(np.mean(zs)) if n else None, "z_std": float(np.std(zs)) if n else None}
    return out


def news_tokens() -> tuple[list[list[int]], dict[str, Any]]:
    """builtin:news's held-out articles, encoded with a tokenizer fitted on its train split as
    configs/gpt-news.yaml fits it."""
    from genforge.data.store import open_dataset

    api.ingest("builtin:news", "news")
    dataset = open_dataset("news")
    config = gpt.Config(**read_yaml(ROOT.parent / "configs" / "gpt-news.yaml")["model"])
    _, fitted = gpt.fit(config, dataset, 0)
    tok = TextTokenizer.from_fitted(fitted)
    texts = [t for split in ("val", "test") for t in dataset.frame(split).get("text", []) if isinstance(t, str)]
    return tok.encode_batch(texts), {"texts": len(texts), "vocab_size": tok.vocab_size}


# ----------------------------------------------------------------------------- the measurement

def run(args: argparse.Namespace) -> dict[str, Any]:
    from genforge.data.store import open_dataset

    torch.set_num_threads(args.threads)
    clock: dict[str, float] = {}
    t = time.perf_counter()
    loaded = prepare(args)
    clock["ingest_and_train_s"] = time.perf_counter() - t
    model = loaded.model()
    tok = TextTokenizer.from_fitted(model.fitted)
    t = time.perf_counter()
    trained = heldout_figures(loaded, model)
    clock["heldout_perplexity_s"] = time.perf_counter() - t

    dataset = open_dataset(loaded.dataset_ref)
    test = dataset.frame("test")["text"].astype(str).tolist()
    prompts = choose_prompts(test, args.prompts, args.prompt_chars, args.seed)
    key = workspace_key()
    rng = random.Random(args.seed)
    other = [k for k in (rng.getrandbits(31) for _ in range(OTHER_KEYS + 1)) if k != key][:OTHER_KEYS]
    marks = [TextMark(k) for k in (key, *other)]  # for false positives: gamma is what matters, not delta
    lengths = tuple(L for L in LENGTHS if L <= args.new)

    conditions: dict[str, Any] = {}
    samples = []
    for delta in (None, *DELTAS):
        name = "unmarked" if delta is None else f"delta {delta:g}"
        mark = TextMark(key, delta=delta or 2.0)
        t = time.perf_counter()
        prompt_ids, new = generate_fixed(model, tok, prompts, options(delta, args.new), args.seed, args.batch)
        gen_s = time.perf_counter() - t
        texts = [tok.decode(g) for g in new]
        retok = tok.encode_batch(texts)
        t = time.perf_counter()
        natural = api.generate(loaded.id, 1, seed=args.seed, prompts=prompts, options=options(delta, args.new),
                               batch_size=args.batch).samples
        natural_s = time.perf_counter() - t
        natural_tok = tok.encode_batch(natural.texts)
        cut = [g[:next((j for j, i in enumerate(g) if i in (tok.eot, tok.pad)), len(g))] for g in new]
        c: dict[str, Any] = {
            "delta": delta, "generate_s": gen_s, "natural_generate_s": natural_s,
            "retokenised_tokens_median": statistics.median(map(len, retok)),
            "retokenised_equal_share": sum(r == [i for i in g if i not in tok.special_ids] for r, g in zip(retok, new))
            / len(new),
            "eot_per_text": sum(g.count(tok.eot) for g in new) / len(new),
            "detection_text": detection(retok, mark, lengths),
            "detection_ids": detection(new, mark, lengths),
            "perplexity": metrics.perplexity(new_token_logprobs(model, prompt_ids, new)),
            "distinct_1": metrics.distinct_n(texts, 1), "distinct_2": metrics.distinct_n(texts, 2),
            "repetition_4": metrics.repetition_rate(texts, 4),
            "chars_mean": float(np.mean([len(x) for x in texts])),
            "natural": {
                "tokens_median": statistics.median(map(len, natural_tok)),
                "tokens_quartiles": [float(q) for q in np.percentile([len(x) for x in natural_tok], [25, 75])],
                "detected": sum(detect(x, mark).p_value < THRESHOLD for x in natural_tok),
                "n": len(natural_tok),
                "equal_to_fixed_prefix": sum(x == tok.decode(c_) for x, c_ in zip(natural.texts, cut)) / len(cut)},
        }
        if delta is None:
            c["false_positives"] = false_positives(retok, marks, lengths)
            c["natural"]["false_positives"] = false_positives(natural_tok, marks, ())["full"]
        conditions[name] = c
        samples += [{"condition": name, "prompt": p, "text": x, "natural": y}
                    for p, x, y in zip(prompts, texts, natural.texts)]
        print(f"{name}: generated in {gen_s:.0f} s (+ {natural_s:.0f} s stopped at end-of-text)", file=sys.stderr)

    t = time.perf_counter()
    real = {"reviews test": {"texts": len(test), "fp": false_positives(tok.encode_batch(test), marks, lengths)}}
    if not args.no_news:
        ids, meta = news_tokens()
        real["news val+test"] = {**meta, "fp": false_positives(ids, marks, lengths)}
    clock["real_text_s"] = time.perf_counter() - t
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "samples.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    return {"trained": trained, "prompts": len(prompts), "new_tokens": args.new, "lengths": list(lengths),
            "threshold": THRESHOLD, "keys_for_false_positives": 1 + len(other), "options": options(2.0, args.new),
            "conditions": conditions, "real": real, "clock": clock}


# ----------------------------------------------------------------------------- the report

def pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else "-"


def load(avg: Any) -> str:
    return ", ".join(f"{x:.1f}" for x in avg)


def report(res: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> str:
    tr, lengths, conds = res["trained"], res["lengths"], res["conditions"]
    lines = [f"## Text watermark on a trained model, {info['date']}", "",
             f"Command: `{info['command']}`. Machine: {info['cpu']}, {info['cores']} cores, {args.threads} threads; "
             f"load before {load(info['load_before'])}, after {load(info['load_after'])}; torch {info['torch']}, tokenizers "
             f"{info['tokenizers']}; git {info['git']}{' (genforge/ differs from it)' if info['dirty'] else ''}. "
             f"Wall time {info['wall_s'] / 60:.1f} min.", "",
             f"Model: `{tr['run']}` (configs/gpt-reviews.yaml with block 256, {' '.join(args.train_set)}; "
             f"{args.minutes:g} min of training, "
             f"{tr['steps']} steps): held-out perplexity {tr['perplexity']:.1f} on {tr['val_tokens']:,} {tr['val_split']} "
             f"tokens, against {tr['unigram_perplexity']:.1f} for a unigram model. {res['prompts']} held-out prompts "
             f"({args.prompt_chars} characters of a test review), {res['new_tokens']} new tokens each, pure sampling "
             f"(temperature 1, no top-p or repetition penalty), gamma 0.25, the same seeds in every condition; "
             f"detected means p < {res['threshold']:g}.", "",
             ]
    for key, title in (("detection_text", "texts decoded and re-encoded, as a verifier holding the text sees them"),
                       ("detection_ids", "the ids as sampled")):
        lines += [f"### Detection against length: {title}", "",
                  "| delta | " + " | ".join(f"{L} tokens" for L in lengths) + " | whole text (median tokens) |",
                  "|---|" + "---|" * (len(lengths) + 1)]
        for name, c in conds.items():
            cells = []
            for L in (*lengths, "whole"):
                d = c[key][str(L)]
                cells.append(f"z {d['median_z']:.1f}, p {d['median_p']:.0e}, {pct(d['detected'], d['n'])}"
                             + (f" ({d['median_tokens']:.0f})" if L == "whole" else "") if d["n"] else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Median z, median p-value, share detected among the texts that reach the length. The unmarked row is "
              "the false-positive rate on the model's own text with the workspace key.", "",
              "### False positives at p < 1e-3 (texts x keys)", "",
              "| text | tokens | trials | false positives | rate (95% interval) | expected by chance | exact binomial test "
              "| z mean (sd) |", "|---|---|---|---|---|---|---|---|"]
    fps = {"unmarked generations": conds["unmarked"]["false_positives"]}
    fps.update({name: r["fp"] for name, r in res["real"].items()})
    for name, fp in fps.items():
        for L in (*map(str, lengths), "full"):
            r = fp[L]
            if not r["trials"]:
                continue
            lo, hi = r["bounds"]
            lines.append(f"| {name} ({r['texts']} texts) | {'whole text' if L == 'full' else L} | {r['trials']} | "
                         f"{r['positives']} | {100 * r['rate']:.2f}% ({100 * lo:.2f}-{100 * hi:.2f}%) | "
                         f"{r['expected_by_chance']:.1f} | {r['exact_binomial_positives']} | "
                         f"{r['z_mean']:.2f} ({r['z_std']:.2f}) |")
    nf = conds["unmarked"]["natural"]["false_positives"]
    lines += ["", f"{res['keys_for_false_positives']} keys (the workspace's and {res['keys_for_false_positives'] - 1} "
              "seeded others), each text tested with each, on its first `tokens` tokens (texts that reach them) or whole. "
              "Expected by chance: the positives `detect`'s normal approximation gives if every pair were green with "
              "probability 0.25 independently (its true level at that many pairs); exact binomial test: the same "
              "trials called with the binomial tail p-value instead.", "",
              "### Quality: the same 200 new tokens, scored by the model without the watermark", "",
              "| | perplexity | distinct-1 | distinct-2 | 4-gram repetition | green share | end-of-texts | "
              "re-encoded: tokens (median), identical | stopped at end-of-text: tokens (median, IQR), detected |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, c in conds.items():
        n = c["natural"]
        last = c["detection_ids"][str(lengths[-1])]
        q = n["tokens_quartiles"]
        det = (pct(n["detected"], n["n"]) if c["delta"] is not None
               else f"{nf['positives']}/{nf['trials']} false positives ({res['keys_for_false_positives']} keys)")
        lines.append(f"| {name} | {c['perplexity']:.1f} | {c['distinct_1']:.3f} | {c['distinct_2']:.3f} | "
                     f"{c['repetition_4']:.3f} | {last['green_share']:.2f} | {c['eot_per_text']:.1f} | "
                     f"{c['retokenised_tokens_median']:.0f}, {c['retokenised_equal_share']:.0%} | "
                     f"{n['tokens_median']:.0f} ({q[0]:.0f}-{q[1]:.0f}), {det} |")
    lines += ["", "Green share over the sampled ids' distinct pairs at the longest length (chance: 0.25). End-of-texts: "
              "per text (a review ends and the next begins). Identical: texts whose re-encoding gives back the sampled "
              "ids (special tokens left out). The last column: the same "
              "prompts and seeds through `genforge.api.generate`, ending at the model's end-of-text as a user gets them "
              f"(identical to the fixed-length text's first review in "
              f"{min(c['natural']['equal_to_fixed_prefix'] for c in conds.values()):.0%} of items or more).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=4.0, help="training minutes (train.minutes)")
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--prompt-chars", type=int, default=10)
    p.add_argument("--new", type=int, default=200, help="new tokens per text")
    p.add_argument("--batch", type=int, default=64, help="generation batch (api.generate's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-news", action="store_true", help="skip the English real-text false positives")
    p.add_argument("--train-set", nargs="*", default=["train.batch_size=16", "train.warmup_steps=20"],
                   help="more --set overrides of configs/gpt-reviews.yaml (default: the shipped 4,096 tokens per step "
                        "at block 256, and a warm-up that fits minutes, not 15)")
    p.add_argument("--home", help="a GENFORGE_HOME to use and keep (default: a temporary one, removed)")
    p.add_argument("--run", help="a trained GPT run in --home: skip ingest and training")
    p.add_argument("--quick", action="store_true", help="30 s of training, 10 prompts: every path, figures mean nothing")
    p.add_argument("--write", action="store_true", help="append to results/textmark-eval.md, rewrite its json")
    args = p.parse_args()
    if args.run and not args.home:
        p.error("--run needs --home (the workspace holding it)")
    if args.quick:
        args.minutes, args.prompts = 0.5, 10
    start = time.perf_counter()
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": " ".join(["python", *sys.argv]),
            "cpu": platform.processor() or "?", "cores": os.cpu_count(), "load_before": os.getloadavg(),
            "torch": torch.__version__, "tokenizers": version("tokenizers"), "genforge": version("genforge"),
            "git": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip(),
            "dirty": subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "genforge"]).returncode != 0}
    with open("/proc/cpuinfo") as f:
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), info["cpu"])
    with tempfile.TemporaryDirectory(prefix="genforge-textmark-") as tmp:
        os.environ["GENFORGE_HOME"] = str(Path(args.home).resolve()) if args.home else tmp
        os.environ["GENFORGE_TRACKING"] = "off"
        res = run(args)
    info["wall_s"], info["load_after"] = time.perf_counter() - start, os.getloadavg()
    text = report(res, info, args)
    print(text)
    if args.write and not args.quick:
        RESULTS.mkdir(exist_ok=True)
        md = RESULTS / "textmark-eval.md"
        old = md.read_text(encoding="utf-8") if md.exists() else "# Text watermark: detection and false positives\n\n"
        atomic_write_text(md, old + text + "\n")
        atomic_write_text(RESULTS / "textmark-eval.json", json.dumps({"info": info, **res}, indent=1, default=str) + "\n")
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        atomic_write_text(OUT / "last.json", json.dumps({"info": info, **res}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
