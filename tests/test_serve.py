"""The service against real clients: the official `openai` package (and raw HTTP for what it cannot
send) talking to `genforge serve` running in its own process on 127.0.0.1."""

import base64
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pandas as pd
import pytest
import yaml
from PIL import Image

import genforge
from genforge import registry
from genforge.evaluation.pipeline import EvalOptions, evaluate_run
from genforge.labels.watermark import psnr
from genforge.runconfig import parse_run_config
from genforge.serve.keys import KeyStore
from genforge.trainer import train
from imagesets import digits, write_images
from test_families import tiny_config
from textsets import corpus, write_texts


class Reply:
    def __init__(self, status: int, headers: dict, data: bytes):
        self.status_code, self.headers, self.content = status, headers, data
        self.text = data.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


def http(method: str, url: str, key: str | None = None, json_body=None, content: bytes | None = None) -> Reply:
    """A raw request (what the openai client cannot send), with the standard library."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if json_body is not None:
        content, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
    req = urllib.request.Request(url, data=content, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return Reply(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers), e.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`genforge serve` in a subprocess, ready when /readyz says so."""

    def __init__(self, home: Path, config: dict, name: str = "serve"):
        self.home, self.port = home, _free_port()
        self.path = home / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump({**config, "port": self.port}))
        self.log = open(home / f"{name}.log", "w")
        env = {**os.environ, "GENFORGE_HOME": str(home), "GENFORGE_TRACKING": os.environ.get("GENFORGE_TRACKING", "off")}
        self.proc = subprocess.Popen([sys.executable, "-m", "genforge", "serve", "--config", str(self.path)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (home / f"{name}.log").read_text()[-3000:]
            try:
                if http("GET", self.url + "/readyz").status_code == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError("the server did not become ready:\n" + (home / f"{name}.log").read_text()[-3000:])

    def client(self, key: str, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A workspace with a tiny language model, a tiny conditional GAN and a penguins copula, trained once."""
    home = tmp_path_factory.mktemp("serve")
    mp = pytest.MonkeyPatch()
    mp.setenv("GENFORGE_HOME", str(home))
    mp.setenv("GENFORGE_TRACKING", "off")
    try:
        texts, _ = corpus()
        write_texts("corpus", texts, val=24)
        x, y = digits(160)
        write_images("digits", x, y, [str(i) for i in range(10)], val=32)
        cfg = tiny_config("gpt", name="writer")
        cfg["model"] = {**cfg["model"], "block_size": 64}
        cfg["sample"] = {"max_tokens": 8}
        train(parse_run_config(cfg))
        train(parse_run_config(tiny_config("gan", name="digits-gan")))
        genforge.ingest("builtin:penguins", "penguins")
        train(parse_run_config(tiny_config("copula", name="penguins")))
        for seed in (1, 2):  # two versions of a registered model, for the swap test
            run = train(parse_run_config(tiny_config("gan", name="digits-reg", seed=seed))).name
            evaluate_run(run, EvalOptions(n=32, seed=0))
            registry.register(run, "digits-reg")
    finally:
        mp.undo()
    return home


CONFIG = {"models": [{"name": "writer", "run": "writer"}, {"name": "digits", "run": "digits-gan"},
                     {"name": "penguins", "run": "penguins"}],
          "limits": {"max_tokens": 32, "max_n": 4, "max_images": 8, "max_rows": 200, "max_body_bytes": 20000,
                     "max_prompt_tokens": 48, "max_streams": 1},
          "batching": {"max_batch": 8, "max_wait_ms": 5}, "reload_interval_s": 0}


@pytest.fixture(scope="module")
def server(home):
    s = Server(home, {**CONFIG, "keys_db": str(home / "keys.db")})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(home):
    return KeyStore(home / "keys.db").create("tests")[0]


def test_completions_chat_and_streaming_with_the_openai_client(server, key):
    client = server.client(key)
    kinds = {m.id: m.model_extra["kind"] for m in client.models.list().data}
    assert kinds == {"writer": "text", "digits": "image", "penguins": "table"}
    a = client.completions.create(model="writer", prompt="好", max_tokens=6, seed=1, temperature=0.9)
    b = client.completions.create(model="writer", prompt="好", max_tokens=6, seed=1, temperature=0.9)
    assert a.choices[0].text == b.choices[0].text and a.choices[0].finish_reason in ("stop", "length")
    assert a.usage.completion_tokens <= 6 and a.usage.prompt_tokens >= 2
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    assert a.system_fingerprint.startswith("writer:") and a.model == "writer"
    label = a.model_extra["provenance"]  # every generation says it is one, and which version made it
    assert label["ai_generated"] is True and label["model"] == "writer" and a.system_fingerprint.endswith(label["version"])
    several = client.completions.create(model="writer", prompt=["好", "The"], n=2, max_tokens=4, seed=2)
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    # a chat answer streamed is the same answer as not streamed (one seed, one sequence of draws)
    messages = [{"role": "system", "content": "你是客服"}, {"role": "user", "content": "质量怎么样"}]
    whole = client.chat.completions.create(model="writer", messages=messages, max_tokens=8, seed=5)
    chunks = list(client.chat.completions.create(model="writer", messages=messages, max_tokens=8, seed=5, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and whole.choices[0].message.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # genforge's knobs ride along as extra fields; unknown fields are accepted (and logged)
    extra = client.completions.create(model="writer", prompt="好", max_tokens=4, seed=1,
                                      extra_body={"top_k": 1, "repetition_penalty": 1.2, "not_a_field": True})
    assert extra.choices[0].text is not None


def test_images_come_back_as_pngs_of_the_asked_class(server, key):
    client = server.client(key)
    out = client.images.generate(model="digits", prompt="3", n=2, response_format="b64_json",
                                 extra_body={"seed": 4, "truncation": 0.7})
    assert len(out.data) == 2 and all(d.revised_prompt == "3" for d in out.data)
    assert out.model_extra["provenance"]["ai_generated"] is True and out.model_extra["provenance"]["model"] == "digits"
    img = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json)))
    assert img.size == (28, 28)
    again = client.images.generate(model="digits", prompt="3", n=2, extra_body={"seed": 4, "truncation": 0.7})
    # per-item seeds: batching changes nothing but the watermark, which carries each image's own generation id
    # (the raw samples are compared exactly in test_families); another sample would be ~10-15 dB away
    first, second = (np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in (out.data[1], again.data[1]))
    assert again.data[1].generation_id != out.data[1].generation_id and psnr(first, second) > 30
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="digits", prompt="cat", n=1)
    assert e.value.body["param"] == "prompt" and "'9'" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="makes 28x28"):
        client.images.generate(model="digits", prompt="3", size="1024x1024")
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="writer", prompt="3")
    assert e.value.body["code"] == "wrong_model_kind"


def tables(client: openai.OpenAI, **body) -> dict:
    """POST /v1/tables/generations with the openai client's generic call (it has no tables resource)."""
    return client.post("/tables/generations", body={"model": "penguins", **body}, cast_to=dict)


def batches(server: Server, key: str) -> float:
    """How many Model.sample calls the penguins model has made."""
    text = http("GET", server.url + "/metrics", key).text
    return float(re.search(r'genforge_batch_size_count\{model="penguins"\} (\S+)', text).group(1))


def test_tables_as_json_and_csv_the_same_alone_or_merged(server, key):
    client = server.client(key)
    a = tables(client, n=60, seed=3)
    names = [c["name"] for c in a["columns"]]
    assert a["model"] == "penguins" and a["system_fingerprint"].startswith("penguins:") and a["usage"]["rows"] == 60
    assert names == ["species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex",
                     "year"] and {"name": "species", "type": "categorical"} in a["columns"]
    assert len(a["data"]) == 60 and all(list(row) == names for row in a["data"])
    assert a["provenance"]["ai_generated"] is True and a["provenance"]["generation_ids"] == [a["generation_id"]]
    assert not any(isinstance(v, float) and math.isnan(v) for row in a["data"] for v in row.values())  # null, not NaN
    assert tables(client, n=60, seed=3)["data"] == a["data"]
    csv = tables(client, n=60, seed=3, response_format="csv")
    assert "data" not in csv and csv["usage"]["rows"] == 60
    back = pd.read_csv(io.StringIO(csv["csv"]))
    assert list(back.columns) == names and back["species"].tolist() == [r["species"] for r in a["data"]]
    # concurrent requests are merged into one call, and each gets the rows it gets alone
    bodies = [dict(n=5 + i, seed=i, conditions=[{"island": "Dream"}] + [{}] * (4 + i) if i % 2 else {"sex": "female"})
              for i in range(6)]
    alone = [tables(client, **b)["data"] for b in bodies]
    for _ in range(5):
        before, merged = batches(server, key), [None] * len(bodies)
        barrier = threading.Barrier(len(bodies))

        def call(i: int) -> None:
            barrier.wait()
            merged[i] = tables(client, **bodies[i])["data"]
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert merged == alone
        if batches(server, key) - before < len(bodies):
            break
    else:
        pytest.fail("concurrent table requests were never merged into one call")


def test_table_provenance_columns_per_request(server, key):
    client = server.client(key)
    assert not any(c["name"].startswith("genforge_") for c in tables(client, n=2, seed=1)["columns"])  # the default
    cols = tables(client, n=3, seed=1, provenance="columns")
    assert {"name": "genforge_ai_generated", "type": "boolean"} in cols["columns"] and cols["provenance"]["ai_generated"]
    assert all(r["genforge_ai_generated"] is True and r["genforge_model"] == "penguins" and r["genforge_model_version"]
               and r["genforge_generation_id"] == cols["generation_id"] for r in cols["data"])
    both = pd.read_csv(io.StringIO(tables(client, n=3, seed=1, provenance="both", response_format="csv")["csv"]))
    assert both["genforge_ai_generated"].all() and both["genforge_model"].eq("penguins").all()
    with pytest.raises(openai.BadRequestError, match="provenance"):
        tables(client, n=1, provenance="rows")


def test_table_conditions_are_met_or_refused_naming_the_param(server, key):
    client = server.client(key)
    gentoo = tables(client, n=20, seed=1, conditions={"species": "Gentoo"})["data"]
    assert {r["species"] for r in gentoo} == {"Gentoo"}
    per_row = tables(client, n=3, seed=1, conditions=[{"island": "Dream"}, {}, {"sex": "female", "year": 2008}])["data"]
    assert per_row[0]["island"] == "Dream" and (per_row[2]["sex"], per_row[2]["year"]) == ("female", 2008)
    ranged = tables(client, n=20, seed=1, conditions={"bill_length_mm": {"min": 40, "max": 45}})["data"]
    assert all(40 <= r["bill_length_mm"] <= 45 for r in ranged)
    where = tables(client, n=10, seed=1, where={"island": "Biscoe"})["data"]  # the family's option, as an extra field
    assert {r["island"] for r in where} == {"Biscoe"}
    with pytest.raises(openai.BadRequestError) as e:
        tables(client, n=2, conditions={"species": "Dodo"})
    assert e.value.body["param"] == "conditions" and "'Adelie'" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        tables(client, n=2, conditions={"colour": "red"})
    assert e.value.body["param"] == "conditions" and "bill_length_mm" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        tables(client, n=3, conditions=[{}, {}])
    assert e.value.body["param"] == "conditions"
    impossible = {"bill_length_mm": {"min": 1000}}
    with pytest.raises(openai.BadRequestError) as e:
        tables(client, n=2, conditions=impossible)
    assert e.value.body["code"] == "condition_unmet" and "relax the condition" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        tables(client, n=201)
    assert e.value.body["param"] == "n" and "max_rows of 200" in e.value.body["message"]
    # an impossible request merged with good ones fails alone: the good ones get their own rows
    good = [dict(n=4, seed=s, conditions={"species": "Adelie"}) for s in range(3)]
    alone = [tables(client, **b)["data"] for b in good]
    out: list = [None] * 4
    barrier = threading.Barrier(4)

    def call(i: int) -> None:
        barrier.wait()
        try:
            out[i] = tables(client, **good[i])["data"] if i < 3 else tables(client, n=2, conditions=impossible)
        except openai.BadRequestError as e:
            out[i] = e.body["code"]
    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [*alone, "condition_unmet"]
    r = http("POST", server.url + "/v1/tables/generations", json_body={"model": "penguins", "n": 2})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_table_rows_count_against_the_keys_units(server, home):
    secret = KeyStore(home / "keys.db").create("few-rows", units_per_minute=50)[0]
    client = server.client(secret)
    with pytest.raises(openai.BadRequestError) as e:
        tables(client, n=60)
    assert e.value.body["code"] == "units_per_minute" and "can never fit" in e.value.body["message"]
    tables(client, n=40)
    with pytest.raises(openai.RateLimitError) as e:
        tables(client, n=40)
    assert e.value.body["code"] == "units_per_minute"
    metrics = http("GET", server.url + "/metrics", secret).text
    assert re.search(r'genforge_generated_total\{model="penguins",unit="rows"\} \d', metrics)


def test_errors_are_openai_error_bodies(server, key):
    client = server.client(key)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="writer", prompt="好", temperature=-1)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="writer", prompt="好", max_tokens=1000)
    assert e.value.body["param"] == "max_tokens" and "max_tokens of 32" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="writer", prompt="好", n=5)
    assert e.value.body["code"] == "max_n"
    tok = _tokenizer(server.home)
    prompt = next(p for p in ("好" * k for k in range(1, 200)) if len(tok.encode(p)) + 1 > 40)  # 41-48 tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="writer", prompt=prompt, max_tokens=32)
    assert e.value.body["code"] == "context_length_exceeded" and "context of 64 tokens" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="writer", prompt=prompt * 2, max_tokens=4)
    assert e.value.body["code"] == "max_prompt_tokens" and e.value.body["param"] == "prompt"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="好")
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.AuthenticationError):
        server.client("gf-not-a-key").models.list()
    r = http("GET", server.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    big = http("POST", server.url + "/v1/completions", key, {"model": "writer", "prompt": "x" * 30000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "max_body_bytes"
    bad = http("POST", server.url + "/v1/completions", key, content=b"{nope")
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert http("GET", server.url + "/healthz").json() == {"status": "ok"}
    assert http("GET", server.url + "/openapi.json").json()["paths"]["/v1/completions"]
    assert http("GET", server.url + "/metrics").status_code == 401  # not public unless configured


def _tokenizer(home: Path):
    from genforge.runs import load_run
    from genforge.tokenizer import TextTokenizer
    mp = pytest.MonkeyPatch()
    mp.setenv("GENFORGE_HOME", str(home))
    try:
        return TextTokenizer.from_fitted(load_run("writer").model().fitted)
    finally:
        mp.undo()


def test_concurrent_streams_are_bounded(server, key):
    """max_streams is 1: of streams started together, those that find one running get 429 max_streams."""
    client = server.client(key)
    refusals: list[str] = []
    texts: list[str] = []
    barrier = threading.Barrier(8)

    def stream() -> None:
        barrier.wait()
        try:
            chunks = client.completions.create(model="writer", prompt="好", max_tokens=32, n=4, stream=True)
            texts.append("".join(c.choices[0].text for c in chunks if c.choices))
        except openai.RateLimitError as e:
            refusals.append(e.body["code"])
    for _ in range(5):
        threads = [threading.Thread(target=stream) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if refusals:
            break
    assert refusals and set(refusals) == {"max_streams"} and texts  # refused ones named the bound; others ran
    assert len(list(client.completions.create(model="writer", prompt="好", max_tokens=4, stream=True))) >= 2


def test_revoked_keys_scopes_and_rate_limits(server, home):
    store = KeyStore(home / "keys.db")
    secret, rec = store.create("soon-revoked")
    assert server.client(secret).models.list().data
    store.revoke(rec.id)
    with pytest.raises(openai.AuthenticationError):
        server.client(secret).models.list()
    scoped, _ = store.create("images-only", models=["digits"])
    assert [m.id for m in server.client(scoped).models.list().data] == ["digits"]
    with pytest.raises(openai.NotFoundError):
        server.client(scoped).completions.create(model="writer", prompt="好")
    limited, _ = store.create("slow", requests_per_minute=2)
    client = server.client(limited)
    client.models.list()
    client.models.list()
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="writer", prompt="好", max_tokens=2)
    assert e.value.body["code"] == "requests_per_minute" and int(e.value.response.headers["retry-after"]) >= 1
    few, _ = store.create("few-tokens", units_per_minute=10)
    with pytest.raises(openai.BadRequestError) as e:
        server.client(few).completions.create(model="writer", prompt="好", max_tokens=30)
    assert e.value.body["code"] == "units_per_minute" and "can never fit" in e.value.body["message"]
    metrics = http("GET", server.url + "/metrics", store.create("metrics-reader")[0]).text
    assert 'genforge_refusals_total{reason="requests_per_minute"}' in metrics
    assert 'genforge_served_version{model="writer"' in metrics and "genforge_generated_total" in metrics


def test_two_workers_share_one_rate_limit(home):
    srv = Server(home, {**CONFIG, "workers": 2, "keys_db": str(home / "keys.db")}, name="two-workers")
    log = home / "two-workers.log"

    def pids(path: str) -> set[int]:
        return {json.loads(line)["pid"] for line in log.read_text().splitlines()
                if line.startswith("{") and '"msg": "request"' in line and f'"path": "{path}"' in line}
    try:
        deadline = time.monotonic() + 120  # the first worker's /readyz let Server return; wait for the second too
        while len(pids("/readyz")) < 2 and time.monotonic() < deadline:
            readies = [threading.Thread(target=http, args=("GET", srv.url + "/readyz")) for _ in range(4)]
            for t in readies:
                t.start()
            for t in readies:
                t.join()
            time.sleep(0.2)
        secret, _ = KeyStore(home / "keys.db").create("shared", requests_per_minute=6)
        codes: list[int] = []

        def call() -> None:  # a new connection each: the kernel spreads them over both workers
            codes.append(http("GET", srv.url + "/v1/models", secret).status_code)
        threads = [threading.Thread(target=call) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200] * 6 + [429] * 10
        assert len(pids("/v1/models")) == 2, pids("/v1/models")  # both workers answered
    finally:
        srv.stop()


def test_promotion_and_rollback_under_load_switch_versions_and_fail_no_request(home, key, monkeypatch):
    monkeypatch.setenv("GENFORGE_HOME", str(home))
    registry.promote("digits-reg", "1")
    srv = Server(home, {"models": [{"name": "digits", "registry": "digits-reg"}], "reload_interval_s": 0.2,
                        "keys_db": str(home / "keys.db")}, name="swap")
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        client = srv.client(key)
        while not stop.is_set():
            try:
                seen.append(client.images.generate(model="digits", prompt="7", n=2).model_extra["system_fingerprint"])
            except Exception as e:  # noqa: BLE001 - any failure is what this test counts
                failures.append(repr(e))

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 60
        while not (seen and seen[-1] == f"digits:{version}"):
            assert time.monotonic() < deadline, f"still {seen[-1:]} after 60 s"
            time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        wait_for("1")
        registry.promote("digits-reg", "2")
        wait_for("2")
        assert [m.model_extra["version"] for m in srv.client(key).models.list().data] == ["2"]
        registry.rollback("digits-reg")
        wait_for("1")
    finally:
        stop.set()
        for t in threads:
            t.join()
        srv.stop()
    assert failures == [] and len(seen) > 20
    # version 1, then 2, then 1 again (requests in flight at a swap finish on the version they started on)
    assert seen[0] == "digits:1" and seen.index("digits:2") < max(i for i, f in enumerate(seen) if f == "digits:1")
