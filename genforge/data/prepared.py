"""What every modality hands back to ingest, and how a manifest cites its source.

A leaf module: ingest.py imports images.py, text.py and table.py, and they all import this, so
none of them ever imports ingest.py (no import cycle). Keep its imports to leaf modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genforge.data.gate import GateStats


@dataclass
class Prepared:
    """What a modality hands back after writing its cleaned, split data into the writer."""

    source: dict[str, Any]
    counts: dict[str, Any]
    schema: dict[str, Any]
    split: dict[str, Any]
    cleaning: dict[str, Any]
    gate_stats: GateStats
    classes: list[str] = field(default_factory=list)


def source_info(source: str, **extra: Any) -> dict[str, Any]:
    """How a manifest cites its source: builtin name, or the absolute path given."""
    if source.startswith("builtin:"):
        from genforge.data.sources import get_builtin

        name, b = get_builtin(source)
        return {"uri": source, "type": "builtin", "description": b.description, "licence": b.licence, **extra}
    return {"uri": str(Path(source).resolve()), "type": "path", **extra}
