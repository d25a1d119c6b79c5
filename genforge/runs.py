"""Training runs on disk: finding them, reading them, and sampling from them.

`runs/<run-id>/` holds config.yaml (the validated run config), run.json (what was trained on, the
data spec, the fitted state's checksums, status, timings), fitted/ (the family's fitted state),
metrics.jsonl, checkpoints/ (see genforge.checkpoint), samples/ and eval/. The trainer writes this
layout; the evaluator, the registry and the server read it through `load_run`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genforge.checkpoint import Checkpoint, latest_checkpoint
from genforge.config import read_yaml
from genforge.errors import ModelError
from genforge.models import DataSpec, SampleRequest, Samples
from genforge.runconfig import RunConfig, parse_run_config
from genforge.sampling import Model, load_model
from genforge.workspace import atomic_write_json, runs_dir

RUN_FORMAT = "genforge-run/1"


def new_run_id(name: str) -> str:
    return f"{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M}-{uuid.uuid4().hex[:4]}"


def read_info(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if info.get("format") == RUN_FORMAT else None


def write_info(path: Path, info: dict[str, Any]) -> None:
    atomic_write_json(path / "run.json", info)


def list_runs() -> list[tuple[Path, dict[str, Any]]]:
    """Every run directory with a readable run.json, oldest first."""
    root = runs_dir()
    runs = [(p, info) for p in (root.iterdir() if root.is_dir() else []) if p.is_dir() and (info := read_info(p))]
    return sorted(runs, key=lambda r: (r[1].get("started_at", ""), r[0].name))


def resolve_run(ref: str | Path) -> Path:
    """A run id, a run name (its newest run: what a fine-tuning config's `init_from` names), a unique
    prefix of an id, "latest", or a path to a run directory -> its directory."""
    p = Path(ref)
    if p.is_dir() and read_info(p):
        return p.resolve()
    runs = list_runs()
    if not runs:
        raise ModelError(f"no runs in {runs_dir()}; train one with `genforge train CONFIG`")
    if str(ref) == "latest":
        return runs[-1][0]
    exact = [path for path, _ in runs if path.name == str(ref)]
    named = [path for path, info in runs if info.get("name") == str(ref)][-1:]
    hits = exact or named or [path for path, _ in runs if path.name.startswith(str(ref))]
    if len(hits) != 1:
        names = ", ".join(path.name for path, _ in runs[-10:])
        raise ModelError(f"{'no' if not hits else 'more than one'} run matches {str(ref)!r} (recent runs: {names})")
    return hits[0]


@dataclass
class Run:
    path: Path
    info: dict[str, Any]
    config: RunConfig
    _model: Model | None = field(default=None, repr=False)
    _checkpoint: Checkpoint | None = field(default=None, repr=False)

    id = property(lambda self: self.path.name)
    family = property(lambda self: self.info["family"])
    dataset_ref = property(lambda self: self.info["dataset"])

    @property
    def data_spec(self) -> DataSpec:
        return DataSpec.from_json(self.info["data_spec"])

    def metrics(self) -> list[dict[str, Any]]:
        """Parsed metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
        p = self.path / "metrics.jsonl"
        out = []
        for line in p.read_text(encoding="utf-8").splitlines() if p.is_file() else []:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def checkpoint(self) -> Checkpoint:
        if self._checkpoint is None:
            warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)  # noqa: E731
            self._checkpoint = latest_checkpoint(self.path / "checkpoints", warn)
            if self._checkpoint is None:
                raise ModelError(f"run {self.id} has no complete checkpoint yet")
        return self._checkpoint

    def model(self, device: str = "auto") -> Model:
        """The newest good checkpoint, loaded (EMA weights where kept), once."""
        if self._model is None:
            self._model = load_model(self.checkpoint(), device)
        return self._model

    def sample(self, request: SampleRequest, batch_size: int = 64) -> Samples:
        return self.model().sample(request, batch_size)


def load_run(ref: str | Path) -> Run:
    path = resolve_run(ref)
    config = parse_run_config(read_yaml(path / "config.yaml"), source=str(path / "config.yaml"))
    return Run(path, read_info(path), config)
