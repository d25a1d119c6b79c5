"""Prompts for generation from a file: one per line, or jsonl records with a "prompt" field."""

from __future__ import annotations

import json
from pathlib import Path

from genforge.errors import DataError


def read_prompts(path: Path) -> list[str]:
    """Every non-empty line (`.jsonl`: each record's "prompt"); a bad record is an error naming its line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read prompts from {path}: {e}") from None
    prompts = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if Path(path).suffix != ".jsonl":
            prompts.append(line)
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise DataError(f"{path}:{no} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise DataError(f"{path}:{no} needs a string field 'prompt'")
        prompts.append(record["prompt"])
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts
