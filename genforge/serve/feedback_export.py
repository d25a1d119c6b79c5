"""Rated text generations -> a prompt/completion dataset version: the loop from the service back into training.

Each example is the prompt the model saw (a chat's messages joined by its chat template) and the rater's corrected
output when one was given, else the generated text. The pairs are written as JSON Lines under
`feedback/exports/` in the workspace (named by their content, so the source the manifest cites stays on disk) and
ingested like any other text file: cleaning, de-duplication and the quality gate run on them. The manifest's
`lineage` names the filter, every model version, and per example (line i of the file is `examples[i - 1]`, the
dataset's `row_id` i) its generation id, model, version and rating.

Images and tables are out of scope for now: the log keeps a PNG's sha256 and a table's row count, not the outputs,
so their ratings hold nothing to train on. They stay in feedback.db for reports.
Not handled: an export with the same pairs as an earlier one is that earlier version (versions are content hashes),
lineage included.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from genforge.config import apply_overrides, validate
from genforge.data.ingest import IngestResult, ingest
from genforge.data.options import IngestConfig
from genforge.errors import ConfigError, DataError
from genforge.serve.feedback_store import RATINGS, FeedbackStore, default_path
from genforge.workspace import atomic_write_text, home

PAIRS = {"kind": "text", "text": {"format": "jsonl", "prompt_field": "prompt", "completion_field": "completion"}}


def export_feedback(name: str, min_rating: int = 4, model: str | None = None, db: Path | None = None,
                    overrides: list[str] | None = None, force: bool = False) -> IngestResult:
    """Ingest the text generations rated at least `min_rating` (of served model `model`, or all) as dataset `name`.

    `overrides`: ingest options as `--set` gives them (e.g. `gate.min_examples=20`). Raises GateError as ingest does.
    """
    if min_rating not in RATINGS:
        raise ConfigError(f"--min-rating must be an integer from 1 to 5, got {min_rating!r}")
    path = Path(db) if db is not None else default_path()
    if not path.is_file():
        raise DataError(f"no feedback database at {path}: `genforge serve` writes it as it answers and is rated")
    rated = FeedbackStore(path).rated(min_rating, kind="text", model=model)
    if not rated:
        raise DataError(f"no text generations{f' of model {model!r}' if model else ''} are rated {min_rating} or "
                        f"higher in {path}")
    cfg = validate(IngestConfig, apply_overrides(PAIRS, overrides), source="ingest options")

    pairs = [{"prompt": r.generation.request["prompt"],
              "completion": r.rating.corrected_output or r.generation.output["text"]} for r in rated]
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    source = home() / "feedback" / "exports" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    atomic_write_text(source, text)

    versions = Counter((r.model, r.version) for r in rated)
    lineage = {
        "type": "feedback", "database": str(path),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "filter": {"min_rating": min_rating, "model": model, "kind": "text"},
        "models": [{"model": m, "version": v, "examples": n} for (m, v), n in sorted(versions.items())],
        "generation_ids": [r.generation.id for r in rated],
        "examples": [{"generation_id": r.generation.id, "model": r.model, "version": r.version,
                      "rating": r.rating.rating, "corrected": r.rating.corrected_output is not None} for r in rated],
    }
    return ingest(str(source), name, cfg, force=force, lineage=lineage)
