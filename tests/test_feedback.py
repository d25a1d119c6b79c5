"""The feedback loop end to end against a live server: generate with the `openai` client, rate through
POST /v1/feedback, `genforge feedback export` (the gate runs on it), fine-tune the served run on the
export, and follow the new run's lineage back to the rated generation ids. Then the refusals: another
key's generation, bad ratings, oversize fields, the key's request budget. And the log itself: shared by
processes, ownership checked in the store."""

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from typer.testing import CliRunner

import genforge
from genforge.cli import _app
from genforge.data.normalize import normalize_text
from genforge.data.store import open_dataset
from genforge.runconfig import parse_run_config
from genforge.runs import load_run
from genforge.serve.feedback_store import FeedbackStore, Generation
from genforge.serve.keys import KeyStore
from genforge.trainer import train
from clirun import invoke
from imagesets import digits, write_images
from test_families import tiny_config
from test_serve import Server, http
from textsets import corpus, write_texts


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A workspace with a tiny language model (the one the loop fine-tunes), a tiny GAN and a penguins copula."""
    home = tmp_path_factory.mktemp("feedback")
    mp = pytest.MonkeyPatch()
    mp.setenv("GENFORGE_HOME", str(home))
    mp.setenv("GENFORGE_TRACKING", "off")
    try:
        write_texts("corpus", corpus()[0], val=24)
        cfg = tiny_config("gpt", name="writer")
        cfg["sample"] = {"max_tokens": 8}
        train(parse_run_config(cfg))
        x, y = digits(160)
        write_images("digits", x, y, [str(i) for i in range(10)], val=32)
        train(parse_run_config(tiny_config("gan", name="digits-gan")))
        genforge.ingest("builtin:penguins", "penguins")
        train(parse_run_config(tiny_config("copula", name="penguins")))
    finally:
        mp.undo()
    return home


@pytest.fixture(scope="module")
def server(home):
    s = Server(home, {"models": [{"name": "writer", "run": "writer"}, {"name": "digits", "run": "digits-gan"},
                                 {"name": "penguins", "run": "penguins"}],
                      "limits": {"max_tokens": 16, "max_body_bytes": 20000}, "reload_interval_s": 0,
                      "keys_db": str(home / "keys.db")})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def keys(home):
    store = KeyStore(home / "keys.db")
    return store.create("alice")[0], store.create("bob")[0]


def rate(client: openai.OpenAI, generation_id: str, rating, **fields) -> dict:
    return client.post("/feedback", body={"generation_id": generation_id, "rating": rating, **fields}, cast_to=dict)


def test_rated_generations_become_a_dataset_a_fine_tuned_run_traces_back_to(server, keys, home, monkeypatch):
    monkeypatch.setenv("GENFORGE_HOME", str(home))  # the export reads the server's workspace
    client = server.client(keys[0])
    reviews = corpus()[0][:30]
    made: dict[str, str] = {}  # generation id -> the text the model answered
    for i, review in enumerate(reviews[:24]):
        c = client.completions.create(model="writer", prompt=review[:6], max_tokens=8, seed=i)
        made[c.id] = c.choices[0].text
    version = c.system_fingerprint.removeprefix("writer:")
    two = client.completions.create(model="writer", prompt="质量", n=2, max_tokens=8, seed=99)
    made.update({f"{two.id}-{ch.index}": ch.text for ch in two.choices})
    chat = client.chat.completions.create(model="writer", messages=[{"role": "user", "content": "物流"}],
                                          max_tokens=8, seed=7)
    made[chat.id] = chat.choices[0].message.content
    chunks = list(client.chat.completions.create(model="writer", messages=[{"role": "user", "content": "包装"}],
                                                 max_tokens=8, seed=8, stream=True))
    made[chunks[0].id] = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    ids = list(made)
    corrected = {ids[k]: reviews[24 + k] for k in range(4)}  # a rater's answer replaces the model's
    low = {f"{two.id}-1": 2, chunks[0].id: 3}  # below --min-rating 4: left out
    for k, gid in enumerate(ids):
        answer = rate(client, gid, low.get(gid, 4 + k % 2), comment="好" if k % 3 else None,
                      **({"corrected_output": corrected[gid]} if gid in corrected else {}))
        assert answer["generation_id"] == gid and answer["replaced"] is False
    assert rate(client, ids[5], 5)["replaced"] is True  # rated again: the later rating counts
    wanted = {gid: corrected.get(gid, text) for gid, text in made.items() if gid not in low}

    # the gate runs on the export: too few examples for its default min_examples (100)
    refused = CliRunner().invoke(_app, ["feedback", "export", "--min-rating", "4", "--name", "liked"])
    assert refused.exit_code == 1 and "min_examples" in refused.output
    invoke("feedback", "export", "--min-rating", "4", "--model", "writer", "--name", "liked",
           "--set", "gate.min_examples=10", "--set", "split.val=0.2")
    data = open_dataset("liked")
    m = data.manifest
    assert m.kind == "text" and m.data_schema["format"] == "prompt_completion" and m.gate["passed"]
    lineage = m.model_extra["lineage"]
    assert lineage["filter"] == {"min_rating": 4, "model": "writer", "kind": "text"}
    assert lineage["models"] == [{"model": "writer", "version": version, "examples": len(wanted)}]
    assert sorted(lineage["generation_ids"]) == sorted(wanted)
    # every row is the corrected or generated answer of the generation its row_id names
    rows = [r for split in ("train", "val", "test") for r in data.frame(split).to_dict("records")]
    assert len(rows) == m.counts["kept"] >= 10
    for r in rows:
        gid = lineage["examples"][r["row_id"] - 1]["generation_id"]
        assert r["completion"] == normalize_text(wanted[gid])
    assert {normalize_text(t) for t in corrected.values()} <= {r["completion"] for r in rows}

    # fine-tune the served run on it: the new run's dataset leads back to the rated generations
    served = load_run("writer")
    cfg = tiny_config("gpt", name="writer-liked", dataset="liked", steps=2, init_from="writer")
    run = genforge.train({**cfg, "model": {**cfg["model"], "format": "prompt_completion"}})
    assert run.info["status"] == "completed" and run.info["init_from"].startswith(str(served.path))
    assert version == f"{served.id}/{run.info['init_from'].rsplit('/', 1)[-1]}"
    back = open_dataset(run.info["dataset"]).manifest.model_extra["lineage"]
    assert sorted(back["generation_ids"]) == sorted(wanted) and back["models"][0]["version"] == version


def test_images_and_tables_are_logged_and_rateable_but_not_exported(server, keys, home, monkeypatch):
    monkeypatch.setenv("GENFORGE_HOME", str(home))
    client = server.client(keys[0])
    images = client.images.generate(model="digits", prompt="3", n=2, extra_body={"seed": 1})
    gids = [d.model_extra["generation_id"] for d in images.data]
    assert len(set(gids)) == 2 and all(g.startswith("img-") for g in gids)
    table = client.post("/tables/generations", body={"model": "penguins", "n": 5, "seed": 1}, cast_to=dict)
    assert table["generation_id"].startswith("tbl-")
    for gid in (*gids, table["generation_id"]):
        assert rate(client, gid, 5)["rating"] == 5
    logged = {r.generation.id: r for r in FeedbackStore(home / "serve" / "feedback.db").rated(5)}
    assert logged[gids[0]].kind == "image" and logged[gids[0]].generation.request["class"] == "3"
    assert len(logged[gids[0]].generation.output["png_sha256"]) == 64
    assert logged[table["generation_id"]].generation.output == {"rows": 5}
    refused = CliRunner().invoke(_app, ["feedback", "export", "--model", "digits", "--name", "pictures"])
    assert refused.exit_code == 1 and "no text generations of model 'digits'" in refused.output


def test_feedback_refusals_are_openai_error_bodies(server, keys, home):
    alice, bob = server.client(keys[0]), server.client(keys[1])
    gid = alice.completions.create(model="writer", prompt="好", max_tokens=4, seed=1).id
    for client, generation_id in ((bob, gid), (alice, "cmpl-nonexistent")):  # another key's is as good as absent
        with pytest.raises(openai.NotFoundError) as e:
            rate(client, generation_id, 5)
        assert e.value.body["code"] == "generation_not_found" and e.value.body["param"] == "generation_id"
    for bad in (0, 6, "5", 4.5, True, None):
        r = http("POST", server.url + "/v1/feedback", keys[0], {"generation_id": gid, "rating": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "rating", (bad, r.text)
    assert "from 1 to 5, got 6" in http("POST", server.url + "/v1/feedback", keys[0],
                                        {"generation_id": gid, "rating": 6}).json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as e:
        rate(alice, gid, 4, comment="很" * 2001)
    assert e.value.body["param"] == "comment" and "2001 characters, above the limit of 2000" in e.value.body["message"]
    assert "很很" not in e.value.body["message"]  # the text is never echoed
    with pytest.raises(openai.BadRequestError) as e:
        rate(alice, gid, 4, corrected_output=" ")
    assert e.value.body["param"] == "corrected_output"
    assert http("POST", server.url + "/v1/feedback", None, {"generation_id": gid, "rating": 5}).status_code == 401

    # a rating is a request like any other against the key's requests_per_minute
    limited = KeyStore(home / "keys.db").create("one-a-minute", requests_per_minute=2)[0]
    client = server.client(limited)
    own = client.completions.create(model="writer", prompt="好", max_tokens=4).id
    assert rate(client, own, 5)["rating"] == 5
    with pytest.raises(openai.RateLimitError) as e:
        rate(client, own, 4)
    assert e.value.body["code"] == "requests_per_minute"


def log_many(path: str, key_id: str, worker: int, n: int) -> None:
    """A worker process writing its own generations into the shared log."""
    store = FeedbackStore(path)
    for i in range(n):
        store.log(key_id, "writer", "v1", "text", [Generation(f"g-{worker}-{i}", {"prompt": "p"}, {"text": "t"})])


def test_the_log_is_shared_by_processes_and_a_rating_checks_the_key(tmp_path):
    path = tmp_path / "serve" / "feedback.db"
    FeedbackStore(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=log_many, args=(str(path), "key_a", w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    store = FeedbackStore(path)
    assert store.rate("key_b", "g-0-0", 5) is None and store.rate("key_a", "g-9-9", 5) is None
    for w in range(4):
        assert store.rate("key_a", f"g-{w}-49", 4 + w % 2) is not None
    assert sorted(r.generation.id for r in store.rated(4)) == [f"g-{w}-49" for w in range(4)]
    assert sorted(r.generation.id for r in store.rated(5)) == ["g-1-49", "g-3-49"]
    with pytest.raises(ValueError, match="from 1 to 5"):
        store.rate("key_a", "g-0-0", 7)
    # responses logged together: a duplicate id fails its own request only
    fresh = [Generation(f"new-{i}", {"prompt": "p"}, {"text": "t"}) for i in range(8)]
    with ThreadPoolExecutor(9) as pool:
        calls = [pool.submit(store.log, "key_a", "writer", "v1", "text", [g]) for g in fresh]
        calls.append(pool.submit(store.log, "key_a", "writer", "v1", "text", [fresh[0]]))
    errors = [type(c.exception()).__name__ if c.exception() else None for c in calls]
    assert errors.count("IntegrityError") == 1 and errors.count(None) == 8
    assert oct(path.stat().st_mode & 0o777) == "0o600"
