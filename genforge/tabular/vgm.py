"""Mode-specific normalisation and the matrix CTGAN and TVAE learn on.

References: Xu et al. 2019, "Modeling Tabular Data using Conditional GAN" (CTGAN), sec. 4.2.

A continuous column is rarely one Gaussian: a variational Gaussian mixture (the model of sklearn's
Dirichlet-process `BayesianGaussianMixture`, fitted for all columns at once by `_variational`) finds
its modes, and each value becomes (alpha, one-hot mode): the mode k drawn from the value's posterior
over the modes that can hold it, alpha = (x - mu_k) / (4 sigma_k), clipped to [-0.99, 0.99] (the
paper's eq. in sec. 4.2). A column that may be missing adds a present/missing
one-hot; a discrete column is a one-hot of its categories. Spans say where each part lies, so the
model can put tanh on values and softmax on one-hots.

The mixture is fitted on at most `fit_rows` seeded-sampled values per column: fitting on every row
(as SDV does) is what makes medium tables take minutes. It is stored as json (means, stds, weights
of the modes kept), never pickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from genforge.config import StrictModel
from genforge.errors import DataError, ModelError
from genforge.tabular.columns import Codec

FORMAT = "genforge-table-transformer/1"


class TransformConfig(StrictModel):
    """How a table is transformed; every table family embeds it as `model.transform`."""

    max_modes: int = Field(10, ge=1, le=50)
    weight_threshold: float = Field(0.005, gt=0, lt=1)  # modes below this weight are dropped
    # rows each mixture is fitted on (seeded subsample). Diamonds' 7 numeric columns, 43,152 rows: 6.6 s at
    # 20,000, 2.5 s at 10,000, 0.9 s at 5,000, keeping 8-10 modes per column at each (benchmarks/results/tables.md)
    fit_rows: int = Field(10_000, ge=100)


@dataclass(frozen=True)
class Span:
    """Where one part of a learned column lies in the matrix. value: 1 scalar in [-1, 1] (tanh);
    mode / missing / category: a one-hot (softmax)."""

    column: str
    role: Literal["value", "mode", "missing", "category"]
    start: int
    size: int


@dataclass(frozen=True)
class Modes:
    """A continuous column's mixture: the modes kept, in original units."""

    means: tuple[float, ...]
    stds: tuple[float, ...]
    weights: tuple[float, ...]

    @property
    def mean(self) -> float:
        w = np.array(self.weights)
        return float(w @ np.array(self.means) / w.sum())


def fit_modes(columns: Sequence[tuple[np.ndarray, np.random.Generator]], config: TransformConfig) -> list[Modes]:
    """The modes of each column's non-missing values, each fitted on at most `config.fit_rows` of them
    (drawn with its own rng). Columns with the same number of components are fitted together in
    chunks of bounded size (see `_mixtures`)."""
    out: list[Modes | None] = [None] * len(columns)
    fits: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}  # components -> (column, values, uniforms)
    for i, (x, rng) in enumerate(columns):
        x = x[~np.isnan(x)]
        if len(x) > config.fit_rows:
            x = rng.choice(x, config.fit_rows, replace=False)
        distinct = len(np.unique(x))
        if distinct < 2:  # a constant (or empty) column: one mode; its std only scales alpha
            out[i] = Modes((float(x[0]) if len(x) else 0.0,), (1.0,), (1.0,))
            continue
        k = min(config.max_modes, distinct)
        fits.setdefault(k, []).append((i, x, rng.random(k)))
    for k, group in fits.items():
        chunk = max(1, CHUNK_VALUES // (k * max(len(x) for _, x, _ in group)))
        for at in range(0, len(group), chunk):
            part = group[at:at + chunk]
            centers = np.array([x.mean() for _, x, _ in part])
            scales = np.array([x.std() for _, x, _ in part])  # fitted standardised: the priors and reg_covar are scale-free
            z = np.zeros((len(part), max(len(x) for _, x, _ in part)))
            mask = np.zeros(z.shape, dtype=bool)
            for j, (_, x, _) in enumerate(part):
                z[j, :len(x)], mask[j, :len(x)] = (x - centers[j]) / scales[j], True
            means, covs, weights = _mixtures(z, mask, k, np.stack([u for _, _, u in part]))
            for j, (i, _, _) in enumerate(part):
                keep = weights[j] > config.weight_threshold
                if not keep.any():
                    keep = weights[j] == weights[j].max()
                out[i] = Modes(tuple(float(v) for v in centers[j] + scales[j] * means[j, keep]),
                               tuple(float(v) for v in scales[j] * np.sqrt(covs[j, keep])),
                               tuple(float(v) for v in weights[j, keep]))
    return out  # type: ignore[return-value]


def _special(fn: Callable[[torch.Tensor], torch.Tensor], a: np.ndarray) -> np.ndarray:
    """A special function of float64 values, from torch: importing scipy.special took 0.5 to 0.7 s, a
    fifth of a whole TVAE fit on penguins, for three functions of a few (columns, modes) arrays."""
    return fn(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))).numpy()


def digamma(a: np.ndarray) -> np.ndarray:
    return _special(torch.special.digamma, a)


def gammaln(a: np.ndarray) -> np.ndarray:
    return _special(torch.lgamma, a)


def betaln(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return gammaln(a) + gammaln(b) - gammaln(a + b)


CHUNK_VALUES = 2_000_000  # values x components per (C, N, K) array of one chunk of columns: 16 MB in float64


def _mixtures(x: np.ndarray, mask: np.ndarray, k: int, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variational Dirichlet-process mixtures of k 1-d Gaussians, one per row of x (C, N) where mask
    holds, started by `_kmeans` from the uniforms u (C, k): (means, variances, weights), each (C, k)."""
    return _variational(x, mask, _kmeans(x, mask, k, u))


def _kmeans(x: np.ndarray, mask: np.ndarray, k: int, u: np.ndarray) -> np.ndarray:
    """Each value's one-hot cluster (C, k, N): k-means++ seeding (Arthur & Vassilvitskii 2007) from the
    uniforms u, then Lloyd's k-means to convergence, as sklearn's default start does, less its greedy
    trials. The start decides how many modes survive: evenly spaced starts kept half again more
    modes than sklearn on breast cancer, these about as many. sklearn's greedy trials (2 + log k
    candidates per centre) were tried over ten run-seeded mixtures: breast cancer TVAE's sdmetrics
    quality moved -0.009 -> -0.005 against SDV's, but penguins TVAE's TSTR fell 0.899 -> 0.855
    (SDV 0.913), so the start stays plain. On SDV's own mixture (rdt fits it with random_state 42)
    genforge's TVAE scores what SDV's does on breast cancer (+0.001), and SDV with a mixture per seed
    scores what genforge does (benchmarks/results/tables.md, `sdv_seeded`)."""
    m = mask.astype(np.float64)
    n = mask.sum(1)
    x = np.where(mask, x, 0.0)
    rows = np.arange(len(x))
    centers = np.empty((len(x), k))
    centers[:, 0] = x[rows, np.minimum((u[:, 0] * n).astype(np.int64), n - 1)]
    d2 = (x - centers[:, :1]) ** 2 * m
    for j in range(1, k):
        cdf = d2.cumsum(1)
        centers[:, j] = x[rows, np.minimum((cdf < u[:, j:j + 1] * cdf[:, -1:]).sum(1), n - 1)]
        d2 = np.minimum(d2, (x - centers[:, j:j + 1]) ** 2 * m)
    for _ in range(300):
        hot = (np.abs(x[:, None, :] - centers[:, :, None]).argmin(1)[:, None, :] == np.arange(k)[None, :, None]) * m[:, None, :]
        count = hot.sum(2)
        moved = np.where(count > 0, (hot * x[:, None, :]).sum(2) / np.maximum(count, 1), centers)
        if np.allclose(moved, centers, rtol=0, atol=1e-6):
            break
        centers = moved
    return hot


def _variational(x: np.ndarray, mask: np.ndarray, start: np.ndarray, gamma0: float = 1e-3, tol: float = 1e-3,
                 max_iter: int = 100, reg: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variational inference from the responsibilities `start` (C, k, N), zero where mask is False.

    The model and updates are sklearn's `BayesianGaussianMixture(weight_concentration_prior_type=
    "dirichlet_process", weight_concentration_prior=gamma0, covariance_type="diag")` with its default
    priors (the data's mean and unbiased variance, mean precision 1, one degree of freedom), its reg_covar,
    tol and max_iter, and each column stops when its own lower bound changes by less than tol, as there.
    Written here because sklearn fits one column per call at about 1 ms of Python per EM round: 30
    columns x 100 rounds took 3 s on breast cancer, a third of a TVAE fit; here a round is a few array
    operations over all the columns at once. From the same start it gives sklearn's parameters to 1e-10
    (tests/test_tabular_transform.py)."""
    # arrays are (column, component, value): reductions over values run along contiguous memory. The
    # Gaussian's log-density is a quadratic in x, so each round's log-probabilities are one product
    # of (column, component, 3) coefficients with every value's (1, x, x^2), and the M-step's sums
    # (of resp, resp x, resp x^2) one product of the responsibilities with them: 7 passes over the
    # (column, component, value) arrays a round where the direct formulas took 17.
    m = mask.astype(np.float64)
    n = m.sum(1)
    x = np.where(mask, x, 0.0)
    powers = np.stack([m, x, x * x], 1)  # (column, 3, value), zero where masked
    mean0 = x.sum(1) / n
    var0 = ((x - mean0[:, None]) ** 2 * m).sum(1) / (n - 1)
    c, k = start.shape[:2]
    a, b, mp, mu, dof, cov = (np.zeros((c, k)) for _ in range(6))
    bound = np.full(c, -np.inf)
    live = np.arange(c)

    def m_step(rows: np.ndarray, stats: np.ndarray) -> None:  # stats (rows, k, 3): sums of resp, resp x, resp x^2
        nk = stats[:, :, 0] + 10 * np.finfo(np.float64).eps
        xk = stats[:, :, 1] / nk
        sk = stats[:, :, 2] / nk - xk ** 2 + reg
        a[rows], b[rows] = 1.0 + nk, gamma0 + (nk.sum(1, keepdims=True) - nk.cumsum(1))  # stick-breaking
        mp[rows] = 1.0 + nk
        mu[rows] = (mean0[rows, None] + nk * xk) / mp[rows]
        dof[rows] = 1.0 + nk
        cov[rows] = (var0[rows, None] + nk * (sk + (xk - mean0[rows, None]) ** 2 / mp[rows])) / dof[rows]

    m_step(live, start @ powers.transpose(0, 2, 1))
    for _ in range(max_iter):
        r = live
        p, mr = (powers, m) if len(r) == c else (powers[r], m[r])
        dab = digamma(a[r] + b[r])
        log_w = digamma(a[r]) - dab + np.concatenate([np.zeros((len(r), 1)), np.cumsum(digamma(b[r]) - dab, 1)[:, :-1]], 1)
        const = log_w - 0.5 * (np.log(2 * np.pi) + np.log(cov[r]) + np.log(dof[r])) \
            + 0.5 * (np.log(2.0) + digamma(0.5 * dof[r]) - 1.0 / mp[r])
        inv = 1.0 / cov[r]  # const - (x - mu)^2 / 2 cov, as coefficients of 1, x and x^2
        coef = np.stack([const - 0.5 * mu[r] ** 2 * inv, mu[r] * inv, -0.5 * inv], 2)
        log_p = coef @ p  # (rows, k, values)
        top = log_p.max(1, keepdims=True)
        log_p -= top
        resp = np.exp(log_p, out=log_p)
        norm = resp.sum(1, keepdims=True)
        resp *= mr[:, None, :] / norm
        stats = resp @ p.transpose(0, 2, 1)
        m_step(r, stats)
        # the lower bound; sum of resp * log resp is that of resp * (log_p - top) less each value's log
        # norm, and a value's responsibilities sum to 1: sum(resp * log_p) = sum(coef * stats)
        entropy = -(coef * stats).sum((1, 2)) + ((top[:, 0] + np.log(norm[:, 0])) * mr).sum(1)
        ldpc = -0.5 * np.log(cov[r]) - 0.5 * np.log(dof[r])
        wishart = -(dof[r] * ldpc + dof[r] * 0.5 * np.log(2.0) + gammaln(0.5 * dof[r])).sum(1)
        new = entropy - wishart + betaln(a[r], b[r]).sum(1) - 0.5 * np.log(mp[r]).sum(1)
        done = np.abs(new - bound[r]) < tol
        bound[r] = new
        live = r[~done]
        if not len(live):
            break
    total = a + b
    weights = a / total * np.concatenate([np.ones((c, 1)), np.cumprod(b / total, 1)[:, :-1]], 1)
    return mu, cov, weights / weights.sum(1, keepdims=True)


class TableTransformer:
    """A table <-> a float matrix (N, width) of spans; see the module docstring."""

    def __init__(self, codec: Codec, modes: dict[str, Modes]):
        self.codec = codec
        self.modes = modes
        spans, start = [], 0
        for lc in codec.learned:
            if lc.kind == "continuous":
                parts = [("value", 1), ("mode", len(modes[lc.name].means))] + ([("missing", 2)] if lc.nullable else [])
            else:
                parts = [("category", len(lc.categories))]
            for role, size in parts:
                spans.append(Span(lc.name, role, start, size))
                start += size
        self.spans: tuple[Span, ...] = tuple(spans)
        self.width = start
        self.discrete: tuple[str, ...] = tuple(lc.name for lc in codec.learned if lc.kind == "discrete")
        self._parts = {(sp.column, sp.role): sp for sp in spans}

    @classmethod
    def fit(cls, frame: pd.DataFrame, schema_columns: list[dict], config: TransformConfig, seed: int,
            fixed_combinations: Sequence[Sequence[str]] = ()) -> "TableTransformer":
        """`fixed_combinations`: groups of columns generated only in seen combinations (`model.rules`)."""
        codec = Codec.fit(frame, schema_columns, fixed_combinations)
        values = codec.values(frame)
        numeric = [(i, lc.name) for i, lc in enumerate(codec.learned) if lc.kind == "continuous"]
        fitted = fit_modes([(values[name], np.random.default_rng([seed, i])) for i, name in numeric], config)
        return cls(codec, {name: f for (_, name), f in zip(numeric, fitted)})

    def transform(self, frame: pd.DataFrame, seed: int) -> np.ndarray:
        """float32 (N, width); each value's mode is drawn from its posterior with a seeded rng, as
        CTGAN does, so one value does not always land on the same side of a mode boundary."""
        values = self.codec.values(frame)
        n = len(frame)
        rows = np.arange(n)
        out = np.zeros((n, self.width), dtype=np.float32)
        rng = np.random.default_rng(seed)
        for lc in self.codec.learned:
            v = values[lc.name]
            if lc.kind == "discrete":
                out[rows, self._parts[lc.name, "category"].start + v] = 1
                continue
            modes = self.modes[lc.name]
            missing = np.isnan(v)
            if missing.any() and not lc.nullable:
                raise DataError(f"column {lc.name!r} has missing values, but none in its dataset when the model was fitted")
            x = np.where(missing, modes.mean, v)  # a missing value's alpha/mode encode the column mean
            mu, sigma, w = (np.array(a) for a in (modes.means, modes.stds, modes.weights))
            z = (x[:, None] - mu) / (4 * sigma)  # (N, K) the value's alpha in each mode
            logp = np.log(w) - np.log(sigma) - 8 * z**2  # (N, K) log w_k N(x; mu_k, sigma_k) + const
            # draw only among the modes that hold the value within |alpha| <= 0.99 (where any does):
            # CTGAN draws from all, and a tail mode then clips the value
            fits = np.abs(z) <= 0.99
            logp = np.where(fits | ~fits.any(axis=1, keepdims=True), logp, -np.inf)
            p = np.exp(logp - logp.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            k = np.minimum((p.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1), len(mu) - 1)  # (N,) drawn modes
            out[:, self._parts[lc.name, "value"].start] = np.clip(z[rows, k], -0.99, 0.99)
            out[rows, self._parts[lc.name, "mode"].start + k] = 1
            if lc.nullable:
                out[rows, self._parts[lc.name, "missing"].start + missing] = 1
        return out

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        """int64 (N, len(discrete)): each discrete column's category code (conditioning, CTGAN's
        training-by-sampling)."""
        values = self.codec.values(frame)
        return np.stack([values[name] for name in self.discrete], axis=1) if self.discrete \
            else np.zeros((len(frame), 0), dtype=np.int64)

    def inverse(self, x: np.ndarray, seeds: Sequence[int]) -> pd.DataFrame:
        """A generator's output (N, width), any real numbers -> rows: one-hots by argmax, values
        clipped to [-1, 1]; seeds: one per row (ids are made from them)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.width or len(x) != len(seeds):
            raise ModelError(f"inverse takes ({len(seeds)}, {self.width}) values (one row per seed), got {x.shape}")
        hot = lambda sp: x[:, sp.start:sp.start + sp.size].argmax(axis=1)  # noqa: E731
        values = {}
        for lc in self.codec.learned:
            if lc.kind == "discrete":
                values[lc.name] = hot(self._parts[lc.name, "category"])
                continue
            modes = self.modes[lc.name]
            k = hot(self._parts[lc.name, "mode"])
            alpha = np.clip(x[:, self._parts[lc.name, "value"].start].astype(np.float64), -1, 1)
            v = alpha * 4 * np.array(modes.stds)[k] + np.array(modes.means)[k]
            if lc.nullable:
                v[hot(self._parts[lc.name, "missing"]) == 1] = np.nan
            values[lc.name] = v
        return self.codec.frame(values, seeds)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "codec": self.codec.to_json(),
                "modes": {name: {"means": list(m.means), "stds": list(m.stds), "weights": list(m.weights)}
                          for name, m in self.modes.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TableTransformer":
        if d.get("format") != FORMAT:
            raise ModelError(f"a table transformer in format {d.get('format')!r}; this genforge reads {FORMAT!r}")
        modes = {name: Modes(tuple(m["means"]), tuple(m["stds"]), tuple(m["weights"])) for name, m in d["modes"].items()}
        return cls(Codec.from_json(d["codec"]), modes)
