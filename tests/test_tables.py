"""Table generation as a user relies on it: the real table's columns and types back, missing values,
dates, conditions (one, several, ranges, impossible, unknown), every kind of business rule holding on
every row, no real row emitted, and a wide, long table fitted in bounded memory."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import genforge
from clirun import invoke
from genforge.data.store import open_dataset
from genforge.errors import ConfigError, ModelError
from genforge.tabular.provenance import COLUMNS, with_columns
from genforge.tabular.sampling import row_hashes

CITIES = {"north": [("Harbin", "Heilongjiang"), ("Shenyang", "Liaoning")],
          "south": [("Guangzhou", "Guangdong"), ("Shenzhen", "Guangdong")],
          "east": [("Hangzhou", "Zhejiang"), ("Nanjing", "Jiangsu")]}
RULES = {"ranges": {"amount": [20, 900]}, "unique": ["amount"],
         "inequalities": [{"low": "order_date", "high": "ship_date"}],
         "fixed_combinations": [["city", "province"]]}


def orders(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """An order export: an id, related categories, money with 2 decimals, integers, two dates in
    order, a boolean, a column with missing values and free text."""
    rng = np.random.default_rng(seed)
    region = rng.choice(list(CITIES), n, p=[0.5, 0.3, 0.2])
    pairs = [CITIES[r][rng.integers(2)] for r in region]
    qty = rng.integers(1, 6, n)
    amount = np.round(qty * rng.lognormal(4.5, 0.4, n), 2).clip(25, 850)
    order = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 300, n), unit="D")
    ship = order + pd.to_timedelta(rng.integers(0, 10, n), unit="D")
    discount = np.where(rng.random(n) < 0.2, np.nan, np.round(rng.uniform(0, 0.3, n), 2))
    return pd.DataFrame({"order_id": [f"A{100000 + i}" for i in range(n)], "region": region,
                         "city": [c for c, _ in pairs], "province": [p for _, p in pairs], "qty": qty,
                         "amount": amount, "order_date": order.strftime("%Y-%m-%d"),
                         "ship_date": ship.strftime("%Y-%m-%d"), "vip": np.where(rng.random(n) < 0.3, "yes", "no"),
                         "discount": discount, "note": [f"call before delivery, gate {i}, floor {i % 7}" for i in range(n)]})


@pytest.fixture
def orders_run(tmp_path):
    path = tmp_path / "orders.csv"
    orders().to_csv(path, index=False)
    genforge.ingest(str(path), "orders")
    return genforge.train({"name": "orders", "data": {"dataset": "orders"},
                           "model": {"family": "copula", "rules": RULES}, "train": {"steps": 1, "batch_size": 64}})


def test_rows_keep_the_real_columns_types_missing_values_and_every_rule(orders_run, tmp_path):
    real = open_dataset("orders").frame("train")
    out = genforge.generate(orders_run.id, 1000, seed=3, out=tmp_path / "s.csv")
    syn = out.samples.frame
    types = {c["name"]: c["type"] for c in open_dataset("orders").manifest.data_schema["columns"]}
    assert types["order_id"] == "id" and types["note"] == "text" and types["order_date"] == "datetime"
    assert list(syn.columns) == [c for c in real.columns if c != "note"]  # free text is neither learned nor copied
    assert dict(syn.dtypes.astype(str)) == {c: str(t) for c, t in real.dtypes.items() if c != "note"}
    assert syn["order_id"].is_unique and not set(syn["order_id"]) & set(real["order_id"])  # synthetic ids
    assert syn["order_id"].str.fullmatch(r"A\d{6,}").all()  # the shape of the real ids, widened until unique
    # rules: range, unique, inequality between dates, only seen (city, province) pairs
    assert syn["amount"].between(20, 900).all() and syn["amount"].is_unique
    assert (syn["order_date"] <= syn["ship_date"]).all()
    seen = set(zip(real["city"], real["province"]))
    assert set(zip(syn["city"], syn["province"])) <= seen
    # values as written: 2 decimals, whole dates, integers; missing values at the real share
    assert np.allclose(syn["amount"] * 100, np.round(syn["amount"] * 100))
    assert (syn["order_date"] == syn["order_date"].dt.normalize()).all()
    assert abs(syn["discount"].isna().mean() - real["discount"].isna().mean()) < 0.06
    assert set(syn["vip"].dropna()) <= {True, False}
    # the written csv reads back with the same values
    back = pd.read_csv(out.path)
    assert len(back) == 1000 and list(back.columns) == list(syn.columns)


def test_provenance_in_a_sidecar_in_columns_or_both(orders_run, tmp_path):
    names = [c for c in orders().columns if c != "note"]
    plain = genforge.generate(orders_run.id, 5, seed=1, out=tmp_path / "sidecar.csv").path  # the default
    sidecar = json.loads((tmp_path / "sidecar.samples.json").read_text())
    assert list(pd.read_csv(plain).columns) == names and sidecar["ai_generated"] and sidecar["provenance"] == "sidecar"
    assert sidecar["generation_id"].startswith("tbl-")
    invoke("generate", orders_run.id, "--n", "5", "--out", str(tmp_path / "cols.csv"), "--set", "sample.provenance=columns")
    both = genforge.generate(orders_run.id, 5, seed=1, out=tmp_path / "both.parquet", options={"provenance": "both"}).path
    for frame in (pd.read_csv(tmp_path / "cols.csv"), pd.read_parquet(both)):
        assert list(frame.columns) == names + list(COLUMNS) and frame["genforge_ai_generated"].all()
        assert (frame["genforge_model"] == orders_run.id).all() and frame["genforge_generation_id"].nunique() == 1
        assert frame["genforge_model_version"].str.startswith("step-").all()
    assert not (tmp_path / "cols.samples.json").exists()  # columns alone: no sidecar
    assert json.loads((tmp_path / "both.samples.json").read_text())["generation_id"] == pd.read_parquet(both)["genforge_generation_id"][0]
    with pytest.raises(ConfigError, match=r"collide with the table's own \['genforge_model'\]"):
        with_columns(pd.DataFrame({"genforge_model": ["mine"]}), "m", "1", "tbl-1")


def test_conditions_one_several_ranges_impossible_and_unknown(orders_run):
    north = genforge.generate(orders_run.id, 50, seed=1, options={"where": {"region": "north"}}).samples.frame
    assert set(north["region"]) == {"north"}  # (a copula does not keep region -> city: CTGAN's test below)
    # about 6% of candidates meet both conditions and the rules (a copula breaks the date inequality now and then):
    # 255 draws per row rather than the default 63 leave no row unmet by chance (0.94^63 is 2% a row)
    both = genforge.generate(orders_run.id, 30, seed=1, conditions=[{"region": "south", "vip": True}] * 30,
                             options={"max_rounds": 8}).samples.frame
    assert set(both["region"]) == {"south"} and set(both["vip"]) == {True}
    ranged = genforge.generate(orders_run.id, 30, seed=1, conditions=[{"amount": {"min": 100, "max": 200}}] * 30).samples.frame
    assert ranged["amount"].between(100, 200).all()
    harbin = genforge.generate(orders_run.id, 5, seed=1, options={"where": {"city": "Harbin"}}).samples.frame
    assert set(harbin["city"]) == {"Harbin"} and set(harbin["province"]) == {"Heilongjiang"}  # a member of a combination
    per_row = genforge.generate(orders_run.id, 3, seed=1, conditions=[{"region": "east"}, {}, {"qty": 5}]).samples.frame
    assert per_row["region"][0] == "east" and per_row["qty"][2] == 5
    with pytest.raises(ModelError, match=r"could not be generated.*relax the condition"):
        genforge.generate(orders_run.id, 2, seed=1, conditions=[{"city": "Harbin", "province": "Guangdong"}] * 2)
    with pytest.raises(ConfigError, match="north"):  # an unknown category lists the known ones
        genforge.generate(orders_run.id, 2, options={"where": {"region": "west"}})
    with pytest.raises(ConfigError, match="does not generate"):
        genforge.generate(orders_run.id, 2, options={"where": {"colour": "red"}})


def test_no_real_row_is_emitted(tmp_path):
    """Three categorical columns: a good share of the rows the model proposes are real rows; the guard
    refuses every one (rows of every split, compared on normalised values)."""
    rng = np.random.default_rng(0)
    real = pd.DataFrame({"a": rng.choice(list("stuvwxyz"), 600, p=[.3, .2, .1, .1, .1, .1, .05, .05]),
                         "b": rng.choice(list("pqrsmn"), 600, p=[.4, .2, .1, .1, .1, .1]), "c": rng.choice(list("uvwxy"), 600)})
    path = tmp_path / "t.csv"
    real.to_csv(path, index=False)
    genforge.ingest(str(path), "cats", force=True)  # the gate rightly calls most rows duplicates
    run = genforge.train({"name": "cats", "data": {"dataset": "cats"}, "model": {"family": "copula"},
                          "train": {"steps": 1, "batch_size": 16}})
    every_real = row_hashes(pd.concat([open_dataset("cats").frame(s) for s in ("train", "val", "test")]), ["a", "b", "c"])
    proposed = run.model().modules["copula"].propose(list(range(500)), [{}] * 500)
    assert np.isin(row_hashes(proposed, ["a", "b", "c"]), every_real).mean() > 0.3  # without the guard: copies
    syn = genforge.generate(run.id, 300, seed=0).samples.frame
    assert len(syn) == 300 and not np.isin(row_hashes(syn, ["a", "b", "c"]), every_real).any()


def test_copula_keeps_a_nominal_columns_relation_whatever_its_alphabetical_order(tmp_path):
    """Category means of x in code order a, b, c are 0, 10, 5: not monotone, so one normal score in
    code order would pull c to the top of x. In discriminant order each category keeps its own mean."""
    rng = np.random.default_rng(0)
    kind = rng.choice(list("abc"), 900)
    real = pd.DataFrame({"kind": kind, "x": np.select([kind == "a", kind == "b"], [0.0, 10.0], 5.0) + rng.normal(0, 1, 900)})
    path = tmp_path / "k.csv"
    real.to_csv(path, index=False)
    genforge.ingest(str(path), "kinds")
    run = genforge.train({"name": "kinds", "data": {"dataset": "kinds"}, "model": {"family": "copula"},
                          "train": {"steps": 1, "batch_size": 64}})
    order = next(m["order"] for m in run.model().modules["copula"].marginals if m["column"] == "kind")
    assert order in ([0, 2, 1], [1, 2, 0])
    syn = genforge.generate(run.id, 2000, seed=0).samples.frame
    means = syn.groupby("kind")["x"].mean()
    for k, mean in (("a", 0.0), ("b", 10.0), ("c", 5.0)):
        assert abs(means[k] - mean) < 1.5, means


def test_ctgan_follows_a_condition_through_its_conditional_vector(tmp_path):
    path = tmp_path / "orders.csv"
    orders(200).to_csv(path, index=False)
    genforge.ingest(str(path), "orders")
    run = genforge.train({"name": "o", "data": {"dataset": "orders"},
                          "model": {"family": "ctgan", "embedding_dim": 8, "generator_dims": [32], "discriminator_dims": [32],
                                    "rules": RULES},
                          "train": {"steps": 20, "batch_size": 40, "precision": "fp32", "threads": 1}})
    syn = genforge.generate(run.id, 40, seed=0, options={"where": {"region": "east"}}).samples.frame
    assert set(syn["region"]) == {"east"} and (syn["order_date"] <= syn["ship_date"]).all()
    assert set(zip(syn["city"], syn["province"])) <= {p for ps in CITIES.values() for p in ps}


@pytest.mark.parametrize("generator_batch, forwards", [("fresh", 2), ("critic", 1)])
def test_ctgan_generator_step_on_fresh_fakes_or_the_critics(tmp_path, monkeypatch, generator_batch, forwards):
    """`generator_batch: critic` takes G's update on the critic step's fakes: one forward of G a step
    instead of two; both train to finite losses."""
    from genforge.models.ctgan import Generator
    calls = []
    grouped = Generator.grouped
    monkeypatch.setattr(Generator, "grouped", lambda self, c: calls.append(1) or grouped(self, c))
    path = tmp_path / "orders.csv"
    orders(100).to_csv(path, index=False)
    genforge.ingest(str(path), "orders")
    config = {"name": "o", "data": {"dataset": "orders"},
              "model": {"family": "ctgan", "embedding_dim": 8, "generator_dims": [16], "discriminator_dims": [16],
                        "generator_batch": generator_batch},
              "train": {"steps": 4, "batch_size": 50, "precision": "fp32", "threads": 1, "val_every": 0, "log_every": 2}}
    run = genforge.train(config)
    assert len(calls) == 4 * forwards
    losses = [m for m in run.metrics() if m["split"] == "train"]
    assert losses and all(np.isfinite(m["g_loss"]) and np.isfinite(m["d_loss"]) for m in losses)


def test_ctgan_condition_loss_is_each_columns_own_cross_entropy(tmp_path):
    """G's condition loss reads the conditioned category's log-probability out of the grouped row
    (option-major blocks): it equals the cross-entropy over that column's span in the transformer's order."""
    from genforge.models.ctgan import cond_loss

    path = tmp_path / "orders.csv"
    orders(100).to_csv(path, index=False)
    genforge.ingest(str(path), "orders")
    run = genforge.train({"name": "o", "data": {"dataset": "orders"},
                          "model": {"family": "ctgan", "embedding_dim": 8, "generator_dims": [16], "discriminator_dims": [16]},
                          "train": {"steps": 1, "batch_size": 50, "precision": "fp32", "threads": 1}})
    g = run.model().modules["generator"]
    assert any(c > 1 for _, c, _ in g.seg.groups)  # an option-major block is exercised
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, g.state.transformer.width, generator=gen) * 5
    cols = torch.randint(g.cond.n, (64,), generator=gen)
    cats = (torch.rand(64, generator=gen) * torch.tensor(g.cond.sizes)[cols]).long()
    spans = [s for s in g.state.transformer.spans if s.role == "category"]
    direct = torch.stack([-torch.log_softmax(x[i, spans[c].start:spans[c].start + spans[c].size], 0)[k]
                          for i, (c, k) in enumerate(zip(cols.tolist(), cats.tolist()))]).mean()
    assert torch.allclose(cond_loss(g.seg.group(x), g.seg, g.cond, cols, cats), direct, atol=1e-5)


WIDE = """
import time, numpy as np, pandas as pd, genforge
from genforge.data.store import open_dataset
rng = np.random.default_rng(0)
n = 100_000
cols = {}
for j in range(30):
    cols[f"x{j}"] = np.where(rng.random(n) < 0.5, rng.normal(0, 1, n), rng.normal(5, 2, n)).round(3)
for j in range(15):
    cols[f"c{j}"] = rng.choice([f"k{i}" for i in range(2 + j)], n)
for j in range(5):
    cols[f"m{j}"] = np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2, 3, n).round(2))
pd.DataFrame(cols).to_parquet("wide.parquet")
t = time.perf_counter()
genforge.ingest("wide.parquet", "wide")
ingest_s = time.perf_counter() - t
out = {"ingest_s": ingest_s}
for family, extra in (("copula", {}), ("ctgan", {"embedding_dim": 16, "generator_dims": [32], "discriminator_dims": [32]})):
    t = time.perf_counter()
    run = genforge.train({"name": family, "data": {"dataset": "wide"}, "model": {"family": family, **extra},
                          "train": {"steps": 2, "batch_size": 500, "val_every": 0, "precision": "fp32"}})
    out[family + "_train_s"] = time.perf_counter() - t
    out[family + "_rows"] = len(genforge.generate(run.id, 1000, seed=0).samples.frame)
# VmHWM, this process's own peak: ru_maxrss would carry pytest's over from before exec (Linux)
out["peak_rss_mb"] = next(int(v.split()[1]) for v in open("/proc/self/status") if v.startswith("VmHWM:")) / 1024
print(out)
"""


def test_tvae_draws_its_one_hot_spans_at_the_sampling_temperature(tmp_path):
    """Temperature 0: each category is its span's most likely option (the reference's argmax); above 0,
    a draw from softmax(logits / T), each row from its own seed alone. A missing flag is always a draw
    from the decoder's p(missing | z): an argmax would never leave a value out where fewer than half are."""
    from genforge.models import tvae
    orders().to_csv(tmp_path / "orders.csv", index=False)
    genforge.ingest(str(tmp_path / "orders.csv"), "orders")
    config = tvae.Config(family="tvae", embedding_dim=4, compress_dims=[8], decompress_dims=[8])
    dec = tvae.build(config, *tvae.fit(config, open_dataset("orders"), 0))["decoder"]
    t = dec.state.transformer
    span = next(sp for sp in t.spans if sp.column == "region")
    cats = next(lc for lc in t.codec.learned if lc.name == "region").categories
    p = torch.tensor([0.6, 0.3, 0.1])
    flag = next(sp for sp in t.spans if sp.column == "discount" and sp.role == "missing")
    with torch.no_grad():  # every row's region logits are log p, and 20% of its discounts missing, whatever z is
        dec.body[-1].weight.zero_()
        dec.body[-1].bias.zero_()
        dec.body[-1].bias[span.start:span.start + span.size] = p.log()
        dec.body[-1].bias[flag.start:flag.start + 2] = torch.tensor([0.8, 0.2]).log()
    seeds = list(range(4000))
    for temperature, want in ((0.0, [1.0, 0.0, 0.0]), (1.0, p), (0.5, p**2 / (p**2).sum())):
        with torch.no_grad():
            rows, again = tvae._propose(dec, seeds, temperature), tvae._propose(dec, seeds[100:110], temperature)
        shares = rows["region"].value_counts(normalize=True).reindex(cats, fill_value=0.0).to_numpy()
        assert np.allclose(shares, want, atol=0.03), (temperature, shares)
        assert abs(rows["discount"].isna().mean() - 0.2) < 0.03, (temperature, rows["discount"].isna().mean())
        # a row depends on its seed, not on the rows drawn beside it
        assert again.reset_index(drop=True).equals(rows.iloc[100:110].reset_index(drop=True))
    with pytest.raises(ValueError):
        tvae.SampleConfig(temperature=-1)


def test_the_runs_seed_draws_the_mixtures_and_the_encoding(tmp_path):
    """train.seed decides the fitted state's random draws (mixture starts, each value's mode, the copula's
    draws inside categories): two seeds are two fits, one seed the same fit; a split is encoded with the
    seed its state was fitted with, and a state saved without one was fitted with 0."""
    from genforge.models import Fitted, copula, tvae
    from genforge.tabular.family import TableState, encode_table
    orders().to_csv(tmp_path / "orders.csv", index=False)
    genforge.ingest(str(tmp_path / "orders.csv"), "orders")
    ds = open_dataset("orders")
    config = tvae.Config(family="tvae")
    (_, a), (_, again), (_, b) = (tvae.fit(config, ds, seed) for seed in (0, 0, 1))
    assert a.meta == again.meta and (a.meta["seed"], b.meta["seed"]) == (0, 1)
    assert a.meta["transformer"]["modes"] != b.meta["transformer"]["modes"]
    state = TableState.of(b)
    assert torch.equal(encode_table(state, ds, "train")["x"], torch.from_numpy(state.transformer.transform(ds.frame("train"), seed=1)))
    legacy = Fitted(a.format, {k: v for k, v in a.meta.items() if k != "seed"}, a.tensors)
    assert torch.equal(encode_table(TableState.of(legacy), ds, "train")["x"], encode_table(TableState.of(a), ds, "train")["x"])
    cop = copula.Config(family="copula")
    assert not torch.equal(copula.fit(cop, ds, 0)[1].tensors["cholesky"], copula.fit(cop, ds, 1)[1].tensors["cholesky"])
    run = genforge.train({"name": "seeded", "data": {"dataset": "orders"}, "model": {"family": "copula"},
                          "train": {"steps": 1, "batch_size": 64, "seed": 7}})
    assert json.loads((run.path / "fitted" / "fitted.json").read_text())["meta"]["seed"] == 7


def test_a_table_of_100000_rows_and_50_columns_fits_in_bounded_memory(tmp_path):
    """Ingest, fit the copula and CTGAN's transformer (mixtures on 50 columns) and sample, in one process
    whose peak resident memory stays under 3 GiB (the data itself is 40 MB as float64)."""
    res = subprocess.run([sys.executable, "-c", WIDE], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    figures = eval(res.stdout.strip().splitlines()[-1])  # noqa: S307 (our own subprocess's dict)
    print(json.dumps(figures))
    assert figures["copula_rows"] == figures["ctgan_rows"] == 1000
    assert figures["peak_rss_mb"] < 3072, figures
