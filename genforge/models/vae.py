"""VAE family: a conditional convolutional variational autoencoder, sampled from its prior or used to
reconstruct given images.

References:
- VAE: Kingma, Welling 2014, arXiv 1312.6114 (the ELBO, eq. 3; the reparameterisation trick, sec. 2.4;
  the KL of two Gaussians in closed form, eq. 10 and appendix B).
- Conditional VAE: Sohn, Lee, Yan 2015, NeurIPS, "Learning Structured Output Representation using Deep
  Conditional Generative Models" (encoder q(z | x, y) and decoder p(x | z, y); the prior here is
  N(0, I) for every class rather than a learned p(z | y)).
- beta-VAE: Higgins et al. 2017, ICLR, "beta-VAE: Learning Basic Visual Concepts with a Constrained
  Variational Framework" (the KL term weighted by beta).
- KL warm-up: Bowman et al. 2016, arXiv 1511.06349 sec. 3.1 (the KL weight raised linearly from 0, so
  the decoder learns to use z before the KL term pulls the posterior onto the prior).

Likelihood: Bernoulli. The decoder outputs one logit per pixel value scaled to [0, 1], and the
reconstruction term is their cross-entropy (K&W's own choice for MNIST). Digits are near-binary: the
cross-entropy punishes a grey pixel where the data is black or white far harder than a squared error
does, which keeps strokes sharp. A Gaussian decoder, with a learned scale or with the scale set to the
RMS error (sigma-VAE, Rybkin et al. 2021, arXiv 2006.13202), gave blurrier digits that followed their
class less (tuning notes in configs/vae-digits.yaml). Samples and reconstructions show the decoder's
mean: per-pixel Bernoulli noise would only add grain. On grey values the Bernoulli is not a normalised
density, so `nelbo` compares runs of this family, not log-likelihoods across families.

Scalars: `nelbo` = `recon` + `kl`, the negative ELBO with beta = 1, in nats per data dimension
(C*H*W), so it compares across steps and betas; the loss trained on is `recon` + `kl_weight` * `kl`.
Images are uint8 in the data and [-1, 1] floats inside. A dataset with classes gives a conditional
model (the extra class index K stands for an unlabeled row); one without classes an unconditional one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genforge.config import StrictModel
from genforge.errors import ModelError
from genforge.models import (Batch, DataSpec, ImageSamples, Optimizer, OptimizerSpec, SampleRequest, check_labels,
                             encode_images, fit_images, item_generators, randn_items, to_uint8, to_unit)


class Config(StrictModel):
    """The `model:` section. The encoder halves the resolution once per entry of `channels`; the
    decoder mirrors it, so the image side must be divisible by 2^len(channels)."""

    family: Literal["vae"]
    channels: list[int] = Field(default=[32, 64], min_length=1)  # width per resolution level
    blocks: int = Field(default=0, ge=0)  # residual blocks per level, in the encoder and in the decoder
    groups: int = Field(default=8, ge=1)  # GroupNorm groups; must divide every width
    latent: int = Field(default=32, ge=1)  # dimensions of z
    class_dim: int = Field(default=32, ge=1)  # size of the class embedding given to encoder and decoder
    beta: float = Field(default=1.0, gt=0.0)  # weight of the KL term after warm-up; 1 is the true ELBO
    kl_warmup_steps: int = Field(default=0, ge=0)  # steps over which the KL weight rises from 0 to beta

    @model_validator(mode="after")
    def _check(self) -> "Config":
        for c in self.channels:
            if c % self.groups:
                raise ValueError(f"groups ({self.groups}) must divide every width in channels, got {c}")
        return self


class SampleConfig(StrictModel):
    """The run's `sample:` section: generation defaults, each overridable per call."""

    temperature: float = Field(default=1.0, ge=0.0, le=10.0)  # z = temperature * N(0, I); 0: the prior's mean
    # A folder: instead of sampling the prior, reconstruct the first n images in it (sorted file names),
    # each output the original beside its reconstruction (width 2W); item i is the folder's image i.
    reconstruct: str | None = None


KINDS = ("image",)
EMA = ("model",)
HEADLINE = "nelbo"
GRAD_SYNC = "ddp"
TUNABLE = ("beta", "kl_warmup_steps")  # model fields a fine-tuning run may change (the weights' shapes stay)
# Sample options a remote request may set (the service): not `reconstruct`, which reads a folder on the server.
REQUEST_OPTIONS = ("temperature",)
COLLAPSED_KL = 1e-4  # nats per dimension (0.08 per 28x28 digit): below this z carries next to nothing


# ----------------------------------------------------------------------------- the networks

class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip connection, at a fixed width and resolution."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """q(z | x, y): convolutions down to (c_L, H/2^L, W/2^L), flattened, joined with the class
    embedding, one linear layer to the posterior's mean and log-variance."""

    def __init__(self, config: Config, spec: DataSpec, class_dim: int):
        super().__init__()
        ch, g, L = config.channels, config.groups, len(config.channels)
        self.conv_in = nn.Conv2d(spec.channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, c in enumerate(ch):
            layers += [ResBlock(c, g) for _ in range(config.blocks)]
            layers += [nn.GroupNorm(g, c), nn.SiLU(), nn.Conv2d(c, ch[min(i + 1, L - 1)], 3, stride=2, padding=1)]
        layers += [nn.GroupNorm(g, ch[-1]), nn.SiLU(), nn.Flatten()]
        self.down = nn.Sequential(*layers)
        self.head = nn.Linear(ch[-1] * (spec.height >> L) * (spec.width >> L) + class_dim, 2 * config.latent)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.down(self.conv_in(x))  # (B, c_L * H/2^L * W/2^L)
        if emb is not None:
            h = torch.cat([h, emb], dim=1)
        mu, logvar = self.head(h).float().chunk(2, dim=1)  # (B, Z) each
        return mu, logvar


class Up(nn.Module):
    """GroupNorm-SiLU, 2x nearest upsampling, a conv, the class embedding added per channel (so every
    scale of the decoder is told the class, not only its input), then residual blocks."""

    def __init__(self, cin: int, cout: int, class_dim: int, config: Config):
        super().__init__()
        self.norm = nn.GroupNorm(config.groups, cin)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.cond = nn.Linear(class_dim, cout) if class_dim else None
        self.res = nn.Sequential(*[ResBlock(cout, config.groups) for _ in range(config.blocks)])

    def forward(self, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv(F.interpolate(F.silu(self.norm(h)), scale_factor=2.0, mode="nearest"))  # (B, cout, 2h, 2w)
        if self.cond is not None:
            h = h + self.cond(emb)[:, :, None, None]
        return self.res(h)


class Decoder(nn.Module):
    """p(x | z, y): the encoder mirrored. [z, class embedding] -> a (c_L, H/2^L, W/2^L) map, one `Up`
    per level, then GroupNorm-SiLU and one conv to the image's channels."""

    def __init__(self, config: Config, spec: DataSpec, class_dim: int):
        super().__init__()
        ch, L = config.channels, len(config.channels)
        self.shape = (ch[-1], spec.height >> L, spec.width >> L)
        self.fc = nn.Linear(config.latent + class_dim, math.prod(self.shape))
        self.up = nn.ModuleList(Up(ch[min(i + 1, L - 1)], ch[i], class_dim, config) for i in reversed(range(L)))
        self.norm_out = nn.GroupNorm(config.groups, ch[0])
        self.conv_out = nn.Conv2d(ch[0], spec.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = z if emb is None else torch.cat([z, emb], dim=1)  # (B, Z + E)
        h = self.fc(h).view(-1, *self.shape)  # (B, c_L, H/2^L, W/2^L)
        for up in self.up:
            h = up(h, emb)  # (B, c_i, 2h, 2w)
        return self.conv_out(F.silu(self.norm_out(h))).float()  # (B, C, H, W): Bernoulli logits


# ----------------------------------------------------------------------------- the VAE

def kl_weight(config: Config, step: int | None) -> float:
    """The KL term's weight at `step`: beta * min(1, step / kl_warmup_steps) (Bowman et al. sec. 3.1);
    None (validation) means after warm-up."""
    if step is None or step >= config.kl_warmup_steps:
        return config.beta
    return config.beta * step / config.kl_warmup_steps


class VAE(nn.Module):
    """Encoder, decoder and the class embedding they share; `forward` returns the loss and the ELBO's terms."""

    def __init__(self, config: Config, spec: DataSpec):
        super().__init__()
        levels = len(config.channels)
        for side in (spec.height, spec.width):
            if side % (2 ** levels):
                raise ModelError(f"image size {spec.height}x{spec.width} must be divisible by 2^{levels} "
                                 f"for {levels} levels of model.channels; use fewer levels or another size")
        self.config = config
        self.num_classes = spec.num_classes
        self.dims = spec.channels * spec.height * spec.width
        class_dim = config.class_dim if spec.num_classes else 0
        self.class_emb = nn.Embedding(spec.num_classes + 1, class_dim) if spec.num_classes else None  # index K: no label
        self.encoder = Encoder(config, spec, class_dim)
        self.decoder = Decoder(config, spec, class_dim)

    def embed(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) class indices, -1 for unlabeled -> (B, E); None for an unconditional model."""
        if self.class_emb is None:
            return None
        return self.class_emb(torch.where(y < 0, self.num_classes, y))

    def forward(self, x: torch.Tensor, y: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        """x (B, C, H, W) in [-1, 1], y (B,) -> the loss at `step` and the ELBO's terms, per dimension."""
        emb = self.embed(y)
        # 1. the posterior q(z | x, y) = N(mu, diag(exp(logvar)))
        mu, logvar = self.encoder(x, emb)  # (B, Z) each
        # 2. one z per image by reparameterisation (sec. 2.4): z = mu + sigma * eps, eps ~ N(0, I)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        # 3. reconstruction term -log p(x | z, y) and KL(q(z | x, y) || N(0, I)) (eq. 10), per image
        logits = self.decoder(z, emb)  # (B, C, H, W)
        recon = F.binary_cross_entropy_with_logits(logits, (x + 1) / 2, reduction="none").flatten(1).sum(1)  # (B,)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)  # (B,)
        # 4. per data dimension; the negative ELBO (eq. 3) and the warmed-up, beta-weighted loss
        recon, kl = recon.mean() / self.dims, kl.mean() / self.dims
        w = kl_weight(self.config, step)
        return {"loss": recon + w * kl, "nelbo": recon + kl, "recon": recon, "kl": kl,
                "kl_weight": torch.tensor(w, device=kl.device)}

    @torch.inference_mode()
    def generate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z (B, Z) -> the decoder's mean images (B, C, H, W) in [-1, 1]."""
        return torch.sigmoid(self.decoder(z, self.embed(y))) * 2 - 1

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] -> decoded from the posterior mean, (B, C, H, W) in [-1, 1]."""
        emb = self.embed(y)
        mu, _ = self.encoder(x, emb)
        return torch.sigmoid(self.decoder(mu, emb)) * 2 - 1


# ----------------------------------------------------------------------------- images to reconstruct

def read_images(folder: Path, start: int, n: int, spec: DataSpec) -> np.ndarray:
    """Image files start .. start+n-1 directly in `folder` (sorted names) as uint8 (n, C, H, W), normalised as
    ingest normalises (genforge.data.images.decode: first frame, EXIF orientation, alpha on white,
    8-bit, short side resized, centre crop). A missing, empty or short folder, or an unreadable file
    among the n, is an error: a reconstruction of something else than asked for is worse than none."""
    # imported here: the data layer brings pandas and imagehash, which sampling the prior never needs
    from genforge.data.images import decode
    from genforge.data.sources import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise ModelError(f"sample.reconstruct must be a folder of images, got {str(folder)!r}, which is not a folder")
    if spec.height != spec.width:
        raise ModelError(f"sample.reconstruct needs a model of square images, this one makes {spec.height}x{spec.width}")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ModelError(f"sample.reconstruct: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    if len(files) < start + n:
        raise ModelError(f"sample.reconstruct: {folder} holds {len(files)} image files, fewer than the {start + n} asked "
                         f"for; ask for at most {len(files)} (--n)")
    images = np.empty((n, spec.channels, spec.height, spec.width), np.uint8)
    for i, path in enumerate(files[start:start + n]):
        got = decode(str(path), spec.height, gray=spec.channels == 1)
        if isinstance(got, str):
            raise ModelError(f"sample.reconstruct: cannot read {path}: {got}")
        images[i] = got.pixels  # a grey image (1, H, W) fills every channel of an RGB model
    return images


# ----------------------------------------------------------------------------- the family contract

fit = fit_images
encode = encode_images


def optimizers(config: Config) -> dict[str, OptimizerSpec]:
    return {"model": OptimizerSpec(("model",))}


def build(config: Config, spec: DataSpec, fitted: None) -> dict[str, nn.Module]:
    if spec.kind != "image":
        raise ModelError(f"the vae family trains on image datasets, got a {spec.kind} dataset")
    return {"model": VAE(config, spec)}


def train_step(modules: dict[str, nn.Module], batch: Batch, opt: Optimizer, step: int) -> dict[str, torch.Tensor]:
    out = modules["model"](to_unit(batch["images"]), batch["labels"], step)
    opt.step("model", out.pop("loss"))
    return {k: v.detach() for k, v in out.items()}


def val_loss(modules: dict[str, nn.Module], batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
    out = modules["model"](to_unit(batch["images"]), batch["labels"])
    return {k: out[k] for k in ("nelbo", "recon", "kl")}, len(batch["images"])


def sample(modules: dict[str, nn.Module], spec: DataSpec, fitted: None, request: SampleRequest,
           options: SampleConfig) -> ImageSamples:
    """Prior samples, uint8 (N, C, H, W), item i's z drawn from its own seed; or, with
    `options.reconstruct`, (N, C, H, 2W): each of the folder's first N images beside its reconstruction
    from the posterior mean (no randomness). The class given to encoder and decoder is the requested
    one, else the classes in turn as for sampling; a wrong class pulls the reconstruction towards it,
    so give the class (--label) when the images are of one."""
    model: VAE = modules["model"]
    device = model.decoder.conv_out.weight.device
    labels = check_labels(request.labels, request.n, model.num_classes)
    y = None if labels is None else labels.to(device)
    if options.reconstruct is not None:
        originals = torch.from_numpy(read_images(Path(options.reconstruct), request.start, request.n, spec)).to(device)
        images = torch.cat([originals, to_uint8(model.reconstruct(to_unit(originals), y))], dim=3)  # (N, C, H, 2W)
    else:
        z = options.temperature * randn_items(item_generators(request.seeds), (model.config.latent,), device)  # (N, Z)
        images = to_uint8(model.generate(z, y))
    return ImageSamples(images.cpu().numpy(), None if labels is None else tuple(labels.tolist()))


def health(config: Config, window: dict[str, float]) -> str | None:
    """Posterior collapse (Bowman et al. sec. 3.1): after warm-up, a KL near zero means the decoder
    ignores z, and every sample of a class looks the same."""
    warm = window.get("kl_weight", 0.0) >= 0.999 * config.beta
    if warm and window.get("kl", math.inf) < COLLAPSED_KL:
        return (f"posterior collapse: kl is {window['kl']:.1e} nats per dimension after warm-up, so the decoder "
                "ignores z; lower model.beta or raise model.kl_warmup_steps")
    return None
