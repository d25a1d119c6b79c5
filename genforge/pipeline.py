"""`genforge run CONFIG`: ingest, train, evaluate, register and (if the config asks) promote, in one command.

Run again, it goes on from the first unfinished stage, judged from what each stage leaves anyway:
- ingest: skipped when `data.dataset` exists; otherwise `data.source` is ingested under its name;
- train: `pipelines/<config name>.json` names the run this config's pipeline is on. The same training
  config (data, model, train, sample sections) and a completed run: skipped; not completed (a crash,
  a kill): resumed from its newest good checkpoint; another training config: a new run;
- evaluate: skipped when eval/metrics.json is of the run's newest checkpoint with the config's n and seed;
- register: skipped when a version of this run's checkpoint is already registered;
- promote (`registry.promote: true`): skipped when that version is the champion.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from genforge.errors import ConfigError, DataError, RegistryError
from genforge.runconfig import RunConfig, load_run_config
from genforge.workspace import atomic_write_json, home

TRAINING_SECTIONS = ("data", "model", "train", "sample")


@dataclass
class PipelineResult:
    run: str
    registered: str  # model name
    version: str
    champion: str | None
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "done" | "skipped: why"
    evaluation: dict[str, Any] = field(default_factory=dict)


def _state_path(config: RunConfig) -> Path:
    return home() / "pipelines" / f"{config.name}.json"


def training_hash(config: RunConfig) -> str:
    """What decides the trained weights; evaluate/registry settings may change without retraining."""
    dumped = config.model_dump(mode="json")
    return hashlib.sha256(json.dumps({k: dumped[k] for k in TRAINING_SECTIONS}, sort_keys=True).encode()).hexdigest()[:16]


def _ingest(config: RunConfig, say: Callable[[str], None]) -> str:
    from genforge.api import ingest
    from genforge.data.store import open_dataset

    try:
        return f"skipped: {open_dataset(config.data.dataset).ref} exists"
    except DataError:
        if not config.data.source:
            raise ConfigError(f"dataset {config.data.dataset!r} does not exist and the config has no data.source "
                              "to ingest it from") from None
        if "@" in config.data.dataset:
            raise ConfigError(f"data.dataset pins a version ({config.data.dataset}) that does not exist; "
                              "name the dataset without @version to ingest it from data.source") from None
    say(f"ingest {config.data.source} -> {config.data.dataset}")
    result = ingest(config.data.source, config.data.dataset)
    return f"done: {result.manifest.name}@{result.manifest.version}"


def _train(config: RunConfig, say: Callable[[str], None], console: Any) -> tuple[str, str]:
    from genforge.api import train
    from genforge.runs import read_info
    from genforge.workspace import runs_dir

    state_path = _state_path(config)
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    digest = training_hash(config)
    info = read_info(runs_dir() / state["run"]) if state.get("run") and state.get("training") == digest else None
    if info and info.get("status") == "completed":
        return info["id"], f"skipped: run {info['id']} completed"
    if info:
        say(f"train: resuming run {info['id']} ({info.get('status')} at step {info.get('step')})")
        return train(config, run=info["id"], console=console).id, f"done: resumed {info['id']}"
    say(f"train {config.name} ({config.model.family})")
    run = train(config, console=console)
    atomic_write_json(state_path, {"config": config.name, "training": digest, "run": run.id})
    return run.id, f"done: {run.id}"


def _evaluate(config: RunConfig, run_id: str, say: Callable[[str], None]) -> tuple[dict[str, Any], str]:
    from genforge.api import evaluate
    from genforge.runs import load_run

    run = load_run(run_id)
    path = run.path / "eval" / "metrics.json"
    if path.is_file():
        m = json.loads(path.read_text(encoding="utf-8"))
        o = m.get("options", {})
        if (m.get("checkpoint") == run.checkpoint().path.name and o.get("seed") == config.evaluate.seed
                and config.evaluate.n in (None, o.get("n")) and not o.get("sample")):
            return {**m, "report": str(path.parent / "report.html")}, f"skipped: {run_id} evaluated at {m['checkpoint']}"
    say(f"evaluate {run_id}")
    m = evaluate(run_id, n=config.evaluate.n, seed=config.evaluate.seed)
    return m, f"done: n = {m['options']['n']}"


def _register(config: RunConfig, run_id: str, say: Callable[[str], None]) -> tuple[str, str, str]:
    from genforge import registry
    from genforge.runs import load_run

    name = config.registry.name or config.name
    checkpoint = load_run(run_id).checkpoint().path.name
    try:
        versions = registry.model_versions(name)
    except RegistryError:  # not registered yet
        versions = []
    same = [v for v in versions if v.run == run_id and v.evaluation and v.source.endswith(checkpoint)]
    if same:
        return name, same[-1].version, f"skipped: version {same[-1].version} holds {run_id} {checkpoint}"
    say(f"register {run_id} as {name}")
    v = registry.register(run_id, name)
    return name, v.version, f"done: version {v.version}"


def _promote(config: RunConfig, name: str, version: str, say: Callable[[str], None]) -> str:
    from genforge import registry

    current = registry.champion(name)
    if current is not None and current.version == version:
        return f"skipped: version {version} is the champion"
    say(f"promote {name} version {version}")
    registry.promote(name, version)
    return f"done: version {version} is the champion"


def run_pipeline(config_path: str | Path, overrides: list[str] | None = None, *, console: Any = None,
                 say: Callable[[str], None] = print) -> PipelineResult:
    """Every stage in order; a promotion the policy refuses raises PromotionRefused after the version is
    registered (registration is kept: a person may promote it with --force)."""
    from genforge import registry

    config = load_run_config(config_path, overrides)
    stages = {"ingest": _ingest(config, say)}
    run_id, stages["train"] = _train(config, say, console)
    evaluation, stages["evaluate"] = _evaluate(config, run_id, say)
    name, version, stages["register"] = _register(config, run_id, say)
    if config.registry.promote:
        stages["promote"] = _promote(config, name, version, say)
    else:
        stages["promote"] = "skipped: registry.promote is false"
    champ = registry.champion(name)
    return PipelineResult(run_id, name, version, champ.version if champ else None, stages, evaluation)
