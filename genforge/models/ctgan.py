"""CTGAN family: a conditional GAN for tables (Xu, Skoularidou, Cuesta-Infante, Veeramachaneni 2019,
"Modeling Tabular Data using Conditional GAN", NeurIPS, arXiv 1907.00503).

What the paper specifies, and where it lives here:
- mode-specific normalisation of numeric columns (sec. 4.2): `genforge.tabular.vgm`;
- the conditional vector and the generator loss that makes G honour it (sec. 4.3): `cond_loss`;
- training-by-sampling (sec. 4.3): a discrete column is chosen uniformly, one of its categories with
  probability proportional to the log of its frequency, and the critic compares fakes for that
  condition with real rows that have it. The trainer serves every family rows in one seeded uniform
  order (which is what makes resume exact), so the real side here is sampling-importance-resampling
  of the batch: each row takes the condition of its own category in a uniformly chosen discrete
  column and is redrawn with weight p_log(c) / p_freq(c), which gives the paper's distribution of
  (row, condition) pairs without a sampler of our own;
- PacGAN (Lin et al. 2018, arXiv 1712.04086): the critic judges `pac` rows at once;
- WGAN-GP (Gulrajani et al. 2017, arXiv 1704.00028): critic loss E[D(fake)] - E[D(real)] plus 10 x the
  gradient penalty on interpolates (one interpolation weight per pac group);
- the networks of the reference implementation: G of two residual blocks (Linear-BatchNorm-ReLU, input
  concatenated to the output), D of two LeakyReLU(0.2)+Dropout(0.5) layers; Adam at 2e-4, betas
  (0.5, 0.9), weight decay 1e-6 for both; Gumbel-softmax (tau 0.2) on G's one-hot spans in training;
- the generator step on fresh z and conditions (`generator_batch: fresh`, the default), or on the critic
  step's fakes (`critic`, one forward of G fewer: see `train_step`).

Sampling: item i draws z, its condition (when it asks for none: a discrete column uniformly and a
category by its real frequency, as the reference implementation samples) and the Gumbel noise that
picks its categories from its own seed; a condition on a discrete column is given to G as its
conditional vector, so conditioned rows are proposed directly rather than found by rejection.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genforge.config import StrictModel
from genforge.errors import ModelError
from genforge.kernels import Linear
from genforge.models import Batch, DataSpec, Fitted, Optimizer, OptimizerSpec, SampleRequest, TableSamples
from genforge.tabular import draws
from genforge.tabular.family import TableState, fit_table, sample_table, table_state
from genforge.tabular.sampling import Rules, SampleOptions
from genforge.tabular.segments import Segments, encode_grouped
from genforge.tabular.vgm import TransformConfig


class Config(StrictModel):
    """The `model:` section; defaults are the paper's reference implementation."""

    family: Literal["ctgan"]
    embedding_dim: int = Field(default=128, ge=1)  # z
    generator_dims: list[int] = Field(default=[256, 256], min_length=1)
    discriminator_dims: list[int] = Field(default=[256, 256], min_length=1)
    pac: int = Field(default=10, ge=1)  # rows per critic input (PacGAN)
    gp_lambda: float = Field(default=10.0, ge=0.0)
    tau: float = Field(default=0.2, gt=0.0)  # Gumbel-softmax temperature for G's one-hot spans
    # what G's update is computed on: "fresh" z and conditions (the reference implementation), or "critic":
    # the critic step's own fakes, through the updated critic (as PyTorch's DCGAN example), one forward of G
    # fewer a step. See `train_step`.
    generator_batch: Literal["fresh", "critic"] = "fresh"
    transform: TransformConfig = TransformConfig()
    rules: Rules = Rules()


class SampleConfig(SampleOptions):
    """The run's `sample:` section."""


KINDS = ("table",)
EMA = ("generator",)
HEADLINE = "d_loss"
GRAD_SYNC = "optimizer"  # the gradient penalty is a double backward, which DDP cannot run
TUNABLE = ("rules",)
REQUEST_OPTIONS = ("where", "max_rounds", "provenance")


class Residual(nn.Module):
    def __init__(self, i: int, o: int):
        super().__init__()
        self.fc, self.bn = Linear(i, o), nn.BatchNorm1d(o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.bn(self.fc(x))), x], dim=1)


class Generator(nn.Module):
    """z and the conditional vector -> raw outputs (activations applied by `activate`)."""

    def __init__(self, config: Config, width: int, cond_dim: int, state: TableState):
        super().__init__()
        layers, dim = [], config.embedding_dim + cond_dim
        for d in config.generator_dims:
            layers.append(Residual(dim, d))
            dim += d
        self.body = nn.Sequential(*layers, Linear(dim, width))
        self.z_dim, self.tau, self.gp_lambda = config.embedding_dim, config.tau, config.gp_lambda
        self.generator_batch = config.generator_batch
        self.state = state  # the fitted table: what sampling decodes with (not saved: it is the run's fitted state)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([z, cond], dim=1))

    def grouped(self, cond: torch.Tensor) -> torch.Tensor:
        """Raw outputs for fresh z, one row per condition, in the grouped order training uses (the last
        layer's rows put in that order: `Segments.grouped_linear`)."""
        h = self.body[:-1](torch.cat([torch.randn(len(cond), self.z_dim, device=cond.device), cond], dim=1))
        return self.seg.grouped_linear(self.body[-1], h)


class HalfDropout(nn.Module):
    """nn.Dropout(0.5) with its mask from 63 random bits per draw: torch's CPU `bernoulli_` draws one
    number per element, and on a 2-core Xeon a 150x256 mask took 782 us that way against 123 us so
    (`torch.randint` of int64, unpacked by shifts); the critic draws four masks a step."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shifts", torch.arange(63, dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n = x.numel()
        r = torch.randint(0, 2 ** 63 - 1, ((n + 62) // 63,), dtype=torch.int64, device=x.device)
        keep = ((r[:, None] >> self.shifts) & 1).view(-1)[:n].view_as(x)
        return x * keep * 2.0


class Discriminator(nn.Module):
    def __init__(self, config: Config, in_dim: int):
        super().__init__()
        layers, dim = [], in_dim * config.pac
        for d in config.discriminator_dims:
            layers += [Linear(dim, d), nn.LeakyReLU(0.2), HalfDropout()]
            dim = d
        self.body = nn.Sequential(*layers, Linear(dim, 1))
        self.pac = config.pac

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, x.shape[1] * self.pac)).squeeze(1)  # (B / pac,)


# ---- the conditional vector -----------------------------------------------------------------------

class Conditions(nn.Module):
    """Where each discrete column's one-hot sits in the data and in the conditional vector, and its
    category frequencies (buffers, so they travel with the weights to any device)."""

    def __init__(self, state: TableState, seg: Segments):
        super().__init__()
        t = state.transformer
        cats = [s for s in t.spans if s.role == "category"]
        self.sizes = [s.size for s in cats]
        self.cond_starts = list(np.cumsum([0] + self.sizes[:-1]))
        self.dim = sum(self.sizes)
        learned = {c.name: c for c in state.codec.learned}
        k = max(self.sizes, default=1)
        freq, logp = torch.zeros(len(cats), k, dtype=torch.float64), torch.zeros(len(cats), k, dtype=torch.float64)
        for j, s in enumerate(cats):
            counts = torch.tensor(learned[s.column].frequencies, dtype=torch.float64) * state.rows
            freq[j, :s.size] = counts / counts.sum()
            logp[j, :s.size] = torch.log(counts + 1) / torch.log(counts + 1).sum()  # log(count + 1), as the reference
        # (column, category) probabilities padded to the largest column: one multinomial draws every row's category
        self.register_buffer("freq", freq.float(), persistent=False)
        self.register_buffer("logp", logp.float(), persistent=False)
        self.register_buffer("last", torch.tensor(self.sizes, dtype=torch.long) - 1, persistent=False)
        self.register_buffer("cond_start", torch.tensor(self.cond_starts, dtype=torch.long), persistent=False)
        # where each (column, category) lies among the one-hot columns of a grouped row (G's log-softmax)
        columns = torch.tensor([[s.start + min(c, s.size - 1) for c in range(k)] for s in cats], dtype=torch.long)
        columns = columns.reshape(len(cats), k)  # a table with no discrete column gives a 1-d empty tensor
        self.register_buffer("onehot_at", seg.onehot_position(columns), persistent=False)

    @property
    def n(self) -> int:
        return len(self.sizes)

    def vector(self, cols: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        """(B, dim) one-hots: category cats[b] of discrete column cols[b]."""
        out = torch.zeros(len(cols), self.dim, device=cols.device)
        if self.dim:
            out[torch.arange(len(cols), device=cols.device), self.cond_start[cols] + cats] = 1.0
        return out

    def draw(self, n: int, device: torch.device, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-by-sampling's conditions: a column uniformly, a category by (log-)frequency."""
        cols = torch.randint(self.n, (n,), device=device)
        return cols, _inverse_cdf((self.logp if log else self.freq)[cols].cumsum(1), self.last[cols])


def activate(x: torch.Tensor, seg: Segments, tau: float) -> torch.Tensor:
    """tanh on value spans, Gumbel-softmax on one-hot spans: G's grouped outputs in the data's form."""
    return torch.cat([torch.tanh(x[:, :seg.n_values]), seg.gumbel_softmax(x, tau)], 1)


def cond_loss(x: torch.Tensor, seg: Segments, cond: Conditions, cols: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of G's (grouped) logits for the conditioned column against the condition (paper sec. 4.3)."""
    if not cond.n:
        return torch.zeros((), device=x.device)
    return -seg.log_softmax(x).gather(1, cond.onehot_at[cols, cats][:, None]).mean()


# ---- the contract -------------------------------------------------------------------------------

def optimizers(config: Config) -> dict[str, OptimizerSpec]:
    """The reference implementation's Adam for both networks."""
    return {"generator": OptimizerSpec(("generator",), lr=2e-4, betas=(0.5, 0.9), weight_decay=1e-6),
            "discriminator": OptimizerSpec(("discriminator",), lr=2e-4, betas=(0.5, 0.9), weight_decay=1e-6)}


def fit(config: Config, dataset: Any, seed: int) -> tuple[DataSpec, Fitted]:
    return fit_table(config.rules, config.transform, dataset, seed)


def encode(config: Config, spec: DataSpec, fitted: Fitted, dataset: Any, split: str) -> Batch:
    return encode_grouped(TableState.of(fitted), dataset, split)


def build(config: Config, spec: DataSpec, fitted: Fitted) -> dict[str, nn.Module]:
    state = table_state(spec, fitted, "ctgan")
    seg = Segments.of(state.transformer)
    cond = Conditions(state, seg)
    g = Generator(config, state.transformer.width, cond.dim, state)
    g.cond, g.seg = cond, seg
    return {"generator": g, "discriminator": Discriminator(config, state.transformer.width + cond.dim)}


def _critic(d: Discriminator, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D on reals and fakes in one pass, on their interpolates in a second, and WGAN-GP's penalty on
    the interpolates: (d_real, d_fake, gp). Reals and fakes share a pass because a small table's step
    is launch-bound; the interpolates have their own so that the penalty's double backward covers
    only them (over all three kinds it tripled the critic's largest products on wide tables)."""
    groups = len(real) // d.pac
    alpha = torch.rand(groups, 1, 1, device=real.device).expand(groups, d.pac, real.shape[1]).reshape(real.shape)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)  # one weight per pac group
    out, d_mixed = d(torch.cat([real, fake])), d(mixed)
    # outside autocast, as every backward here (`Optimizers.step`): each product's gradient in its forward's
    # dtype, where autocast would cast the fp32 layers' (`kernels.MIN_BF16_MACS`) to bf16 and back
    with torch.autocast(real.device.type, enabled=False):
        (grad,) = torch.autograd.grad(d_mixed.sum(), mixed, create_graph=True)
    return out[:groups], out[groups:], ((grad.reshape(groups, -1).norm(2, dim=1) - 1) ** 2).mean()


def _real_with_conditions(cond: Conditions, x: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Training-by-sampling on a uniform batch: each row conditioned on its own category of a uniformly
    chosen discrete column, rows redrawn with weight p_log(c) / p_freq(c) (see the module docstring)."""
    n = len(x)
    cols = torch.randint(cond.n, (n,), device=x.device)
    cats = codes.gather(1, cols[:, None]).squeeze(1)
    w = cond.logp[cols, cats] / cond.freq[cols, cats].clamp_min(1e-12)
    return x[(pick := _inverse_cdf(w.cumsum(0), n - 1))], cols[pick], cats[pick]


def _inverse_cdf(cdf: torch.Tensor, last: torch.Tensor | int) -> torch.Tensor:
    """One draw per row of `cdf` (cumulative weights, the total in the last column) or `len(cdf)` draws
    from a 1-d one; `last` caps each draw at its row's last real option (a rounded-up uniform would
    land past it). torch.multinomial draws an exponential per weight and row (847 us for 500 draws
    from 500 weights on a 2-core Xeon); a uniform and a binary search per draw cost a few."""
    u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[..., -1:]
    if cdf.dim() == 1:
        return torch.searchsorted(cdf, u.squeeze(1), right=True).clamp_max(last)
    return torch.minimum(torch.searchsorted(cdf, u, right=True).squeeze(1), last)


def train_step(modules: dict[str, nn.Module], batch: Batch, opt: Optimizer, step: int) -> dict[str, torch.Tensor]:
    """One critic step, then one generator step (the reference implementation's discriminator_steps=1).

    With `generator_batch: critic` the generator step reuses the critic step's fakes (their z, Gumbel noise
    and conditions, whose distribution is the log-frequency one the reference draws the generator step's
    conditions from) and their graph, judged by the updated critic; the reference draws fresh ones, at the
    cost of a second forward of G."""
    g: Generator = modules["generator"]
    d: Discriminator = modules["discriminator"]
    cond: Conditions = g.cond
    cfg_pac, tau, lam, reuse = d.pac, g.tau, g.gp_lambda, g.generator_batch == "critic"
    n = len(batch["x"]) // cfg_pac * cfg_pac
    if n == 0:
        raise ModelError(f"each process's batch must hold at least model.pac ({cfg_pac}) rows, got {len(batch['x'])}")
    x, codes = batch["x"][:n], batch["codes"][:n]
    if cond.n:
        real, cols, cats = _real_with_conditions(cond, x, codes)
        perm = torch.randperm(n, device=x.device)
        f_cols, f_cats = cols[perm], cats[perm]
    else:
        real = x
        cols = cats = f_cols = f_cats = torch.zeros(n, dtype=torch.long, device=x.device)
    c_real, c_fake = cond.vector(cols, cats), cond.vector(f_cols, f_cats)

    # 1. critic: E[D(fake)] - E[D(real)] + lambda * GP
    with torch.set_grad_enabled(reuse):
        raw = g.grouped(c_fake)
        fake = activate(raw, g.seg, tau)
    real_in, fake_in = torch.cat([real, c_real], 1), torch.cat([fake.detach(), c_fake], 1)
    d_real, d_fake, gp = _critic(d, real_in, fake_in)
    d_loss = d_fake.mean() - d_real.mean()
    opt.step("discriminator", d_loss + lam * gp)

    # 2. generator: -E[D(fake)] + the conditional vector's cross-entropy
    if reuse:
        c, cols, cats = c_fake, f_cols, f_cats
    else:  # fresh conditions, as the reference
        cols, cats = cond.draw(n, x.device, log=True) if cond.n else (f_cols, f_cats)
        c = cond.vector(cols, cats)
        raw = g.grouped(c)
        fake = activate(raw, g.seg, tau)
    d.requires_grad_(False)
    adv = -d(torch.cat([fake, c], 1)).mean()
    ce = cond_loss(raw, g.seg, cond, cols, cats)
    opt.step("generator", adv + ce)
    d.requires_grad_(True)
    return {"d_loss": d_loss.detach(), "gp": gp.detach(), "g_loss": adv.detach(), "cond_ce": ce.detach()}


def val_loss(modules: dict[str, nn.Module], batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
    """The critic's Wasserstein estimate on held-out rows against fresh fakes (lower: harder to tell)."""
    g: Generator = modules["generator"]
    d: Discriminator = modules["discriminator"]
    n = len(batch["x"]) // d.pac * d.pac
    if n == 0:
        return {}, 0.0
    cond = g.cond
    x, codes = batch["x"][:n], batch["codes"][:n]
    if cond.n:
        cols = torch.randint(cond.n, (n,), device=x.device)
        cats = codes.gather(1, cols[:, None]).squeeze(1)
    else:
        cols = cats = torch.zeros(n, dtype=torch.long, device=x.device)
    c = cond.vector(cols, cats)
    fake = activate(g.grouped(c), g.seg, g.tau)
    d_loss = d(torch.cat([fake, c], 1)).mean() - d(torch.cat([x, c], 1)).mean()
    raw = g.grouped(c)
    return {"d_loss": d_loss, "cond_ce": cond_loss(raw, g.seg, cond, cols, cats)}, n


def _propose(g: Generator, seeds: np.ndarray, conditions: list[dict[str, Any]]) -> pd.DataFrame:
    """One candidate row per seed: z (its stream 0), the condition (1) and the Gumbel noise (2) all
    from that seed."""
    state, cond = g.state, g.cond
    device = next(g.parameters()).device
    cols = np.zeros(len(seeds), dtype=np.int64)
    cats = np.zeros(len(seeds), dtype=np.int64)
    if cond.n:
        u = draws.uniform(seeds, 1, 2)
        cols = np.minimum((u[:, 0] * cond.n).astype(np.int64), cond.n - 1)
        cats = draws.categorical(u[:, 1], cond.freq.double().cpu().numpy()[cols])
    names = [s.column for s in state.transformer.spans if s.role == "category"]
    given: dict[str, tuple[int, int] | None] = {}  # a condition -> the conditional vector it sets, once per distinct one
    for i, c in enumerate(conditions):
        if not c:
            continue
        key = repr(sorted(c.items()))
        if key not in given:
            asked = [(names.index(name), code) for name, code in
                     (state.codec.condition(k, v) for k, v in c.items() if not isinstance(v, dict)) if name in names]
            given[key] = asked[0] if asked else None
        if given[key] is not None:
            cols[i], cats[i] = given[key]
    z = draws.normal(seeds, 0, g.z_dim).to(device)
    raw = g(z, cond.vector(torch.from_numpy(cols).to(device), torch.from_numpy(cats).to(device))).float().cpu()
    noise = draws.gumbel(seeds, 2, raw.shape[1])
    out = raw.clone()
    for s in state.transformer.spans:  # one-hot spans: the Gumbel-max draw from G's softmax
        if s.role != "value":
            out[:, s.start:s.start + s.size] += noise[:, s.start:s.start + s.size]
        else:
            out[:, s.start] = torch.tanh(raw[:, s.start])
    return state.transformer.inverse(out.numpy(), seeds)


def sample(modules: dict[str, nn.Module], spec: DataSpec, fitted: Fitted, request: SampleRequest,
           options: SampleConfig) -> TableSamples:
    g: Generator = modules["generator"]
    if g.training:
        raise ModelError("sample() needs the generator in eval mode (call .eval()): in training mode BatchNorm "
                         "makes each row depend on the others in its batch")
    return sample_table(g.state, request, options, lambda seeds, conds: _propose(g, seeds, conds))


def health(config: Config, window: dict[str, float]) -> str | None:
    return None
