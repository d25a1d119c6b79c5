"""The one training loop for every model family.

The family owns its modules and `train_step`; this loop owns everything around them: device and
DDP (under torchrun: gloo on CPU, nccl on GPU; only rank 0 writes), seeding, batches, AdamW,
warm-up + cosine learning rate, gradient clipping, bf16 autocast, EMA, the budget, progress,
metrics.jsonl, validation, and checkpoints from which `--resume` continues exactly.

Exact resume rests on three things: the batch of step s depends only on (seed, s) (one seeded
permutation per epoch, so the data position is the step); every process's RNG states are saved
with the weights and optimizer state; and validation runs on a forked RNG, so it never shifts the
training stream. Not exact: a run whose `minutes` limit drives the LR schedule (it follows the
clock), and resuming with a different number of processes (each new process gets a fresh RNG
stream; a warning says so).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from genforge.checkpoint import (Checkpoint, capture_rng, latest_checkpoint, load_modules, load_optimizers,
                                 restore_rng, save_checkpoint)
from genforge.config import read_yaml
from genforge.data.store import open_dataset
from genforge.errors import ConfigError, DataError, ModelError
from genforge.models import DataSpec, ImageBatch, get_family
from genforge.runs import (RUN_FORMAT, RunConfig, TrainConfig, autocast, dump_config, list_runs, new_run_id,
                           parse_run_config, pick_device, place, resolve_run, write_info)
from genforge.workspace import atomic_write_text, runs_dir


# ----------------------------------------------------------------------------- processes

@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_processes(device: str) -> Processes:
    """One process, or one of WORLD_SIZE started by torchrun (nccl when each has a GPU, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(0, 1, pick_device(device))
    if device != "cpu" and torch.cuda.is_available():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl")
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo")
    return Processes(dist.get_rank(), world, dev)


def stream_seed(seed: int, *parts: int) -> int:
    """A well-mixed 63-bit seed for a sub-stream (a process, an epoch) of the run's seed."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# ----------------------------------------------------------------------------- data

class ImageData:
    """A split in memory (uint8, on the device), served in a fixed order: step s takes rows
    [i*B, (i+1)*B) of epoch e's seeded permutation (e, i = divmod(s, steps_per_epoch)), and each
    process its share of those B rows, so the global batch is the same for any number of processes."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, procs: Processes):
        if batch_size % procs.world:
            raise ConfigError(f"train.batch_size ({batch_size}) must be divisible by the number of processes ({procs.world})")
        self.steps_per_epoch = len(images) // batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size ({batch_size}) must not exceed the train split ({len(images)} images)")
        self.images = torch.from_numpy(images).to(procs.device)
        self.labels = torch.from_numpy(labels).to(procs.device)
        self.batch_size, self.seed = batch_size, seed
        self.local = batch_size // procs.world
        self.offset = procs.rank * self.local
        self._epoch, self._perm = -1, torch.empty(0)

    def position(self, step: int) -> dict[str, int]:
        epoch, index = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "batch": index, "batches_per_epoch": self.steps_per_epoch, "batch_size": self.batch_size}

    def batch(self, step: int) -> ImageBatch:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            perm = np.random.default_rng(stream_seed(self.seed, 1, epoch)).permutation(len(self.images))
            self._epoch, self._perm = epoch, torch.from_numpy(perm).to(self.images.device)
        idx = self._perm[i * self.batch_size + self.offset:][:self.local]
        return ImageBatch(self.images[idx], self.labels[idx])


# ----------------------------------------------------------------------------- optimisation

class Optimizers:
    """What a family's `train_step` uses to apply a loss: `opt.step(name, loss)` runs backward
    (outside autocast), clips the gradient norm and updates. The learning rate is the loop's."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], grad_clip: float):
        self.optimizers = optimizers
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        self.grad_norms: dict[str, torch.Tensor] = {}

    def step(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(loss.device.type, enabled=False):
            loss.backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        self.grad_norms[name] = torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True).detach()
        opt.step()

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr


def make_optimizers(family: ModuleType, modules: dict[str, nn.Module], tc: TrainConfig,
                    device: torch.device) -> dict[str, torch.optim.Optimizer]:
    """One AdamW per optimizer the family names; weight decay only on matrices and kernels."""
    out = {}
    for name, module_names in family.OPTIMIZERS.items():
        params = [p for m in module_names for p in modules[m].parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        out[name] = torch.optim.AdamW([g for g in groups if g["params"]], lr=tc.lr, betas=tc.betas,
                                      fused=device.type in ("cpu", "cuda"))
    return out


def learning_rate(tc: TrainConfig, step: int, done: float) -> float:
    """Linear warm-up over `warmup_steps`, then a cosine from `lr` to `lr * min_lr_ratio` as the
    budget is used up (`done` in [0, 1])."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    low = tc.lr * tc.min_lr_ratio
    return low + 0.5 * (tc.lr - low) * (1 + math.cos(math.pi * min(max(done, 0.0), 1.0)))


class EMA:
    """Exponential moving average of some modules' weights; the EMA copies are what sampling uses.
    The decay ramps up as (1 + step) / (10 + step) so early averages are not dominated by the init."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.modules = {k: copy.deepcopy(m).eval().requires_grad_(False) for k, m in modules.items()}
        self._pairs = [(list(self.modules[k].parameters()), list(m.parameters()),
                        list(self.modules[k].buffers()), list(m.buffers())) for k, m in modules.items()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p, ema_b, b in self._pairs:
            torch._foreach_lerp_(ema_p, p, 1 - decay)
            for x, y in zip(ema_b, b):
                x.copy_(y)


# ----------------------------------------------------------------------------- the run directory

def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]} (run: {a!r}, now: {b!r})"]


def _run_to_resume(config: RunConfig, ref: str | None) -> Path:
    if ref:
        path = resolve_run(ref)
    else:
        named = [p for p, info in list_runs() if info.get("name") == config.name]
        if not named:
            raise ModelError(f"no run named {config.name!r} to resume in {runs_dir()}; start one without --resume")
        path = named[-1]
    stored = parse_run_config(read_yaml(path / "config.yaml"), source=str(path / "config.yaml"))
    diffs = _diff(stored.model_dump(mode="json"), config.model_dump(mode="json"))
    if diffs:
        raise ConfigError(f"--resume needs the config run {path.name} was started with; these differ: " + "; ".join(diffs))
    return path


def _open_run(config: RunConfig, resume: bool, ref: str | None, procs: Processes,
              console: Console) -> tuple[Path, Checkpoint | None]:
    """Rank 0 names the run directory (or finds the one to resume, and its checkpoint); the others follow."""
    found: list[Any] = [None, None]
    if procs.main:
        if resume:
            path = _run_to_resume(config, ref)
            ckpt = latest_checkpoint(path / "checkpoints", lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False),
                                     repair=True)
            if ckpt is None:
                console.print(f"run {path.name} has no complete checkpoint; starting it from step 0")
        else:  # created once the data and the model are known to be good
            path, ckpt = runs_dir() / new_run_id(config.name), None
        found = [str(path), str(ckpt.path) if ckpt else None]
    if procs.world > 1:
        dist.broadcast_object_list(found, src=0)
    if not procs.main:  # rank 0 has verified it
        ckpt = Checkpoint(Path(found[1]), json.loads((Path(found[1]) / "state.json").read_text(encoding="utf-8"))) if found[1] else None
    return Path(found[0]), ckpt


def _keep_metrics_until(path: Path, step: int) -> None:
    """On resume, drop what a crashed session logged after its last checkpoint (and a torn line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(kept))


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the loop

def train(config: RunConfig, *, resume: bool = False, run: str | None = None, console: Console | None = None) -> Path:
    """Train `config` (or continue the run it belongs to) until its budget is used up; returns the run directory."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    procs = init_processes(config.train.device)
    try:
        return _train(config, procs, resume, run, console or Console(stderr=True))
    finally:
        if procs.world > 1:
            dist.destroy_process_group()


def _train(config: RunConfig, procs: Processes, resume: bool, ref: str | None, console: Console) -> Path:
    tc, device = config.train, procs.device
    family = get_family(config.model.family)

    # 1. a new run, or the newest good checkpoint of the run to resume
    run_dir, ckpt = _open_run(config, resume, ref, procs, console)

    # 2. data: the train split in memory, the val split for validation; a resumed run keeps its version
    dataset = open_dataset(ckpt.state["dataset"] if ckpt else config.data.dataset)
    images, labels = dataset.images(config.data.train_split)
    if len(images) == 0:
        raise DataError(f"dataset {dataset.ref} has no images in split {config.data.train_split!r}")
    spec = DataSpec("image", images.shape[1], images.shape[2], images.shape[3], tuple(dataset.classes))
    data = ImageData(images, labels, tc.batch_size, tc.seed, procs)
    val_images, val_labels = dataset.images(config.data.val_split)
    val_images, val_labels = val_images[:tc.val_items], val_labels[:tc.val_items]
    total_steps = tc.steps or (tc.epochs * data.steps_per_epoch if tc.epochs else None)

    # 3. modules (same init on every process), EMA, optimizers, and their state when resuming
    torch.manual_seed(tc.seed)
    modules = place(family.build(config.model, spec), device, tc.channels_last)
    ema = EMA({k: modules[k] for k in family.EMA}, tc.ema) if tc.ema > 0 else None
    opt = Optimizers(make_optimizers(family, modules, tc, device), tc.grad_clip)
    n_params = sum(p.numel() for m in modules.values() for p in m.parameters())
    step, elapsed_before = 0, 0.0
    if ckpt is not None:
        load_modules(ckpt, modules)
        if ema is not None:
            load_modules(ckpt, ema.modules, "ema.safetensors")
        load_optimizers(ckpt, opt.optimizers)
        step, elapsed_before = ckpt.step, float(ckpt.state["elapsed_s"])
        if len(ckpt.state["rng"]) == procs.world:
            restore_rng(ckpt.state["rng"][procs.rank])
        else:
            torch.manual_seed(stream_seed(tc.seed, 2, procs.rank, step))
            if procs.main:
                console.print(f"[yellow]warning:[/] checkpoint was written by {len(ckpt.state['rng'])} processes, "
                              f"now {procs.world}: the run continues, but not bitwise as it would have")
    else:
        torch.manual_seed(stream_seed(tc.seed, 2, procs.rank))  # each process its own noise
    start_step = step

    info: dict[str, Any] = {}
    metrics_path = run_dir / "metrics.jsonl"
    if procs.main:
        if not resume:
            run_dir.mkdir(parents=True)
            atomic_write_text(run_dir / "config.yaml", dump_config(config))
        old = json.loads((run_dir / "run.json").read_text(encoding="utf-8")) if resume else {}
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        info = {"format": RUN_FORMAT, "id": run_dir.name, "name": config.name, "family": config.model.family,
                "dataset": dataset.ref, "data_spec": {**asdict(spec), "classes": list(spec.classes)},
                "status": "running", "started_at": old.get("started_at", _now()), "finished_at": None,
                "step": step, "wall_s": elapsed_before, "device": device_name + (f" x{procs.world}" if procs.world > 1 else ""),
                "world_size": procs.world, "params": n_params, "checkpoint": ckpt.path.name if ckpt else None,
                "final_loss": old.get("final_loss")}
        write_info(run_dir, info)
        _keep_metrics_until(metrics_path, step)

    train_modules = {k: DistributedDataParallel(m, broadcast_buffers=False) if procs.world > 1 else m
                     for k, m in modules.items()}
    for m in modules.values():
        m.train()

    t0 = time.perf_counter()
    clock = torch.zeros((), dtype=torch.float64)

    def elapsed() -> float:
        """Seconds of training so far, across sessions; rank 0's clock, so every process agrees."""
        clock.fill_(elapsed_before + time.perf_counter() - t0)
        if procs.world > 1 and tc.minutes is not None:
            dist.broadcast(clock, src=0)
        return float(clock)

    def budget_used(step: int, secs: float) -> float:
        """How far along the budget is, in [0, 1]: the further of the step count and the clock."""
        by_steps = (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps) if total_steps else 0.0
        return max(by_steps, secs / (tc.minutes * 60) if tc.minutes else 0.0)

    def progress_done(step: int, secs: float) -> float:
        """The share of the budget used, for the progress bar and its ETA."""
        return max(step / total_steps if total_steps else 0.0, secs / (tc.minutes * 60) if tc.minutes else 0.0)

    def finished(step: int, secs: float) -> bool:
        return bool(total_steps and step >= total_steps) or bool(tc.minutes and secs >= tc.minutes * 60)

    sums: dict[str, torch.Tensor] = {}
    count, last_log_t, last = 0, time.perf_counter(), {}
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                        disable=not procs.main)
    task = progress.add_task(config.name, total=1.0, info="")

    def log(step: int, secs: float, lr: float) -> None:
        nonlocal sums, count, last_log_t, last
        keys = list(sums)
        vals = torch.stack([sums[k] for k in keys]) / count
        if procs.world > 1:
            dist.all_reduce(vals)
            vals /= procs.world
        now = time.perf_counter()
        rec = {"step": step, "split": "train", "time_s": round(secs, 3), **dict(zip(keys, vals.tolist())),
               "lr": lr, "items_per_s": count * tc.batch_size / max(now - last_log_t, 1e-9)}
        sums, count, last_log_t, last = {}, 0, now, rec
        if procs.main:
            _append_metrics(metrics_path, rec)
            progress.console.print(f"step {step:>7}  loss {rec['loss']:.4f}  lr {lr:.2e}  {rec['items_per_s']:.0f} img/s",
                                   highlight=False)

    def validate(step: int, secs: float) -> None:
        if not hasattr(family, "val_loss") or len(val_images) == 0:
            return
        for m in modules.values():
            m.eval()
        totals: dict[str, float] = {}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(stream_seed(tc.seed, 3))  # the same noise at every validation
            for i in range(0, len(val_images), tc.batch_size):
                batch = ImageBatch(torch.from_numpy(val_images[i:i + tc.batch_size]).to(device),
                                   torch.from_numpy(val_labels[i:i + tc.batch_size]).to(device))
                with autocast(device, tc.precision):
                    out = family.val_loss(modules, batch)
                for k, v in out.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * len(batch.images)
        for m in modules.values():
            m.train()
        rec = {"step": step, "split": "val", "time_s": round(secs, 3), **{k: v / len(val_images) for k, v in totals.items()}}
        _append_metrics(metrics_path, rec)
        progress.console.print(f"step {step:>7}  val loss {rec['loss']:.4f}", highlight=False)

    def checkpoint(step: int, secs: float) -> None:
        rngs: list[Any] = [None] * procs.world
        if procs.world > 1:
            dist.all_gather_object(rngs, capture_rng())
        else:
            rngs = [capture_rng()]
        if procs.main:
            path = save_checkpoint(run_dir / "checkpoints", step, modules=modules, ema=ema.modules if ema else {},
                                   optimizers=opt.optimizers, keep=tc.keep_checkpoints,
                                   state={"data_position": data.position(step), "elapsed_s": secs, "rng": rngs,
                                          "world_size": procs.world, "dataset": dataset.ref})
            info.update(step=step, wall_s=round(secs, 3), checkpoint=path.name)
            write_info(run_dir, info)

    try:
        with progress:
            secs = elapsed()
            progress.update(task, completed=progress_done(step, secs))
            while not finished(step, secs):
                lr = learning_rate(tc, step, budget_used(step, secs))
                opt.set_lr(lr)
                with autocast(device, tc.precision):
                    out = family.train_step(train_modules, data.batch(step), opt)
                step += 1
                if ema is not None:
                    ema.update(step)
                out.update({"grad_norm" if len(opt.grad_norms) == 1 else f"grad_norm_{k}": v for k, v in opt.grad_norms.items()})
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.double()
                count += 1
                secs = elapsed()
                done = finished(step, secs)
                save = step % tc.checkpoint_every == 0 or done
                if step % tc.log_every == 0 or save:  # a checkpoint never holds a half-filled log interval
                    log(step, secs, lr)
                if procs.main and tc.val_every and (step % tc.val_every == 0 or done):
                    validate(step, secs)
                if save:
                    checkpoint(step, secs)
                if procs.main:
                    progress.update(task, completed=progress_done(step, secs),
                                    info=f"step {step}  loss {last.get('loss', float('nan')):.4f}  "
                                         f"{last.get('items_per_s', 0):.0f} img/s")
    except BaseException as e:
        if procs.main:
            info.update(status="failed", error=f"{type(e).__name__}: {e}", finished_at=_now())
            write_info(run_dir, info)
        raise

    if procs.main:
        info.update(status="completed", finished_at=_now(), step=step, wall_s=round(secs, 3),
                    final_loss=last.get("loss", info["final_loss"]))
        write_info(run_dir, info)
        did = f"{step - start_step} steps" if step > start_step else "nothing left to do"
        console.print(f"run {run_dir.name}: {did}; step {step}, {secs:.0f}s of training, "
                      f"final loss {info['final_loss'] if info['final_loss'] is not None else float('nan'):.4f}", highlight=False)
        console.print(f"run directory: {run_dir}\nsample from it: genforge generate {run_dir.name} --n 64", highlight=False)
    return run_dir
