"""DPM-Solver++(2M) against DDIM on a trained run: evaluator FD against steps, and the time for 1,000 images.

    GENFORGE_HOME=... .venv/bin/python benchmarks/bench_sampler.py --run RUN --write   # -> results/sampler.md
    GENFORGE_HOME=... .venv/bin/python benchmarks/bench_sampler.py --run RUN --bf16    # adds bf16 vs fp32
    GENFORGE_HOME=... .venv/bin/python benchmarks/bench_sampler.py --run RUN --n 200 --steps 5,10 --time-n 64
                                                                                    # a smoke run (figures mean little)

1. Quality: for each sampler (`ddim`, `dpmpp_2m`) and each number of steps (network evaluations;
   guidance makes each a pass of 2 x batch), n images from one request (`SampleRequest.make(n, seed)`,
   labels cycling the classes), through `load_run(RUN).sample` as `genforge generate` samples, scored
   by `ImageReference.score` (genforge's evaluator network: FD, KID, precision/recall, classifier
   score, class coverage, conditional accuracy) against the train split, beside a row of n real
   held-out images (val, then test when val has fewer than n) scored the same way.
2. The target: DDIM at `--reference-steps` (100). For each sampler, the fewest steps whose FD is within
   `--tolerance` (10%) of the target's FD.
3. Time: n images (`--time-n`, 1,000) with the new sampler at its fewest steps (and DDIM at its own),
   against diffusers' DDIM-50 on a `UNet2DModel` of the run's layout at an equal parameter count (built
   and run by bench_diffusion's `diffusers_unet` and `diffusers_contender`: DDIMScheduler, clipped,
   guidance done as its pipelines do, fp32 NCHW as its users run it), same batch size, repetitions
   interleaved A/B/C, B/C/A; the median. The ratio is diffusers' time over genforge's.
4. `--bf16`: the new sampler's setting again under bf16 autocast, same seeds: the pixel differences
   from the fp32 images (mean, max, share of pixels off by more than 8 levels of 255) and its FD.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from genforge.data.store import Dataset, open_dataset
from genforge.evaluation.pipeline import ImageReference
from genforge.models import DataSpec, SampleRequest
from genforge.models import diffusion as gd
from genforge.runs import Run, load_run
from genforge.workspace import atomic_write_json, atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_diffusion import Setting, diffusers_contender, diffusers_unet, machine, n_params  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "sampler.md"
NEW = "dpmpp_2m"
FIGURES = ("fd", "kid", "precision", "recall", "classifier_score", "class_coverage", "conditional_accuracy")


def figure(row: dict[str, Any], name: str) -> float | None:
    """An evaluator figure by its short name: `evaluator_fd` now, `fd` before the rename."""
    for key in (f"evaluator_{name}", name):
        if row.get(key) is not None:
            return float(row[key])
    return None


def heldout(dataset: Dataset, n: int, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """n real held-out images, a seeded subset: val first, then test to make up n (fewer if both are short)."""
    names, images, labels = [], [], []
    for split in ("val", "test"):
        x, y = dataset.images(split)
        if len(x) and sum(map(len, images)) < n:
            names.append(split)
            images.append(x)
            labels.append(y)
    if not images:
        return "", np.zeros((0,)), np.zeros((0,))
    x, y = np.concatenate(images), np.concatenate(labels)
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return "+".join(names), x[keep], y[keep]


def request(n: int, seed: int, k: int, options: dict[str, Any]) -> SampleRequest:
    labels = tuple(i % k for i in range(n)) if k else None
    return SampleRequest.make(n, seed, labels=labels, options=options)


def sample(run: Run, n: int, seed: int, options: dict[str, Any], batch: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    images = run.sample(request(n, seed, run.data_spec.num_classes, options), batch_size=batch).images
    return images, time.perf_counter() - t0


def fewest_steps(rows: list[dict], sampler: str, target: float, tolerance: float) -> int | None:
    ok = [r["steps"] for r in rows if r["sampler"] == sampler and r["fd"] is not None and r["fd"] <= (1 + tolerance) * target]
    return min(ok) if ok else None


# ----------------------------------------------------------------------------- timing

def interleaved_seconds(work: dict[str, Callable[[], None]], reps: int) -> dict[str, list[float]]:
    """Every repetition runs each contender once, in a rotated order (A B C, B C A, ...)."""
    names = list(work)
    secs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            t0 = time.perf_counter()
            work[name]()
            secs[name].append(time.perf_counter() - t0)
            print(f"  time rep {r + 1}/{reps}  {name:<32} {secs[name][-1]:8.2f} s  load {os.getloadavg()[0]:.1f}", flush=True)
    return secs


def diffusers_ddim(cfg: gd.Config, spec: DataSpec, n: int, batch: int, guidance: float, seed: int,
                   device: torch.device) -> tuple[Callable[[], None], Callable[[], None]]:
    """diffusers' DDIM-50 for n images in batches of `batch` (bench_diffusion's contender; its random weights
    are left as they are: speed does not depend on them), and a short warm-up."""
    args = argparse.Namespace(guidance=guidance, seed=seed)
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    g = torch.Generator().manual_seed(seed)
    contenders = {b: diffusers_contender(cfg, spec, Setting("fp32", False), {}, torch.randn(
        (b, spec.channels, spec.height, spec.width), generator=g), args, device) for b in set(sizes)}
    return (lambda: [contenders[b].sample(50) for b in sizes]), (lambda: [c.sample(2) for c in contenders.values()])


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# ----------------------------------------------------------------------------- report

def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def quality_table(res: dict) -> str:
    target = res["target_fd"]
    out = ["| sampler | steps | evaluator FD | FD / target | KID | precision | recall | classifier score | "
           "class coverage | conditional accuracy | sampling s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    real = res["real"]
    if real:
        out.append(f"| real held-out ({real['split']}, n={real['n']}) | - | {fmt(real['fd'])} | "
                   f"{fmt(real['fd'] / target if real['fd'] is not None and target else None, 2)} | {fmt(real['kid'], 4)} | "
                   f"{fmt(real['precision'])} | {fmt(real['recall'])} | {fmt(real['classifier_score'], 2)} | "
                   f"{fmt(real['class_coverage'])} | {fmt(real['conditional_accuracy'])} | - |")
    for r in res["rows"]:
        out.append(f"| {r['sampler']} | {r['steps']} | {fmt(r['fd'])} | {fmt(r['fd'] / target if target else None, 2)} | "
                   f"{fmt(r['kid'], 4)} | {fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['classifier_score'], 2)} | "
                   f"{fmt(r['class_coverage'])} | {fmt(r['conditional_accuracy'])} | {r['seconds']:.1f} |")
    return "\n".join(out)


def timing_table(res: dict) -> str:
    t = res["timing"]
    base = statistics.median(t["seconds"]["diffusers ddim 50"])
    out = [f"| contender ({t['n']} images, batch {t['batch']}) | seconds (median) | min - max | images/s | "
           "x diffusers DDIM-50 |", "|---|---:|---:|---:|---:|"]
    for name, secs in t["seconds"].items():
        med = statistics.median(secs)
        out.append(f"| {name} | {med:.1f} | {min(secs):.1f} - {max(secs):.1f} | {t['n'] / med:.2f} | {base / med:.2f} |")
    return "\n".join(out)


def bf16_table(res: dict) -> str:
    b = res["bf16"]
    return "\n".join([
        "| setting | evaluator FD fp32 | evaluator FD bf16 | mean abs diff (levels of 255) | max abs diff | "
        "pixels off by > 8 levels | images with such a pixel |", "|---|---:|---:|---:|---:|---:|---:|",
        f"| {b['sampler']}-{b['steps']}, n={b['n']} | {fmt(b['fd_fp32'])} | {fmt(b['fd_bf16'])} | {b['mean_abs']:.3f} | "
        f"{b['max_abs']:.0f} | {100 * b['share_over_8']:.3f}% | {100 * b['images_over_8']:.1f}% |"])


def summary(res: dict) -> str:
    a, best = res["args"], res["fewest_steps"]
    lines = [f"- Target: DDIM-{res['reference_steps']} evaluator FD {fmt(res['target_fd'])}; within {a['tolerance']:.0%}: "
             f"FD <= {fmt((1 + a['tolerance']) * res['target_fd'])}."]
    for s, steps in best.items():
        lines.append(f"- {s}: fewest steps within {a['tolerance']:.0%}: {steps if steps else 'none of ' + a['steps']}.")
    if res.get("timing"):
        t = res["timing"]
        lines.append(f"- Time for {t['n']} images: {t['headline']} in {t['genforge_s']:.1f} s, diffusers DDIM-50 in "
                     f"{t['diffusers_s']:.1f} s: **{t['ratio']:.2f}x** (target: 8x).")
    return "\n".join(lines)


def write_results(res: dict, command: str) -> None:
    m, a = res["machine"], res["args"]
    bf16 = (f"## bf16 against fp32\n\nThe same request under bf16 autocast (the run's precision set to bf16), against the "
            f"fp32 images of the quality table.\n\n{bf16_table(res)}\n" if res.get("bf16") else "")
    text = f"""# Sampler benchmark: DPM-Solver++(2M) against DDIM (and diffusers' DDIM-50)

Made by `{command}` on {res['date']} (it rewrites this file; see `benchmarks/README.md`).

## Machine, versions, run

- CPU: {m['cpu']}, {m['cores']} cores (torch's CPU capability: {m['torch_cpu_capability']}); {m.get('gpu', 'no GPU')}
- Python {m['python']}, torch {m['versions']['torch']}, diffusers {m['versions']['diffusers']}, genforge {m['versions']['genforge']} (commit {m['git_commit']})
- device {a['device']}, `torch.set_num_threads({a['threads']})`; load average before / after: {m['load_avg_before'][0]:.2f} / {res['load_avg_after'][0]:.2f}
- run `{res['run']}` (checkpoint `{res['checkpoint']}`, dataset `{res['dataset']}`), precision {res['precision']};
  model {json.dumps(res['model'])}; guidance {res['guidance']}, clip {res['clip']}
- UNet parameters: genforge {res['params']['genforge']:,}, diffusers {res['params']['diffusers']:,}

## Summary

{summary(res)}

## Quality against steps

n = {a['n']} images per row, seed {a['seed']}, labels cycling the classes; evaluator figures of genforge's own
evaluator network (not Inception FID) against the train split. "steps" = network evaluations (each a pass of
2 x batch under guidance). FD / target: against DDIM-{res['reference_steps']}.

{quality_table(res)}

## Time for {a['time_n']} images

Median of {a['reps']} interleaved repetitions (after a warm-up); batch {a['batch']} for every contender.

{timing_table(res) if res.get('timing') else 'not measured (--no-time)'}

{bf16}
## Raw results

```json
{json.dumps(res, indent=1)}
```
"""
    atomic_write_text(RESULTS, text)
    print(f"wrote {RESULTS}")


# ----------------------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a genforge run id, prefix, 'latest' or path (in $GENFORGE_HOME)")
    p.add_argument("--n", type=int, default=1000, help="images per quality row")
    p.add_argument("--steps", default="5,10,15,20,50,100", help="comma-separated numbers of steps")
    p.add_argument("--samplers", default=f"ddim,{NEW}")
    p.add_argument("--new-steps", help=f"steps for {NEW} alone (default: --steps)")
    p.add_argument("--rows-json", help="keep each quality row here as it is made, and reuse the rows already in it "
                                       "(same run, n, seed, guidance): an interrupted benchmark goes on where it stopped")
    p.add_argument("--reference-steps", type=int, default=100,
                   help="DDIM at this many steps is the target (default: 100; the most steps listed if absent)")
    p.add_argument("--tolerance", type=float, default=0.10, help="within this share of the target's FD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="classifier-free guidance (default: the run's)")
    p.add_argument("--batch", type=int, default=100, help="sampling batch, every contender")
    p.add_argument("--time-n", type=int, default=1000, help="images per timed repetition")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions")
    p.add_argument("--no-time", action="store_true", help="quality only")
    p.add_argument("--bf16", action="store_true", help="also the new sampler's setting under bf16 autocast")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(ROOT.parent)}")
    args = p.parse_args()
    steps_list = sorted({int(s) for s in args.steps.split(",")})
    steps_of = {s: steps_list for s in args.samplers.split(",")}
    if args.new_steps:
        steps_of[NEW] = sorted({int(s) for s in args.new_steps.split(",")})
    samplers = args.samplers.split(",")
    if "ddim" not in samplers:
        sys.exit(f"--samplers must include ddim: DDIM-{args.reference_steps} is the target, got {args.samplers}")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: this torch build sees no CUDA GPU")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_sampler.py " + " ".join(sys.argv[1:])
    info = machine(device)
    print(json.dumps(info))

    run = load_run(args.run)
    model = run.model(args.device)
    if run.family != "diffusion":
        sys.exit(f"run {run.id} is a {run.family} run; this benchmark compares diffusion samplers")
    spec, cfg, k = run.data_spec, model.config, run.data_spec.num_classes
    defaults = model.sample_defaults
    guidance = defaults.guidance if args.guidance is None else args.guidance
    base_options = {"guidance": guidance, "eta": 0.0}
    ref_steps = args.reference_steps if args.reference_steps in steps_list else max(steps_list)
    if ref_steps != args.reference_steps:
        print(f"note: {args.reference_steps} steps not in --steps; the target is DDIM-{ref_steps}")

    g_params, d_params = n_params(model.modules["model"].unet), n_params(diffusers_unet(cfg, spec))
    print(f"parameters: genforge {g_params:,}  diffusers {d_params:,}  (ratio {g_params / d_params:.3f})")
    if abs(g_params / d_params - 1) > 0.10:
        sys.exit("the two networks differ by more than 10% in parameters; the timing would not be fair")

    # 1. quality against steps, beside the real held-out row
    dataset = open_dataset(run.dataset_ref)
    t0 = time.perf_counter()
    reference = ImageReference.for_dataset(dataset)
    print(f"evaluator ready in {time.perf_counter() - t0:.0f} s", flush=True)
    requested = np.arange(args.n) % k if k else None
    split, real, real_labels = heldout(dataset, args.n, args.seed)
    real_row = None
    if len(real):
        scored = reference.score(real, real_labels if k else None, args.seed)
        real_row = {"split": split, "n": len(real), **{f: figure(scored, f) for f in FIGURES}, "raw": scored}
        print(f"real held-out ({split}, n={len(real)}): FD {fmt(real_row['fd'])}", flush=True)
    rows, fp32_images = [], {}
    key = {"run": run.id, "n": args.n, "seed": args.seed, "guidance": guidance}
    kept = [r for r in (json.loads(Path(args.rows_json).read_text()) if args.rows_json and Path(args.rows_json).is_file()
                        else []) if r.get("key") == key]
    for sampler in samplers:
        for steps in steps_of[sampler]:
            old = [r for r in kept if (r["sampler"], r["steps"]) == (sampler, steps)]
            if old:
                rows.append(old[-1])
                print(f"{sampler:>9}-{steps:<4} FD {fmt(rows[-1]['fd'])}  (kept in {args.rows_json})", flush=True)
                continue
            options = {**base_options, "sampler": sampler, "steps": steps}
            images, secs = sample(run, args.n, args.seed, options, args.batch)
            fp32_images[(sampler, steps)] = images
            scored = reference.score(images, requested, args.seed)
            rows.append({"sampler": sampler, "steps": steps, "seconds": secs, **{f: figure(scored, f) for f in FIGURES},
                         "raw": jsonable(scored), "key": key})
            print(f"{sampler:>9}-{steps:<4} FD {fmt(rows[-1]['fd'])}  {secs:7.1f} s  load {os.getloadavg()[0]:.1f}", flush=True)
            if args.rows_json:
                kept.append(rows[-1])
                atomic_write_json(Path(args.rows_json), kept)

    # 2. the fewest steps within the tolerance of DDIM at the reference steps
    target = next(r["fd"] for r in rows if r["sampler"] == "ddim" and r["steps"] == ref_steps)
    if target is None:
        sys.exit(f"no evaluator FD for this run: {reference.unavailable}")
    best = {s: fewest_steps(rows, s, target, args.tolerance) for s in samplers}
    res: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": info, "args": vars(args),
        "run": run.id, "checkpoint": run.checkpoint().path.name, "dataset": run.dataset_ref, "precision": model.precision,
        "model": cfg.model_dump(), "guidance": guidance, "clip": defaults.clip,
        "params": {"genforge": g_params, "diffusers": d_params}, "reference_steps": ref_steps, "target_fd": target,
        "real": real_row, "rows": rows, "fewest_steps": best}
    print(summary({**res, "timing": None}))

    # 3. time for time_n images at the fewest steps, against diffusers' DDIM-50
    new_steps = best.get(NEW) or max(steps_of[NEW])  # none within the tolerance: its most steps, flagged below
    if not args.no_time:
        work = {f"genforge {NEW} {new_steps}": lambda: sample(run, args.time_n, args.seed, {
            **base_options, "sampler": NEW, "steps": new_steps}, args.batch)}
        if best.get("ddim") and "ddim" in samplers:
            work[f"genforge ddim {best['ddim']}"] = lambda: sample(run, args.time_n, args.seed, {
                **base_options, "sampler": "ddim", "steps": best["ddim"]}, args.batch)
        work["diffusers ddim 50"], warm_up = diffusers_ddim(cfg, spec, args.time_n, args.batch, guidance, args.seed, device)
        warm_up()  # genforge's model is warm from the quality rows
        print(f"timing {args.time_n} images, batch {args.batch}, {args.reps} repetitions", flush=True)
        secs = interleaved_seconds(work, args.reps)
        g_s, d_s = statistics.median(secs[f"genforge {NEW} {new_steps}"]), statistics.median(secs["diffusers ddim 50"])
        res["timing"] = {"n": args.time_n, "batch": args.batch, "seconds": secs, "genforge_s": g_s, "diffusers_s": d_s,
                         "ratio": d_s / g_s, "headline": f"genforge {NEW}-{new_steps}"
                         + ("" if best.get(NEW) else f" (no setting within {args.tolerance:.0%}: its most steps)")}

    # 4. bf16 against fp32 for the new sampler's setting
    if args.bf16:
        bf16_steps = new_steps if new_steps in steps_of[NEW] else max(steps_of[NEW])
        if (NEW, bf16_steps) not in fp32_images:  # a kept row: its images again, for the pixel differences
            fp32_images[(NEW, bf16_steps)] = sample(run, args.n, args.seed, {**base_options, "sampler": NEW,
                                                                             "steps": bf16_steps}, args.batch)[0]
        model.precision = "bf16"  # Model.sample autocasts to the run's precision
        try:
            images, secs = sample(run, args.n, args.seed, {**base_options, "sampler": NEW, "steps": bf16_steps}, args.batch)
        finally:
            model.precision = res["precision"]
        diff = np.abs(images.astype(np.int16) - fp32_images[(NEW, bf16_steps)].astype(np.int16))
        fd_fp32 = next(r["fd"] for r in rows if r["sampler"] == NEW and r["steps"] == bf16_steps)
        res["bf16"] = {"sampler": NEW, "steps": bf16_steps, "n": args.n, "seconds": secs,
                       "fd_fp32": fd_fp32, "fd_bf16": figure(reference.score(images, requested, args.seed), "fd"),
                       "mean_abs": float(diff.mean()), "max_abs": float(diff.max()),
                       "share_over_8": float((diff > 8).mean()),
                       "images_over_8": float((diff > 8).reshape(len(diff), -1).any(1).mean())}

    res["load_avg_after"] = os.getloadavg()
    res = jsonable(res)
    print()
    print(quality_table(res))
    print()
    print(summary(res))
    if res.get("timing"):
        print()
        print(timing_table(res))
    if res.get("bf16"):
        print()
        print(bf16_table(res))
    if args.json:
        atomic_write_json(Path(args.json), res)
    if args.write:
        write_results(res, command)


if __name__ == "__main__":
    main()
