"""The table transformer: exact round trips, rounding and ranges on the way back, json, fixed
combinations, synthetic ids, and the errors users see."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from genforge.data.ingest import ingest
from genforge.data.options import IngestConfig
from genforge.data.store import open_dataset
from genforge.errors import ConfigError, DataError
from genforge.tabular import Codec, TableTransformer, TransformConfig


@pytest.fixture(scope="module")
def penguins(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_HOME", str(tmp_path_factory.mktemp("ws")))
        ingest("builtin:penguins", "penguins", IngestConfig())
        ds = open_dataset("penguins")
        return ds.frame("train"), ds.manifest.data_schema["columns"]


def schema(frame: pd.DataFrame, types: dict[str, str], **extra: dict) -> list[dict]:
    return [{"name": c, "type": types[c], "dtype": str(frame[c].dtype), "missing": int(frame[c].isna().sum()),
             **extra.get(c, {})} for c in frame.columns]


def one_hot_noise(t: TableTransformer, n: int, seed: int) -> np.ndarray:
    """What an untrained generator might output: any real numbers."""
    return np.random.default_rng(seed).normal(0, 2, size=(n, t.width))


def test_penguins_round_trip(penguins):
    frame, columns = penguins
    t = TableTransformer.fit(frame, columns, TransformConfig(), seed=0)
    x = t.transform(frame, seed=1)
    assert x.dtype == np.float32 and x.shape == (len(frame), t.width)
    for sp in t.spans:
        part = x[:, sp.start:sp.start + sp.size]
        if sp.role == "value":
            assert np.abs(part).max() <= 0.99
        else:
            assert (part.sum(axis=1) == 1).all()
    assert {sp.role for sp in t.spans} == {"value", "mode", "missing", "category"}
    assert t.discrete == ("species", "island", "sex")
    assert t.codes(frame).shape == (len(frame), 3)
    back = t.inverse(x, list(range(len(frame))))
    pd.testing.assert_frame_equal(back, frame)


def test_json_round_trip_gives_identical_output(penguins):
    frame, columns = penguins
    t = TableTransformer.fit(frame, columns, TransformConfig(max_modes=5), seed=3)
    d = json.loads(json.dumps(t.to_json()))
    t2 = TableTransformer.from_json(d)
    assert t2.to_json() == t.to_json() and t2.spans == t.spans and t2.codec.learned == t.codec.learned
    np.testing.assert_array_equal(t2.transform(frame, seed=7), t.transform(frame, seed=7))
    x = one_hot_noise(t, 50, 0)
    pd.testing.assert_frame_equal(t2.inverse(x, range(50)), t.inverse(x, range(50)))


def test_datetimes_keep_zone_and_resolution():
    rng = np.random.default_rng(0)
    days = pd.Series(pd.to_datetime("2023-01-01") + pd.to_timedelta(rng.integers(0, 365, 200), unit="D"))
    stamps = pd.Series(pd.to_datetime(1.6e9 + rng.integers(0, 10**7, 200), unit="s", utc=True))
    frame = pd.DataFrame({"day": days.astype("datetime64[us]"), "at": stamps.astype("datetime64[ns, UTC]")})
    frame.loc[[3, 5], "at"] = pd.NaT
    t = TableTransformer.fit(frame, schema(frame, {"day": "datetime", "at": "datetime"}), TransformConfig(), seed=0)
    pd.testing.assert_frame_equal(t.inverse(t.transform(frame, 0), range(200)), frame)
    out = t.inverse(one_hot_noise(t, 500, 1), range(500))
    assert out.dtypes.astype(str).tolist() == ["datetime64[us]", "datetime64[ns, UTC]"]
    assert (out["day"] == out["day"].dt.normalize()).all()  # dates in, dates out
    assert out["day"].between(days.min(), days.max()).all()
    assert (out["at"].dropna().dt.microsecond == 0).all() and out["at"].isna().any()


def test_booleans_and_int64_with_missing():
    frame = pd.DataFrame({"ok": pd.array([True, False, None, True] * 25, dtype="boolean"),
                          "n": pd.array([3, None, 40, 1000] * 25, dtype="Int64")})
    t = TableTransformer.fit(frame, schema(frame, {"ok": "boolean", "n": "numeric"}), TransformConfig(), seed=0)
    assert t.codec.learned[0].categories == (False, True, None)
    pd.testing.assert_frame_equal(t.inverse(t.transform(frame, 0), range(100)), frame)
    out = t.inverse(one_hot_noise(t, 300, 2), range(300))
    assert str(out["ok"].dtype) == "boolean" and out["ok"].isna().any()
    assert str(out["n"].dtype) == "Int64" and out["n"].isna().any() and out["n"].dropna().between(3, 1000).all()


def test_decimals_as_seen_or_as_written():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"price": np.round(rng.gamma(2, 30, 300), 2), "whole": np.round(rng.normal(50, 9, 300)),
                          "rate": rng.choice([0.1, 0.12, 0.3], 300), "amount": rng.choice([12.5, 300.0, 7.0], 300)})
    cols = schema(frame, dict.fromkeys(frame.columns, "numeric"),
                  rate={"format": {"percent": True, "decimals": 1}},  # written 12.5%: 0.125
                  amount={"format": {"percent": False, "decimals": 2}})  # written 1,234.50
    t = TableTransformer.fit(frame, cols, TransformConfig(), seed=0)
    assert [c.decimals for c in t.codec.columns] == [2, 0, 3, 2]
    out = t.inverse(one_hot_noise(t, 1000, 3), range(1000))
    for col, d in (("price", 2), ("whole", 0), ("rate", 3), ("amount", 2)):
        v = out[col].to_numpy()
        np.testing.assert_allclose(v, np.round(v, d), rtol=0, atol=1e-9)
        assert v.min() >= frame[col].min() and v.max() <= frame[col].max()
    assert len(np.unique(out["price"])) > 100  # rounded, not collapsed


def test_out_of_range_values_are_clipped():
    frame = pd.DataFrame({"v": np.linspace(10, 20, 101)})
    t = TableTransformer.fit(frame, schema(frame, {"v": "numeric"}), TransformConfig(), seed=0)
    value, mode = t.spans[0], t.spans[1]
    x = np.zeros((4, t.width))
    x[:, mode.start] = 1  # every row in mode 0
    x[:, value.start] = [50.0, -50.0, 1.0, -1.0]
    out = t.inverse(x, range(4))["v"].to_numpy()
    mu, sigma = t.modes["v"].means[0], t.modes["v"].stds[0]
    expect = np.clip(np.round([mu + 4 * sigma, mu - 4 * sigma] * 2, 2), 10, 20)
    np.testing.assert_allclose(out, expect)  # alpha beyond [-1, 1] is clipped to it
    assert out.min() >= 10 and out.max() <= 20


def test_fixed_combinations_only_give_seen_combinations():
    rng = np.random.default_rng(0)
    pairs = [("CN", "Beijing"), ("CN", "Shanghai"), ("FR", "Paris"), ("US", "Boston"), ("US", None)]
    picked = [pairs[i] for i in rng.integers(0, len(pairs), 400)]
    frame = pd.DataFrame({"country": pd.Categorical([p[0] for p in picked]), "x": np.round(rng.normal(size=400), 3),
                          "city": pd.Categorical([p[1] for p in picked])})
    t = TableTransformer.fit(frame, schema(frame, {"country": "categorical", "x": "numeric", "city": "categorical"}),
                             TransformConfig(), 0, [["city", "country"]])
    combo = t.codec.learned[0]
    assert combo.name == "country+city" and set(combo.categories) == set(pairs) and t.discrete == ("country+city",)
    assert sum(combo.frequencies) == pytest.approx(1)
    pd.testing.assert_frame_equal(t.inverse(t.transform(frame, 0), range(400)), frame)
    out = t.inverse(one_hot_noise(t, 2000, 4), range(2000))
    assert list(out.columns) == ["country", "x", "city"]
    seen = {(a, None if pd.isna(b) else b) for a, b in zip(out["country"], out["city"])}
    assert seen <= set(pairs) and len(seen) == len(pairs)
    assert t.codec.condition("country+city", ["FR", "Paris"]) == ("country+city", combo.categories.index(("FR", "Paris")))
    assert t.codec.condition("city", "Paris")[0] == "city"  # a member alone: met by rejection
    with pytest.raises(ConfigError, match="no category 'Rome'"):
        t.codec.condition("city", "Rome")
    with pytest.raises(ConfigError, match="'FR', 'Boston'"):
        t.codec.condition("country+city", ["FR", "Boston"])
    unseen = frame.assign(city=pd.Categorical(["Paris"] * 400, categories=frame["city"].cat.categories))
    with pytest.raises(DataError, match="not one seen in training"):
        t.codec.values(unseen)
    with pytest.raises(ConfigError, match="not categorical or boolean"):
        Codec.fit(frame, schema(frame, {"country": "categorical", "x": "numeric", "city": "categorical"}), [["x", "city"]])


def test_synthetic_ids():
    frame = pd.DataFrame({"order": pd.array([f"DD2023{i:06d}" for i in range(60)], dtype="string"),
                          "num": pd.array(np.arange(1000, 1060), dtype="Int64"),
                          "v": np.arange(60.0)})
    codec = Codec.fit(frame, schema(frame, {"order": "id", "num": "id", "v": "numeric"}))
    assert [lc.name for lc in codec.learned] == ["v"]
    stored = json.dumps(codec.to_json())
    assert "2023" not in stored and "1000" not in stored  # only the masked template: ["DD", 14]
    seeds = list(range(10_000))
    out = codec.frame({"v": np.zeros(10_000)}, seeds)
    assert out["order"].is_unique and out["num"].is_unique
    assert out["order"].str.fullmatch(r"DD[0-9]{14}").all() and str(out["order"].dtype) == "string"
    assert str(out["num"].dtype) == "Int64" and out["num"].between(10**13, 10**14 - 1).all()
    again = codec.frame({"v": np.zeros(3)}, [5, 9999, 2**62])
    assert again["order"].tolist()[:2] == [out["order"][5], out["order"][9999]]
    assert not set(out["order"]) & set(frame["order"])


def test_text_columns_are_left_out():
    frame = pd.DataFrame({"note": pd.array(["call me", "fine", "late"] * 10, dtype="string"), "v": np.arange(30.0)})
    codec = Codec.fit(frame, schema(frame, {"note": "text", "v": "numeric"}))
    assert list(codec.frame(codec.values(frame), range(30)).columns) == ["v"]


def test_conditions(penguins):
    frame, columns = penguins
    codec = Codec.fit(frame, columns)
    assert codec.condition("species", "Gentoo") == ("species", 2)
    assert codec.condition("sex", None) == ("sex", 2)  # the missing category
    assert codec.condition("body_mass_g", 4000) == ("body_mass_g", 4000.0)
    with pytest.raises(ConfigError, match="no category 'Emperor'.*'Adelie', 'Chinstrap', 'Gentoo'"):
        codec.condition("species", "Emperor")
    with pytest.raises(ConfigError, match="cannot condition on 'wings'.*'species'.*'year'"):
        codec.condition("wings", 2)
    with pytest.raises(ConfigError, match="train range"):
        codec.condition("body_mass_g", 1e6)
    with pytest.raises(ConfigError, match="must be a number"):
        codec.condition("body_mass_g", "heavy")


def test_condition_lists_at_most_20_values():
    frame = pd.DataFrame({"c": pd.Categorical([f"k{i:02d}" for i in range(30)] * 2)})
    codec = Codec.fit(frame, schema(frame, {"c": "categorical"}))
    with pytest.raises(ConfigError, match=r"'k19', \.\.\. \(30 in all\)") as e:
        codec.condition("c", "zzz")
    assert "'k20'" not in str(e.value)


def test_unknown_category_is_a_data_error(penguins):
    frame, columns = penguins
    codec = Codec.fit(frame, columns)
    bad = frame.assign(island=frame["island"].astype(str).replace("Dream", "Atlantis"))
    with pytest.raises(DataError, match="column 'island' holds 'Atlantis'"):
        codec.values(bad)


def test_constant_and_few_valued_columns_fit_without_warnings():
    frame = pd.DataFrame({"k": np.full(200, 7.0), "two": np.tile([0.0, 1.0], 100), "e": np.full(200, np.nan)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = TableTransformer.fit(frame, schema(frame, dict.fromkeys(frame.columns, "numeric")), TransformConfig(), seed=0)
    assert len(t.modes["k"].means) == 1 and len(t.modes["two"].means) <= 2
    pd.testing.assert_frame_equal(t.inverse(t.transform(frame, 0), range(200)), frame)


def test_mixture_updates_are_sklearns_from_the_same_start():
    """The batched variational fit against sklearn's BayesianGaussianMixture started from the same
    k-means clusters: the same means, variances and weights after its 100 rounds."""
    from sklearn.mixture import BayesianGaussianMixture

    from genforge.tabular.vgm import _kmeans, _variational

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 1, 300), rng.normal(0, .3, 200), rng.normal(4, 2, 500)])
    x = (x - x.mean()) / x.std()
    mask = np.ones((1, len(x)), bool)
    start = _kmeans(x[None], mask, 6, rng.random((1, 6)))

    class Started(BayesianGaussianMixture):
        def _initialize_parameters(self, X, random_state, xp=None):
            self._initialize(X, start[0].T)

    gm = Started(n_components=6, weight_concentration_prior_type="dirichlet_process", weight_concentration_prior=1e-3,
                 covariance_type="diag", max_iter=100, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(x[:, None])
    means, covs, weights = _variational(x[None], mask, start)
    np.testing.assert_allclose(means[0], gm.means_[:, 0], atol=1e-10)
    np.testing.assert_allclose(covs[0], gm.covariances_[:, 0], atol=1e-10)
    np.testing.assert_allclose(weights[0], gm.weights_, atol=1e-10)


def test_mixtures_find_the_modes_and_columns_fit_alone_as_together():
    from genforge.tabular.vgm import fit_modes

    rng = np.random.default_rng(1)
    three = np.concatenate([rng.normal(-50, 1, 3000), rng.normal(0, 2, 2000), rng.normal(80, 5, 5000)])
    columns = [three, rng.exponential(3, 700), np.where(rng.random(900) < .2, np.nan, rng.normal(5, 1, 900)),
               rng.integers(0, 3, 400).astype(float)]
    config = TransformConfig(fit_rows=8000)
    together = fit_modes([(c, np.random.default_rng([7, i])) for i, c in enumerate(columns)], config)
    alone = [fit_modes([(c, np.random.default_rng([7, i]))], config)[0] for i, c in enumerate(columns)]
    for t, a in zip(together, alone):
        np.testing.assert_allclose(t.means, a.means, rtol=1e-9)
        np.testing.assert_allclose(t.weights, a.weights, rtol=1e-9)
    found = list(zip(together[0].means, together[0].weights))
    centers = np.array([-50, 0, 80])
    for j, share in enumerate((.3, .2, .5)):  # the modes nearest each true one hold its share of the weight
        near = sum(w for m, w in found if np.abs(centers - m).argmin() == j)
        assert abs(near - share) < .02, (centers[j], found)
    assert len(together[3].means) <= 3 and abs(sum(together[3].weights) - 1) < 1e-9
