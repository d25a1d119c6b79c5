"""Human review: blind review sets from tiny runs (images, tables, texts), the API a reviewer's page calls (on a live
`genforge serve`), the summary's figures and intervals on hand-computed ratings, `record` into the evaluation and
the registry where a promotion policy requires them, and the report's section."""

import base64
import io
import json
import math
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from clirun import invoke
from genforge import registry
from genforge.data.store import DatasetWriter, open_dataset
from genforge.errors import ConfigError, ModelError, PromotionRefused
from genforge.evaluation.pipeline import EvalOptions, compare_runs, evaluate_run
from genforge.review.build import MAX_ITEMS, TABLE_ROWS, create_review
from genforge.review.store import Item, ReviewStore, Source
from genforge.review.summary import figures, summarise, wilson
from genforge.runconfig import PromotionPolicy, Rule, parse_run_config
from genforge.runs import load_run
from genforge.serve.keys import KeyStore
from genforge.trainer import train
from imagesets import digits, write_images
from test_families import tiny_config
from test_serve import Server, http
from textsets import corpus, write_texts

POLICY = {"rules": [{"metric": "human.score", "min": 3.5}]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Two tiny digit GANs (the first with a policy requiring human.score >= 3.5), a digit GAN on data without a
    held-out split, a penguins copula and a tiny language model; trained once, copied per test."""
    home = tmp_path_factory.mktemp("review") / "ws"
    mp = pytest.MonkeyPatch()
    mp.setenv("GENFORGE_HOME", str(home))
    mp.setenv("GENFORGE_TRACKING", "off")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        x, y = digits(160)
        write_images("digits", x, y, [str(i) for i in range(10)], val=32)
        w = DatasetWriter("trainonly", "image")
        w.write_image_shard("train", x, y)
        w.commit(classes=[str(i) for i in range(10)], schema={"channels": 1, "height": 28, "width": 28},
                 counts={"train": len(x)})
        runs = {}
        for key, seed in (("gan1", 1), ("gan2", 2)):
            cfg = {**tiny_config("gan", name=key, seed=seed), "registry": {"name": "digits", "policy": POLICY}}
            runs[key] = train(parse_run_config(cfg)).name
        runs["trainonly"] = train(parse_run_config(tiny_config("gan", name="trainonly", dataset="trainonly",
                                                               val_every=0))).name
        texts, _ = corpus()
        write_texts("corpus", texts, val=24)
        runs["gpt"] = train(parse_run_config(tiny_config("gpt", name="writer"))).name
        write_texts("qa", texts[:60], val=12, prompts=[f"Q{i}: {t[:8]}" for i, t in enumerate(texts[:60])])
        cfg = tiny_config("gpt", name="answers", dataset="qa")
        runs["qa"] = train(parse_run_config({**cfg, "model": {**cfg["model"], "format": "prompt_completion"}})).name
        import genforge
        genforge.ingest("builtin:penguins", "penguins")
        runs["copula"] = train(parse_run_config(tiny_config("copula", name="penguins"))).name
    finally:
        mp.undo()
    return home, runs


@pytest.fixture
def runs(prepared, workspace):
    shutil.copytree(prepared[0], workspace)
    return prepared[1]


def _png(content: dict) -> Image.Image:
    assert set(content) == {"type", "b64_png"} and content["type"] == "image"
    return Image.open(io.BytesIO(base64.b64decode(content["b64_png"])))


def assert_blind(shown: str, runs: dict) -> None:
    """What a reviewer is shown (JSON text) names no source; images' base64 left out (it may spell anything)."""
    shown = re.sub(r'"b64_png": ?"[^"]*"', "", shown)
    for word in list(runs.values()) + ["real", "held-out", "source", "step-", "digits@", "penguins@", "corpus@"]:
        assert word not in shown, word


def _blind(review_id: str, store: ReviewStore, runs: dict) -> None:
    assert_blind(json.dumps([i.content() for i in store.items(review_id)]), runs)


def test_image_reviews_are_blind_seeded_and_balanced(runs):
    store = ReviewStore()
    rubric = create_review([runs["gan1"]], 10)
    assert (rubric.mode, rubric.kind, rubric.items) == ("rubric", "image", 10)
    items = store.items(rubric.id)
    assert all(i.b is None and i.source_b is None for i in items)
    image = _png(items[0].a)
    assert image.size == (28, 28) and not image.info  # a plain PNG: no AI label or metadata telling generated from real

    pairs = create_review([runs["gan1"], runs["gan2"]], 12, seed=3)
    assert pairs.mode == "pairs" and [s.run for s in pairs.sources] == [runs["gan1"], runs["gan2"]]
    items = store.items(pairs.id)
    assert sorted(i.source_a for i in items) == [0] * 6 + [1] * 6  # each run at a on exactly half the items
    _blind(pairs.id, store, runs)
    again = create_review([runs["gan1"], runs["gan2"]], 12, seed=3)
    assert [(i.a, i.source_a) for i in store.items(again.id)] == [(i.a, i.source_a) for i in items]  # seeded
    other = create_review([runs["gan1"], runs["gan2"]], 12, seed=4)
    assert [i.source_a for i in store.items(other.id)] != [i.source_a for i in items]

    real = create_review([runs["gan1"]], 12, "pairs")
    assert [s.label for s in real.sources][1] == "real held-out (val)" and real.sources[1].run is None
    heldout, labels = open_dataset("digits").images("val")
    for item in store.items(real.id):
        side = item.a if item.source_a == 1 else item.b
        match = np.flatnonzero((heldout[:, 0] == np.asarray(_png(side))).all(axis=(1, 2)))
        assert len(match) >= 1  # the real side is a held-out image, unchanged
    # item k asks for class k mod 10 on both sides: the real side's class says which class the item is
    real_classes = sorted({int(labels[np.flatnonzero((heldout[:, 0] == np.asarray(_png(i.a if i.source_a == 1
                                                                                          else i.b))).all(axis=(1, 2)))[0]])
                           for i in store.items(real.id)})
    assert real_classes == sorted(set(labels.tolist()))
    _blind(real.id, store, runs)


def test_table_and_text_reviews(runs):
    store = ReviewStore()
    table = create_review([runs["copula"]], 5, "pairs", seed=1, name="penguin rows")
    assert (table.name, table.kind) == ("penguin rows", "table")
    for item in store.items(table.id):
        assert item.a["type"] == item.b["type"] == "table" and item.a["columns"] == item.b["columns"]
        assert len(item.a["rows"]) == len(item.b["rows"]) == TABLE_ROWS
    _blind(table.id, store, runs)

    text = create_review([runs["gpt"]], 6, "pairs")
    real_texts = set(open_dataset(text.sources[0].dataset).frame("val")["text"])
    for item in store.items(text.id):
        real, generated = (item.a, item.b) if item.source_a == 1 else (item.b, item.a)
        assert real["type"] == generated["type"] == "text" and real["prompt"] is None and generated["prompt"] is None
        assert any(t.startswith(real["text"].rstrip("\ufffd")) for t in real_texts)  # held-out, cut to the budget
    assert create_review([runs["gpt"]], 3).mode == "rubric"

    qa = create_review([runs["qa"]], 8, "pairs")
    val = open_dataset(qa.sources[0].dataset).frame("val")
    completions = dict(zip(val["prompt"], val["completion"]))
    for item in store.items(qa.id):
        real, generated = (item.a, item.b) if item.source_a == 1 else (item.b, item.a)
        assert real["prompt"] == generated["prompt"] in completions  # a held-out prompt, the same on both sides
        # beside its own held-out completion, cut to the token budget (a character cut in two decodes as U+FFFD)
        assert completions[real["prompt"]].startswith(real["text"].rstrip("\ufffd"))
    assert len({i.a["prompt"] for i in store.items(qa.id)}) == 8  # 12 held-out prompts: none used twice


def test_create_refuses_clearly(runs):
    with pytest.raises(ModelError, match="no run matches"):
        create_review(["nope"], 5)
    for n in (0, MAX_ITEMS + 1):
        with pytest.raises(ConfigError, match="--n must be between 1 and"):
            create_review([runs["gan1"]], n)
    with pytest.raises(ConfigError, match="different kinds of data"):
        create_review([runs["gan1"], runs["copula"]], 5)
    with pytest.raises(ConfigError, match="rubric review rates one run"):
        create_review([runs["gan1"], runs["gan2"]], 5, "rubric")
    with pytest.raises(ConfigError, match="both sides are run"):
        create_review([runs["gan1"], runs["gan1"]], 5)
    with pytest.raises(ConfigError, match="--name must be"):
        create_review([runs["gan1"]], 5, name="")
    with pytest.raises(ConfigError, match="has no held-out images"):
        create_review([runs["trainonly"]], 5, "pairs")


def test_cli_create_list_show(runs):
    from typer.testing import CliRunner

    from genforge.cli import _app

    bad = CliRunner().invoke(_app, ["review", "create", runs["trainonly"], "--mode", "pairs"])
    assert bad.exit_code == 1 and "no held-out images" in bad.output
    out = invoke("review", "create", runs["gan1"], runs["gan2"], "--n", "4").output
    review_id = out.split()[2].rstrip(":")
    assert "GET /v1/reviews/" + review_id in out and "genforge serve" in out
    assert review_id in invoke("review", "list").output
    shown = json.loads(invoke("review", "show", review_id, "--json").output)
    assert shown["ratings"] == 0 and [s["preference"] for s in shown["sources"]] == [None, None]
    assert "0 ratings by 0 reviewers" in invoke("review", "show", review_id).output


# ----------------------------------------------------------------------------- figures

def _fake(store: ReviewStore, mode: str, sides: list[int]) -> str:
    """A review with one item per entry of `sides` (pairs: which source is at a)."""
    text = {"type": "text", "prompt": None, "text": "x"}
    sources = [Source("A", "d@1", "run-a", "step-1"), Source("B", "d@1", "run-b", "step-1")]
    items = [Item(f"i{k}", text, text if mode == "pairs" else None, a, 1 - a if mode == "pairs" else None)
             for k, a in enumerate(sides)]
    return store.create("fake", mode, "text", 0, sources if mode == "pairs" else sources[:1], items).id


def test_summary_figures_by_hand():
    store = ReviewStore()
    rid = _fake(store, "pairs", [0, 1, 0, 1])
    review = store.get(rid)
    empty = summarise(store, review)
    assert empty["ratings"] == 0 and all(s["preference"] is s["low"] is None for s in empty["sources"])
    assert figures(empty) == [{}, {}]
    # A's share per item: i0 A chosen by two keys (1), i1 B at a chosen by one key, A by the other (0.5),
    # i2 tie (0.5), i3 B chosen (0): items average to (1 + 0.5 + 0.5 + 0) / 4 = 0.5
    for item, key, choice in (("i0", "k1", "a"), ("i0", "k2", "a"), ("i1", "k1", "a"), ("i1", "k2", "b"),
                              ("i2", "k1", "tie"), ("i3", "k1", "a")):
        store.rate(rid, item, key, key, choice=choice)
    s = summarise(store, review)
    assert (s["ratings"], s["reviewers"], s["items_rated"], s["items"]) == (6, 2, 4, 4)
    a, b = s["sources"]
    assert (a["preference"], a["wins"], a["losses"], a["ties"]) == (0.5, 3, 2, 1)
    assert (b["preference"], b["wins"], b["losses"], b["ties"]) == (0.5, 2, 3, 1)
    low, high = wilson(0.5, 4)
    assert (a["low"], a["high"]) == (low, high) and 0 <= low < 0.5 < high <= 1
    assert math.isclose(low, 0.15003898915214955) and math.isclose(high, 1 - low)  # 0.5 ± Wilson, n = 4 items
    assert wilson(1.0, 5)[0] > 0.5 and wilson(1.0, 5)[1] == 1.0  # unanimous: still an interval, not a point
    assert figures(s)[0] == {"human.preference": 0.5, "human.preference_low": low, "human.preference_high": high,
                             "human.ratings": 6}

    rid = _fake(store, "rubric", [0, 0, 0, 0])
    for item, key, score in (("i0", "k1", 4), ("i1", "k1", 5), ("i2", "k1", 3), ("i2", "k2", 5), ("i3", "k1", 2)):
        store.rate(rid, item, key, key, score=score)
    s = summarise(store, store.get(rid))
    assert s["score"] == (4 + 5 + 4 + 2) / 4 and s["histogram"] == {"1": 0, "2": 1, "3": 1, "4": 1, "5": 2}
    assert 1 <= s["low"] < s["score"] < s["high"] <= 5
    assert s == summarise(store, store.get(rid))  # the bootstrap is seeded
    store.rate(rid, "i3", "k1", "k1", score=5)  # a second rating by the same key replaces the first
    assert summarise(store, store.get(rid))["score"] == 4.5 and len(store.ratings(rid)) == 5
    with pytest.raises(ValueError):
        store.rate(rid, "i0", "k1", "k1", choice="a")


# ----------------------------------------------------------------------------- the API

def test_the_review_api(runs, workspace):
    store = ReviewStore()
    pairs = create_review([runs["gan1"]], 4, "pairs")
    rubric = create_review([runs["copula"]], 3)
    keys = KeyStore(workspace / "keys.db")
    key, record = keys.create("alice")
    slow, _ = keys.create("slow", requests_per_minute=2)
    server = Server(workspace, {"models": [{"name": "penguins", "run": runs["copula"]}], "reload_interval_s": 0,
                                "keys_db": str(workspace / "keys.db")})
    try:
        url = server.url + "/v1/reviews"
        listed = http("GET", url, key).json()
        assert listed["object"] == "list"
        assert {r["id"]: (r["mode"], r["kind"], r["items"], r["rated_by_you"]) for r in listed["data"]} == {
            pairs.id: ("pairs", "image", 4, 0), rubric.id: ("rubric", "table", 3, 0)}
        assert set(listed["data"][0]) == {"id", "object", "name", "mode", "kind", "items", "rated_by_you", "created_at"}

        shown = http("GET", f"{url}/{pairs.id}", key)
        body = shown.json()
        assert (body["object"], body["mode"], body["kind"]) == ("review", "pairs", "image")
        assert [set(i) for i in body["items"]] == [{"id", "a", "b", "your_rating"}] * 4
        assert_blind(json.dumps(body["items"]), runs)  # (the name may say what is compared, never which side is which)
        first = body["items"][0]["id"]

        rated = http("POST", f"{url}/{pairs.id}/ratings", key, {"item_id": first, "choice": "a", "comment": "sharper"})
        assert rated.status_code == 200
        r = rated.json()
        assert (r["object"], r["review_id"], r["item_id"], r["choice"], r["replaced"]) == (
            "review.rating", pairs.id, first, "a", False) and r["rated_at"]
        again = http("POST", f"{url}/{pairs.id}/ratings", key, {"item_id": first, "choice": "tie"}).json()
        assert again["replaced"] is True
        body = http("GET", f"{url}/{pairs.id}", key).json()
        assert body["items"][0]["your_rating"] == {"choice": "tie"} and body["items"][1]["your_rating"] is None
        mine = store.ratings(pairs.id)
        assert [(x.key_id, x.key_name, x.choice) for x in mine] == [(record.id, "alice", "tie")]
        assert http("POST", f"{url}/{rubric.id}/ratings", key, {"item_id": "item-002", "score": 4}).json()["score"] == 4
        assert {r["id"]: r["rated_by_you"] for r in http("GET", url, key).json()["data"]} == {pairs.id: 1, rubric.id: 1}
        assert http("GET", f"{url}/{rubric.id}", key).json()["items"][1]["your_rating"] == {"score": 4}

        summary = http("GET", f"{url}/{pairs.id}/summary", key).json()
        assert (summary["object"], summary["ratings"], summary["reviewers"], summary["items_rated"], summary["items"]) \
            == ("review.summary", 1, 1, 1, 4)
        assert [s["preference"] for s in summary["sources"]] == [0.5, 0.5] and summary["sources"][1]["source"] \
            == "real held-out (val)"
        rubric_summary = http("GET", f"{url}/{rubric.id}/summary", key).json()
        assert (rubric_summary["score"], rubric_summary["low"], rubric_summary["histogram"]["4"]) == (4.0, None, 1)

        def error(method, path, body=None, who=key):
            reply = http(method, url + path, who, body)
            return reply.status_code, reply.json()["error"]["param"], reply.json()["error"]["code"]

        assert error("GET", "/rev_nope") == (404, "review_id", "review_not_found")
        assert error("GET", "/rev_nope/summary") == (404, "review_id", "review_not_found")
        assert error("POST", "/rev_nope/ratings", {"item_id": first, "choice": "a"})[:2] == (404, "review_id")
        assert error("POST", f"/{pairs.id}/ratings", {"item_id": "item-999", "choice": "a"}) == (
            404, "item_id", "item_not_found")
        assert error("POST", f"/{pairs.id}/ratings", {"item_id": first, "score": 4})[:2] == (400, "score")
        assert error("POST", f"/{pairs.id}/ratings", {"item_id": first})[:2] == (400, "choice")
        assert error("POST", f"/{pairs.id}/ratings", {"item_id": first, "choice": "left"})[:2] == (400, "choice")
        assert error("POST", f"/{rubric.id}/ratings", {"item_id": first, "choice": "a"})[:2] == (400, "choice")
        for score in (0, 6, "4", 4.5, True):
            assert error("POST", f"/{rubric.id}/ratings", {"item_id": first, "score": score})[:2] == (400, "score")
        assert error("POST", f"/{rubric.id}/ratings", {"item_id": first, "score": 3, "comment": "x" * 2001})[:2] == (
            400, "comment")
        assert http("GET", url).status_code == 401
        assert http("GET", url, slow).status_code == 200 and http("GET", f"{url}/{pairs.id}", slow).status_code == 200
        limited = http("POST", f"{url}/{pairs.id}/ratings", slow, {"item_id": first, "choice": "b"})
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "requests_per_minute"
        paths = http("GET", server.url + "/openapi.json").json()["paths"]
        assert {"/v1/reviews", "/v1/reviews/{review_id}", "/v1/reviews/{review_id}/ratings",
                "/v1/reviews/{review_id}/summary"} <= set(paths)
        metrics = http("GET", server.url + "/metrics", key).text
        assert 'route="/v1/reviews/{review_id}/ratings"' in metrics  # one label for every review id
    finally:
        server.stop()


# ----------------------------------------------------------------------------- record, policy, report

def test_record_makes_a_policy_pass_and_the_report_shows_reviews(runs, workspace):
    gan1, gan2 = runs["gan1"], runs["gan2"]
    options = EvalOptions(n=20, seed=0, fid=False)
    report = evaluate_run(gan1, options)
    assert "No human review of " + gan1 in report.read_text() and json.loads(
        (report.parent / "metrics.json").read_text())["human_review"] == []
    version = registry.register(gan1)
    with pytest.raises(PromotionRefused, match="human.score is not recorded"):
        registry.promote("digits", version.version)

    store = ReviewStore()
    review = create_review([gan1], 4)
    for item, score in zip(store.items(review.id), (4, 4, 5, 1)):
        store.rate(review.id, item.id, "k1", "alice", score=score)
    said = invoke("review", "record", review.id).output
    assert "human.score = 3.5" in said and "on digits version 1" in said and "metrics.json" in said
    assert registry.get_version("digits", version.version).metrics["human.score"] == 3.5
    # 3.5 meets min 3.5; a stricter rule fails, and the direction of every human.* figure is known
    assert registry.check(registry.policy("digits"), registry.get_version("digits", version.version), None)[0] == []
    strict = PromotionPolicy(rules=[Rule(metric="human.score", min=4.0)])
    assert registry.check(strict, registry.get_version("digits", version.version), None)[0] == [
        "human.score 3.5 < min 4"]
    assert all(registry.direction(Rule(metric=m, max_regression=0.1)) for m in
               ("human.score", "human.score_low", "human.preference", "human.preference_high", "human.ratings"))
    entry = registry.promote("digits", version.version)
    assert entry["failed"] == [] and entry["figures"]["human.score"]["value"] == 3.5
    row = next(r for r in json.loads((load_run(gan1).path / "eval" / "metrics.json").read_text())["rows"]
               if r["kind"] == "samples")
    assert row["human.score"] == 3.5 and row["human.ratings"] == 4 and row["human.score_low"] < 3.5
    evaluate_run(gan1, options)  # evaluated again: the automatic figures are re-measured, people's are kept
    row = next(r for r in json.loads((load_run(gan1).path / "eval" / "metrics.json").read_text())["rows"]
               if r["kind"] == "samples")
    assert row["human.score"] == 3.5 and row["human.ratings"] == 4

    pairs = create_review([gan1, gan2], 2)
    for item in store.items(pairs.id):
        store.rate(pairs.id, item.id, "k1", "alice", choice="a" if item.source_a == 0 else "b")  # gan1 every time
    compared = compare_runs([gan1, gan2], options, out=workspace / "cmp")
    html = compared.read_text()
    assert "Human review" in html and review.id in html and pairs.id in html and "preferred 1.000" in html
    saved = json.loads((workspace / "cmp" / "metrics.json").read_text())["human_review"]
    assert [s["id"] for s in saved] == [review.id, pairs.id] and saved[1]["sources"][0]["preference"] == 1.0
