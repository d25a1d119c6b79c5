"""MLflow tracking of training runs and evaluations: what a team's MLflow shows, never what training waits on.

The run directory stays the source of truth (config.yaml, run.json, metrics.jsonl, eval/). MLflow
gets a copy through one function, `sync_run`: it creates the MLflow run the first time, then sends
what MLflow has not got yet. During training a background thread calls it every few seconds; the
end of training and every evaluation call it once more and add the artifacts. If MLflow cannot be
reached, training goes on, says so once, and `genforge sync RUN` sends everything later through the
same function, so nothing is special about a late sync.

Where: `MLFLOW_TRACKING_URI` (the CLI's `--tracking-uri` sets it), else an sqlite database in the
workspace (`mlflow.db`, artifacts under `mlartifacts/`). `GENFORGE_TRACKING=off` turns it off.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from genforge.workspace import atomic_write_json, home

STATE = "tracking.json"  # in the run directory: which MLflow run holds this run, and how far it is sent
SYNC_EVERY_S = 10.0
FINAL_WAIT_S = 120.0  # at the end of training, for a sync under way (HTTP calls time out after 10 s each)
SPLIT_ORDER = {"train": 0, "val": 1}  # within one step the trainer logs train before val
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value is 6,000 characters


def enabled() -> bool:
    return os.environ.get("GENFORGE_TRACKING", "on").strip().lower() not in ("0", "off", "false", "no")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def client() -> Any:
    """An MlflowClient for the tracking and registry URI. mlflow is imported here, not at module
    load: it takes seconds, which commands that never touch MLflow should not pay. Its HTTP retries
    (7 with exponential back-off by default) are cut so that a server that is down costs seconds, not
    minutes; a user's own settings of these variables win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c: Any, name: str) -> str:
    """The experiment named after the run config's name, made on first use (by another process at the
    same moment too). On the sqlite default its artifacts go to the workspace, not to ./mlruns."""
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (home() / "mlartifacts" / name).as_uri() if tracking_uri().startswith("sqlite:") else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def is_figure(v: Any) -> bool:
    """A number worth logging or comparing: ints and floats, not bools (True is an int in Python)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: dotted keys, JSON values, cut to MLflow's length limit."""
    if isinstance(d, dict) and d:
        return {k: v for key, val in d.items() for k, v in flatten(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(d, ensure_ascii=False)[:MAX_PARAM_CHARS]}


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((run_dir / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if state.get("uri") == tracking_uri() else {}  # another MLflow: send everything there


def _records(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:  # a torn last line: sent next time, once whole
            break
    return out


def _position(record: dict[str, Any]) -> list[int]:
    return [int(record.get("step", 0)), SPLIT_ORDER.get(record.get("split", "train"), 2)]


def _metrics(records: list[dict[str, Any]]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(f"{r.get('split', 'train')}/{k}", float(v), now, int(r["step"]))
            for r in records for k, v in r.items()
            if k not in ("step", "split") and is_figure(v)]


def _log_batches(c: Any, run_id: str, metrics: list[Any] = (), params: list[Any] = ()) -> None:
    """MLflow takes at most 1,000 metrics and 100 parameters per call."""
    metrics, params = list(metrics), list(params)
    for i in range(0, len(metrics), 1000):
        c.log_batch(run_id, metrics=metrics[i:i + 1000])
    for i in range(0, len(params), 100):
        c.log_batch(run_id, params=params[i:i + 100])


def sync_run(run_dir: Path, *, final: bool = False, c: Any = None) -> str:
    """Send what MLflow lacks of this run: the run itself (config as parameters, dataset and family as
    tags) the first time, then the metrics logged since. `final`: also config.yaml and run.json as
    artifacts, and the run's status. Returns the MLflow run id. Idempotent: a watermark (the last
    (step, split) sent) in tracking.json; after a resume the trainer re-runs steps bitwise, so the
    values MLflow already holds for them are the same and are not sent twice."""
    run_dir = Path(run_dir)
    with _run_lock(run_dir):  # the background thread, the end of training, `sync`, `register`: one at a time
        return _sync_run(run_dir, final, c)


@contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    import fcntl

    with open(run_dir / ".tracking.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sync_run(run_dir: Path, final: bool, c: Any) -> str:
    from mlflow.entities import Param

    from genforge.config import read_yaml
    from genforge.runs import read_info

    info = read_info(run_dir)
    if info is None:
        raise FileNotFoundError(f"{run_dir} has no run.json")
    c = c or client()
    state = _read_state(run_dir)
    if not state.get("run_id"):
        exp = experiment_id(c, info["name"])
        tags = {"genforge.run": run_dir.name, "genforge.family": info["family"], "genforge.dataset": info["dataset"],
                "mlflow.runName": run_dir.name}
        run_id = c.create_run(exp, run_name=run_dir.name, tags=tags).info.run_id
        config = read_yaml(run_dir / "config.yaml")
        _log_batches(c, run_id, params=[Param(k, v) for k, v in flatten(config).items()])
        state = {"uri": tracking_uri(), "run_id": run_id, "sent": [-1, -1]}
        atomic_write_json(run_dir / STATE, state)
    run_id = state["run_id"]
    new = [r for r in _records(run_dir) if _position(r) > state["sent"]]
    if new:
        _log_batches(c, run_id, metrics=_metrics(new))
        state["sent"] = _position(new[-1])
        atomic_write_json(run_dir / STATE, state)
    if final:
        for name in ("config.yaml", "run.json"):
            c.log_artifact(run_id, str(run_dir / name))
        status = {"completed": "FINISHED", "failed": "FAILED", "running": "KILLED"}.get(info.get("status"), "FINISHED")
        c.set_terminated(run_id, status)
    return run_id


def sync_evaluation(run_dir: Path, c: Any = None) -> str:
    """The run's newest evaluation into its MLflow run: every figure of the samples row as `eval/<key>`,
    of the real reference row as `eval_reference/<key>`, the options as tags, and metrics.json, the
    report and the samples (a grid for images) as artifacts under eval/."""
    from mlflow.entities import Metric

    run_dir = Path(run_dir)
    eval_dir = run_dir / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    c = c or client()
    run_id = sync_run(run_dir, c=c)
    now, step = int(time.time() * 1000), int(metrics.get("training", {}).get("steps") or 0)
    out = []
    for row in metrics["rows"]:
        prefix = {"samples": "eval", "reference": "eval_reference"}.get(row.get("kind"))
        out += [Metric(f"{prefix}/{k}", float(v), now, step) for k, v in row.items()
                if prefix and is_figure(v)]
    _log_batches(c, run_id, metrics=out)
    for k, v in {"genforge.eval.options": json.dumps(metrics["options"]), "genforge.eval.dataset": metrics["dataset"],
                 "genforge.eval.checkpoint": metrics["checkpoint"]}.items():
        c.set_tag(run_id, k, v)
    grid = _image_grid(eval_dir)
    for path in [eval_dir / "metrics.json", eval_dir / "report.html", grid, eval_dir / "samples.jsonl"]:
        if path is not None and path.is_file():
            c.log_artifact(run_id, str(path), "eval")
    return run_id


def _image_grid(eval_dir: Path) -> Path | None:
    """eval/grid.png from the scored images (the first 100), written once per evaluation."""
    src = eval_dir / "samples.safetensors"
    if not src.is_file():
        return None
    from PIL import Image
    from safetensors.numpy import load_file

    from genforge.outputs import image_grid, to_pil
    from genforge.workspace import atomic_write_with

    data = load_file(str(src))
    labels = data["labels"][:100]
    grid = image_grid(data["images"][:100], None if (labels < 0).any() else labels.tolist())
    out = eval_dir / "grid.png"
    atomic_write_with(out, lambda p: to_pil(grid).save(p, format="PNG"))
    Image.open(out).verify()
    return out


class _Syncer(threading.Thread):
    """Sends new metrics every SYNC_EVERY_S seconds; after the first failure it warns once and stops."""

    def __init__(self, run_dir: Path, warn: Callable[[str], None]):
        super().__init__(name="genforge-tracking", daemon=True)
        self.run_dir, self.warn, self.failed = run_dir, warn, False
        self.stop = threading.Event()

    def attempt(self, final: bool = False) -> None:
        if self.failed:
            return
        try:
            sync_run(self.run_dir, final=final)
        except Exception as e:  # noqa: BLE001  tracking must never break training
            self.failed = True
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            self.warn(f"tracking: MLflow at {tracking_uri()} did not answer ({first}); training goes on, and "
                      f"`genforge sync {self.run_dir.name}` sends this run when it is back")

    def run(self) -> None:
        while not self.failed:
            self.attempt()  # at once: the run appears in MLflow while it trains (and a first database is made)
            if self.stop.wait(SYNC_EVERY_S):
                return


@contextmanager
def tracked(run_dir: Path, active: bool, warn: Callable[[str], None]) -> Iterator[None]:
    """Around a training session (rank 0 only): metrics sent as they come, the rest at the end, whether
    the session ends well or not. Off (`GENFORGE_TRACKING=off`) or not rank 0: nothing."""
    if not (active and enabled()):
        yield
        return
    syncer = _Syncer(Path(run_dir), warn)
    syncer.start()
    try:
        yield
    finally:
        syncer.stop.set()
        syncer.join(timeout=FINAL_WAIT_S)
        if not syncer.is_alive():  # still stuck on a server after that: `genforge sync` finishes the job
            syncer.attempt(final=True)


def track_evaluation(run_dir: Path, warn: Callable[[str], None]) -> None:
    """After `evaluate`: the same contract as training (never fails the evaluation, says so once)."""
    if not enabled():
        return
    try:
        sync_evaluation(Path(run_dir))
    except Exception as e:  # noqa: BLE001
        warn(f"tracking: the evaluation was not sent to MLflow at {tracking_uri()} ({str(e).strip()[:200]}); "
             f"`genforge sync {Path(run_dir).name}` sends it later")


def sync(run_dir: Path) -> str:
    """`genforge sync RUN`: everything of a run (and its evaluation) that MLflow lacks; errors are raised."""
    run_id = sync_run(Path(run_dir), final=True)
    if (Path(run_dir) / "eval" / "metrics.json").is_file():
        sync_evaluation(Path(run_dir))
    return run_id
