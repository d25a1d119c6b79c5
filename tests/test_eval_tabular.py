"""Table metrics on the real Palmer penguins table (344 rows, numbers, categories, missing values)
and on small frames whose answers are worked out by hand."""

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
    assert copy["holdout_exact_copies"] == 0.0 and copy["holdout_dcr_median"] > 0.01  # Gower: a mean over 8 columns
    half = pd.concat([train.iloc[:50], test.iloc[:50]])
    assert tabular.exact_copy_share(train, half) == 0.5
    fresh = tabular.privacy(train, shuffled, test)
    assert fresh["exact_copies"] == 0.0 and fresh["dcr_median"] > copy["holdout_dcr_median"]


@pytest.fixture(scope="module")
def orders():
    """Orders with unique timestamps, an id and free-text notes; a second draw of the same kind."""
    def draw(seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        n = 200
        return pd.DataFrame({
            "when": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.uniform(0, 365 * 86400, n).round(), unit="s"),
            "amount": rng.normal(100, 20, n).round(2),
            "order_id": [f"A{seed}{i:05d}" for i in range(n)],
            "note": [f"customer {seed} asked about parcel {i} twice" for i in range(n)]})
    return draw(0), draw(1)


def test_datetimes_are_numbers_and_ids_and_text_are_left_out(orders):
    real, other = orders
    # two draws of one date range are close (as categories they would share no value: TVD 1.0)
    sim = tabular.column_similarity(real, other)
    days = [(f.when - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1) for f in (real, other)]
    assert sim["when"] == {"kind": "datetime", "ks": pytest.approx(ks_2samp(*days).statistic)}
    assert sim["when"]["ks"] < 0.15
    assert sim["order_id"]["kind"] == "id" and "distinct" in sim["order_id"]["skipped"]
    assert sim["note"]["kind"] == "text" and "skipped" in sim["note"]
    kinds = tabular.column_kinds(real)
    assert {c: k for c, (k, _) in kinds.items()} == {
        "when": "datetime", "amount": "numeric", "order_id": "id", "note": "text"}
    assert set(tabular.skipped_columns(kinds)) == {"order_id", "note"}
    # ISO 8601 strings are dates too
    assert tabular.column_kinds(real.assign(when=real.when.astype(str)))["when"][0] == "datetime"
    # the real rows an hour later, with new ids and notes: near copies, and exact ones when the time is kept
    near = other.assign(when=real.when + pd.Timedelta(hours=1), amount=real.amount)
    span_days = (real.when.max() - real.when.min()) / pd.Timedelta(days=1)
    hour_over_range = (1 / 24) / span_days / 2  # mean of the two columns: `when` off by an hour, `amount` equal
    assert tabular.distance_to_closest_record(real, near) == pytest.approx(np.full(len(real), hour_over_range))
    assert tabular.exact_copy_share(real, near.assign(when=real.when)) == 1.0
    assert tabular.privacy(real, near)["skipped"].keys() == {"order_id", "note"}
    assert tabular.quality_report(real, other)["skipped"].keys() == {"order_id", "note"}
    assert tabular.correlation_difference(real, near) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="target column 'order_id' is id"):
        tabular.ml_efficacy(real, other, other, "order_id")


def test_exact_copies_compare_values_not_spellings(penguins):
    train, _ = penguins
    as_floats = train.assign(year=train.year.astype(float), body_mass_g=train.body_mass_g.astype("float32"))
    assert tabular.exact_copy_share(train, as_floats) == 1.0  # 2007 == 2007.0; missing == missing
    assert tabular.exact_copy_share(train, train.assign(bill_length_mm=train.bill_length_mm + 1e-11)) == 1.0
    moved = train.assign(bill_length_mm=train.bill_length_mm + 0.1)
    assert tabular.exact_copy_share(train, moved) == train.bill_length_mm.isna().mean()  # only rows without a length
    lower = train.assign(species=train.species.str.lower())
    assert tabular.exact_copy_share(train, lower) == 0.0  # categories compare as strings, case included


def test_distance_to_closest_record_is_gower_by_hand():
    real = pd.DataFrame({"x": [0.0, 10.0], "c": ["a", "b"]})
    synth = pd.DataFrame({"x": [5.0, 10.0, 20.0, np.nan], "c": ["a", "c", "b", "a"]})
    # mean over the 2 columns of |dx| / 10 and the category mismatch; a missing number differs by 1
    expected = [(0.5 + 0) / 2, (0 + 1) / 2, (1 + 0) / 2, (1 + 0) / 2]
    assert tabular.distance_to_closest_record(real, synth, categorical=["c"]) == pytest.approx(expected)
    both_missing = pd.DataFrame({"x": [np.nan, 4.0, 10.0], "c": ["a", "a", "b"]})
    assert tabular.distance_to_closest_record(both_missing, pd.DataFrame({"x": [np.nan], "c": ["a"]}),
                                              categorical=["c"]) == pytest.approx([0.0])


def test_tstr_reports_a_difference_and_no_ratio_to_a_non_positive_score():
    rng = np.random.default_rng(0)
    noise = pd.DataFrame({"x": rng.normal(size=300), "y": rng.normal(size=300)})  # nothing to learn
    out = tabular.ml_efficacy(noise[:200], noise[200:], noise[:200].sample(frac=1, random_state=1), "y")
    assert out["trtr"] <= 0 and out["ratio"] is None
    assert out["difference"] == pytest.approx(out["tstr"] - out["trtr"])


def test_pair_trends_cover_categorical_and_mixed_pairs(penguins, shuffled):
    train, test = penguins
    same = tabular.pair_trends(train, train)
    assert len(same["pairs"]) == 28 and same["score"] == pytest.approx(1.0)
    metric = {tuple(p["columns"]): p["metric"] for p in same["pairs"]}
    assert metric["bill_length_mm", "body_mass_g"] == "CorrelationSimilarity"
    assert metric["species", "island"] == metric["species", "flipper_length_mm"] == "ContingencySimilarity"
    score = {name: {tuple(p["columns"]): p["score"] for p in tabular.pair_trends(train, other)["pairs"]}
             for name, other in (("test", test), ("shuffled", shuffled))}
    # golden figures: sdmetrics 0.32 on this split gives the same (ContingencySimilarity with
    # continuous_column_names=["bill_length_mm"]; its QualityReport's Column Shapes)
    assert score["test"]["species", "bill_length_mm"] == pytest.approx(0.790705, abs=1e-6)
    assert tabular.column_shapes(train, test)["score"] == pytest.approx(0.921487, abs=1e-6)
    for pair in [("species", "island"), ("species", "flipper_length_mm"), ("island", "body_mass_g")]:
        assert score["shuffled"][pair] < score["test"][pair] - 0.1  # shuffling breaks what a sample keeps
    with pytest.raises(ValueError, match="`method` must be 'pearson' or 'spearman', got 'kendall'"):
        tabular.pair_trends(train, test, method="kendall")


def test_quality_report_matches_sdmetrics_definitions_by_hand():
    day = pd.Timedelta(days=1)
    start = pd.Timestamp("2024-01-01")
    common = {"order_id": [f"A{i}" for i in range(6)], "note": [f"left at door {i} by courier" for i in range(6)]}
    real = pd.DataFrame({"x": [1, 2, 3, 4, 5, 6], "y": [2, 4, 6, 8, 10, 12], "c": ["a", "a", "a", "b", "b", None],
                         "d": [start + i * day for i in range(6)], **common})
    synth = pd.DataFrame({"x": [1, 2, 3, 4, 5, 6], "y": [12, 10, 8, 6, 4, 2], "c": ["a", "b", "b", "b", None, None],
                          "d": [start + (i + 0.25) * day for i in range(6)], **common})
    report = tabular.quality_report(real, synth)
    assert report["skipped"].keys() == {"order_id", "note"}
    # Column Shapes. x, y: same values -> KSComplement 1. d: 6 hours later, the CDFs part by 1/6 -> 5/6.
    # c without missing values: real a 3/5, b 2/5; synthetic a 1/4, b 3/4 -> TVComplement 1 - 0.35
    shapes = {c: (v["metric"], v["score"]) for c, v in report["column_shapes"]["columns"].items()}
    assert shapes == {"x": ("KSComplement", 1.0), "y": ("KSComplement", 1.0),
                      "c": ("TVComplement", pytest.approx(0.65)), "d": ("KSComplement", pytest.approx(5 / 6))}
    assert report["column_shapes"]["score"] == pytest.approx((1 + 1 + 0.65 + 5 / 6) / 4)
    # Column Pair Trends. Correlations: (x, y) 1 vs -1 -> 0; (x, d) 1 vs 1 -> 1; (y, d) 1 vs -1 -> 0.
    # Contingency, numbers in 10 bins of the real range (each value its own bin, d's 6 hours stay in it),
    # missing c a category; every row is a cell of its own, so the score is the share of rows whose cell
    # both tables hold: (x, c) 1a 4b 6- -> 1/2; (y, c) (8, b) and (10, b) -> 2/6; (c, d) 1a 4b 6- -> 1/2
    pairs = {tuple(p["columns"]): p["score"] for p in report["column_pair_trends"]["pairs"]}
    expected = {("x", "y"): 0.0, ("x", "c"): 0.5, ("x", "d"): 1.0, ("y", "c"): 1 / 3, ("y", "d"): 0.0, ("c", "d"): 0.5}
    assert pairs == pytest.approx(expected)
    assert report["column_pair_trends"]["score"] == pytest.approx(7 / 18)
    assert report["score"] == pytest.approx(((1 + 1 + 0.65 + 5 / 6) / 4 + 7 / 18) / 2)  # sdmetrics 0.32: 0.629861
    # the same table scores 1 everywhere
    assert tabular.quality_report(real, real)["score"] == pytest.approx(1.0)
