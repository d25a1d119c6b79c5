"""A table <-> the values a table model learns, one array per learned column, and back.

`Codec.fit` reads the train frame and its schema once; `values` encodes a frame, `frame` decodes
model values into rows with the real table's columns and dtypes. What is learned:
- numeric and datetime columns: continuous (float64, NaN where missing; datetimes as seconds since
  the epoch, UTC); on the way back values are clipped to the train range and rounded as the train
  values were written (integers, the decimals seen, whole days or seconds);
- categorical and boolean columns: discrete (an int64 code; a missing value is a category of its own);
- a fixed combination of categorical/boolean columns (country + city): ONE discrete column whose
  categories are the combinations seen in training, so generated rows only hold real combinations.
Not learned: id columns get a synthetic id per row, made from the row's seed in the shape of the
train ids (only a masked template is kept, never a real id); free text columns are neither
learned nor copied: they are left out of the output.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from genforge.errors import ConfigError, DataError, ModelError
from genforge.tabular.draws import as_seeds, mix

FORMAT = "genforge-table-codec/1"
LEARNED_TYPES = ("numeric", "datetime", "categorical", "boolean")
MAX_DECIMALS = 6
DAY = 86_400
ID_ROWS = 10**6  # synthetic ids are widened until 10^6 rows repeat one with at most 1% chance
ID_DIGITS = math.ceil(math.log10(ID_ROWS**2 / (2 * 0.01)))  # birthday bound: n^2 / 2N <= 1% -> 14 digits
MAX_LISTED = 20
_TRUE = {"true", "yes", "t", "y", "1", "是"}
_FALSE = {"false", "no", "f", "n", "0", "否"}


@dataclass(frozen=True)
class Learned:
    """A column a model learns. Discrete: `categories` are the output values in code order (json
    values; None is the missing category, last, present when the column may be missing; a fixed
    combination's categories are tuples of its columns' values) and `frequencies` their train
    shares. Continuous: `missing_share` of the train rows are missing; `nullable` says whether the
    column may be missing at all (in any split), so a model needs a way to say "missing"."""

    name: str
    kind: Literal["continuous", "discrete"]
    categories: tuple = ()
    frequencies: tuple[float, ...] = ()
    missing_share: float = 0.0
    nullable: bool = False


@dataclass(frozen=True)
class ColumnSpec:
    """One column of the real table (text excluded) and what it takes to write it back."""

    name: str
    type: str  # numeric | datetime | categorical | boolean | id
    dtype: str  # the real table's dtype, restored on output
    nullable: bool = False
    categories: tuple = ()  # categorical/boolean: values in code order (None last when nullable)
    lo: float | None = None  # continuous: the train range (datetime: seconds); None: no train values
    hi: float | None = None
    decimals: int = 0  # numeric: round to this many decimals (0 for integer dtypes)
    unit: int = 1  # datetime: round to this many seconds (DAY when every train value is a midnight)
    template: tuple = ()  # id: literal strings and digit-run lengths ("DD", 14); integer ids: (digits,)


# ----------------------------------------------------------------------------- fitting


def _nullable_cats(values: list, nullable: bool) -> tuple:
    return tuple(values) + ((None,) if nullable else ())


def _decimals(v: np.ndarray) -> int:
    """The fewest decimals (at most MAX_DECIMALS) that write every value: 0.12 -> 2, 181.0 -> 0."""
    for d in range(MAX_DECIMALS + 1):
        if np.all(np.abs(np.round(v, d) - v) <= 1e-9 * np.maximum(1.0, np.abs(v))):
            return d
    return MAX_DECIMALS


def _utc_seconds(s: pd.Series) -> np.ndarray:
    """A datetime column as float seconds since the epoch, UTC (a naive column is taken as UTC)."""
    if s.dt.tz is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    a = s.to_numpy(dtype="datetime64[us]")
    return np.where(np.isnat(a), np.nan, a.astype(np.int64) / 1e6)


def _id_template(s: pd.Series) -> tuple:
    """The masked shape of the first train id: digit runs become their lengths (the digits
    themselves are never kept), widened to ID_DIGITS digits in all."""
    present = s.dropna()
    if pd.api.types.is_integer_dtype(s) or pd.api.types.is_float_dtype(s):
        widest = len(str(int(present.abs().max()))) if len(present) else 1
        return (min(max(widest, ID_DIGITS), 18),)  # int64 holds 18 digits
    first = str(present.iloc[0]) if len(present) else ""
    parts = [int(len(p)) if i % 2 else p for i, p in enumerate(re.split(r"([0-9]+)", first)) if p != ""]
    short = ID_DIGITS - sum(p for p in parts if isinstance(p, int))
    if short > 0:
        runs = [i for i, p in enumerate(parts) if isinstance(p, int)]
        if runs:
            parts[runs[-1]] += short
        else:
            parts.append(short)
    return tuple(parts)


def _spec(s: pd.Series, entry: dict[str, Any]) -> ColumnSpec:
    name, kind, dtype = str(s.name), entry["type"], str(s.dtype)
    nullable = bool(s.isna().any() or entry.get("missing", 0) > 0)
    if kind == "id":
        return ColumnSpec(name, kind, dtype, template=_id_template(s))
    if kind == "categorical":
        cats = [str(c) for c in s.cat.categories] if isinstance(s.dtype, pd.CategoricalDtype) \
            else sorted({str(x) for x in s.dropna()})
        return ColumnSpec(name, kind, dtype, nullable, _nullable_cats(cats, nullable))
    if kind == "boolean":
        return ColumnSpec(name, kind, dtype, nullable, _nullable_cats([False, True], nullable))
    if kind == "datetime":
        if not pd.api.types.is_datetime64_any_dtype(s):
            raise DataError(f"column {name!r} is typed datetime but holds {dtype} values; re-ingest the dataset")
        v = _utc_seconds(s)
        v = v[~np.isnan(v)]
        lo, hi = (float(v.min()), float(v.max())) if len(v) else (None, None)
        days = bool(len(v)) and bool((v % DAY == 0).all())  # midnights, UTC (where the data layer keeps zoned columns)
        return ColumnSpec(name, kind, dtype, nullable, lo=lo, hi=hi, unit=DAY if days else 1)
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        raise DataError(f"column {name!r} is typed numeric but holds {dtype} values; re-ingest the dataset")
    v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    v = v[~np.isnan(v)]
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (None, None)
    if pd.api.types.is_integer_dtype(s):
        decimals = 0
    else:
        written = (entry.get("format") or {}).get("decimals")  # a business export's decimals, as written
        if written is not None and (entry.get("format") or {}).get("percent"):
            written += 2  # 12.5% is stored as 0.125
        decimals = min(max(_decimals(v) if len(v) else 0, written or 0), MAX_DECIMALS)
    return ColumnSpec(name, kind, dtype, nullable, lo=lo, hi=hi, decimals=decimals)


# ----------------------------------------------------------------------------- the codec


class Codec:
    """Frame <-> {learned column name: model values}; see the module docstring."""

    def __init__(self, columns: tuple[ColumnSpec, ...], learned: tuple[Learned, ...],
                 combinations: tuple[tuple[str, ...], ...]):
        self.columns = columns
        self.learned = learned
        self.combinations = combinations
        self._spec = {c.name: c for c in columns}
        self._member_of = {m: "+".join(g) for g in combinations for m in g}
        self._learned = {lc.name: lc for lc in learned}
        # a combination's categories as its columns' codes, and as one mixed-radix key per row
        self._combo_codes: dict[str, np.ndarray] = {}
        self._combo_keys: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for group in combinations:
            if "+".join(group) not in self._learned:  # while fitting: not learned yet
                continue
            name, specs = "+".join(group), [self._spec[m] for m in group]
            codes = np.array([[sp.categories.index(v) for sp, v in zip(specs, combo)]
                              for combo in self._learned[name].categories], dtype=np.int64).reshape(-1, len(group))
            self._combo_codes[name] = codes
            keys = self._radix(group, codes.T)
            order = np.argsort(keys)
            self._combo_keys[name] = (keys[order], order)

    @classmethod
    def fit(cls, frame: pd.DataFrame, schema_columns: list[dict], fixed_combinations: Sequence[Sequence[str]] = ()) -> "Codec":
        """Learn every column's categories, range, rounding and id shape from the train frame."""
        missing = [c["name"] for c in schema_columns if c["name"] not in frame.columns]
        if missing:
            raise DataError(f"the frame lacks schema columns {missing[:MAX_LISTED]}; was it read from this dataset?")
        if len(frame) == 0:
            raise DataError("the train frame has no rows: nothing to learn the columns from")
        entries = [c for c in schema_columns if c["type"] in LEARNED_TYPES + ("id",)]
        columns = tuple(_spec(frame[c["name"]], c) for c in entries)
        by_name = {c.name: c for c in columns}
        groups = _check_combinations(fixed_combinations, by_name, [c["name"] for c in schema_columns])
        codec = cls(columns, (), groups)  # to encode the train frame with; the learned columns come next
        learned, done = [], set()
        n = len(frame)
        for spec in columns:
            if spec.type == "id" or spec.name in done:
                continue
            if spec.type in ("numeric", "datetime"):
                v = codec._continuous(spec, frame[spec.name])
                learned.append(Learned(spec.name, "continuous", missing_share=float(np.isnan(v).mean()),
                                       nullable=spec.nullable))
            elif spec.name in codec._member_of:
                group = next(g for g in groups if spec.name in g)
                codes = np.stack([codec._codes(by_name[m], frame[m]) for m in group])  # (M, N)
                seen, counts = np.unique(codes, axis=1, return_counts=True)  # sorted by the columns' codes
                cats = tuple(tuple(by_name[m].categories[k] for m, k in zip(group, combo)) for combo in seen.T)
                learned.append(Learned("+".join(group), "discrete", cats, tuple(float(c / n) for c in counts),
                                       nullable=any(by_name[m].nullable for m in group)))
                done.update(group)
            else:
                counts = np.bincount(codec._codes(spec, frame[spec.name]), minlength=len(spec.categories))
                learned.append(Learned(spec.name, "discrete", spec.categories, tuple(float(c / n) for c in counts),
                                       nullable=spec.nullable))
        return cls(columns, tuple(learned), groups)

    # ------------------------------------------------------------------------- encoding

    def _continuous(self, spec: ColumnSpec, s: pd.Series) -> np.ndarray:
        if spec.type == "datetime":
            if not pd.api.types.is_datetime64_any_dtype(s):
                raise DataError(f"column {spec.name!r} should hold datetimes, got {s.dtype}")
            return _utc_seconds(s)
        try:
            return s.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            raise DataError(f"column {spec.name!r} should hold numbers, got {s.dtype}") from None

    def _codes(self, spec: ColumnSpec, s: pd.Series) -> np.ndarray:
        """Category codes; a missing value -> the missing category; an unknown value is a DataError."""
        cat = s if isinstance(s.dtype, pd.CategoricalDtype) else s.astype("category")
        index = {v: i for i, v in enumerate(spec.categories) if v is not None}
        key = str if spec.type == "categorical" else _bool_key
        table = np.array([index.get(key(v), -1) for v in cat.cat.categories], dtype=np.int64)
        raw = cat.cat.codes.to_numpy().astype(np.int64)
        codes = np.where(raw >= 0, table[np.maximum(raw, 0)] if len(table) else -1, len(spec.categories) - 1)
        unknown = raw >= 0
        unknown &= codes < 0
        if unknown.any():
            value = s.iloc[int(np.flatnonzero(unknown)[0])]
            raise DataError(f"column {spec.name!r} holds {value!r}, not a category seen in training "
                            f"({_listed([v for v in spec.categories if v is not None])})")
        if not spec.nullable and (raw < 0).any():
            raise DataError(f"column {spec.name!r} has missing values, but none in its dataset when the model was fitted")
        return codes

    def _radix(self, group: Sequence[str], codes: np.ndarray) -> np.ndarray:
        """(M, N) codes of a combination's columns -> one int64 key per row."""
        key = np.zeros(codes.shape[1], dtype=np.int64)
        for m, c in zip(group, codes):
            key = key * len(self._spec[m].categories) + c
        return key

    def values(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """{learned name: float64 values (continuous) or int64 codes (discrete)} for every row."""
        absent = [c.name for c in self.columns if c.type != "id" and c.name not in frame.columns]
        if absent:
            raise DataError(f"the frame lacks columns the model learned: {_listed(absent)}")
        out = {}
        for lc in self.learned:
            if lc.kind == "continuous":
                out[lc.name] = self._continuous(self._spec[lc.name], frame[lc.name])
            elif lc.name in self._combo_keys:
                group = lc.name.split("+")
                keys = self._radix(group, np.stack([self._codes(self._spec[m], frame[m]) for m in group]))
                known, order = self._combo_keys[lc.name]
                at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
                bad = known[at] != keys
                if bad.any():
                    row = frame.iloc[int(np.flatnonzero(bad)[0])]
                    raise DataError(f"columns {' + '.join(group)} hold the combination "
                                    f"{tuple(row[m] for m in group)!r}, not one seen in training (fixed combinations)")
                out[lc.name] = order[at]
            else:
                out[lc.name] = self._codes(self._spec[lc.name], frame[lc.name])
        return out

    # ------------------------------------------------------------------------- decoding

    def frame(self, values: dict[str, np.ndarray], seeds: Sequence[int]) -> pd.DataFrame:
        """Model values -> one row per seed: the real table's columns (text left out) in its dtypes."""
        n = len(seeds)
        codes: dict[str, np.ndarray] = {}
        cont: dict[str, np.ndarray] = {}
        for lc in self.learned:
            if lc.name not in values:
                raise ModelError(f"no values for learned column {lc.name!r}")
            v = np.asarray(values[lc.name])
            if v.shape != (n,):
                raise ModelError(f"values of {lc.name!r} have shape {v.shape}, expected ({n},) (one per seed)")
            if lc.kind == "continuous":
                cont[lc.name] = v.astype(np.float64)
                continue
            v = v.astype(np.int64)
            if n and (v.min() < 0 or v.max() >= len(lc.categories)):
                raise ModelError(f"codes of {lc.name!r} must be in [0, {len(lc.categories) - 1}]")
            if lc.name in self._combo_codes:
                for m, c in zip(lc.name.split("+"), self._combo_codes[lc.name][v].T):
                    codes[m] = c
            else:
                codes[lc.name] = v
        out = {}
        for spec in self.columns:
            if spec.type == "id":
                out[spec.name] = _synthetic_ids(spec, seeds)
            elif spec.type in ("numeric", "datetime"):
                out[spec.name] = _decode_continuous(spec, cont[spec.name])
            else:
                out[spec.name] = _decode_discrete(spec, codes[spec.name])
        return pd.DataFrame(out, columns=[c.name for c in self.columns])

    # ------------------------------------------------------------------------- conditions

    def condition(self, column: str, value: Any) -> tuple[str, int | float]:
        """A user's condition -> (learned name, code) for a discrete column, (name, float) for a
        continuous one (datetimes in UTC seconds). A fixed combination is conditioned on as a whole
        (column "a+b" with a value [a_value, b_value]) or by a member alone: (member, the index of
        the value among its categories), which the model meets by rejection, not as a learned code."""
        if column in self._member_of:
            spec = self._spec[column]
            key = _category(spec, value)
            if key not in spec.categories:
                raise ConfigError(f"{column!r} has no category {value!r}; categories: {_listed(list(spec.categories))}")
            return column, spec.categories.index(key)
        if column not in self._learned:
            why = " (ids are synthesised, not learned)" if column in self._spec else ""
            raise ConfigError(f"cannot condition on {column!r}{why}; columns: {_listed(list(self._learned))}")
        lc = self._learned[column]
        if lc.kind == "continuous":
            return column, self._continuous_condition(self._spec[column], value)
        if column in self._combo_codes:
            group = column.split("+")
            if not isinstance(value, (list, tuple)) or len(value) != len(group):
                raise ConfigError(f"condition on {column!r} takes one value per column ({len(group)}), got {value!r}")
            key = tuple(_category(self._spec[m], v) for m, v in zip(group, value))
        else:
            key = _category(self._spec[column], value)
        if key not in lc.categories:
            shown = [list(c) if isinstance(c, tuple) else c for c in lc.categories]
            raise ConfigError(f"{column!r} has no category {value!r}; categories: {_listed(shown)}")
        return column, lc.categories.index(key)

    def _continuous_condition(self, spec: ColumnSpec, value: Any) -> float:
        try:
            if spec.type == "datetime":
                t = pd.Timestamp(value)
                if t.tz is None:  # a naive time is read in the column's own zone
                    t = t.tz_localize(getattr(pd.api.types.pandas_dtype(spec.dtype), "tz", None) or "UTC")
                x = t.timestamp()
            else:
                x = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"condition on {spec.name!r} must be a {'date-time' if spec.type == 'datetime' else 'number'}, "
                              f"got {value!r}") from None
        if not math.isfinite(x):
            raise ConfigError(f"condition on {spec.name!r} must be a finite value, got {value!r}")
        if spec.lo is None or not spec.lo <= x <= spec.hi:
            raise ConfigError(f"condition on {spec.name!r} must lie in the train range "
                              f"[{_show(spec, spec.lo)}, {_show(spec, spec.hi)}], got {value!r}")
        return x

    # ------------------------------------------------------------------------- json

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT,
                "columns": [_plain(vars(c)) for c in self.columns],
                "learned": [_plain(vars(lc)) for lc in self.learned],
                "combinations": [list(g) for g in self.combinations]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Codec":
        if d.get("format") != FORMAT:
            raise ModelError(f"a table codec in format {d.get('format')!r}; this genforge reads {FORMAT!r}")
        columns = tuple(ColumnSpec(**{**c, "categories": tuple(c["categories"]), "template": tuple(c["template"])})
                        for c in d["columns"])
        learned = tuple(Learned(**{**lc, "categories": tuple(tuple(x) if isinstance(x, list) else x for x in lc["categories"]),
                                   "frequencies": tuple(lc["frequencies"])}) for lc in d["learned"])
        return cls(columns, learned, tuple(tuple(g) for g in d["combinations"]))


# ----------------------------------------------------------------------------- helpers


def _check_combinations(groups: Sequence[Sequence[str]], specs: dict[str, ColumnSpec], names: list[str]) -> tuple[tuple[str, ...], ...]:
    seen: set[str] = set()
    for g in groups:
        if len(g) < 2:
            raise ConfigError(f"a fixed combination needs at least 2 columns, got {list(g)}")
        for m in g:
            if m not in names:
                raise ConfigError(f"fixed combination {list(g)} names {m!r}, not a column; columns: {_listed(names)}")
            if m not in specs or specs[m].type not in ("categorical", "boolean"):
                raise ConfigError(f"fixed combination {list(g)}: {m!r} is not categorical or boolean; only those "
                                  "columns can be combined")
            if m in seen:
                raise ConfigError(f"column {m!r} is in more than one fixed combination")
            seen.add(m)
    order = {m: i for i, m in enumerate(names)}
    return tuple(tuple(sorted(g, key=order.__getitem__)) for g in groups)


def _bool_key(v: Any) -> Any:
    return bool(v) if isinstance(v, (bool, np.bool_)) else v


def _category(spec: ColumnSpec, value: Any) -> Any:
    """A condition value as a category of `spec`: categories are strings; booleans also accept
    true/false, yes/no, 1/0; None (or NaN) is the missing category."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if spec.type == "categorical":
        return str(value)
    low = str(value).strip().lower()
    return True if low in _TRUE else False if low in _FALSE else value


def _listed(values: list) -> str:
    shown = ", ".join(repr(v) for v in values[:MAX_LISTED])
    return shown + (f", ... ({len(values)} in all)" if len(values) > MAX_LISTED else "")


def _show(spec: ColumnSpec, x: float | None) -> str:
    if x is None or spec.type != "datetime":
        return str(x)
    return pd.Timestamp(x, unit="s").isoformat()


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """A dataclass's fields as json: tuples -> lists, recursively."""
    fix = lambda v: [fix(x) for x in v] if isinstance(v, (tuple, list)) else v  # noqa: E731
    return {k: fix(v) for k, v in d.items()}


def _decode_continuous(spec: ColumnSpec, x: np.ndarray) -> pd.Series:
    missing = np.isnan(x)
    if spec.lo is None:
        x = np.full_like(x, np.nan)
    else:
        x = np.clip(x, spec.lo, spec.hi)
    if spec.type == "numeric":
        x = np.round(x, spec.decimals)
        return pd.Series(np.where(missing, np.nan, x)).astype(spec.dtype)
    x = np.round(x / spec.unit) * spec.unit
    zoned = getattr(pd.api.types.pandas_dtype(spec.dtype), "tz", None) is not None
    return pd.to_datetime(pd.Series(np.where(missing, np.nan, x)), unit="s", utc=zoned).astype(spec.dtype)


def _decode_discrete(spec: ColumnSpec, codes: np.ndarray) -> pd.Series:
    present = [v for v in spec.categories if v is not None]
    codes = np.where(codes >= len(present), -1, codes)  # the missing category
    if spec.type == "categorical":
        return pd.Series(pd.Categorical.from_codes(codes, categories=present))
    values = np.array(present + [None], dtype=object)[codes]
    return pd.Series(pd.array(values, dtype="boolean")).astype(spec.dtype)


def _synthetic_ids(spec: ColumnSpec, seeds: Sequence[int]) -> pd.Series:
    """An id per row from its own seed and the column's name: the same seed gives the same id, and
    ID_DIGITS random digits make a repeat among 10^6 rows a 1% event (not impossible)."""
    salt = np.uint64(zlib.crc32(spec.name.encode("utf-8")))
    h = mix(as_seeds(seeds) ^ salt)
    if len(spec.template) == 1 and isinstance(spec.template[0], int):  # integer ids, first digit not 0
        digits = spec.template[0]
        ids = 10 ** (digits - 1) + (h % np.uint64(9 * 10 ** (digits - 1))).astype(np.int64)
        return pd.Series(ids).astype(spec.dtype)
    total = sum(p for p in spec.template if isinstance(p, int))
    chunks = []  # 18 digits per round of mixing
    for _ in range(math.ceil(total / 18)):
        h = mix(h)
        chunks.append(h % np.uint64(10**18))
    digits = ["".join(f"{int(c[i]):018d}" for c in chunks) for i in range(len(seeds))]
    ids = []
    for d in digits:
        parts, pos = [], 0
        for p in spec.template:
            if isinstance(p, int):
                parts.append(d[pos:pos + p])
                pos += p
            else:
                parts.append(p)
        ids.append("".join(parts))
    return pd.Series(ids, dtype=object).astype(spec.dtype)
