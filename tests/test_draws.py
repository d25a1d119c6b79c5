"""The counter-based per-row random numbers table sampling draws from (genforge.tabular.draws)."""

import math

import numpy as np
import pandas as pd

from genforge.tabular import draws
from genforge.tabular.sampling import candidate_seeds


def test_a_rows_numbers_depend_on_its_seed_and_stream_only():
    seeds = np.arange(1000, dtype=np.uint64) * np.uint64(7919)
    full = draws.uniform(seeds, 3, 16)
    assert np.array_equal(draws.uniform(seeds[[500, 3]], 3, 16), full[[500, 3]])  # any batch, any order
    assert np.array_equal(draws.uniform(seeds, 3, 4), full[:, :4])  # a longer draw extends a shorter one
    assert not np.isclose(draws.uniform(seeds, 4, 16), full).any(axis=1).all()  # another stream, other numbers
    assert np.array_equal(draws.uniform([-1, 2**64 - 1], 0, 2)[0], draws.uniform([2**64 - 1], 0, 2)[0])  # low 64 bits


def test_uniforms_and_normals_have_their_distributions():
    u = draws.uniform(np.arange(200_000, dtype=np.uint64), 0, 5)
    assert 0 < u.min() and u.max() < 1
    assert np.abs(np.histogram(u, 20, (0, 1))[0] / u.size - 0.05).max() < 0.001
    assert np.abs(np.corrcoef(u.T) - np.eye(5)).max() < 0.01  # counters of one row are uncorrelated
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.01  # so are neighbouring seeds
    z = draws.normal(np.arange(200_000, dtype=np.uint64), 1, 5).double().numpy().ravel()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    for t in (1, 2, 3):  # two-sided tails, within 5 standard errors of N(0, 1)'s
        p = math.erfc(t / math.sqrt(2))
        assert abs((np.abs(z) > t).mean() - p) < 5 * math.sqrt(p * (1 - p) / z.size)


def test_categorical_draws_each_rows_distribution():
    probs = np.array([[0.0, 0.2, 0.8], [0.5, 0.5, 0.0], [2.0, 0.0, 2.0]])  # unnormalised rows are fine
    u = draws.uniform(np.arange(60_000, dtype=np.uint64), 0, 1)[:, 0]
    which = np.arange(60_000) % 3
    got = draws.categorical(u, probs[which])
    for row in range(3):
        shares = np.bincount(got[which == row], minlength=3) / (which == row).sum()
        assert np.abs(shares - probs[row] / probs[row].sum()).max() < 0.01
        assert (shares[probs[row] == 0] == 0).all()  # a zero-probability category is never drawn


def test_candidate_seeds_are_each_items_own():
    seeds = draws.as_seeds([5, 6, 7])
    both = candidate_seeds(seeds, 2, 4).reshape(3, 4)
    assert np.array_equal(candidate_seeds(seeds[[2]], 2, 4), both[2])
    assert len(np.unique(both)) == 12 and not np.isin(candidate_seeds(seeds, 3, 4), both).any()


def test_the_loop_proposes_in_chunks_and_an_items_row_is_its_own(monkeypatch):
    from genforge.tabular import sampling

    calls = []

    def draw(seeds, conditions):  # a "model" whose row is its seed's first uniform
        calls.append(len(seeds))
        return pd.DataFrame({"x": draws.uniform(seeds, 0, 1)[:, 0]})

    rules, guard = sampling.Rules(ranges={"x": (0.8, None)}), sampling.Guard((), np.zeros(0, np.uint64))
    monkeypatch.setattr(sampling, "CHUNK", 7)
    rows, rejected = sampling.draw_rows(draw, range(50), None, rules, guard, max_rounds=12)
    assert max(calls) == 7 and (rows["x"] >= 0.8).all() and rejected["rule"] > 0
    monkeypatch.setattr(sampling, "CHUNK", 4096)
    assert sampling.draw_rows(draw, range(50), None, rules, guard, max_rounds=12)[0].equals(rows)
    alone = sampling.draw_rows(draw, range(10, 20), None, rules, guard, max_rounds=12)[0]
    assert alone.equals(rows.iloc[10:20].reset_index(drop=True))
