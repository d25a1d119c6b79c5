"""MLflow tracking: a run's parameters, metrics per step and artifacts, its evaluation; a server that is
down never stops training, and `genforge sync` sends the run later; a resumed run sends no step twice."""

import socket

import pytest

from clirun import invoke
from genforge import tracking
from genforge.evaluation.pipeline import EvalOptions, evaluate_run
from genforge.runconfig import parse_run_config
from genforge.runs import load_run
from genforge.trainer import train
from imagesets import digits, write_images

TINY = {
    "name": "tracked-vae",
    "data": {"dataset": "digits"},
    "model": {"family": "vae", "channels": [8, 16], "blocks": 0, "groups": 4, "latent": 8, "class_dim": 8},
    "train": {"steps": 12, "batch_size": 16, "warmup_steps": 2, "log_every": 3, "val_every": 6, "val_items": 32,
              "checkpoint_every": 6, "threads": 1},
}


@pytest.fixture
def data():
    x, y = digits(200)
    return write_images("digits", x, y, [str(i) for i in range(10)], val=60)


@pytest.fixture
def tracked(monkeypatch):
    monkeypatch.setenv("GENFORGE_TRACKING", "on")


def _mlflow_run(run_id: str):
    c = tracking.client()
    [r] = c.search_runs([c.get_experiment_by_name("tracked-vae").experiment_id],
                        filter_string=f"tags.`genforge.run` = '{run_id}'")
    return c, r


def test_training_and_evaluation_are_tracked_in_the_workspace_sqlite(data, tracked, workspace):
    run = load_run(train(parse_run_config(TINY)))
    c, r = _mlflow_run(run.id)
    assert r.info.status == "FINISHED" and r.data.params["model.family"] == '"vae"'
    assert r.data.params["train.steps"] == "12" and r.data.tags["genforge.dataset"] == run.dataset_ref
    assert [m.step for m in c.get_metric_history(r.info.run_id, "train/nelbo")] == [3, 6, 9, 12]
    assert [m.step for m in c.get_metric_history(r.info.run_id, "val/nelbo")] == [0, 6, 12]
    logged = [m["nelbo"] for m in run.metrics() if m["split"] == "train"]
    assert [m.value for m in c.get_metric_history(r.info.run_id, "train/nelbo")] == pytest.approx(logged)
    evaluate_run(run.id, EvalOptions(n=40, seed=0))
    c, r = _mlflow_run(run.id)
    assert r.data.metrics["eval/evaluator_fd"] > 0 and "eval_reference/evaluator_fd" in r.data.metrics
    files = {f.path for f in c.list_artifacts(r.info.run_id)} | {f.path for f in c.list_artifacts(r.info.run_id, "eval")}
    assert {"config.yaml", "run.json", "eval/report.html", "eval/metrics.json", "eval/grid.png"} <= files
    assert (workspace / "mlflow.db").is_file() and any((workspace / "mlartifacts").rglob("report.html"))


def test_a_server_that_is_down_does_not_stop_training_and_sync_sends_the_run_later(data, tracked, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    run = load_run(train(parse_run_config(TINY)))
    assert run.info["status"] == "completed" and run.info["step"] == 12
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert err.count("did not answer") == 1 and f"genforge sync {run.id}" in err
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # back to the workspace's sqlite: the "server is back"
    invoke("sync", run.id)
    c, r = _mlflow_run(run.id)
    assert [m.step for m in c.get_metric_history(r.info.run_id, "train/nelbo")] == [3, 6, 9, 12]
    invoke("sync", run.id)  # nothing new: nothing sent twice
    assert len(c.get_metric_history(r.info.run_id, "train/nelbo")) == 4


def test_a_resumed_run_sends_each_step_once(data, tracked):
    run = load_run(train(parse_run_config({**TINY, "train": {**TINY["train"], "steps": 6}})))
    train(parse_run_config(TINY), resume=True, run=run.id)
    c, r = _mlflow_run(run.id)
    assert [m.step for m in c.get_metric_history(r.info.run_id, "train/nelbo")] == [3, 6, 9, 12]


def test_tracking_off_leaves_no_database(data, workspace):
    train(parse_run_config(TINY))
    assert not (workspace / "mlflow.db").exists()
