"""Where a generated table says it is AI-generated (issue 13): in a sidecar file beside it (the default,
the table keeps its own schema), in columns on every row (the label travels with rows copied out of the
file), or both: `sample.provenance`, set in a run config, by `--set`, or per request by the service."""

from __future__ import annotations

from typing import Any, Iterable, Literal

import pandas as pd

from genforge.errors import ConfigError

Provenance = Literal["sidecar", "columns", "both"]
PREFIX = "genforge_"  # a table with such columns of its own is refused, never overwritten


def provenance_columns(model: str, version: str, generation_id: str) -> dict[str, Any]:
    return {f"{PREFIX}ai_generated": True, f"{PREFIX}model": model, f"{PREFIX}model_version": version,
            f"{PREFIX}generation_id": generation_id}


COLUMNS = tuple(provenance_columns("", "", ""))
TYPES = {c: "boolean" if isinstance(v, bool) else "categorical" for c, v in provenance_columns("", "", "").items()}


def check_free(columns: Iterable[str]) -> None:
    """ConfigError when the table already has a provenance column's name: checked before rows are drawn."""
    taken = sorted(set(COLUMNS) & set(columns))
    if taken:
        raise ConfigError(f"provenance columns {list(COLUMNS)} would collide with the table's own {taken}: "
                          "use provenance 'sidecar' for this table")


def with_columns(frame: pd.DataFrame, model: str, version: str, generation_id: str) -> pd.DataFrame:
    """The rows with the provenance columns appended, the same value on every row."""
    check_free(frame.columns)
    return frame.assign(**provenance_columns(model, version, generation_id))
