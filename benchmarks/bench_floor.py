"""How fast can a TVAE or CTGAN fit be on a small table? The least time eager PyTorch needs for the
fit's arithmetic, at the precision genforge's fit resolves to (bf16 autocast where the CPU runs bf16
natively, else fp32), beside genforge's and SDV's whole fits (issue 15's 2x target on penguins).

    .venv/bin/python benchmarks/bench_floor.py --table penguins --model tvae --repeats 5 [--write]

Three contenders, each in a fresh process, alternating within each repeat:
- genforge and SDV: `bench_tables.py`'s own children (the same split, epochs, batch and threads);
  only their fit seconds are used here.
- floor: the networks genforge builds for the table (the same layer sizes), on the encoded train
  rows already in one tensor, for genforge's number of steps, with one fused Adam update per network
  and step and no data pipeline, loss spans, logging, schedule, gradient norm or checkpoint:
  - TVAE: the encoder, the reparameterisation, the decoder, a loss that reads every output (sum of
    squares plus the KL), backward.
  - CTGAN: one critic step (the generator's fakes without gradient, tanh on every output, the critic
    on reals and fakes and on their interpolates, WGAN-GP's penalty by a double backward) and one
    generator step (the critic on fresh fakes, backward through both), with fixed conditional
    vectors: no training-by-sampling, no span softmax, no conditional loss.
  Every implementation of the reference algorithm in eager PyTorch does at least this much work per
  step, so its time bounds any such fit from below. (genforge's shipped CTGAN config does one forward of
  the generator fewer, `model.generator_batch: critic`, and can go below this CTGAN floor.)

If the floor alone takes more than half of SDV's fit, no eager implementation of the same networks
at that precision can fit 2x faster than SDV on that table; the report says so, and what is reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tables as bt  # noqa: E402  (the split, the batch, the steps and the two real contenders)

RESULTS_MD = bt.ROOT / "results" / "floor.md"


def child_floor(args: argparse.Namespace) -> None:
    """The floor loop in this process: genforge prepares the table and the networks (not timed)."""
    import torch
    from rich.console import Console

    from genforge import api
    from genforge.data.store import open_dataset
    from genforge.devices import autocast
    from genforge.runs import load_run
    torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    name = bt.ingest_train(folder, json.loads((folder / "meta.json").read_text(encoding="utf-8")), args.seed)
    config = bt.run_config("floor", args.model, name, 1, args.batch_size, args.seed, args.threads)
    run = load_run(api.train(config, console=Console(stderr=True, quiet=True)).id)
    model = run.model("cpu")
    x = model.family.encode(model.config, model.spec, model.fitted, open_dataset(name), "train")["x"][:args.batch_size]
    for m in model.modules.values():
        m.train().requires_grad_(True)
    torch.manual_seed(args.seed)
    step = (_tvae_step if args.model == "tvae" else _ctgan_step)(model.modules, x)
    t = time.perf_counter()
    for _ in range(args.steps):
        # the precision genforge's fit resolves to, entered per step as any correct loop must: autocast keeps
        # its bf16 copies of the weights until its region ends, so one region around every step would reuse
        # the first step's copies after the weights had moved on (and leave their casts out of the floor)
        with autocast(torch.device("cpu"), run.info["precision"]):
            step()
    fit_s = time.perf_counter() - t
    print(json.dumps({"fit_s": fit_s, "steps": args.steps, "rows": len(x), "width": x.shape[1], "precision": run.info["precision"],
                      "layers": [tuple(p.shape) for m in model.modules.values() for p in m.parameters() if p.dim() == 2]}))


def _adam(module) -> tuple[list, object]:
    import torch
    params = list(module.parameters())
    return params, torch.optim.AdamW(params, lr=1e-3, fused=True)


def _update(params: list, opt, loss) -> None:
    for p in params:
        p.grad = None
    loss.backward(inputs=params)
    opt.step()


def _tvae_step(modules: dict, x):
    import torch
    enc, dec = modules["encoder"], modules["decoder"]
    params, opt = _adam(torch.nn.ModuleList([enc, dec]))

    def step() -> None:
        mu, logvar = enc(x)
        out = dec(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
        _update(params, opt, out.square().mean() - 0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1).mean())
    return step


def _ctgan_step(modules: dict, x):
    import torch
    g, d = modules["generator"], modules["discriminator"]
    (g_params, g_opt), (d_params, d_opt) = _adam(g), _adam(d)
    n, groups = len(x), len(x) // d.pac
    c = torch.zeros(n, g.cond.dim)
    if g.cond.dim:
        c[torch.arange(n), torch.randint(g.cond.dim, (n,))] = 1.0
    real = torch.cat([x, c], 1)

    def step() -> None:
        with torch.no_grad():
            fake = torch.cat([torch.tanh(g(torch.randn(n, g.z_dim), c)), c], 1)
        alpha = torch.rand(groups, 1, 1).expand(groups, d.pac, real.shape[1]).reshape(real.shape)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        out, d_mixed = d(torch.cat([real, fake])), d(mixed)
        (grad,) = torch.autograd.grad(d_mixed.sum(), mixed, create_graph=True)
        gp = ((grad.reshape(groups, -1).norm(2, dim=1) - 1) ** 2).mean()
        _update(d_params, d_opt, out[groups:].mean() - out[:groups].mean() + 10 * gp)
        _update(g_params, g_opt, -d(torch.cat([torch.tanh(g(torch.randn(n, g.z_dim), c)), c], 1)).mean())
    return step


def run_floor(args: argparse.Namespace, folder: Path, batch: int, steps: int, seed: int) -> dict:
    home = bt.OUT / "work" / "floor"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {**os.environ, "GENFORGE_HOME": str(home), "GENFORGE_TRACKING": "off", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, __file__, "--child-floor", "--model", args.model, "--dir", str(folder), "--batch-size", str(batch),
           "--steps", str(steps), "--threads", str(args.threads), "--seed", str(seed)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=bt.REPO)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if p.returncode:
        return {"error": (p.stderr.strip() or p.stdout.strip())[-3000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default="penguins", choices=bt.TABLES)
    p.add_argument("--model", default="tvae", choices=("tvae", "ctgan"))
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch", type=int, default=500, help="the batch limit, as bench_tables.py's --batch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help=f"append the report to {RESULTS_MD.relative_to(bt.REPO)}")
    p.add_argument("--child-floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_floor:
        return child_floor(args)
    if not bt.SDV_PYTHON.exists():
        p.error(f"{bt.SDV_PYTHON.relative_to(bt.REPO)} is missing: run bash benchmarks/setup_tables.sh")

    info = bt.machine_info()
    meta = bt.prepare(args.table, args.seed, 0.2)
    folder = bt.OUT / "run" / args.table
    rows = meta["train_rows"]
    batch = bt.batch_for(args.model, rows, args.batch)
    steps = bt.steps_for(args.model, rows, batch, args.epochs)
    n = max(rows, 1000)
    ns = argparse.Namespace(epochs=args.epochs, threads=args.threads, gf_set=[], child_timeout=None, keep=False, draws=1)
    fits: dict[str, list[float]] = {"floor": [], "genforge": [], "sdv": []}
    precision = "fp32"  # until the floor or genforge says what genforge's fit resolved to
    for repeat in range(args.repeats):
        seed = args.seed + repeat
        for contender in fits:
            r = run_floor(args, folder, batch, steps, seed) if contender == "floor" else \
                bt.run_contender(ns, contender, args.model, folder, meta, batch, n, seed)
            if "error" in r:
                sys.exit(f"{contender} (seed {seed}) failed:\n{r['error']}")
            fits[contender].append(r["fit_s"])
            precision = r.get("precision", precision)
            print(f"  {contender} (seed {seed}): fit {r['fit_s']:.2f} s", flush=True)
    med = {k: float(np.median(v)) for k, v in fits.items()}
    span = lambda k: f"{min(fits[k]):.2f}-{max(fits[k]):.2f}"  # noqa: E731
    lines = [f"## {args.model.upper()}'s eager-PyTorch floor on {args.table}, {info['date']}", "",
             f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_floor.py', *sys.argv[1:]])}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {args.threads} threads per contender; flags: {info['flags']}; "
             f"genforge git {info['git']}, torch {info['genforge']['torch']}; SDV {info['sdv_venv'].get('sdv', '-')}.", "",
             f"{rows} train rows, batch {batch}, {args.epochs} epochs = {steps} steps; medians of {args.repeats} runs "
             f"(seeds {args.seed}-{args.seed + args.repeats - 1}), ranges beside them.", "",
             "| contender | fit s | range | SDV / contender |", "|---|---:|---:|---:|"]
    for k in fits:
        lines.append(f"| {k} | {med[k]:.2f} | {span(k)} | {med['sdv'] / med[k]:.2f}x |")
    half = med["sdv"] / 2
    lines += ["", f"2x SDV means a fit of at most {half:.2f} s. The floor alone takes {med['floor']:.2f} s "
                  f"({med['floor'] / half:.0%} of that); genforge spends {med['genforge'] - med['floor']:.2f} s beyond the "
                  f"floor (its table transformer, data, conditions, loss spans, logging, checkpoint). The most any eager {precision} "
                  f"implementation of these networks' reference step can reach here is {med['sdv'] / med['floor']:.2f}x.", ""]
    bt.publish("\n".join(lines), RESULTS_MD, "# TVAE's and CTGAN's floors: genforge, SDV and the bare networks\n\n", args.write)


if __name__ == "__main__":
    main()
