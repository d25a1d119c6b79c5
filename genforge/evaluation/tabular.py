"""Table metrics on pandas frames: how alike a synthetic table is to the real one, how useful, how private.

A column is categorical when its dtype is not numeric (strings, categories, booleans) or when the
caller names it; every other column is numeric. Missing values are a category of their own for
categorical columns and are left out of a numeric column's distribution.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import ks_2samp
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.metrics import f1_score, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder


def categorical_columns(frame: pd.DataFrame, categorical: Sequence[str] = ()) -> list[str]:
    return [c for c in frame.columns
            if c in categorical or not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])]


def _check_columns(real: pd.DataFrame, synth: pd.DataFrame) -> None:
    missing = [c for c in real.columns if c not in synth.columns]
    if missing:
        raise ValueError(f"the synthetic table lacks columns of the real one: {missing}")


def _as_categories(s: pd.Series) -> np.ndarray:
    """Values as strings, missing ones as "<missing>": a category of its own."""
    return s.astype("object").where(s.notna(), "<missing>").astype(str).to_numpy(dtype=object)


def _category_shares(s: pd.Series) -> pd.Series:
    return pd.Series(_as_categories(s)).value_counts(normalize=True)


def total_variation(real: pd.Series, synth: pd.Series) -> float:
    """Half the L1 distance between the category frequencies: 0 same shares, 1 no category in common."""
    p, q = _category_shares(real), _category_shares(synth)
    return float(0.5 * p.subtract(q, fill_value=0).abs().sum())


def ks_statistic(real: pd.Series, synth: pd.Series) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = pd.to_numeric(real, errors="coerce").dropna(), pd.to_numeric(synth, errors="coerce").dropna()
    if a.empty or b.empty:
        return 1.0 if a.empty != b.empty else 0.0
    return float(ks_2samp(a.to_numpy(float), b.to_numpy(float)).statistic)


def column_similarity(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = ()) -> dict[str, dict]:
    """Per column: {"kind": "numeric", "ks": ...} or {"kind": "categorical", "tvd": ...}; lower is closer."""
    _check_columns(real, synth)
    cats = set(categorical_columns(real, categorical))
    return {c: ({"kind": "categorical", "tvd": total_variation(real[c], synth[c])} if c in cats
                else {"kind": "numeric", "ks": ks_statistic(real[c], synth[c])}) for c in real.columns}


def correlation_difference(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = ()) -> float:
    """Mean absolute difference of the Pearson correlations of every pair of numeric columns.

    Associations that involve categorical columns are not measured here.
    """
    _check_columns(real, synth)
    cats = set(categorical_columns(real, categorical))
    num = [c for c in real.columns if c not in cats]
    if len(num) < 2:
        return 0.0
    a = real[num].astype(float).corr().to_numpy()
    b = synth[num].astype(float).corr().to_numpy()
    upper = np.triu_indices(len(num), k=1)
    return float(np.nanmean(np.abs(a[upper] - b[upper])))


def _categories_as_text(frame: pd.DataFrame, cats: Sequence[str]) -> pd.DataFrame:
    return frame.assign(**{c: _as_categories(frame[c]) for c in cats if c in frame.columns})


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

    A categorical target is scored by macro-F1, a numeric one by R^2, with a scikit-learn
    random forest. `ratio` = TSTR / TRTR.
    """
    for name, frame in (("real_train", real_train), ("real_test", real_test), ("synth", synth)):
        if target not in frame.columns:
            raise ValueError(f"target column {target!r} is not in {name} (columns: {list(frame.columns)})")
    cats = categorical_columns(real_train, categorical)
    classify = target in cats

    def fit_score(train: pd.DataFrame) -> float:
        train = _categories_as_text(train.dropna(subset=[target]), cats)
        test = _categories_as_text(real_test.dropna(subset=[target]), cats)
        x, y = train.drop(columns=[target]), train[target]
        if classify:
            y, y_test = y.astype(str), test[target].astype(str)
            if y.nunique() < 2:  # one class only: the model can only predict it
                return float(f1_score(y_test, np.full(len(y_test), y.iloc[0]), average="macro"))
        else:
            y, y_test = y.astype(float), test[target].astype(float)
        model = _model(x, cats, classify, seed).fit(x, y)
        pred = model.predict(test.drop(columns=[target])[x.columns])
        return float(f1_score(y_test, pred, average="macro") if classify else r2_score(y_test, pred))

    trtr, tstr = fit_score(real_train), fit_score(synth[real_train.columns])
    return {"task": "classification" if classify else "regression", "metric": "macro_f1" if classify else "r2",
            "trtr": trtr, "tstr": tstr, "ratio": tstr / trtr if trtr else float("nan")}


def _encode(reference: pd.DataFrame, frames: Sequence[pd.DataFrame], categorical: Sequence[str]) -> list[np.ndarray]:
    """Numeric columns scaled by the reference's range (missing -> the reference median),
    categorical columns one-hot over the reference's categories: a category mismatch costs 1."""
    cats = categorical_columns(reference, categorical)
    out = [[] for _ in frames]
    for c in reference.columns:
        if c in cats:
            levels = np.unique(_as_categories(reference[c]))
            for i, f in enumerate(frames):
                v = _as_categories(f[c])
                out[i].append((v[:, None] == levels[None, :]).astype(np.float32) / np.sqrt(2))
        else:
            col = pd.to_numeric(reference[c], errors="coerce")
            lo, span, fill = col.min(), (col.max() - col.min()) or 1.0, col.median()
            for i, f in enumerate(frames):
                v = pd.to_numeric(f[c], errors="coerce").fillna(fill).to_numpy(np.float32)
                out[i].append(((v - lo) / span)[:, None])
    return [np.concatenate(parts, axis=1) for parts in out]


def distance_to_closest_record(real: pd.DataFrame, synth: pd.DataFrame, categorical: Sequence[str] = (),
                               chunk: int = 2048) -> np.ndarray:
    """For each synthetic row, the Euclidean distance to the nearest real row in the encoding above."""
    _check_columns(real, synth)
    r, s = (torch.from_numpy(a) for a in _encode(real, [real, synth[real.columns]], categorical))
    return np.concatenate([torch.cdist(s[i:i + chunk], r).min(1).values.numpy() for i in range(0, len(s), chunk)])


def exact_copy_share(real: pd.DataFrame, synth: pd.DataFrame) -> float:
    """Share of synthetic rows identical, in every column, to some real row."""
    _check_columns(real, synth)
    seen = set(pd.util.hash_pandas_object(real.astype(str), index=False))
    rows = pd.util.hash_pandas_object(synth[real.columns].astype(str), index=False)
    return float(np.mean([h in seen for h in rows])) if len(rows) else 0.0


def privacy(real_train: pd.DataFrame, synth: pd.DataFrame, real_holdout: pd.DataFrame | None = None,
            categorical: Sequence[str] = ()) -> dict:
    """Distance to the closest training record and the exact-copy share; with a held-out real
    table, the same figures for it: synthetic rows should sit no closer to the training rows
    than unseen real rows do."""
    dcr = distance_to_closest_record(real_train, synth, categorical)
    out = {"dcr_median": float(np.median(dcr)), "dcr_p05": float(np.quantile(dcr, 0.05)),
           "exact_copies": exact_copy_share(real_train, synth)}
    if real_holdout is not None:
        ref = distance_to_closest_record(real_train, real_holdout, categorical)
        out |= {"holdout_dcr_median": float(np.median(ref)), "holdout_dcr_p05": float(np.quantile(ref, 0.05)),
                "holdout_exact_copies": exact_copy_share(real_train, real_holdout)}
    return out
