"""TVAE family: a variational autoencoder for tables, the second model of Xu et al. 2019 ("Modeling
Tabular Data using Conditional GAN", NeurIPS, arXiv 1907.00503, sec. 4.4 and appendix), trained on
the same mode-specific normalisation as CTGAN (`genforge.tabular.vgm`).

Loss, as the reference implementation: for every value span a Gaussian likelihood with a learned
scale per span, sum((x - tanh(x_hat))^2 / 2 sigma^2) + log(sigma) per row; for every one-hot span
the cross-entropy of its logits; the sum times `loss_factor` (2), plus the KL of q(z|x) from N(0, I),
both per row. After each update the scales are clamped to [0.01, 1]. Adam at 3e-3 (see `optimizers`), weight
decay 1e-5.

Sampling: item i draws z and the noise on its values from its own seed; value spans are
tanh(x_hat) + sigma * noise, as the reference implementation's inverse transform does. One-hot spans
(categories, modes) take their most likely option at `sample.temperature` 0, the
reference implementation's argmax, where z alone carries the variety; above 0 each option is drawn
from softmax(logits / temperature), the decoder's own p(x | z) at 1. The choice trades the columns'
own distributions against their relations: see `SampleConfig`. Missing flags are always drawn from
p(missing | z): an argmax leaves no value out wherever fewer than half are missing (penguins, 0.7% of
each measurement missing: none in 27,500 rows sampled at temperature 0, 0.9% drawn; SDV's TVAE puts
nulls back at random at the train share, which loses their relation to the other columns).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn

from genforge.config import StrictModel
from genforge.kernels import Linear
from genforge.models import Batch, DataSpec, Fitted, Optimizer, OptimizerSpec, SampleRequest, TableSamples
from genforge.tabular import draws
from genforge.tabular.family import TableState, fit_table, sample_table, table_state
from genforge.tabular.sampling import Rules, SampleOptions
from genforge.tabular.segments import Segments, encode_grouped
from genforge.tabular.vgm import TransformConfig


class Config(StrictModel):
    """The `model:` section; defaults are the reference implementation's."""

    family: Literal["tvae"]
    embedding_dim: int = Field(default=128, ge=1)  # z
    compress_dims: list[int] = Field(default=[128, 128], min_length=1)  # the encoder's hidden layers
    decompress_dims: list[int] = Field(default=[128, 128], min_length=1)  # the decoder's
    loss_factor: float = Field(default=2.0, gt=0.0)  # the reconstruction term's weight against the KL
    transform: TransformConfig = TransformConfig()
    rules: Rules = Rules()


class SampleConfig(SampleOptions):
    """The run's `sample:` section."""

    # 0: each one-hot span's most likely option (the reference implementation's argmax); above 0, a draw
    # from softmax(logits / temperature). Measured on penguins and breast cancer (benchmarks/results/tables.md,
    # 10 seeds each): 0.5 raised sdmetrics' Column Shapes by 0.03-0.06 and lowered Column Pair Trends by
    # up to 0.04, and it lowered penguins' train-on-synthetic accuracy; 0 keeps the relations.
    temperature: float = Field(default=0.0, ge=0.0, le=10.0)


KINDS = ("table",)
EMA = ("decoder",)
HEADLINE = "loss"
GRAD_SYNC = "ddp"
TUNABLE = ("rules", "loss_factor")
REQUEST_OPTIONS = ("where", "max_rounds", "provenance", "temperature")


def _mlp(dims: list[int], i: int) -> tuple[nn.Sequential, int]:
    layers = []
    for d in dims:
        layers += [Linear(i, d), nn.ReLU()]
        i = d
    return nn.Sequential(*layers), i


class Encoder(nn.Module):
    def __init__(self, config: Config, width: int):
        super().__init__()
        self.body, dim = _mlp(config.compress_dims, width)
        self.mu, self.logvar = Linear(dim, config.embedding_dim), Linear(dim, config.embedding_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """z -> raw outputs, and one learned scale per output (used by the value spans)."""

    def __init__(self, config: Config, width: int, state: TableState):
        super().__init__()
        body, dim = _mlp(config.decompress_dims, config.embedding_dim)
        self.body = nn.Sequential(*body, Linear(dim, width))
        self.sigma = nn.Parameter(torch.full((width,), 0.1))
        self.z_dim, self.loss_factor = config.embedding_dim, config.loss_factor
        self.state = state  # the fitted table: what sampling decodes with (the run's fitted state, not saved here)
        self.seg = Segments.of(state.transformer)
        self.missing = torch.tensor([c for sp in state.transformer.spans if sp.role == "missing"
                                     for c in range(sp.start, sp.start + sp.size)], dtype=torch.long)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)

    def grouped(self, z: torch.Tensor) -> torch.Tensor:
        """forward(z) in grouped order (`Segments.grouped_linear`), what training's loss reads."""
        return self.seg.grouped_linear(self.body[-1], self.body[:-1](z))


def optimizers(config: Config) -> dict[str, OptimizerSpec]:
    """Adam at 3e-3, where the reference implementation keeps torch's default 1e-3 (not a setting there).

    With a batch of 500, a table of a few hundred rows gets one update per epoch: 300 epochs are 300
    updates, and at 1e-3 TVAE stops far short of what it can learn. Same epochs and batch, 1e-3 against
    3e-3 (sdmetrics quality, train-on-synthetic accuracy; benchmarks/results/tables.md, 2026-12-04
    "TVAE's learning rate"): penguins 0.833 -> 0.854, 0.902 -> 0.973 (10 seeds); breast cancer 0.840 ->
    0.906 (5); txhousing 0.886 -> 0.904 (3); diamonds at 30 epochs (2,600 updates) 0.883 -> 0.890 (3).
    2e-3 gained less on penguins and breast cancer; 5e-3 no more on breast cancer and lost TSTR on penguins
    (0.945)."""
    return {"vae": OptimizerSpec(("encoder", "decoder"), lr=3e-3, betas=(0.9, 0.999), weight_decay=1e-5)}


def fit(config: Config, dataset: Any, seed: int) -> tuple[DataSpec, Fitted]:
    return fit_table(config.rules, config.transform, dataset, seed)


def encode(config: Config, spec: DataSpec, fitted: Fitted, dataset: Any, split: str) -> Batch:
    return encode_grouped(TableState.of(fitted), dataset, split)


def build(config: Config, spec: DataSpec, fitted: Fitted) -> dict[str, nn.Module]:
    state = table_state(spec, fitted, "tvae")
    width = state.transformer.width
    return {"encoder": Encoder(config, width), "decoder": Decoder(config, width, state)}


class _Loss(torch.autograd.Function):
    """(reconstruction, KL), each summed over a row and averaged over rows; x and recon in grouped
    order. Written with its gradient by hand because on a small table the dozen elementwise ops of
    these terms, and autograd's node for each, cost more than the networks' matmuls: on penguins,
    1.7 of a step's 7.8 ms (the networks, forward and backward with AdamW: 6.1 ms).

    Value spans: sum((x - tanh(r))^2 / 2 sigma^2) + n log(sigma). One-hot spans: the data's spans are
    exact one-hots, so the cross-entropy is -sum(x * log_softmax(r)), which is the log of each span's
    sum of exp less the logit x picks, and its gradient softmax(r) - x: neither needs the
    log-probabilities of every column. KL of N(mu, exp(logvar)) from N(0, I):
    -1/2 sum(1 + logvar - mu^2 - exp(logvar)), from four sums."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, recon: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor,
                logvar: torch.Tensor, seg: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        n, v, recon = len(x), seg.n_values, recon.to(x.dtype)  # (bf16 under autocast: the loss in fp32)
        s = sigma.index_select(0, seg.values)
        t = torch.tanh(recon[:, :v])
        d = x[:, :v] - t
        d2 = d.square().sum(0)
        values = (d2 / (2 * s.square())).sum() + torch.log(s).sum() * n
        hot, y = x[:, v:], recon[:, v:]
        with torch.autocast(x.device.type, enabled=False):  # the span sums' product in fp32, not bf16
            sums = seg.span_sums(y)
            if sums is None:  # a span's sum underflows: the per-span log-softmax (e: the softmax)
                logp = seg.each_span(y, torch.log_softmax)
                onehot, e, z = -(hot * logp).sum(), logp.exp(), None
            else:
                shifted, e, z = sums  # softmax = e / z per span
                onehot = z.log().sum() - (hot * shifted).sum()
        var = logvar.exp()
        kl = -0.5 * (mu.numel() + logvar.sum() - mu.square().sum() - var.sum())
        ctx.seg, ctx.n, ctx.sigma_shape = seg, n, sigma.shape
        ctx.save_for_backward(hot, t, d, d2, s, e, z, mu, var)
        return (values + onehot) / n, kl / n

    @staticmethod
    def backward(ctx, g_recon: torch.Tensor, g_kl: torch.Tensor):
        hot, t, d, d2, s, e, z, mu, var = ctx.saved_tensors
        seg, v = ctx.seg, ctx.seg.n_values
        a, b = g_recon / ctx.n, g_kl / ctx.n
        s2 = s.square()
        grad_recon = hot.new_empty((len(hot), seg.width))
        torch.mul(d * (1 - t.square()), -a / s2, out=grad_recon[:, :v])
        p = grad_recon[:, v:]  # softmax within each span, written in place
        if z is None:
            p.copy_(e)
        else:
            torch.div(e, seg.spread(z), out=p)
        p.sub_(hot).mul_(a)
        grad_s = (ctx.n / s - d2 / (s2 * s)) * a
        grad_sigma = s.new_zeros(ctx.sigma_shape).index_copy_(0, seg.values, grad_s)
        return None, grad_recon, grad_sigma, mu * b, (var - 1) * (b / 2), None


def _forward(modules: dict[str, nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    enc: Encoder = modules["encoder"]
    dec: Decoder = modules["decoder"]
    mu, logvar = enc(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    return _Loss.apply(x, dec.grouped(z), dec.sigma, mu, logvar, dec.seg)


def train_step(modules: dict[str, nn.Module], batch: Batch, opt: Optimizer, step: int) -> dict[str, torch.Tensor]:
    dec: Decoder = modules["decoder"]
    recon, kl = _forward(modules, batch["x"])
    loss = dec.loss_factor * recon + kl
    opt.step("vae", loss)
    with torch.no_grad():
        dec.sigma.clamp_(0.01, 1.0)
    return {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}


def val_loss(modules: dict[str, nn.Module], batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
    dec: Decoder = modules["decoder"]
    recon, kl = _forward(modules, batch["x"])
    return {"loss": dec.loss_factor * recon + kl, "recon": recon, "kl": kl}, len(batch["x"])


def _propose(dec: Decoder, seeds: np.ndarray, temperature: float) -> pd.DataFrame:
    """One candidate row per seed (conditions are met by rejection): z, the values' noise, above
    temperature 0 the one-hot spans' Gumbel noise, and the missing flags' from that seed. Gumbel-max:
    the argmax of logits / T + Gumbel noise is a draw from softmax(logits / T), so the transformer's
    argmax decodes either choice."""
    device = dec.sigma.device
    z = draws.normal(seeds, 0, dec.z_dim).to(device)
    raw = dec(z).float().cpu()
    noise = draws.normal(seeds, 1, raw.shape[1])
    sigma = dec.sigma.detach().float().cpu()
    if temperature > 0:
        out = raw / temperature + draws.gumbel(seeds, 2, raw.shape[1])
    else:
        out = raw.clone()
    if len(dec.missing):  # missing flags: always a draw from the decoder's own p(missing | z), stream 3
        out[:, dec.missing] = raw[:, dec.missing] + draws.gumbel(seeds, 3, len(dec.missing))
    v = dec.seg.values.cpu()
    out[:, v] = torch.tanh(raw[:, v]) + sigma[v] * noise[:, v]
    return dec.state.transformer.inverse(out.numpy(), seeds)


def sample(modules: dict[str, nn.Module], spec: DataSpec, fitted: Fitted, request: SampleRequest,
           options: SampleConfig) -> TableSamples:
    dec: Decoder = modules["decoder"]
    return sample_table(dec.state, request, options, lambda seeds, conds: _propose(dec, seeds, options.temperature))


def health(config: Config, window: dict[str, float]) -> str | None:
    return None
