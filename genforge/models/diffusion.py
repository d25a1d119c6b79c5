"""Diffusion family: a UNet denoiser, DDPM training, DDIM, DDPM and DPM-Solver++(2M) sampling,
classifier-free guidance.

References:
- DDPM: Ho, Jain, Abbeel 2020, arXiv 2006.11239 (training objective, ancestral sampling, the UNet).
- Improved DDPM: Nichol, Dhariwal 2021, arXiv 2102.09672 (cosine noise schedule).
- DDIM: Song, Meng, Ermon 2020, arXiv 2010.02502 (few-step sampling, eta).
- DPM-Solver++: Lu, Zhou, Bao, Chen, Li, Zhu 2022, arXiv 2211.01095 (Algorithm 2, the multistep
  second-order solver of the diffusion ODE in data prediction; first-order DPM-Solver++ is DDIM).
- Classifier-free guidance: Ho, Salimans 2022, arXiv 2207.12598.
- v-prediction: Salimans, Ho 2022, arXiv 2202.00512.

Images are uint8 in the data and [-1, 1] floats inside. A dataset with classes gives a
class-conditional model (the extra class index K means "no label", used for guidance); a dataset
without classes gives an unconditional one.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from genforge.config import StrictModel
from genforge.errors import ModelError
from genforge.models import (Batch, DataSpec, ImageSamples, OptimizerSpec, SampleRequest, check_labels, encode_images,
                             fit_images, item_generators, randn_items, to_uint8, to_unit)


class Config(StrictModel):
    """The `model:` section. The UNet halves the resolution between levels of `channels`."""

    family: Literal["diffusion"]
    channels: list[int] = Field(default=[32, 64, 128], min_length=1)  # width per resolution level
    blocks: int = Field(default=2, ge=1)  # residual blocks per level on the way down (one more up)
    attention: list[bool] = [False, False, True]  # self-attention per level (use it at low resolution)
    mid_attention: bool = True
    head_dim: int = Field(default=32, ge=1)
    groups: int = Field(default=8, ge=1)  # GroupNorm groups; must divide every width
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    timesteps: int = Field(default=1000, ge=2, le=10000)
    schedule: Literal["cosine", "linear"] = "cosine"
    prediction: Literal["eps", "v"] = "eps"
    cond_drop: float = Field(default=0.1, ge=0.0, le=1.0)  # share of labels dropped for guidance

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if len(self.attention) != len(self.channels):
            raise ValueError(f"attention needs one flag per level of channels ({len(self.channels)}), got {len(self.attention)}")
        for c, attn in zip(self.channels, self.attention):
            if c % self.groups:
                raise ValueError(f"groups ({self.groups}) must divide every width in channels, got {c}")
            if attn and c % self.head_dim:
                raise ValueError(f"head_dim ({self.head_dim}) must divide the width of an attention level, got {c}")
        if self.mid_attention and self.channels[-1] % self.head_dim:
            raise ValueError(f"head_dim ({self.head_dim}) must divide the last width for mid_attention, got {self.channels[-1]}")
        return self


class SampleConfig(StrictModel):
    """The run's `sample:` section: generation defaults, each overridable per call."""

    # DPM-Solver++(2M) by default: on the diffusion-digits model (benchmarks/results/sampler.md) it is within
    # 10% of DDIM-100's evaluator FD from 5 steps on, and at 10-20 steps its images are several times closer
    # to the converged ODE solution than DDIM's (tests/test_diffusion.py); 10 steps leave a margin on other models
    sampler: Literal["ddim", "ddpm", "dpmpp_2m"] = "dpmpp_2m"
    steps: int | None = Field(default=None, ge=1)  # None: DEFAULT_STEPS (ddpm: every timestep)
    eta: float = Field(default=0.0, ge=0.0, le=1.0)  # DDIM noise; ddpm is eta = 1; dpmpp_2m has none
    guidance: float = Field(default=2.0, ge=0.0, le=50.0)  # 1 = conditional only, 0 = unconditional
    clip: bool = True  # clamp the predicted clean image to [-1, 1] at every step

    @field_validator("eta")
    @classmethod
    def _no_eta_for_dpmpp(cls, eta: float, info: ValidationInfo) -> float:
        if info.data.get("sampler") == "dpmpp_2m" and eta != 0:
            raise ValueError("eta applies to the ddim sampler only; dpmpp_2m solves the ODE without noise: set eta to 0")
        return eta


DEFAULT_STEPS = {"ddim": 50, "dpmpp_2m": 10}  # network evaluations when `steps` is not given


KINDS = ("image",)
EMA = ("model",)
HEADLINE = "loss"
GRAD_SYNC = "ddp"
TUNABLE = ("cond_drop",)  # model fields a fine-tuning run may change (the weights' shapes stay)
REQUEST_OPTIONS = ("sampler", "steps", "eta", "guidance")  # sample options a remote request may set (the service)


# ----------------------------------------------------------------------------- the UNet

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer and DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time (and class) embedding added in between."""

    def __init__(self, cin: int, cout: int, tdim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: faster, stabler start
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions (fused scaled_dot_product_attention)."""

    def __init__(self, c: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = c // head_dim
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C): a view in channels-last
        q, k, v = self.qkv(h).view(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, HW, hd)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hd)
        h = self.proj(h.transpose(1, 2).reshape(B, H * W, C))  # (B, HW, C)
        return x + h.view(B, H, W, C).permute(0, 3, 1, 2)


class UNet(nn.Module):
    """The DDPM UNet: per level `blocks` residual blocks (attention where asked), down/up-sampling
    between levels, skip connections from every down-path output to the up path.

    `UNet(config, image_channels, num_classes)` builds it from the config alone, so the same network
    can be built at any size for comparisons; `num_classes=0` leaves out the class embedding.
    """

    def __init__(self, config: Config, image_channels: int, num_classes: int = 0):
        super().__init__()
        ch, g = config.channels, config.groups
        tdim = 4 * ch[0]
        self.base = ch[0]
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.class_emb = nn.Embedding(num_classes + 1, tdim) if num_classes else None  # index K: no label
        self.conv_in = nn.Conv2d(image_channels, ch[0], 3, padding=1)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, tdim, g, config.dropout)

        def attn(c: int, on: bool) -> nn.Module:
            return SelfAttention(c, config.head_dim, g) if on else nn.Identity()

        self.down = nn.ModuleList()
        skips, c = [ch[0]], ch[0]
        for i, (cout, use_attn) in enumerate(zip(ch, config.attention)):
            level = nn.Module()
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(config.blocks):
                level.res.append(res(c, cout))
                level.attn.append(attn(cout, use_attn))
                c = cout
                skips.append(c)
            level.sample = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(ch) - 1 else nn.Identity()
            if i < len(ch) - 1:
                skips.append(c)
            self.down.append(level)

        self.mid1 = res(c, c)
        self.mid_attn = attn(c, config.mid_attention)
        self.mid2 = res(c, c)

        self.up = nn.ModuleList()
        for i, (cout, use_attn) in reversed(list(enumerate(zip(ch, config.attention)))):
            level = nn.Module()
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(config.blocks + 1):
                level.res.append(res(c + skips.pop(), cout))
                level.attn.append(attn(cout, use_attn))
                c = cout
            level.sample = nn.Conv2d(c, c, 3, padding=1) if i > 0 else nn.Identity()  # after 2x nearest upsampling
            self.up.append(level)

        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) noisy images, t (B,) timesteps, y (B,) class indices -> (B, C, H, W)."""
        emb = self.time_mlp(timestep_embedding(t, self.base))  # (B, tdim)
        if self.class_emb is not None:
            emb = emb + self.class_emb(y)
        emb = F.silu(emb)  # every block projects the activated embedding

        h = self.conv_in(x)
        hs = [h]
        for level in self.down:
            for res, attn in zip(level.res, level.attn):
                h = attn(res(h, emb))
                hs.append(h)
            if not isinstance(level.sample, nn.Identity):
                h = level.sample(h)  # (B, C, H/2, W/2)
                hs.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for level in self.up:
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb))
            if not isinstance(level.sample, nn.Identity):
                h = level.sample(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------- diffusion

def alphas_cumprod(config: Config) -> torch.Tensor:
    """abar_t for t = 0..T-1 in float64: DDPM's linear betas, or the improved-DDPM cosine schedule."""
    T = config.timesteps
    if config.schedule == "linear":  # DDPM sec. 4, scaled so any T spans the same noise range
        betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=torch.float64)
    else:  # Nichol & Dhariwal eq. 17, betas clipped at 0.999
        s = 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def dpmpp_timesteps(abar: torch.Tensor, steps: int) -> list[int]:
    """The `steps` timesteps DPM-Solver++(2M) evaluates the network at, descending from T-1: uniform in
    the half log-SNR lambda_t = log(alpha_t / sigma_t), where its steps are taken, the last one a step
    h short of lambda at t = 0, from where the final step goes to the clean image.

    The grid starts at lambda(T-2), not lambda(T-1): the cosine schedule clips its last beta at 0.999, so
    abar drops 1000-fold in the last timestep and lambda(T-1) = -9.9 sits 3.5 below lambda(T-2), an outlier
    that a uniform grid would spend its first step on (both are pure noise; the step out of T-1 still uses
    the true lambda(T-1)). Timesteps stay integers, the ones the network was trained on: each lambda is
    rounded to the nearest t, kept strictly decreasing and leaving room for the rest, so `steps` = T is
    every timestep. Uniform in lambda rather than in time (as DDIM's grid is), because a time-uniform grid
    on the cosine schedule ends with a long step in lambda (at 10 steps, t = 111 to 0: lambda 1.7 to 5.1)
    where the second-order term overshoots: on exact denoisers and on a trained network, DDIM's grid left
    1.6-6x the ODE error of this one at 10-20 steps (benchmarks/README.md, "Fast sampler").
    """
    T = len(abar)
    lam = (0.5 * (abar.double().log() - (1 - abar.double()).log())).cpu().numpy()  # lambda_t, decreasing in t
    wanted = np.linspace(lam[T - 2], lam[0], steps + 1)[1:-1]  # lambda at t_1 .. t_{M-1}
    t_of = np.interp(wanted, lam[::-1], np.arange(T - 1, -1, -1))  # t(lambda) from the table, flipped to increase
    ts = [T - 1]
    for i, t in enumerate(np.round(t_of).astype(int).tolist(), start=1):
        ts.append(max(min(t, ts[-1] - 1), steps - 1 - i))  # strictly decreasing, room for the remaining steps
    return ts


class Diffusion(nn.Module):
    """The UNet with its noise schedule; `forward` returns the training loss."""

    def __init__(self, config: Config, spec: DataSpec):
        super().__init__()
        levels = len(config.channels) - 1
        for side in (spec.height, spec.width):
            if side % (2 ** levels):
                raise ModelError(f"image size {spec.height}x{spec.width} must be divisible by 2^{levels} "
                                 f"for {levels + 1} levels of model.channels; use fewer levels or another size")
        self.config = config
        self.num_classes = spec.num_classes
        self.unet = UNet(config, spec.channels, spec.num_classes)
        self.register_buffer("abar", alphas_cumprod(config).float(), persistent=False)

    def forward(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """DDPM's simplified loss (eq. 14): predict the noise (or v) from a noised image."""
        B = x0.shape[0]
        t = torch.randint(0, self.config.timesteps, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        a = self.abar[t].view(B, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # q(x_t | x_0), eq. 4
        if self.num_classes:
            drop = (y < 0) | (torch.rand(B, device=y.device) < self.config.cond_drop)
            y = torch.where(drop, self.num_classes, y)  # unlabeled and dropped -> "no label"
        target = noise if self.config.prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
        return F.mse_loss(self.unet(xt, t, y if self.num_classes else None).float(), target)

    def _predict(self, x: torch.Tensor, t: int, y: torch.Tensor | None, guidance: float) -> torch.Tensor:
        """The network output at step t, guided: out_u + w (out_c - out_u), both in one forward pass."""
        tt = torch.full((x.shape[0],), t, device=x.device)
        if y is None:
            return self.unet(x, tt).float()
        if guidance == 1.0:
            return self.unet(x, tt, y).float()
        uncond = torch.full_like(y, self.num_classes)
        out = self.unet(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, uncond])).float()
        out_c, out_u = out.chunk(2)
        return out_u + guidance * (out_c - out_u)

    @torch.inference_mode()
    def sample(self, noise: torch.Tensor, y: torch.Tensor | None, options: SampleConfig,
               generators: list[torch.Generator]) -> torch.Tensor:
        """DDIM (eq. 12 of the DDIM paper) from x_T = noise to x_0 in [-1, 1], or DPM-Solver++(2M)
        (`sampler: dpmpp_2m`, see `dpmpp_2m`) with the same number of network evaluations.

        With eta = 1 on all timesteps this is DDPM's ancestral sampler (sigma_t^2 = beta~_t, DDIM eq. 16),
        which is what `sampler: ddpm` runs. Fresh noise (eta > 0) comes from each item's own generator.
        """
        T = self.config.timesteps
        eta = 1.0 if options.sampler == "ddpm" else options.eta
        steps = options.steps or (T if options.sampler == "ddpm" else DEFAULT_STEPS[options.sampler])
        if not 1 <= steps <= T:
            raise ModelError(f"steps must be between 1 and {T} (the model's timesteps), got {steps}")
        if options.sampler == "dpmpp_2m":
            return self.dpmpp_2m(noise, y, options, dpmpp_timesteps(self.abar, steps))
        ts = torch.linspace(T - 1, 0, steps).round().long().tolist()  # descending, always from t = T-1
        x = noise
        for i, t in enumerate(ts):
            a_t = self.abar[t]
            a_prev = self.abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones_like(a_t)
            out = self._predict(x, t, y, options.guidance)
            # 1. the predicted x_0 and noise ("predicted x_0" of eq. 12; v -> x_0, eps per Salimans & Ho sec. 4)
            if self.config.prediction == "eps":
                eps = out
                x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            else:
                x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
                eps = (1 - a_t).sqrt() * x + a_t.sqrt() * out
            if options.clip:
                x0 = x0.clamp(-1, 1)
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            # 2. sigma_t(eta), eq. 16
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            # 3. x_{t-1} = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z, eq. 12
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and i + 1 < len(ts):
                x = x + sigma * randn_items(generators, x.shape[1:], x.device)
        return x

    def data_prediction(self, x: torch.Tensor, t: int, y: torch.Tensor | None, options: SampleConfig) -> torch.Tensor:
        """x_theta(x_t, t): the clean image the guided network predicts from x_t, clamped to [-1, 1] with `clip`
        (DPM-Solver++'s thresholding with a fixed threshold of 1, which is what DDIM's `clip` does)."""
        out = self._predict(x, t, y, options.guidance)
        a_t = self.abar[t]
        if self.config.prediction == "eps":
            x0 = (x - (1 - a_t).sqrt() * out) / a_t.sqrt()  # x_t = alpha_t x_0 + sigma_t eps
        else:
            x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out  # v = alpha_t eps - sigma_t x_0 (Salimans & Ho sec. 4)
        return x0.clamp(-1, 1) if options.clip else x0

    def dpmpp_2m(self, x: torch.Tensor, y: torch.Tensor | None, options: SampleConfig, ts: list[int]) -> torch.Tensor:
        """DPM-Solver++(2M), Algorithm 2 of Lu et al. 2022: the diffusion ODE solved in data prediction
        with a second-order multistep (Adams-Bashforth-like) exponential integrator, one network
        evaluation per step, from x_T = x at ts[0] = T-1 to the clean image.

        `ts` = t_0 > ... > t_{M-1} (`dpmpp_timesteps`), and t_M is the clean image (alpha = 1, sigma = 0),
        where DDIM also ends. The first step is first order (there is no earlier prediction yet, Algorithm 2
        line 4) and so is the last, as diffusers does ("lower_order_final"): into sigma = 0 the half log-SNR
        is infinite, and the first-order step returns the prediction x_theta at t_{M-1}.
        """
        # alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) (VP: alpha^2 + sigma^2 = 1), in float64 for the coefficients
        abar = self.abar[ts].double().cpu()
        alpha, sigma = abar.sqrt().tolist() + [1.0], (1 - abar).sqrt().tolist() + [0.0]  # t_M: the clean image
        lam = [math.log(a / s) for a, s in zip(alpha[:-1], sigma[:-1])]  # lambda_t = log(alpha_t / sigma_t)
        M = len(ts)
        x0_prev = None  # x_theta(x~_{t_{i-2}}, t_{i-2}): the buffer Q of Algorithm 2
        for i in range(1, M + 1):  # step i: from t_{i-1} to t_i
            # 1. x_theta(x~_{t_{i-1}}, t_{i-1}), one guided network evaluation (Algorithm 2 lines 3, 5, 10)
            x0 = self.data_prediction(x, ts[i - 1], y, options)
            if i == M:
                # 2. the final step, first order into sigma_M = 0, alpha_M = 1 (h = inf, e^-h = 0):
                #    x~_{t_M} = (sigma_M / sigma_{M-1}) x~ - alpha_M (e^-h - 1) x_theta = x_theta
                x = x0
                break
            # 3. h_i = lambda_{t_i} - lambda_{t_{i-1}} (Algorithm 2 line 1)
            h = lam[i] - lam[i - 1]
            if x0_prev is None:
                # 4. the first step, first order (DPM-Solver++1 = DDIM; Algorithm 2 line 4)
                D = x0
            else:
                # 5. r_i = h_{i-1} / h_i; D_i = (1 + 1/(2 r_i)) x_theta(t_{i-1}) - 1/(2 r_i) x_theta(t_{i-2})
                #    (Algorithm 2 lines 7-8: a backward difference of the last two predictions, scaled to step i)
                r = (lam[i - 1] - lam[i - 2]) / h
                D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            # 6. x~_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x~_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i (Algorithm 2
            #    lines 4 and 9): the ODE's linear part solved exactly, its integral of e^lambda x_theta over
            #    [lambda_{t_{i-1}}, lambda_{t_i}] with x_theta taken as D_i
            x = (sigma[i] / sigma[i - 1]) * x - (alpha[i] * math.expm1(-h)) * D
            x0_prev = x0
        return x


# ----------------------------------------------------------------------------- the family contract

fit = fit_images
encode = encode_images


def optimizers(config: Config) -> dict[str, OptimizerSpec]:
    return {"model": OptimizerSpec(("model",))}


def build(config: Config, spec: DataSpec, fitted: None) -> dict[str, nn.Module]:
    if spec.kind != "image":
        raise ModelError(f"the diffusion family trains on image datasets, got a {spec.kind} dataset")
    return {"model": Diffusion(config, spec)}


def train_step(modules: dict[str, nn.Module], batch: Batch, opt, step: int) -> dict[str, torch.Tensor]:
    loss = modules["model"](to_unit(batch["images"]), batch["labels"])
    opt.step("model", loss)
    return {"loss": loss.detach()}


def val_loss(modules: dict[str, nn.Module], batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
    return {"loss": modules["model"](to_unit(batch["images"]), batch["labels"])}, len(batch["images"])


def sample(modules: dict[str, nn.Module], spec: DataSpec, fitted: None, request: SampleRequest,
           options: SampleConfig) -> ImageSamples:
    """One image per item as uint8 (N, C, H, W); item i's starting noise (and any later noise) comes
    from its own seed, so it does not depend on its batch-mates."""
    model: Diffusion = modules["model"]
    device = model.abar.device
    labels = check_labels(request.labels, request.n, model.num_classes)
    gens = item_generators(request.seeds)
    noise = randn_items(gens, (spec.channels, spec.height, spec.width), device)
    x0 = model.sample(noise, None if labels is None else labels.to(device), options, gens)
    return ImageSamples(to_uint8(x0).cpu().numpy(), None if labels is None else tuple(labels.tolist()))


def health(config: Config, window: dict[str, float]) -> str | None:
    return None
