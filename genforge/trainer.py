"""The one training loop for every model family.

The family owns its modules and `train_step`; this loop owns everything around them: processes
and DDP (or the optimizer-step gradient sync a double-backward family needs), seeding, batches,
optimizers and the LR schedule, clipping, precision, EMA, the budget, progress, metrics.jsonl,
validation, guards, and checkpoints from which `--resume` continues exactly. It reads top to bottom:
`train` -> `_start` (run directory, data, fitted state, modules, state to resume) -> `_Loop.run`
(budget, logging, validation, checkpointing).

Exact resume rests on three things: the batch of step s depends only on (seed, s) (genforge.batches);
every process's RNG states are saved with the weights and optimizer state; and validation runs on a
forked RNG, so it never shifts the training stream. Not exact: a run whose `minutes` limit drives the
LR schedule (it follows the clock), and resuming with a different number of processes (each new
process gets a fresh RNG stream; a warning says so).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from genforge.batches import RowData, batch_rows, stream_seed
from genforge.checkpoint import (Checkpoint, capture_rng, latest_checkpoint, load_fitted, load_modules,
                                 load_optimizers, open_checkpoint, restore_rng, save_checkpoint, save_fitted)
from genforge.config import dump_yaml, read_yaml
from genforge.data.store import Dataset, open_dataset
from genforge.devices import autocast, flush_denormals, place, resolve_precision
from genforge.distributed import Processes, close_processes, init_processes
from genforge.errors import ConfigError, ModelError
from genforge.models import Batch, DataSpec, Family, Fitted, get_family
from genforge.optim import EMA, Optimizers, lr_factor, make_optimizers
from genforge.runconfig import RunConfig, check_resume_changes, config_diff, parse_run_config
from genforge.runs import RUN_FORMAT, list_runs, new_run_id, read_info, resolve_run, write_info
from genforge.tracking import tracked
from genforge.workspace import atomic_write_text, runs_dir

UNITS = {"image": "img/s", "text": "tok/s", "table": "rows/s"}


def train(config: RunConfig, *, resume: bool = False, run: str | None = None, console: Console | None = None) -> Path:
    """Train `config` (or continue the run it belongs to) until its budget is used up; returns the run directory."""
    flush_denormals(config.train.flush_denormals)  # before the thread pool grows, so its new threads inherit it
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    procs = init_processes(config.train.device)
    try:
        start = _start(config, procs, resume, run, console or Console(stderr=True))
        with tracked(start.run_dir, procs.main, lambda msg: _warn(start.console, msg)):
            run_dir = _Loop(start).run()
        if procs.world > 1:  # every process done (rank 0's last writes too) before any tears its group down
            dist.barrier()
        return run_dir
    finally:
        close_processes(procs)


# ----------------------------------------------------------------------------- starting or resuming

@dataclass
class _Start:
    """Everything the loop needs, built the same way for a new, resumed or fine-tuning run."""

    config: RunConfig
    procs: Processes
    console: Console
    family: Family
    run_dir: Path
    resumed: bool
    dataset: Dataset
    spec: DataSpec
    fitted: Fitted | None
    data: RowData
    val: Batch
    modules: dict[str, nn.Module]
    ema: EMA | None
    opt: Optimizers
    precision: str
    step: int
    elapsed_before: float
    info: dict[str, Any]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _warn(console: Console, message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}", highlight=False)


def _find_run(config: RunConfig, ref: str | None, console: Console) -> tuple[Path, list[str]]:
    """The run to resume and the config changes this resume makes (only ones that keep the model)."""
    if ref:
        path = resolve_run(ref)
    else:
        named = [p for p, info in list_runs() if info.get("name") == config.name]
        if not named:
            raise ModelError(f"no run named {config.name!r} to resume in {runs_dir()}; start one without --resume")
        path = named[-1]
    stored = parse_run_config(read_yaml(path / "config.yaml"), source=str(path / "config.yaml"))
    changes = check_resume_changes(stored, config)
    if changes:
        console.print(f"resuming {path.name} with changes: " + "; ".join(changes), highlight=False)
    return path, changes


def _source_checkpoint(ref: str) -> Checkpoint:
    """`train.init_from`: a checkpoint folder, or a run (its newest good checkpoint)."""
    p = Path(ref)
    if (p / "model.json").is_file():
        return open_checkpoint(p)
    ckpt = latest_checkpoint(resolve_run(ref) / "checkpoints", lambda m: None)
    if ckpt is None:
        raise ModelError(f"train.init_from: run {ref!r} has no complete checkpoint")
    return ckpt


def _init_source(config: RunConfig, family: Family, ckpt: Checkpoint) -> tuple[DataSpec, Fitted | None]:
    """A fine-tuning run keeps its source's data spec and fitted state (its tokenizer): never refitted."""
    src = ckpt.model_info()
    if src["family"] != config.model.family:
        raise ConfigError(f"train.init_from {ckpt.path} is a {src['family']} model; this run is {config.model.family}")
    tunable = family.TUNABLE
    strip = lambda d: {k: v for k, v in d.items() if k not in tunable}  # noqa: E731
    diffs = config_diff(strip(src["model"]), strip(config.model.model_dump(mode="json")))
    if diffs:
        raise ConfigError(f"train.init_from {ckpt.path}: the model section must equal the source's but for "
                          f"{', '.join(tunable) or 'nothing'}; differs: " + "; ".join(diffs))
    return DataSpec.from_json(src["data_spec"]), load_fitted(ckpt.path, src["fitted"])


def _share(procs: Processes, value: Any) -> Any:
    """Rank 0's value on every process (json-able values)."""
    if procs.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _start(config: RunConfig, procs: Processes, resume: bool, ref: str | None, console: Console) -> _Start:
    tc = config.train
    family = get_family(config.model.family)
    say = console.print if procs.main else (lambda *a, **k: None)

    # 1. the run: a new one, or the one to resume and its newest good checkpoint (rank 0 decides)
    found: dict[str, Any] = {}
    if procs.main:
        if resume:
            path, changes = _find_run(config, ref, console)
            ckpt = latest_checkpoint(path / "checkpoints", lambda m: _warn(console, m), repair=True)
            if ckpt is None:
                say(f"run {path.name} has no complete checkpoint; starting it from step 0")
            found = {"path": str(path), "ckpt": str(ckpt.path) if ckpt else None, "changes": changes}
        else:
            found = {"path": str(runs_dir() / new_run_id(config.name)), "ckpt": None, "changes": []}
    found = _share(procs, found)
    run_dir = Path(found["path"])
    ckpt = open_checkpoint(Path(found["ckpt"])) if found["ckpt"] else None
    old = read_info(run_dir) if resume else None

    # 2. data spec and fitted state: fitted once on a new run (rank 0), else reloaded unchanged
    source = _source_checkpoint(tc.init_from) if tc.init_from and not resume else None
    dataset = open_dataset(old["dataset"] if old else config.data.dataset)
    if procs.main and not resume:
        spec, fitted = _init_source(config, family, source) if source else family.fit(config.model, dataset, tc.seed)
        run_dir.mkdir(parents=True)
        hashes = save_fitted(run_dir / "fitted", fitted)
        shared = {"spec": spec.to_json(), "fitted": hashes}
    else:
        shared = {"spec": old["data_spec"], "fitted": old.get("fitted", {})} if procs.main else {}
    shared = _share(procs, shared)
    try:
        return _prepare(config, procs, console, family, run_dir, resume, ckpt, source, dataset, shared, old,
                        found["changes"])
    except BaseException:
        if procs.main and not resume and read_info(run_dir) is None:  # nothing of a new run is worth keeping
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _prepare(config: RunConfig, procs: Processes, console: Console, family: Family, run_dir: Path, resume: bool,
             ckpt: Checkpoint | None, source: Checkpoint | None, dataset: Dataset, shared: dict[str, Any],
             old: dict[str, Any] | None, changes: list[str]) -> _Start:
    tc, device = config.train, procs.device
    say = console.print if procs.main else (lambda *a, **k: None)
    spec = DataSpec.from_json(shared["spec"])
    fitted = load_fitted(run_dir / "fitted", shared["fitted"])

    # 3. the splits as tensors: the trainer indexes rows, the family says what they hold
    data = RowData(family.encode(config.model, spec, fitted, dataset, config.data.train_split), tc.batch_size, tc.seed, procs)
    # only where it is read: rank 0 validates, and not at all with val_every 0 (a small table's fit spent
    # 9 ms of its 0.9 s encoding a split it never used)
    val = family.encode(config.model, spec, fitted, dataset, config.data.val_split) if tc.val_every and procs.main else {}
    val = {k: v[:tc.val_items] for k, v in val.items()}

    # 4. modules (same init on every process), start weights, EMA, optimizers, state to resume
    torch.manual_seed(tc.seed)
    modules = family.build(config.model, spec, fitted)
    if source:
        load_modules(source, modules)
        if source.has("ema.safetensors"):  # the averaged weights are the better start
            load_modules(source, {k: modules[k] for k in family.EMA}, "ema.safetensors")
    modules = place(modules, device, tc.channels_last)
    ema = EMA({k: modules[k] for k in family.EMA}, tc.ema) if tc.ema > 0 and family.EMA else None
    sync = procs.world if family.GRAD_SYNC == "optimizer" else 1
    opt = Optimizers(make_optimizers(family, config, modules, device), tc.grad_clip, sync)
    precision, why = resolve_precision(tc.precision, device)
    say(f"precision: {precision} ({why})", highlight=False)
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
                _warn(console, f"checkpoint was written by {len(ckpt.state['rng'])} processes, now {procs.world}: "
                               "the run continues, but not bitwise as it would have")
    else:
        torch.manual_seed(stream_seed(tc.seed, 2, procs.rank))  # each process its own noise

    # 5. run.json and config.yaml (rank 0)
    info: dict[str, Any] = {}
    if procs.main:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        resumes = (old or {}).get("resumes", []) + ([{"at_step": step, "at": _now(), "changes": changes}] if resume else [])
        info = {"format": RUN_FORMAT, "id": run_dir.name, "name": config.name, "family": config.model.family,
                "dataset": dataset.ref, "data_spec": spec.to_json(), "fitted": shared["fitted"],
                "init_from": (old or {}).get("init_from") or (str(source.path) if source else None),
                "status": "running", "started_at": (old or {}).get("started_at", _now()), "finished_at": None,
                "step": step, "wall_s": elapsed_before, "device": device_name + (f" x{procs.world}" if procs.world > 1 else ""),
                "world_size": procs.world, "precision": precision,
                "params": sum(p.numel() for m in modules.values() for p in m.parameters()),
                "checkpoint": ckpt.path.name if ckpt else None, "final_loss": (old or {}).get("final_loss"),
                "warnings": (old or {}).get("warnings", []), "resumes": resumes}
        write_info(run_dir, info)
    return _Start(config, procs, console, family, run_dir, resume, dataset, spec, fitted, data, val, modules, ema, opt,
                  precision, step, elapsed_before, info)


# ----------------------------------------------------------------------------- the loop

def _keep_metrics_until(path: Path, step: int) -> None:
    """On resume, drop what a crashed session logged after its last checkpoint (and a torn line);
    with no checkpoint (step 0) that is everything, the step-0 validation included."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if step > 0 and json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(kept))


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class _Loop:
    def __init__(self, s: _Start):
        self.s, self.tc, self.procs = s, s.config.train, s.procs
        self.step, self.start_step = s.step, s.step
        self.metrics_path = s.run_dir / "metrics.jsonl"
        self.unit = UNITS[s.spec.kind]
        self.per_row = s.spec.block_size if s.spec.kind == "text" else 1  # a text row is block_size tokens
        tc = self.tc
        self.total_steps = tc.steps or (tc.epochs * s.data.steps_per_epoch if tc.epochs else None)
        self.sums: dict[str, list[torch.Tensor]] = {}  # each scalar's values over the log interval
        self.count, self.last_log_t, self.last = 0, time.perf_counter(), {}
        self.t0 = time.perf_counter()
        self.clock = torch.zeros((), dtype=torch.float64)
        ddp = s.family.GRAD_SYNC == "ddp" and self.procs.world > 1
        self.train_modules = {k: DistributedDataParallel(m, broadcast_buffers=False) if ddp else m
                              for k, m in s.modules.items()}
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=s.console,
                                 disable=not self.procs.main)
        self.task = self.progress.add_task(s.config.name, total=1.0, info="")
        if self.procs.main:
            _keep_metrics_until(self.metrics_path, self.step)

    # -- the budget

    def elapsed(self) -> float:
        """Seconds of training so far, across sessions; rank 0's clock, so every process agrees."""
        self.clock.fill_(self.s.elapsed_before + time.perf_counter() - self.t0)
        if self.procs.world > 1 and self.tc.minutes is not None:
            dist.broadcast(self.clock, src=0)
        return float(self.clock)

    def budget_used(self, secs: float) -> float:
        """How far along the budget is, in [0, 1]: the further of the step count and the clock."""
        tc = self.tc
        by_steps = (self.step - tc.warmup_steps) / max(1, self.total_steps - tc.warmup_steps) if self.total_steps else 0.0
        return max(by_steps, secs / (tc.minutes * 60) if tc.minutes else 0.0)

    def progress_done(self, secs: float) -> float:
        """The share of the budget used, for the progress bar and its ETA."""
        tc = self.tc
        return max(self.step / self.total_steps if self.total_steps else 0.0, secs / (tc.minutes * 60) if tc.minutes else 0.0)

    def finished(self, secs: float) -> bool:
        tc = self.tc
        return bool(self.total_steps and self.step >= self.total_steps) or bool(tc.minutes and secs >= tc.minutes * 60)

    # -- logging, guards

    def log(self, secs: float) -> None:
        """Means over the interval (all processes), the NaN guard and the family's health check."""
        s, headline = self.s, self.s.family.HEADLINE
        keys = list(self.sums)
        vals = [torch.stack(self.sums[k]).double().sum() / self.count for k in keys]
        norms, single = s.opt.grad_norms(), len(s.opt.optimizers) == 1  # named by the declared optimizers
        keys += ["grad_norm" if single else f"grad_norm_{k}" for k in norms]  # at the latest update, not a mean
        vals = torch.stack(vals + [v.double() for v in norms.values()])
        if self.procs.world > 1:
            dist.all_reduce(vals)
            vals /= self.procs.world
        now = time.perf_counter()
        window = dict(zip(keys, vals.tolist()))
        lrs = {name: opt.param_groups[0]["lr"] for name, opt in s.opt.optimizers.items()}  # each its own rate
        rec = {"step": self.step, "split": "train", "time_s": round(secs, 3), **window,
               **({"lr": next(iter(lrs.values()))} if len(lrs) == 1 else {f"lr_{k}": v for k, v in lrs.items()}),
               "items_per_s": self.count * self.tc.batch_size * self.per_row / max(now - self.last_log_t, 1e-9)}
        self.sums, self.count, self.last_log_t, self.last = {}, 0, now, rec
        bad = [k for k, v in window.items() if not math.isfinite(v)]
        if bad:  # raised before any checkpoint of these weights is written: the last good one stays
            good = latest_checkpoint(s.run_dir / "checkpoints", lambda m: None)
            raise ModelError(f"training diverged: {', '.join(bad)} became {window[bad[0]]} by step {self.step}; "
                             f"stopped, the last good checkpoint is {good.path.name if good else 'none'}. "
                             "Lower train.lr (or an optimizer's lr) or keep train.grad_clip on, then resume or restart")
        if self.procs.main:
            _append_metrics(self.metrics_path, rec)
            self.progress.console.print(f"step {self.step:>7}  {headline} {rec[headline]:.4f}  "
                                        + "  ".join(f"{k} {v:.2e}" for k, v in rec.items() if k.startswith("lr")) + "  "
                                        f"{rec['items_per_s']:.0f} {self.unit}", highlight=False)
            warning = s.family.health(s.config.model, window)
            if warning:
                _warn(self.progress.console, f"step {self.step}: {warning}")
                _append_metrics(self.metrics_path, {"step": self.step, "split": "health", "warning": warning})
                if warning not in s.info["warnings"]:
                    s.info["warnings"].append(warning)

    def validate(self, secs: float) -> None:
        """Held-out scalars averaged by the weight the family gives each batch (rows, or tokens)."""
        s, device = self.s, self.procs.device
        rows = batch_rows(s.val) if s.val else 0
        if rows == 0:
            return
        for m in s.modules.values():
            m.eval()
        totals: dict[str, float] = {}
        weight = 0.0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(stream_seed(self.tc.seed, 3))  # the same noise at every validation
            for i in range(0, rows, self.tc.batch_size):
                batch = {k: v[i:i + self.tc.batch_size].to(device) for k, v in s.val.items()}
                with autocast(device, s.precision):
                    out, w = s.family.val_loss(s.modules, batch)
                for k, v in out.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * float(w)
                weight += float(w)
        for m in s.modules.values():
            m.train()
        rec = {"step": self.step, "split": "val", "time_s": round(secs, 3), **{k: v / weight for k, v in totals.items()}}
        _append_metrics(self.metrics_path, rec)
        headline = s.family.HEADLINE if s.family.HEADLINE in rec else next(iter(totals))
        self.progress.console.print(f"step {self.step:>7}  val {headline} {rec[headline]:.4f}", highlight=False)

    # -- checkpoints

    def checkpoint(self, secs: float) -> None:
        s = self.s
        rngs: list[Any] = [None] * self.procs.world
        if self.procs.world > 1:
            dist.all_gather_object(rngs, capture_rng())
        else:
            rngs = [capture_rng()]
        if not self.procs.main:
            return
        model_info = {"family": s.config.model.family, "model": s.config.model.model_dump(mode="json"),
                      "sample": s.config.sample.model_dump(mode="json"), "data_spec": s.spec.to_json(),
                      "precision": self.tc.precision, "channels_last": self.tc.channels_last,
                      "dataset": s.dataset.ref, "run": s.run_dir.name}
        path = save_checkpoint(s.run_dir / "checkpoints", self.step, modules=s.modules, ema=s.ema.modules if s.ema else {},
                               optimizers=s.opt.optimizers, keep=self.tc.keep_checkpoints, model_info=model_info,
                               fitted_dir=s.run_dir / "fitted",
                               state={"data_position": s.data.position(self.step), "elapsed_s": secs, "rng": rngs,
                                      "world_size": self.procs.world, "dataset": s.dataset.ref})
        s.info.update(step=self.step, wall_s=round(secs, 3), checkpoint=path.name)
        write_info(s.run_dir, s.info)

    # -- the loop

    def one_step(self) -> None:
        s = self.s
        with autocast(self.procs.device, s.precision):
            out = s.family.train_step(self.train_modules, s.data.batch(self.step), s.opt, self.step)
        self.step += 1
        if s.ema is not None:
            s.ema.update(self.step)
        for k, v in out.items():  # summed when logged: two ops per scalar and step cost 0.1 ms of a small table's step
            self.sums.setdefault(k, []).append(v)
        self.count += 1

    def run(self) -> Path:
        s, tc, procs = self.s, self.tc, self.procs
        for m in s.modules.values():
            m.train()
        try:
            with self.progress:
                secs = self.elapsed()
                self.progress.update(self.task, completed=self.progress_done(secs))
                if procs.main and tc.val_every and self.step == 0:
                    self.validate(secs)  # the untrained model: where the validation curve starts
                while not self.finished(secs):
                    factor = lr_factor(tc, self.step, self.budget_used(secs))
                    s.opt.scale_lr(factor)
                    self.one_step()
                    secs = self.elapsed()
                    done = self.finished(secs)
                    save = self.step % tc.checkpoint_every == 0 or done
                    if self.step % tc.log_every == 0 or save:  # a checkpoint never holds a half-filled log interval
                        self.log(secs)
                    if procs.main and tc.val_every and (self.step % tc.val_every == 0 or done):
                        self.validate(secs)
                    if save:
                        self.checkpoint(secs)
                    if procs.main:
                        self.progress.update(self.task, completed=self.progress_done(secs),
                                             info=f"step {self.step}  {s.family.HEADLINE} "
                                                  f"{self.last.get(s.family.HEADLINE, float('nan')):.4f}  "
                                                  f"{self.last.get('items_per_s', 0):.0f} {self.unit}")
        except BaseException as e:
            if procs.main:
                s.info.update(status="failed", error=f"{type(e).__name__}: {e}", finished_at=_now())
                write_info(s.run_dir, s.info)
            raise
        if procs.main:
            self.finish(secs)
        return s.run_dir

    def finish(self, secs: float) -> None:
        s = self.s
        final = self.last.get(s.family.HEADLINE, s.info["final_loss"])
        s.info.update(status="completed", finished_at=_now(), step=self.step, wall_s=round(secs, 3), final_loss=final)
        write_info(s.run_dir, s.info)
        did = f"{self.step - self.start_step} steps" if self.step > self.start_step else "nothing left to do"
        s.console.print(f"run {s.run_dir.name}: {did}; step {self.step}, {secs:.0f}s of training, final "
                        f"{s.family.HEADLINE} {final if final is not None else float('nan'):.4f}", highlight=False)
        s.console.print(f"run directory: {s.run_dir}\nsample from it: genforge generate {s.run_dir.name} --n 64",
                        highlight=False)
