"""Table metrics on the real Palmer penguins table (344 rows, numbers, categories, missing values)."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from genforge.evaluation import tabular


@pytest.fixture(scope="module")
def penguins():
    import palmerpenguins

    df = palmerpenguins.load_penguins()
    order = np.random.default_rng(0).permutation(len(df))
    return df.iloc[order[:240]].reset_index(drop=True), df.iloc[order[240:]].reset_index(drop=True)


@pytest.fixture(scope="module")
def shuffled(penguins):
    """Every column shuffled on its own: the same marginals, no relation between columns."""
    train, _ = penguins
    rng = np.random.default_rng(1)
    return pd.DataFrame({c: rng.permutation(train[c].to_numpy()) for c in train.columns})


def test_column_similarity_known_answers(penguins, shuffled):
    train, test = penguins
    same = tabular.column_similarity(train, train)
    assert {c: v["kind"] for c, v in same.items()} == {
        "species": "categorical", "island": "categorical", "bill_length_mm": "numeric", "bill_depth_mm": "numeric",
        "flipper_length_mm": "numeric", "body_mass_g": "numeric", "sex": "categorical", "year": "numeric"}
    assert all(v.get("ks", v.get("tvd")) == 0.0 for v in same.values())
    assert all(v.get("ks", v.get("tvd")) == 0.0 for v in tabular.column_similarity(train, shuffled).values())
    # KS equals scipy's on the non-missing values
    sim = tabular.column_similarity(train, test)
    expected = ks_2samp(train.body_mass_g.dropna(), test.body_mass_g.dropna()).statistic
    assert sim["body_mass_g"]["ks"] == pytest.approx(expected)
    # only Adelie penguins: TVD of species = 1 - share of Adelie
    full = pd.concat([train, test])
    adelie = full[full.species == "Adelie"]
    assert tabular.total_variation(full.species, adelie.species) == pytest.approx(1 - (full.species == "Adelie").mean())
    # missing values are a category of their own: 11 of 344 sexes are missing
    assert tabular.total_variation(full.sex, full.sex.dropna()) == pytest.approx(full.sex.isna().mean())


def test_correlation_difference(penguins, shuffled):
    train, test = penguins
    assert tabular.correlation_difference(train, train) == 0.0
    assert tabular.correlation_difference(train, test) < 0.1  # two samples of one population
    assert tabular.correlation_difference(train, shuffled) > 0.3  # flipper length and body mass correlate at 0.87


def test_ml_efficacy_tstr_against_trtr(penguins, shuffled):
    train, test = penguins
    same = tabular.ml_efficacy(train, test, train, "species")
    assert same["task"] == "classification" and same["tstr"] == same["trtr"] > 0.9 and same["ratio"] == 1.0
    broken = tabular.ml_efficacy(train, test, shuffled, "species")
    assert broken["ratio"] < 0.7  # no relation left to learn
    reg = tabular.ml_efficacy(train, test, train, "body_mass_g")
    assert reg["metric"] == "r2" and reg["trtr"] > 0.7
    with pytest.raises(ValueError, match="target column 'price'"):
        tabular.ml_efficacy(train, test, train, "price")


def test_privacy_copies_and_distances(penguins, shuffled):
    train, test = penguins
    copy = tabular.privacy(train, train, test)
    assert copy["exact_copies"] == 1.0 and copy["dcr_median"] == 0.0
    assert copy["holdout_exact_copies"] == 0.0 and copy["holdout_dcr_median"] > 0.05
    half = pd.concat([train.iloc[:50], test.iloc[:50]])
    assert tabular.exact_copy_share(train, half) == 0.5
    fresh = tabular.privacy(train, shuffled, test)
    assert fresh["exact_copies"] == 0.0 and fresh["dcr_median"] > copy["holdout_dcr_median"]
