"""Table metrics on pandas frames: how alike a synthetic table is to the real one, how useful, how private.

Column kinds are decided on the real table by the rules ingest uses (`genforge.data.table.infer_type`),
with no cap on the number of categories, and the caller may name more categorical columns:
- numeric: a numeric dtype, or every value a number;
- datetime: a datetime dtype, or every value an ISO 8601 date; measured as a number (days since
  1970-01-01 UTC), so two samples of the same dates are close, not disjoint categories;
- categorical: booleans, the category dtype, or strings whose distinct values repeat (at most half
  the values);
- id (every value distinct, short, with a digit, or distinct integers in a column named like an id)
  and text (anything else: mostly distinct strings, e.g. free text) are left out of every metric:
  a distribution of unique values says nothing, and a copied row with a new id is still a copy.
  Each result names them under "skipped" with the rule that decided.
Values are compared normalised: numbers as float64, categories as strings (2007.0 -> "2007").
Missing values: left out of a numeric distribution, a category of their own for categorical ones;
the quality score follows sdmetrics instead (see `column_shapes` and `pair_trends`).
"""

from __future__ import annotations

import itertools
import numbers
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.metrics import f1_score, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from genforge.data.table import infer_type

CONTINUOUS = ("numeric", "datetime")
ANALYSED = (*CONTINUOUS, "categorical")
MISSING = "<missing>"
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


# --- column kinds and normalised values ------------------------------------------------------------

def column_kinds(frame: pd.DataFrame, categorical: Sequence[str] = ()) -> dict[str, tuple[str, str]]:
    """(kind, the rule that decided it) per column: numeric, datetime, categorical, id or text."""
    kinds = {}
    for c in frame.columns:
        if c in categorical:
            kinds[c] = ("categorical", "named categorical by the caller")
            continue
        kind, rule = infer_type(str(c), frame[c], max_categories=max(len(frame), 1))
        kinds[c] = ("categorical" if kind == "boolean" else kind, rule)
    return kinds


def skipped_columns(kinds: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The columns no metric uses, with why: "id: every value distinct, ..."."""
    return {c: f"{kind}: {rule}" for c, (kind, rule) in kinds.items() if kind not in ANALYSED}


def categorical_columns(frame: pd.DataFrame, categorical: Sequence[str] = ()) -> list[str]:
    """The columns compared as categories (booleans included)."""
    return [c for c, (kind, _) in column_kinds(frame, categorical).items() if kind == "categorical"]


def _check_columns(real: pd.DataFrame, other: pd.DataFrame, name: str = "synthetic") -> None:
    missing = [c for c in real.columns if c not in other.columns]
    if missing:
        raise ValueError(f"the {name} table lacks columns of the real one: {missing}")


def _category_text(v: object) -> str | None:
    """A category as a string; numbers by value (2007, 2007.0 and np.int64(2007) -> "2007")."""
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, numbers.Number) and not isinstance(v, (bool, np.bool_)):
        return _number_text(float(v))
    return str(v)


def _number_text(v: float) -> str:
    """12 significant digits: float noise from a round trip (csv, float32) does not make a new value."""
    return f"{v:.12g}"


def _days(s: pd.Series) -> pd.Series:
    """Datetimes (or ISO 8601 strings) as float days since 1970-01-01 UTC; naive times taken as UTC."""
    iso = None if pd.api.types.is_datetime64_any_dtype(s) else "ISO8601"
    t = pd.to_datetime(s, errors="coerce", utc=True, format=iso)
    return (t - _EPOCH) / pd.Timedelta(days=1)


def _normalise(frame: pd.DataFrame, kinds: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """The analysed columns only: numbers and datetimes as float64 (NaN missing), categories as
    strings (None missing)."""
    out = {}
    for c, (kind, _) in kinds.items():
        s = frame[c]
        if kind == "numeric":
            out[c] = pd.to_numeric(s, errors="coerce").astype("float64")
        elif kind == "datetime":
            out[c] = _days(s).astype("float64")
        elif kind == "categorical":
            out[c] = pd.Series([_category_text(v) for v in s.astype("object")], index=s.index, dtype="object")
    return pd.DataFrame(out, index=frame.index)


def _prepare(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str]):
    """Kinds from the real table; both tables normalised the same way."""
    _check_columns(real, synth)
    kinds = column_kinds(real, categorical)
    return kinds, _normalise(real, kinds), _normalise(synth[real.columns], kinds)


def _of_kind(kinds: dict[str, tuple[str, str]], wanted: Sequence[str]) -> list[str]:
    return [c for c, (kind, _) in kinds.items() if kind in wanted]


# --- column shapes -----------------------------------------------------------------------------------

def total_variation(real: pd.Series, synth: pd.Series, dropna: bool = False) -> float:
    """Half the L1 distance between the category frequencies: 0 same shares, 1 no category in common.
    Missing values are a category of their own unless `dropna`."""
    p, q = (pd.Series([_category_text(v) for v in s.astype("object")], dtype="object")
            .value_counts(normalize=True, dropna=dropna) for s in (real, synth))
    return float(0.5 * p.subtract(q, fill_value=0).abs().sum())


def ks_statistic(real: pd.Series, synth: pd.Series) -> float:
    """Two-sample Kolmogorov-Smirnov statistic on the non-missing values: the largest gap between
    the two empirical CDFs (datetimes as days). 1 when only one side has values, 0 when neither."""
    a, b = ((_days(s) if pd.api.types.is_datetime64_any_dtype(s) else pd.to_numeric(s, errors="coerce")).dropna()
            for s in (real, synth))
    if a.empty or b.empty:
        return 1.0 if a.empty != b.empty else 0.0
    return float(ks_2samp(a.to_numpy(float), b.to_numpy(float)).statistic)


def column_similarity(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = ()) -> dict[str, dict]:
    """Per column: {"kind": "numeric"|"datetime", "ks": ...} or {"kind": "categorical", "tvd": ...}
    (lower is closer; missing values count as a category), or {"kind": "id"|"text", "skipped": why}."""
    kinds, r, s = _prepare(real, synth, categorical)
    out = {}
    for c, (kind, rule) in kinds.items():
        if kind in CONTINUOUS:
            out[c] = {"kind": kind, "ks": ks_statistic(r[c], s[c])}
        elif kind == "categorical":
            out[c] = {"kind": kind, "tvd": total_variation(r[c], s[c])}
        else:
            out[c] = {"kind": kind, "skipped": rule}
    return out


def column_shapes(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = ()) -> dict:
    """sdmetrics' Column Shapes property: per column KSComplement (1 - KS statistic; numeric and
    datetime) or TVComplement (1 - total variation distance; categorical and boolean), both on the
    non-missing values only; "score" is their mean over the columns where both sides have values."""
    kinds, r, s = _prepare(real, synth, categorical)
    columns = {}
    for c in _of_kind(kinds, ANALYSED):
        a, b = r[c].dropna(), s[c].dropna()
        if kinds[c][0] in CONTINUOUS:
            score = 1 - ks_statistic(a, b) if len(a) and len(b) else float("nan")
            columns[c] = {"metric": "KSComplement", "score": score}
        else:
            score = 1 - total_variation(a, b, dropna=True) if len(a) and len(b) else float("nan")
            columns[c] = {"metric": "TVComplement", "score": score}
    return {"score": _mean(v["score"] for v in columns.values()), "columns": columns,
            "skipped": skipped_columns(kinds)}


def _mean(scores) -> float:
    """Mean of the defined scores (NaN when none is), as sdmetrics averages a property's details."""
    values = [v for v in scores if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


# --- column pair trends ------------------------------------------------------------------------------

def correlation_difference(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = ()) -> float:
    """Mean absolute difference of the Pearson correlations of every pair of numeric or datetime
    columns (pairwise-complete rows). Pairs with a categorical column: see `pair_trends`."""
    kinds, r, s = _prepare(real, synth, categorical)
    num = _of_kind(kinds, CONTINUOUS)
    if len(num) < 2:
        return 0.0
    a, b = r[num].corr().to_numpy(), s[num].corr().to_numpy()
    upper = np.triu_indices(len(num), k=1)
    return float(np.nanmean(np.abs(a[upper] - b[upper])))


def _correlation_similarity(real: pd.DataFrame, synth: pd.DataFrame, method: str) -> dict:
    """sdmetrics' CorrelationSimilarity: 1 - |S_real - S_synth| / 2 on the rows with both values;
    NaN when a column is constant (the correlation is undefined)."""
    corr = []
    for frame in (real, synth):
        both = frame.dropna()
        if len(both) < 2 or (both.nunique() < 2).any():
            corr.append(float("nan"))
        else:
            corr.append(float(both.iloc[:, 0].corr(both.iloc[:, 1], method=method)))
    score = 1 - abs(corr[0] - corr[1]) / 2
    return {"metric": "CorrelationSimilarity", "score": float(score), "real": corr[0], "synthetic": corr[1]}


def _bins(real: pd.Series, synth: pd.Series, bins: int) -> tuple[pd.Series, pd.Series]:
    """Bin numbers by `bins` equal-width bins over the real range, the outer bins open-ended
    (sdmetrics.utils.discretize_column); missing values stay missing."""
    values = real.dropna().to_numpy(float)
    edges = np.histogram_bin_edges(values, bins=bins) if len(values) else np.zeros(2)
    edges[0], edges[-1] = -np.inf, np.inf
    return tuple(pd.Series(np.digitize(x.to_numpy(float), edges), index=x.index, dtype="object").where(x.notna(), None)
                 for x in (real, synth))


def _contingency_similarity(real: pd.DataFrame, synth: pd.DataFrame) -> dict:
    """sdmetrics' ContingencySimilarity: 1 - total variation distance between the two normalised
    contingency tables, missing values a category of their own (as its groupby(dropna=False))."""
    cols = list(real.columns)
    p = real.groupby(cols, dropna=False).size() / len(real)
    q = synth.groupby(cols, dropna=False).size() / len(synth)
    score = 1 - 0.5 * p.subtract(q, fill_value=0).abs().sum() if len(real) and len(synth) else float("nan")
    return {"metric": "ContingencySimilarity", "score": float(score)}


def pair_trends(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = (),
                method: str = "pearson", bins: int = 10) -> dict:
    """sdmetrics' Column Pair Trends property over every pair of analysed columns:
    CorrelationSimilarity (`method`: "pearson" or "spearman") for two numeric/datetime columns,
    ContingencySimilarity for the others, a numeric/datetime column cut into `bins` equal-width
    bins of the real range. "score" is the mean over the pairs with a defined score.

    Not as in sdmetrics 0.32: it bins each table over its own range (a shifted synthetic column then
    bins like the real one) and puts missing values in the top bin; here the real range is used for
    both and missing values are a bin of their own. Its newer QualityReport also counts only pairs
    whose real |correlation| > 0.5 or Cramer's V > 0.3; here every pair counts, as in its docs.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"`method` must be 'pearson' or 'spearman', got {method!r}")
    kinds, r, s = _prepare(real, synth, categorical)
    cols = _of_kind(kinds, ANALYSED)
    binned = {c: _bins(r[c], s[c], bins) for c in _of_kind(kinds, CONTINUOUS)}
    pairs = []
    for a, b in itertools.combinations(cols, 2):
        if kinds[a][0] in CONTINUOUS and kinds[b][0] in CONTINUOUS:
            result = _correlation_similarity(r[[a, b]], s[[a, b]], method)
        else:
            ra, sa = binned.get(a, (r[a], s[a]))
            rb, sb = binned.get(b, (r[b], s[b]))
            result = _contingency_similarity(pd.DataFrame({a: ra, b: rb}), pd.DataFrame({a: sa, b: sb}))
        pairs.append({"columns": [a, b], **result})
    return {"score": _mean(p["score"] for p in pairs), "pairs": pairs, "skipped": skipped_columns(kinds)}


def quality_report(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = ()) -> dict:
    """The score of sdmetrics' single-table QualityReport: the mean of the Column Shapes and Column
    Pair Trends property scores (each in [0, 1], higher is closer), with their details."""
    shapes, trends = column_shapes(real, synth, categorical), pair_trends(real, synth, categorical)
    return {"score": _mean([shapes["score"], trends["score"]]), "column_shapes": shapes,
            "column_pair_trends": trends, "skipped": shapes["skipped"]}


# --- utility: train on synthetic, test on real -------------------------------------------------------

def _model(features: pd.DataFrame, categorical: Sequence[str], classify: bool, seed: int):
    """One-hot categories, median-filled numbers, a 100-tree random forest on one thread:
    robust without tuning, and fast and deterministic on the small tables this runs on."""
    cats = [c for c in features.columns if c in categorical]
    nums = [c for c in features.columns if c not in categorical]
    encode = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), cats),
                                ("num", SimpleImputer(strategy="median", keep_empty_features=True), nums)])
    forest = RandomForestClassifier if classify else RandomForestRegressor
    return make_pipeline(encode, forest(n_estimators=100, random_state=seed, n_jobs=1))


def ml_efficacy(real_train: pd.DataFrame, real_test: pd.DataFrame, synth: pd.DataFrame, target: str,
                categorical: Sequence[str] = (), seed: int = 0) -> dict:
    """Train on synthetic, test on real (TSTR) against train on real, test on real (TRTR).

    A categorical target is scored by macro-F1, a numeric (or datetime) one by R^2, with a
    scikit-learn random forest on the analysed columns. `difference` = TSTR - TRTR (0 is as
    useful as the real data); `ratio` = TSTR / TRTR only when TRTR > 0, else None: R^2 can be 0 or
    negative, and a ratio to it means nothing.
    """
    for name, frame in (("real_train", real_train), ("real_test", real_test), ("synth", synth)):
        if target not in frame.columns:
            raise ValueError(f"target column {target!r} is not in {name} (columns: {list(frame.columns)})")
    kinds = column_kinds(real_train, categorical)
    if kinds[target][0] not in ANALYSED:
        raise ValueError(f"target column {target!r} is {kinds[target][0]} ({kinds[target][1]}); "
                         "it must be numeric, datetime or categorical")
    _check_columns(real_train, synth)
    _check_columns(real_train, real_test, "real_test")
    cats = _of_kind(kinds, ["categorical"])
    classify = target in cats
    test = _normalise(real_test, kinds).dropna(subset=[target])

    def fit_score(train: pd.DataFrame) -> float:
        train = _normalise(train[real_train.columns], kinds).dropna(subset=[target])
        x, y = train.drop(columns=[target]).fillna({c: MISSING for c in cats if c != target}), train[target]
        x_test, y_test = test.drop(columns=[target]).fillna({c: MISSING for c in cats if c != target}), test[target]
        if classify and y.nunique() < 2:  # one class only: the model can only predict it
            return float(f1_score(y_test, np.full(len(y_test), y.iloc[0]), average="macro"))
        model = _model(x, cats, classify, seed).fit(x, y)
        pred = model.predict(x_test)
        return float(f1_score(y_test, pred, average="macro") if classify else r2_score(y_test, pred))

    trtr, tstr = fit_score(real_train), fit_score(synth)
    return {"task": "classification" if classify else "regression", "metric": "macro_f1" if classify else "r2",
            "trtr": trtr, "tstr": tstr, "difference": tstr - trtr, "ratio": tstr / trtr if trtr > 0 else None,
            "skipped": skipped_columns(kinds)}


# --- privacy -----------------------------------------------------------------------------------------

def distance_to_closest_record(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = ()) -> np.ndarray:
    """For each synthetic row, the Gower distance (Gower 1971) to the nearest real row: the mean over
    the analysed columns of |x - y| / (real max - real min) for numbers and datetimes, and of 0/1
    for equal/different categories; missing matches missing (0) and differs from a value (1).
    In [0, 1] for values inside the real range; a synthetic number outside it may cost more than 1."""
    kinds, r, s = _prepare(real, synth, categorical)
    nums, cats = _of_kind(kinds, CONTINUOUS), _of_kind(kinds, ["categorical"])
    if not nums and not cats:
        raise ValueError("no numeric, datetime or categorical column to measure a distance on; "
                         f"left out: {skipped_columns(kinds)}")
    lo, hi = r[nums].min(), r[nums].max()
    span = (hi - lo).where((hi - lo) > 0, 1.0).fillna(1.0)
    rn, sn = (((f[nums] - lo) / span).to_numpy(float) for f in (r, s))
    levels = {c: pd.Index(r[c].fillna(MISSING).unique()) for c in cats}
    rc, sc = (np.stack([levels[c].get_indexer(f[c].fillna(MISSING)) for c in cats], axis=1) if cats
              else np.zeros((len(f), 0), int) for f in (r, s))  # -1: a category the real table lacks
    block = max(1, 2**22 // max(len(r), 1))  # synthetic rows per (block, real rows) matrix
    out = []
    for i in range(0, len(s), block):
        d = np.zeros((len(sn[i:i + block]), len(r)))
        for j in range(len(nums)):
            a, b = sn[i:i + block, j, None], rn[None, :, j]
            diff = np.abs(a - b)
            d += np.where(np.isnan(diff), np.isnan(a) != np.isnan(b), diff)
        for j in range(len(cats)):
            d += sc[i:i + block, j, None] != rc[None, :, j]
        out.append(d.min(axis=1) / (len(nums) + len(cats)))
    return np.concatenate(out) if out else np.zeros(0)


def _row_keys(frame: pd.DataFrame, kinds: dict[str, tuple[str, str]]) -> pd.Series:
    """A hash per row of its normalised analysed values: numbers to 12 significant digits."""
    text = frame.copy()
    for c in _of_kind(kinds, CONTINUOUS):
        text[c] = [None if np.isnan(v) else _number_text(v) for v in frame[c]]
    return pd.util.hash_pandas_object(text.astype("object"), index=False)


def exact_copy_share(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = ()) -> float:
    """Share of synthetic rows equal, in every analysed column, to some real row: values normalised,
    so 2007 and 2007.0 are equal and missing equals missing; id and text columns are left out (a
    copied row with a new id is still a copy)."""
    kinds, r, s = _prepare(real, synth, categorical)
    seen = set(_row_keys(r, kinds))
    rows = _row_keys(s, kinds)
    return float(np.mean([h in seen for h in rows])) if len(rows) else 0.0


def privacy(real_train: pd.DataFrame, synth: pd.DataFrame, real_holdout: pd.DataFrame | None = None,
            categorical: Sequence[str] = ()) -> dict:
    """Distance to the closest training record (Gower, see above) and the exact-copy share; with a
    held-out real table, the same figures for it: synthetic rows should sit no closer to the
    training rows than unseen real rows do."""
    dcr = distance_to_closest_record(real_train, synth, categorical)
    out = {"dcr_median": float(np.median(dcr)), "dcr_p05": float(np.quantile(dcr, 0.05)),
           "exact_copies": exact_copy_share(real_train, synth, categorical)}
    if real_holdout is not None:
        ref = distance_to_closest_record(real_train, real_holdout, categorical)
        out |= {"holdout_dcr_median": float(np.median(ref)), "holdout_dcr_p05": float(np.quantile(ref, 0.05)),
                "holdout_exact_copies": exact_copy_share(real_train, real_holdout, categorical)}
    return out | {"skipped": skipped_columns(column_kinds(real_train, categorical))}
