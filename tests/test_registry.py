"""The registry on MLflow: register with a card, gated promotion (refused with reasons, promoted, forced
with a reason), rollback, the history of all of them, on the sqlite default and on a live `mlflow
server`; eight processes at once; `genforge run` going on where it stopped."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clirun import invoke
from genforge import registry
from genforge.errors import ConfigError, PromotionRefused, RegistryError
from genforge.evaluation.pipeline import EvalOptions, evaluate_run
from genforge.registry import Version, check
from genforge.runconfig import PromotionPolicy, Rule, parse_run_config
from genforge.runs import load_run
from genforge.trainer import train
from imagesets import digits, write_images
from test_families import REQUESTS, data, kind, same_item, tiny_config  # noqa: F401  (data: a fixture)

POLICY = {"rules": [{"metric": "evaluator_fd", "max": 1000.0, "max_regression": 0.10},
                    {"metric": "evaluator_conditional_accuracy", "min": 0.0}]}
TINY = {
    "name": "tiny-vae",
    "data": {"dataset": "digits"},
    "model": {"family": "vae", "channels": [8, 16], "blocks": 0, "groups": 4, "latent": 8, "class_dim": 8,
              "kl_warmup_steps": 4},
    "train": {"batch_size": 32, "lr": 0.005, "warmup_steps": 2, "log_every": 5, "val_every": 0, "checkpoint_every": 50,
              "threads": 1},
    "evaluate": {"n": 100},
    "registry": {"name": "digits-vae", "policy": POLICY, "licence": "CC BY 4.0"},
}


def _config(steps: int, seed: int = 0) -> dict:
    return {**TINY, "train": {**TINY["train"], "steps": steps, "seed": seed}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A workspace with a dataset and three evaluated runs: good (200 steps), bad and worse (1 step each,
    two seeds). Built once; each test works on its own copy (the registry starts empty)."""
    home = tmp_path_factory.mktemp("registry") / "ws"
    old = {k: os.environ.get(k) for k in ("GENFORGE_HOME", "GENFORGE_TRACKING", "MLFLOW_TRACKING_URI")}
    os.environ.update(GENFORGE_HOME=str(home), GENFORGE_TRACKING="off")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        x, y = digits(420)
        write_images("digits", x, y, [str(i) for i in range(10)], val=100)
        runs = {}
        for key, steps, seed in (("good", 200, 0), ("bad", 1, 0), ("worse", 1, 1)):
            runs[key] = train(parse_run_config(_config(steps, seed))).name
            evaluate_run(runs[key], EvalOptions(n=100, seed=0))
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return home, runs


@pytest.fixture
def ws(prepared, workspace):
    shutil.copytree(prepared[0], workspace)
    return prepared[1]


def _fd(run: str) -> float:
    m = json.loads((load_run(run).path / "eval" / "metrics.json").read_text())
    return next(r["evaluator_fd"] for r in m["rows"] if r["kind"] == "samples")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gated_story(runs: dict[str, str]) -> None:
    """Promote the bad model, then the good one (better: promoted), refuse the worse one with its reasons,
    force it with a reason, roll back; the history shows each step."""
    assert _fd(runs["good"]) * 1.5 < min(_fd(runs["bad"]), _fd(runs["worse"]))  # the premise, measured
    v1 = registry.register(runs["bad"])
    v2 = registry.register(runs["good"])
    v3 = registry.register(runs["worse"])
    assert (v1.version, v2.version, v3.version) == ("1", "2", "3") and v2.run == runs["good"]
    assert v2.metrics["evaluator_fd"] == pytest.approx(_fd(runs["good"])) and "evaluator_fd" in v2.reference
    assert v2.evaluation["options"]["n"] == 100

    registry.promote("digits-vae", 1)
    registry.promote("digits-vae", 2)  # better than champion v1: passes the regression rule
    with pytest.raises(PromotionRefused, match=r"evaluator_fd .* worse than champion v2's .* \(tolerance 10\.0%\)") as e:
        registry.promote("digits-vae", 3)
    assert len(e.value.failures) == 1
    assert registry.champion("digits-vae").version == "2"
    with pytest.raises(ConfigError, match="--force needs --reason"):
        registry.promote("digits-vae", 3, force=True)
    registry.promote("digits-vae", 3, force=True, reason="campaign needs the new style today")
    assert registry.champion("digits-vae").version == "3"
    registry.rollback("digits-vae", reason="complaints")
    assert registry.champion("digits-vae").version == "2"

    h = registry.history("digits-vae")
    assert [(e["action"], e["from"], e["to"]) for e in h] == [
        ("promote", None, "1"), ("promote", "1", "2"), ("refused", "2", "3"), ("force", "2", "3"), ("rollback", "3", "2")]
    assert [e["seq"] for e in h] == [1, 2, 3, 4, 5]
    assert h[3]["reason"] == "campaign needs the new style today" and "worse than champion" in h[3]["failed"][0]
    assert h[2]["figures"]["evaluator_fd"]["champion"] == pytest.approx(_fd(runs["good"]))
    assert h[4]["reason"] == "complaints" and all(e["by"] and e["at"] for e in h)


def test_gated_promotion_refusal_force_rollback_and_history_on_sqlite(ws):
    _gated_story(ws)
    assert (Path(os.environ["GENFORGE_HOME"]) / "mlflow.db").is_file()
    folder = registry.download("digits-vae", "champion")
    assert {"model.json", "model.safetensors", "state.json", "MODEL_CARD.md"} <= {p.name for p in folder.iterdir()}
    from genforge.models import SampleRequest
    from genforge.sampling import load_model
    images = load_model(folder, "cpu").sample(SampleRequest.make(4, 0), 4).images  # from the folder alone
    ref = load_run(ws["good"]).sample(SampleRequest.make(4, 0), 4).images
    assert (images == ref).all()
    assert registry.rollback("digits-vae")["to"] == "1"  # an undo stack: v2 was made champion over v1
    with pytest.raises(RegistryError, match="is the first champion"):
        registry.rollback("digits-vae")


def test_the_same_story_on_a_live_mlflow_server(ws, tmp_path, monkeypatch):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()[-2000:]
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        _gated_story(ws)
        assert not (Path(os.environ["GENFORGE_HOME"]) / "mlflow.db").exists()  # everything went to the server
        assert any((tmp_path / "server-artifacts").rglob("MODEL_CARD.md"))
    finally:
        server.terminate()
        server.wait(timeout=30)


CHILD = """
import sys
from genforge import registry
v = registry.register(sys.argv[1], "busy")
registry.promote("busy", v.version)
print(v.version)
"""


def test_eight_processes_registering_and_promoting_at_once_leave_the_registry_consistent(ws):
    from genforge.tracking import sync
    sync(load_run(ws["good"]).path)  # the training run in MLflow once; each child adds a version of it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, ws["good"]], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(o[1][-3000:] for o in outs if o[1].strip())
    made = sorted(int(o[0].split()[-1]) for o in outs)
    assert made == list(range(1, 9))  # no version lost or duplicated
    [m] = [m for m in registry.models() if m["name"] == "busy"]
    assert sorted(int(v.version) for v in m["versions"]) == made
    assert [a for v in m["versions"] for a in v.aliases] == ["champion"]  # exactly one champion
    h = registry.history("busy")
    assert [e["seq"] for e in h] == list(range(1, 9)) and all(e["action"] == "promote" for e in h)
    assert h[0]["from"] is None and all(h[i]["from"] == h[i - 1]["to"] for i in range(1, 8))  # one chain, in order
    assert registry.champion("busy").version == h[-1]["to"]
    assert not any(m["name"].startswith(registry.LOCK_PREFIX) for m in registry.models())  # every lock released



def _locks(c) -> set[str]:
    return {m.name for m in c.search_registered_models(max_results=1000) if m.name.startswith(registry.LOCK_PREFIX)}


def test_a_dead_holders_lock_is_broken_by_one_waiter_at_a_time(ws):
    from genforge.tracking import client
    c, lock = client(), registry.LOCK_PREFIX + "digits-vae"
    breaker, dead = lock + registry.BREAK_SUFFIX, str(time.time() - registry.LOCK_TTL_S - 1)
    registry.register(ws["good"])
    c.create_registered_model(lock, tags={"owner": "gone@host", "since": dead})
    registry.promote("digits-vae", 1)  # waits, breaks the dead lock, takes its own, releases it
    assert registry.champion("digits-vae").version == "1" and _locks(c) == set()
    c.create_registered_model(lock, tags={"owner": "gone@host", "since": dead})
    c.create_registered_model(breaker, tags={"owner": "other@host", "since": str(time.time())})
    registry._break_stale(c, lock)  # another waiter is breaking it: leave it to that one
    assert _locks(c) == {lock, breaker}
    c.set_registered_model_tag(breaker, "since", dead)  # ...and that one died mid-break
    registry._break_stale(c, lock)
    assert _locks(c) == {lock}
    registry._break_stale(c, lock)
    assert _locks(c) == set()


def test_a_release_that_meets_a_locked_database_is_retried(ws):
    from mlflow.exceptions import MlflowException

    from genforge.tracking import client

    class Busy:  # the client, but the first delete answers what a busy sqlite answers
        def __init__(self, c):
            self.c, self.failed = c, 0

        def __getattr__(self, k):
            return getattr(self.c, k)

        def delete_registered_model(self, name):
            if not self.failed:
                self.failed += 1
                raise MlflowException("(sqlite3.OperationalError) database is locked")
            return self.c.delete_registered_model(name)

    c = Busy(client())
    with registry._lock(c, "digits-vae"):
        assert _locks(c) == {registry.LOCK_PREFIX + "digits-vae"}
    assert c.failed == 1 and _locks(c) == set()


def _version(metrics, evaluation=None, v="2"):
    return Version("m", v, "run", metrics, {}, evaluation if evaluation is not None else {"dataset": "d", "options": {"n": 1}},
                   (), "src")


def test_policy_rules_each_name_their_figures():
    pol = PromotionPolicy(rules=[Rule(metric="evaluator_fd", max=2.0, max_regression=0.05),
                                 Rule(metric="label_agreement", min=0.8), Rule(metric="human_review", min=3.5)])
    champ = _version({"evaluator_fd": 1.0, "label_agreement": 0.9}, v="1")
    failures, figures = check(pol, _version({"evaluator_fd": 2.5, "label_agreement": 0.7}), champ)
    assert failures == ["evaluator_fd 2.5 > max 2", "evaluator_fd 2.5 is 150.0% worse than champion v1's 1 (tolerance 5.0%)",
                        "label_agreement 0.7 < min 0.8",
                        "human_review is not recorded for version 2 (recorded: evaluator_fd, label_agreement)"]
    assert figures["evaluator_fd"] == {"value": 2.5, "champion": 1.0}
    ok = _version({"evaluator_fd": 1.04, "label_agreement": 0.95, "human_review": 4.0})
    assert check(pol, ok, champ)[0] == []  # 4% worse: within 5%
    other = _version({"evaluator_fd": 0.5, "label_agreement": 0.95, "human_review": 4.0},
                     evaluation={"dataset": "d", "options": {"n": 2}})
    [why] = check(pol, other, champ)[0]
    assert "cannot be compared with champion v1" in why and '"n": 2' in why
    assert check(pol, _version({}, evaluation={}), None)[0][0] == "version 2 has no evaluation"


def test_policy_config_errors():
    with pytest.raises(ValueError, match="checks nothing"):
        Rule(metric="evaluator_fd")
    pol = PromotionPolicy(rules=[Rule(metric="mystery", max_regression=0.1)])
    with pytest.raises(ConfigError, match="set higher_is_better"):
        check(pol, _version({"mystery": 1.0}), _version({"mystery": 1.0}, v="1"))
    ok = PromotionPolicy(rules=[Rule(metric="mystery", max_regression=0.1, higher_is_better=True)])
    assert check(ok, _version({"mystery": 0.95}), _version({"mystery": 1.0}, v="1"))[0] == []


def test_clear_errors_for_unknown_models_versions_and_unevaluated_runs(ws, workspace):
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        registry.history("nope")
    registry.register(ws["good"])
    with pytest.raises(RegistryError, match="no version 9 of model 'digits-vae'"):
        registry.promote("digits-vae", 9)
    with pytest.raises(RegistryError, match="no champion to roll back"):
        registry.rollback("digits-vae")
    with pytest.raises(ConfigError, match="name is 1-100 letters"):
        registry.register(ws["good"], "bad name!")
    shutil.rmtree(load_run(ws["bad"]).path / "eval")
    with pytest.raises(RegistryError, match="has no evaluation; evaluate it first"):
        registry.register(ws["bad"])
    registry.promote("digits-vae", 1)
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote("digits-vae", 1)


def test_the_card_and_cli_views(ws):
    invoke("register", ws["good"])
    card = (registry.download("digits-vae", "1") / "MODEL_CARD.md").read_text()
    for part in ("## Intended use", "Quality gate: **none recorded**", "| evaluator_fd |", "real held-out", "CC BY 4.0",
                 f"Run `{ws['good']}`: 200 steps"):
        assert part in card, part
    out = invoke("promote", "digits-vae", "1").output
    assert "champion is version 1 (was none); every rule passed" in out
    assert "digits-vae" in invoke("models").output and "champion" in invoke("models").output
    assert '"action": "promote"' in invoke("history", "digits-vae", "--json").output
    out = invoke("record", "digits-vae", "1", "--metric", "human_review=4.5").output
    assert "human_review = 4.5" in out and registry.get_version("digits-vae", 1).metrics["human_review"] == 4.5


def test_run_chains_every_stage_and_goes_on_where_it_stopped(workspace, tmp_path):
    x, y = digits(300)
    write_images("digits", x, y, [str(i) for i in range(10)], val=60)
    cfg = tmp_path / "run.yaml"
    import yaml
    policy = {"rules": [{"metric": "evaluator_fd", "max": 1000.0}]}  # no regression rule: v2 is promoted too
    cfg.write_text(yaml.safe_dump({**_config(8), "registry": {**TINY["registry"], "promote": True, "policy": policy},
                                   "evaluate": {"n": 60}}))
    from genforge.pipeline import run_pipeline
    first = run_pipeline(cfg, say=lambda m: None)
    assert [s.split(":")[0] for s in first.stages.values()] == ["skipped", "done", "done", "done", "done"]
    assert (first.version, first.champion) == ("1", "1")
    again = run_pipeline(cfg, say=lambda m: None)
    assert all(s.startswith("skipped") for s in again.stages.values()) and again.run == first.run
    # a run that died mid-way is resumed, then evaluated, registered and promoted (policy passes)
    info_path = load_run(first.run).path / "run.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "status": "failed"}))
    third = run_pipeline(cfg, say=lambda m: None)
    assert third.stages["train"] == f"done: resumed {first.run}" and third.run == first.run
    assert third.stages["evaluate"].startswith("skipped")  # same newest checkpoint
    # another training config: a new run, registered as version 2 and promoted only if the policy passes
    out = invoke("run", str(cfg), "--set", "train.steps=12")
    assert "model digits-vae version 2 (champion: version 2)" in out.output


@pytest.mark.parametrize("family", ["copula", "ctgan", "diffusion", "gan", "gpt", "tvae", "vae"])
def test_every_family_registers_and_serves_from_the_registry_alone(family, data):
    """The version's folder (downloaded from MLflow, nothing of the run) samples what the run samples."""
    from genforge.models import FAMILIES, SampleRequest
    from genforge.sampling import load_model
    assert sorted(FAMILIES) == ["copula", "ctgan", "diffusion", "gan", "gpt", "tvae", "vae"]  # a new family joins this test
    run = load_run(train(parse_run_config(tiny_config(family, name=f"reg-{family}"))))
    evaluate_run(run.id, EvalOptions(n={"text": 10, "table": 64}.get(kind(family), 32), seed=0))
    v = registry.register(run.id)
    assert v.name == f"reg-{family}" and v.metrics and v.evaluation["options"]["n"] in (10, 32, 64)
    req = SampleRequest.make(4, seed=3, **{k: val[:4] for k, val in REQUESTS[kind(family)].items()})
    before = run.sample(req)
    folder = registry.download(v.name, v.version)
    shutil.rmtree(run.path)
    model = load_model(folder, "cpu")
    again = model.sample(req)
    assert model.family_name == family and all(same_item(again, i, before, i) for i in range(4))
    assert (folder / "MODEL_CARD.md").read_text().startswith(f"# reg-{family}: a genforge {family} model")
