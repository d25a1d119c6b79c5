"""Mode-specific normalisation and the matrix CTGAN and TVAE learn on.

References: Xu et al. 2019, "Modeling Tabular Data using Conditional GAN" (CTGAN), sec. 4.2.

A continuous column is rarely one Gaussian: a variational Gaussian mixture (sklearn's Dirichlet-process
`BayesianGaussianMixture`) finds its modes, and each value becomes (alpha, one-hot mode): the mode k
drawn from the value's posterior over the modes that can hold it, alpha = (x - mu_k) / (4 sigma_k), clipped to
[-0.99, 0.99] (the paper's eq. in sec. 4.2). A column that may be missing adds a present/missing
one-hot; a discrete column is a one-hot of its categories. Spans say where each part lies, so the
model can put tanh on values and softmax on one-hots.

The mixture is fitted on at most `fit_rows` seeded-sampled values per column: fitting on every row
(as SDV does) is what makes medium tables take minutes. It is stored as json (means, stds, weights
of the modes kept), never pickled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
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


def fit_modes(x: np.ndarray, config: TransformConfig, rng: np.random.Generator) -> Modes:
    """The modes of the non-missing values of x, fitted on at most `config.fit_rows` of them."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    x = x[~np.isnan(x)]
    if len(x) > config.fit_rows:
        x = rng.choice(x, config.fit_rows, replace=False)
    distinct = len(np.unique(x))
    if distinct < 2:  # a constant (or empty) column: one mode; its std only scales alpha
        return Modes((float(x[0]) if len(x) else 0.0,), (1.0,), (1.0,))
    center, scale = float(x.mean()), float(x.std())  # fitted standardised: the priors and reg_covar are scale-free then
    gm = BayesianGaussianMixture(n_components=min(config.max_modes, distinct), weight_concentration_prior_type="dirichlet_process",
                                 weight_concentration_prior=0.001, max_iter=100, n_init=1, covariance_type="diag",
                                 random_state=int(rng.integers(2**31)))  # diag: in 1-D the same model as "full", 8x faster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(((x - center) / scale)[:, None])
    weights = gm.weights_
    keep = weights > config.weight_threshold
    if not keep.any():
        keep = weights == weights.max()
    return Modes(tuple(float(center + scale * m) for m in gm.means_[keep, 0]),
                 tuple(float(scale * np.sqrt(c)) for c in gm.covariances_[keep, 0]),
                 tuple(float(w) for w in weights[keep]))


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
        modes = {}
        for i, lc in enumerate(codec.learned):
            if lc.kind == "continuous":
                modes[lc.name] = fit_modes(values[lc.name], config, np.random.default_rng([seed, i]))
        return cls(codec, modes)

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
