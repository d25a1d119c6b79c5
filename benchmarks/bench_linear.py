"""Where bf16 autocast pays for a linear layer on this CPU: forward and backward of one layer at the
shapes genforge's table networks use, in fp32, under bf16 autocast, and through `kernels.Linear`
under autocast (which keeps products under `kernels.MIN_BF16_MACS` in fp32 on CPUs with AMX).

    .venv/bin/python benchmarks/bench_linear.py [--rounds 5] [--write]

The three contenders alternate within each round (one thread); each time is the mean over a block of
calls, and the report gives the median and range over rounds. `kernels.MIN_BF16_MACS` was set from
this benchmark's crossover on a 2-core Xeon with AMX.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tables as bt  # noqa: E402  (machine info and the results file's writer)

from genforge import kernels  # noqa: E402

RESULTS_MD = bt.ROOT / "results" / "linear.md"
# (rows, in, out): CTGAN's critic (batch / pac rows) and generator, TVAE's layers, at penguins', breast
# cancer's and txhousing's widths and batches
SHAPES = [(27, 470, 256), (27, 256, 256), (27, 256, 1), (54, 470, 256), (54, 256, 256), (100, 256, 256),
          (150, 256, 256), (270, 137, 256), (270, 393, 256), (270, 649, 38), (270, 256, 1), (275, 38, 128),
          (275, 128, 128), (275, 128, 38), (455, 153, 128), (500, 128, 128), (500, 134, 128), (500, 393, 256),
          (50, 1340, 256), (1000, 64, 64), (64, 64, 64)]


def _step(layer: torch.nn.Module, x: torch.Tensor, bf16: bool, plain: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = F.linear(x, layer.weight, layer.bias) if plain else layer(x)
    y.float().sum().backward()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=300, help="calls per timed block")
    p.add_argument("--write", action="store_true", help=f"append the report to {RESULTS_MD.relative_to(bt.REPO)}")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = bt.machine_info()
    contenders = {"fp32": (False, True), "bf16 autocast": (True, True), "genforge Linear, autocast": (True, False)}
    lines = [f"## One linear layer, forward and backward: fp32 against bf16 autocast, {info['date']}", "",
             f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_linear.py', *sys.argv[1:]])}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, 1 thread; flags: {info['flags']}; genforge git {info['git']}, "
             f"torch {info['genforge']['torch']}. `kernels.SMALL_IN_FP32` here: {kernels.SMALL_IN_FP32}, "
             f"`MIN_BF16_MACS` {kernels.MIN_BF16_MACS:,}.", "",
             f"Microseconds per call, medians of {args.rounds} rounds of {args.calls} calls (range), contenders alternating.", "",
             "| rows x in x out | multiply-adds | " + " | ".join(contenders) + " | bf16 / fp32 | faster |",
             "|---|---:|" + "---:|" * len(contenders) + "---:|---|"]
    for rows, i, o in SHAPES:
        g = torch.Generator().manual_seed(rows * 7 + i + o)
        layer = kernels.Linear(i, o)
        x = torch.randn(rows, i, generator=g).requires_grad_()
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for k, (bf16, plain) in contenders.items():  # warm-up: kernel selection and oneDNN's JIT
            for _ in range(20):
                _step(layer, x, bf16, plain)
        for r in range(args.rounds):
            for k in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
                bf16, plain = contenders[k]
                t = time.perf_counter()
                for _ in range(args.calls):
                    _step(layer, x, bf16, plain)
                times[k].append((time.perf_counter() - t) / args.calls * 1e6)
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = " | ".join(f"{med[k]:.0f} ({min(v):.0f}-{max(v):.0f})" for k, v in times.items())
        ratio = med["bf16 autocast"] / med["fp32"]
        lines.append(f"| {rows} x {i} x {o} | {rows * i * o / 1e6:.2f} M | {cells} | {ratio:.2f} | "
                     f"{'bf16' if ratio < 1 else 'fp32'} |")
        print(lines[-1], flush=True)
    bt.publish("\n".join(lines) + "\n", RESULTS_MD, "# Linear layers: where bf16 autocast pays on the CPU\n\n", args.write)


if __name__ == "__main__":
    main()
