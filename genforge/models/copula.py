"""Gaussian copula family: every column's own distribution, joined by one correlation matrix; fitted
in closed form in seconds, the baseline every table model should be compared with (published
comparisons on small tables rank it above CTGAN at a fraction of the time).

Model (Sklar's theorem with a Gaussian copula; Nelsen 2006, "An Introduction to Copulas", sec. 2.3
and 3.1): each learned column is mapped to a standard normal score, z = Phi^-1(F(x)), the scores'
correlation matrix R is estimated, and a row is sampled as z ~ N(0, R), x = F^-1(Phi(z)).
- Numeric and datetime marginals are the empirical distribution, kept as `quantiles` evenly spaced
  quantiles and inverted by linear interpolation: no parametric family to pick per column (SDV fits
  a beta by default, which cannot take a bimodal column's shape), exact up to the grid.
  Train scores come from mid-ranks, so tied values share one score.
- Categories, booleans and the presence of a value in a column with missing values are discrete:
  each category owns an interval of [0, 1] as wide as its frequency, and a row's score is drawn
  uniformly inside its category's interval (seeded), the uniform encoding SDV's GaussianCopula uses.
  The order of the intervals is ours: one normal score can carry a nominal column's relation to the
  others only as far as that order is monotone in them, and in code order (alphabetical) it often is
  not (diamonds' cut: Fair, Good, Ideal, Premium, Very Good). So the categories are laid out along
  their first linear discriminant of the numeric scores (Fisher 1936: the direction on which the
  categories' means lie farthest apart for the spread within them), the one order in which a
  single linear score separates them best.
- R is the Pearson correlation of the train scores, shrunk by `shrinkage` toward the identity so it
  stays positive definite with constant or duplicated columns.

Nothing is learned by gradient: `fit` computes the marginals and R (the fitted state), training is
one step that logs the copula's held-out negative log-density, and `train.steps: 1` is the config.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata
from torch import nn

from genforge.config import StrictModel
from genforge.errors import ModelError
from genforge.models import Batch, DataSpec, Fitted, Optimizer, OptimizerSpec, SampleRequest, TableSamples
from genforge.tabular import draws
from genforge.tabular.columns import Codec
from genforge.tabular.family import TableState, fit_table, sample_table, schema_columns, table_state
from genforge.tabular.sampling import Rules, SampleOptions


class Config(StrictModel):
    family: Literal["copula"]
    quantiles: int = Field(default=1001, ge=3, le=100_001)  # grid of each numeric marginal
    shrinkage: float = Field(default=1e-3, ge=0.0, lt=1.0)
    rules: Rules = Rules()


class SampleConfig(SampleOptions):
    """The run's `sample:` section."""


KINDS = ("table",)
EMA = ()
HEADLINE = "nll"
GRAD_SYNC = "ddp"
TUNABLE = ("rules",)
REQUEST_OPTIONS = ("where", "max_rounds", "provenance")
EPS = 1e-9


def _variables(codec: Codec) -> list[tuple[str, str]]:
    """(learned column, role) per copula variable: "value" (numeric score), "present" (a continuous
    column's missingness), "category" (a discrete column)."""
    out = []
    for c in codec.learned:
        if c.kind == "continuous":
            out.append((c.name, "value"))
            if c.nullable:  # missing somewhere in the dataset, maybe not in train
                out.append((c.name, "present"))
        else:
            out.append((c.name, "category"))
    return out


def _ends(m: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The order in which a discrete marginal's intervals lie end to end in [0, 1] (runs fitted before
    orders existed: code order) and their upper ends in that order."""
    probs = np.asarray(m["probs"])
    order = np.asarray(m.get("order", range(len(probs))), dtype=np.int64)
    return np.cumsum(probs[order]), order


def _lower(m: dict[str, Any]) -> np.ndarray:
    """Where each code's interval starts in [0, 1], indexed by code."""
    upper, order = _ends(m)
    lower = np.empty(len(upper))
    lower[order] = upper - np.asarray(m["probs"])[order]
    return lower


def _discrete_scores(codes: np.ndarray, m: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    probs = np.asarray(m["probs"])
    u = _lower(m)[codes] + rng.random(len(codes)) * probs[codes]
    return ndtri(np.clip(u, EPS, 1 - EPS))


def _discriminant_order(codes: np.ndarray, z: np.ndarray, k: int) -> list[int]:
    """The k categories sorted along the first linear discriminant of the scores z (N, p): the
    direction that maximises the between-category variance of the means over the within-category
    variance (a small ridge keeps the within part invertible). Categories not in train sort by 0."""
    from scipy.linalg import eigh

    counts = np.bincount(codes, minlength=k).astype(np.float64)
    centred = z - z.mean(0)
    means = np.zeros((k, z.shape[1]))
    np.add.at(means, codes, centred)
    means /= np.maximum(counts, 1)[:, None]
    between = (means * counts[:, None]).T @ means / len(z)
    within = centred.T @ centred / len(z) - between + 1e-6 * np.eye(z.shape[1])
    direction = eigh(between, within)[1][:, -1]
    return np.argsort(means @ direction, kind="stable").tolist()


def _marginals(config: Config, codec: Codec, frame: pd.DataFrame, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """(the marginals as json, the train scores (N, variables)). Numeric scores come first: the
    categories' orders are fitted on them."""
    values = codec.values(frame)
    rng = np.random.default_rng(seed)  # the uniform draws inside categories' intervals
    grid = np.linspace(0.0, 1.0, config.quantiles)
    variables = _variables(codec)
    marg: list[dict[str, Any]] = [{} for _ in variables]
    cols: list[np.ndarray] = [np.empty(0)] * len(variables)
    for j, (name, role) in enumerate(variables):
        v = values[name]
        if role == "value":
            ok = ~np.isnan(v)
            if not ok.any():
                raise ModelError(f"column {name!r} has no values in the train split to learn from")
            cols[j] = np.zeros(len(v))
            cols[j][ok] = ndtri((rankdata(v[ok]) - 0.5) / ok.sum())  # mid-ranks: ties share a score; missing rows at the median
            marg[j] = {"column": name, "role": role, "quantiles": np.quantile(v[ok], grid).tolist()}
    numeric = np.stack([c for c in cols if len(c)], axis=1) if any(len(c) for c in cols) else None
    for j, (name, role) in enumerate(variables):
        v = values[name]
        if role == "value":
            continue
        codes = np.isnan(v).astype(np.int64) if role == "present" else v
        k = 2 if role == "present" else len(next(c for c in codec.learned if c.name == name).categories)
        probs = np.bincount(codes, minlength=k) / len(v)
        order = _discriminant_order(codes, numeric, k) if numeric is not None and k > 2 else list(range(k))
        marg[j] = {"column": name, "role": role, "probs": probs.tolist(), "order": order}
        cols[j] = _discrete_scores(codes, marg[j], rng)
    return {"marginals": marg}, np.stack(cols, axis=1)


def _correlation(z: np.ndarray, shrinkage: float) -> np.ndarray:
    std = z.std(axis=0)
    zs = (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)
    r = zs.T @ zs / len(z)
    r[std == 0, :] = 0.0
    r[:, std == 0] = 0.0
    np.fill_diagonal(r, 1.0)
    return (1 - shrinkage) * r + shrinkage * np.eye(len(r))


def _fit_extra(config: Config):
    def extra(codec: Codec, frame: pd.DataFrame, seed: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta, z = _marginals(config, codec, frame, seed)
        r = _correlation(z, config.shrinkage)
        return meta, {"cholesky": torch.from_numpy(np.linalg.cholesky(r))}
    return extra


class Copula(nn.Module):
    """The fitted copula in the form sampling uses (everything comes from the run's fitted state)."""

    def __init__(self, state: TableState, meta: dict[str, Any], cholesky: torch.Tensor):
        super().__init__()
        self.state, self.marginals = state, meta["marginals"]
        self.register_buffer("cholesky", cholesky.double(), persistent=False)

    def scores(self, frame: pd.DataFrame) -> torch.Tensor:
        """Normal scores of any rows through the train marginals (held-out rows: interpolated)."""
        values = self.state.codec.values(frame)
        cols = []
        for m in self.marginals:
            v = values[m["column"]]
            if m["role"] == "value":
                q = np.asarray(m["quantiles"])
                u = np.interp(v, q, np.linspace(0, 1, len(q)))
                cols.append(np.where(np.isnan(v), 0.0, ndtri(np.clip(u, 1e-6, 1 - 1e-6))))
            else:
                codes = np.isnan(v).astype(np.int64) if m["role"] == "present" else v
                mid = _lower(m) + np.asarray(m["probs"]) / 2
                cols.append(ndtri(np.clip(mid[codes], 1e-6, 1 - 1e-6)))
        return torch.from_numpy(np.stack(cols, axis=1))

    def nll(self, z: torch.Tensor) -> torch.Tensor:
        """Mean negative log copula density: 0.5 z'(R^-1 - I)z + 0.5 log|R| per row."""
        w = torch.linalg.solve_triangular(self.cholesky, z.double().T, upper=False)  # L^-1 z
        quad = (w ** 2).sum(0) - (z.double() ** 2).sum(1)
        return (0.5 * quad + torch.log(torch.diagonal(self.cholesky)).sum()).mean().float()

    def propose(self, seeds: np.ndarray, conditions: list[dict[str, Any]]) -> pd.DataFrame:
        eps = draws.normal(seeds, 0, len(self.marginals)).double().numpy()
        u = ndtr(eps @ self.cholesky.T.cpu().numpy())
        values: dict[str, np.ndarray] = {}
        for j, m in enumerate(self.marginals):
            if m["role"] == "value":
                q = np.asarray(m["quantiles"])
                values[m["column"]] = np.interp(u[:, j], np.linspace(0, 1, len(q)), q)
            else:
                upper, order = _ends(m)
                codes = order[np.minimum(np.searchsorted(upper, u[:, j], side="right"), len(upper) - 1)]
                if m["role"] == "present":
                    values[m["column"]] = np.where(codes == 1, np.nan, values[m["column"]])
                else:
                    values[m["column"]] = codes.astype(np.int64)
        return self.state.codec.frame(values, seeds)


def optimizers(config: Config) -> dict[str, OptimizerSpec]:
    return {}  # closed form: nothing to optimise


def fit(config: Config, dataset: Any, seed: int) -> tuple[DataSpec, Fitted]:
    return fit_table(config.rules, None, dataset, seed, extra=_fit_extra(config))


def encode(config: Config, spec: DataSpec, fitted: Fitted, dataset: Any, split: str) -> Batch:
    schema_columns(dataset)
    copula = Copula(TableState.of(fitted), fitted.meta, fitted.tensors["cholesky"])
    return {"z": copula.scores(dataset.frame(split)).float()}


def build(config: Config, spec: DataSpec, fitted: Fitted) -> dict[str, nn.Module]:
    return {"copula": Copula(table_state(spec, fitted, "copula"), fitted.meta, fitted.tensors["cholesky"])}


def train_step(modules: dict[str, nn.Module], batch: Batch, opt: Optimizer, step: int) -> dict[str, torch.Tensor]:
    return {"nll": modules["copula"].nll(batch["z"])}


def val_loss(modules: dict[str, nn.Module], batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
    return {"nll": modules["copula"].nll(batch["z"])}, len(batch["z"])


def sample(modules: dict[str, nn.Module], spec: DataSpec, fitted: Fitted, request: SampleRequest,
           options: SampleConfig) -> TableSamples:
    c: Copula = modules["copula"]
    return sample_table(c.state, request, options, c.propose)


def health(config: Config, window: dict[str, float]) -> str | None:
    return None
