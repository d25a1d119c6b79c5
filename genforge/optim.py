"""Optimizers, learning-rate schedule and EMA: what the trainer applies a family's losses with."""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from genforge.models import Family
from genforge.runconfig import RunConfig, TrainConfig


class Optimizers:
    """What a family's `train_step` uses to apply a loss: `opt.step(name, loss)` runs backward
    (outside autocast), all-reduces the gradients when the family syncs them here rather than through
    DDP, clips the gradient norm and updates. Learning rates follow the trainer's schedule.

    Syncing in the step is what lets R1 and WGAN-GP (double backward, which DistributedDataParallel
    does not support) train under torchrun, as StyleGAN2-ADA does: one flat all-reduce per optimizer.

    The logged gradient norm (`grad_norms`) is each optimizer's at its latest update, before clipping."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], grad_clip: float, sync_world: int = 1):
        self.optimizers = optimizers
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        self.sync_world = sync_world
        self.clipped: dict[str, torch.Tensor] = {}  # with clipping: each optimizer's norm at its latest update
        self.base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in optimizers.items()}
        self.direct = {name for name, opt in optimizers.items() if steps_directly(opt)}

    def step(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optimizers[name]
        params = [p for g in opt.param_groups for p in g["params"]]
        for p in params:  # opt.zero_grad(set_to_none=True), less its profiler scope: 20 us a call on small tables
            p.grad = None
        with torch.autocast(loss.device.type, enabled=False):
            # only this optimizer's gradients: none into another network's weights, nor into an input
            # that needs a gradient for a penalty (WGAN-GP's interpolates), which would cost products
            loss.backward(inputs=params)
        if self.sync_world > 1:
            self._all_reduce(params)
        if self.max_norm < math.inf:  # without clipping no rescale of every gradient by 1, and no norm until logged
            norm = _total_norm([p.grad for p in params if p.grad is not None])
            torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, norm, foreach=True)
            self.clipped[name] = norm.detach()
        if name in self.direct:
            fused_adamw_step(opt)
        else:
            opt.step()

    def grad_norms(self) -> dict[str, torch.Tensor]:
        """Each optimizer's gradient norm at its latest update (before clipping); none before its first.

        Without clipping it is computed here, when a log row asks, from the gradients that update left
        in place (only the optimizer's next step clears them), not at every step: measured at every
        step it cost 2-4% of a small table's fit (penguins, old and new code in alternating processes)."""
        out = {}
        for name, opt in self.optimizers.items():
            if name in self.clipped:
                out[name] = self.clipped[name]
            elif grads := [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]:
                out[name] = _total_norm(grads)
        return out

    def _all_reduce(self, params: list[torch.Tensor]) -> None:
        for p in params:  # a parameter this loss did not reach counts as a zero gradient on every process
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.sync_world
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    def scale_lr(self, factor: float) -> None:
        """Every optimizer's own base learning rate times the schedule's factor."""
        for name, opt in self.optimizers.items():
            for group, base in zip(opt.param_groups, self.base_lrs[name]):
                group["lr"] = base * factor


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """get_total_norm's product, less its grouping by device and dtype (one optimizer has one of each):
    136 against 224 us between two TVAE steps on penguins."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


def steps_directly(opt: torch.optim.Optimizer) -> bool:
    """Whether `fused_adamw_step` can take this optimizer's step: a fused AdamW without the options
    its kernel call there leaves out, one device and dtype per parameter group."""
    return type(opt) is torch.optim.AdamW and all(
        g["fused"] and not (g["amsgrad"] or g["maximize"] or g["capturable"] or g["differentiable"])
        and len({(p.device, p.dtype) for p in g["params"]}) == 1 for g in opt.param_groups)


def fused_adamw_step(opt: torch.optim.AdamW) -> None:
    """`opt.step()` for a fused AdamW: torch's own kernel on torch's own state, one call per group.

    torch's `step` spends most of a small network's update in Python: its hooks and profiler scope,
    `_init_group`'s checks and the grouping of every tensor by device and dtype on each call. For
    TVAE's 15 tensors in 2 groups (one thread, 2-core Xeon) it took 474 us a step, the same kernel
    called directly 278 us. The state (`step`, `exp_avg`, `exp_avg_sq`) is what torch initialises and
    keeps, so `state_dict`, checkpoints and resume are unchanged; a test holds the two steps equal."""
    for group in opt.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        states = [opt.state[p] for p in params]
        for p, state in zip(params, states):
            if not state:  # torch's lazy initialisation for a fused group
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                            [s["exp_avg_sq"] for s in states], [], steps, lr=group["lr"], beta1=beta1,
                            beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                            maximize=False)


def make_optimizers(family: Family, config: RunConfig, modules: dict[str, nn.Module],
                    device: torch.device) -> dict[str, torch.optim.Optimizer]:
    """One AdamW per optimizer the family declares, with its own settings (family defaults, then the
    run's `train.optimizers` overrides, then `train.*`); weight decay only on matrices and kernels."""
    tc = config.train
    out = {}
    for name, spec in family.optimizers(config.model).items():
        over = tc.optimizers.get(name)
        pick = lambda field, default: next(v for v in (getattr(over, field, None), getattr(spec, field), default)  # noqa: E731
                                           if v is not None)
        lr, betas, wd = pick("lr", tc.lr), pick("betas", tc.betas), pick("weight_decay", tc.weight_decay)
        params = [p for m in spec.modules for p in modules[m].parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        out[name] = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas),
                                      fused=device.type in ("cpu", "cuda"))
    return out


def lr_factor(tc: TrainConfig, step: int, done: float) -> float:
    """Linear warm-up over `warmup_steps`, then a cosine from 1 to `min_lr_ratio` as the budget is
    used up (`done` in [0, 1]); every optimizer's learning rate is its own base times this."""
    if step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    low = tc.min_lr_ratio
    return low + 0.5 * (1 - low) * (1 + math.cos(math.pi * min(max(done, 0.0), 1.0)))


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
