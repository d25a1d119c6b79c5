"""What every table family's sampling shares: conditions, business rules, the privacy guard, and the
loop that draws rows until each item has one that passes them all.

A model proposes candidate rows; a row is kept only when it meets its item's conditions, every
business rule, and is not a real row. Candidates come from seeds derived from the item's own seed
(`candidate_seeds`), so an item's row depends on its seed and condition only, never on its
batch-mates (the contract), with one exception stated where it applies: `rules.unique` compares rows
across the whole request. Rejection rather than clamping: a clamped value piles mass on a bound and a
row changed after the model drew it no longer follows the joint distribution the model learned.
Fixed combinations are the one rule enforced by construction (the codec models them as one column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from genforge.config import StrictModel
from genforge.errors import ConfigError, ModelError
from genforge.tabular import draws
from genforge.tabular.provenance import Provenance

MAX_ROUNDS = 6  # candidates per pending item double each round: 1 + 2 + ... + 32 = 63 draws at most
# candidates a model proposes per call. Its arrays then stay a few MB and are reused from the heap: one
# call for 43,152 diamonds rows sampled at a third of the speed (50,000 against 169,000 rows/s, TVAE),
# most of the difference page faults on fresh memory
CHUNK = 4096


class Inequality(StrictModel):
    """`low` <= `high` on every row (`strict`: <), e.g. an order's date before its ship date."""

    low: str
    high: str
    strict: bool = False


class Rules(StrictModel):
    """`model.rules`: business rules every generated row satisfies (checked, and resampled when not)."""

    ranges: dict[str, tuple[Any, Any]] = {}  # column -> [min, max], inclusive; null for no bound; numbers or ISO dates
    unique: list[str] = []  # columns whose values never repeat within one request (id columns are unique by design)
    inequalities: list[Inequality] = []
    fixed_combinations: list[list[str]] = []  # column groups that only take combinations seen in the data

    @model_validator(mode="after")
    def _check(self) -> "Rules":
        for group in self.fixed_combinations:
            if len(group) < 2 or len(set(group)) != len(group):
                raise ValueError(f"a fixed combination names two or more different columns, got {group}")
        return self

    def columns(self) -> set[str]:
        return ({*self.ranges, *self.unique} | {c for q in self.inequalities for c in (q.low, q.high)}
                | {c for g in self.fixed_combinations for c in g})

    def check_against(self, schema_columns: list[dict]) -> None:
        """Every column a rule names exists, and ranges and inequalities are on numbers or dates."""
        types = {c["name"]: c["type"] for c in schema_columns}
        unknown = sorted(self.columns() - set(types))
        if unknown:
            raise ConfigError(f"model.rules names columns the table lacks: {unknown}; columns: {sorted(types)}")
        ordered = [*self.ranges] + [c for q in self.inequalities for c in (q.low, q.high)]
        bad = sorted({c for c in ordered if types[c] not in ("numeric", "datetime")})
        if bad:
            raise ConfigError(f"model.rules ranges and inequalities need numeric or datetime columns; {bad} are not")


class SampleOptions(StrictModel):
    """The `sample:` fields every table family shares."""

    # conditions every row meets (column -> value, or -> {min, max}), beside any a request gives per row:
    # `--set 'sample.where={species: Gentoo, sex: female}'`
    where: dict[str, Any] = {}
    max_rounds: int = Field(default=MAX_ROUNDS, ge=1, le=12)  # rejection rounds before a condition is declared unmet
    provenance: Provenance = "sidecar"  # the AI-content label: a sidecar file, columns on every row, or both


def candidate_seeds(seeds: np.ndarray, round_: int, count: int) -> np.ndarray:
    """uint64 (len(seeds) * count,): each item's `count` candidate seeds in round `round_`, item after
    item; an item's are a function of its own seed only."""
    return draws.bits(seeds, round_, count).ravel()


# ---- the privacy guard ------------------------------------------------------------------------


def row_hashes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """A 64-bit hash per row of its values in `columns`, normalised so that a value compares by what
    it is, not how it is stored: numbers as float64 (2007 == 2007.0), categories as strings,
    datetimes as UTC nanoseconds, every kind of missing value alike."""
    norm = {}
    for c in columns:
        s = frame[c]
        if pd.api.types.is_bool_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object:
            norm[c] = s.astype(object).where(s.notna(), None).map(lambda v: None if v is None else str(v))
        elif pd.api.types.is_datetime64_any_dtype(s):
            utc = s.dt.tz_convert("UTC").dt.tz_localize(None) if s.dt.tz is not None else s
            norm[c] = pd.Series(utc.to_numpy("datetime64[ns]").astype("int64"), index=s.index).where(s.notna(), None)
        else:
            norm[c] = pd.to_numeric(s, errors="coerce").astype("float64")
    return pd.util.hash_pandas_object(pd.DataFrame(norm), index=False).to_numpy(np.uint64)


# ---- conditions and rules on output rows ----------------------------------------------------------


def _as_value(s: pd.Series, value: Any) -> Any:
    """A condition or bound as the column's values are: a timestamp for a datetime column."""
    if pd.api.types.is_datetime64_any_dtype(s) and value is not None:
        ts = pd.Timestamp(value)
        if s.dt.tz is not None and ts.tzinfo is None:
            ts = ts.tz_localize(s.dt.tz)
        return ts
    return value


def _equals(s: pd.Series, value: Any) -> np.ndarray:
    if value is None:
        return s.isna().to_numpy()
    if pd.api.types.is_bool_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object:
        return (s.astype(object).map(str) == str(value)).to_numpy() & s.notna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(s):
        return (s == _as_value(s, value)).fillna(False).to_numpy(bool)
    return np.isclose(pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(), float(value), rtol=0, atol=1e-9)


def _within(s: pd.Series, low: Any, high: Any, strict: bool = False) -> np.ndarray:
    """Missing values pass a range: a rule on a value says nothing about its absence."""
    ok = s.isna().to_numpy().copy()
    v = s if pd.api.types.is_datetime64_any_dtype(s) else pd.to_numeric(s, errors="coerce").astype("float64")
    inside = np.ones(len(s), bool)
    if low is not None:
        inside &= (v > _as_value(s, low) if strict else v >= _as_value(s, low)).fillna(False).to_numpy(bool)
    if high is not None:
        inside &= (v < _as_value(s, high) if strict else v <= _as_value(s, high)).fillna(False).to_numpy(bool)
    return ok | inside


def meets(frame: pd.DataFrame, condition: dict[str, Any]) -> np.ndarray:
    """Rows equal to every condition value; a {"min": a, "max": b} value is a range."""
    ok = np.ones(len(frame), bool)
    for col, value in condition.items():
        if isinstance(value, dict):
            ok &= _within(frame[col], value.get("min"), value.get("max")) & frame[col].notna().to_numpy()
        else:
            ok &= _equals(frame[col], value)
    return ok


def obeys(frame: pd.DataFrame, rules: Rules) -> np.ndarray:
    """Rows that satisfy every range and inequality (uniqueness is checked across the request)."""
    ok = np.ones(len(frame), bool)
    for col, (low, high) in rules.ranges.items():
        ok &= _within(frame[col], low, high)
    for q in rules.inequalities:
        lo, hi = frame[q.low], frame[q.high]
        both = lo.notna().to_numpy() & hi.notna().to_numpy()
        less = (lo < hi) if q.strict else (lo <= hi)
        ok &= ~both | less.fillna(False).to_numpy(bool)
    return ok


def check_conditions(conditions: Sequence[dict[str, Any]] | None, columns: Sequence[str], n: int) -> None:
    if conditions is None:
        return
    if len(conditions) != n:
        raise ModelError(f"conditions must hold one mapping per row ({n}), got {len(conditions)}")
    for cond in conditions:
        unknown = sorted(set(cond) - set(columns))
        if unknown:
            raise ConfigError(f"conditions name columns the model does not generate: {unknown}; columns: {list(columns)}")
        for col, value in cond.items():
            if isinstance(value, dict) and (set(value) - {"min", "max"} or not value):
                raise ConfigError(f"a range condition on {col!r} takes min and/or max, got {sorted(value)}")


# ---- the loop -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guard:
    """What a kept row must not be: any real row of the dataset (hashes of its normalised values in
    `columns`, the learned ones; ids are synthetic and never compared)."""

    columns: tuple[str, ...]
    hashes: np.ndarray  # sorted uint64

    def copies(self, frame: pd.DataFrame) -> np.ndarray:
        if not len(self.hashes) or not self.columns:
            return np.zeros(len(frame), bool)
        return np.isin(row_hashes(frame, self.columns), self.hashes)


Draw = Callable[[np.ndarray, list[dict[str, Any]]], pd.DataFrame]  # (uint64 seeds, conditions) -> one row per seed


def draw_rows(draw: Draw, seeds: Sequence[int], conditions: Sequence[dict[str, Any]] | None, rules: Rules,
              guard: Guard, max_rounds: int = MAX_ROUNDS) -> tuple[pd.DataFrame, dict[str, int]]:
    """One accepted row per seed, in order, and counts of what was rejected and why.

    Round r draws 2^r candidates for each item still without a row and keeps its first acceptable
    one. An item whose condition no candidate met after `max_rounds` is an error that says how many
    candidates met it, rather than a silently shorter table."""
    n = len(seeds)
    seeds = draws.as_seeds(seeds)
    conds = list(conditions) if conditions is not None else [{} for _ in range(n)]
    frames: list[pd.DataFrame] = []
    frame_of = np.full(n, -1)  # the round whose frame holds item i's row, and which row of it
    row_of = np.full(n, -1)
    pending = np.arange(n)
    seen: dict[str, set] = {c: set() for c in rules.unique}
    rejected = {"condition": 0, "rule": 0, "copy": 0, "duplicate": 0}
    for r in range(max_rounds):
        if not len(pending):
            break
        k = 1 << r
        owners = np.repeat(pending, k)
        cands, asks = candidate_seeds(seeds[pending], r, k), [conds[i] for i in owners]
        frame = pd.concat([draw(cands[at:at + CHUNK], asks[at:at + CHUNK]) for at in range(0, len(cands), CHUNK)],
                          ignore_index=True)
        met = np.ones(len(frame), bool)
        groups: dict[str, list[int]] = {}
        for j, i in enumerate(owners):
            if conds[i]:
                groups.setdefault(repr(sorted(conds[i].items())), []).append(j)
        for rows in groups.values():  # one vectorised check per distinct condition
            met[rows] = meets(frame.iloc[rows], conds[owners[rows[0]]])
        ruled = obeys(frame, rules)
        copy = guard.copies(frame)
        rejected["condition"] += int((~met).sum())
        rejected["rule"] += int((met & ~ruled).sum())
        rejected["copy"] += int((met & ruled & copy).sum())
        ok = np.flatnonzero(met & ruled & ~copy)
        if rules.unique:  # in order, since a kept row's values bar later candidates
            values = {c: frame[c].tolist() for c in rules.unique}
            kept = []
            for j in ok:
                if kept and owners[kept[-1]] == owners[j]:  # its item has its row
                    continue
                if any(values[c][j] in seen[c] for c in rules.unique if pd.notna(values[c][j])):
                    rejected["duplicate"] += 1
                    continue
                for c in rules.unique:
                    if pd.notna(values[c][j]):
                        seen[c].add(values[c][j])
                kept.append(j)
            ok = np.array(kept, dtype=np.int64)
        first = ok[np.unique(owners[ok], return_index=True)[1]]  # each item's first acceptable candidate
        frame_of[owners[first]], row_of[owners[first]] = len(frames), first
        frames.append(frame)
        pending = pending[frame_of[pending] < 0]
    if len(pending):
        i = pending[0]
        tries = (1 << max_rounds) - 1
        what = f"condition {conds[i]}" if conds[i] else "the business rules and the privacy guard"
        raise ModelError(f"{len(pending)} of {n} rows could not be generated: no candidate met {what} in {tries} "
                         f"draws per row (rejected: {rejected}). The model rarely or never produces such rows; "
                         "relax the condition, or raise sample.max_rounds")
    offsets = np.cumsum([0] + [len(f) for f in frames])
    rows = offsets[frame_of] + row_of
    return pd.concat(frames, ignore_index=True).iloc[rows].reset_index(drop=True), rejected
