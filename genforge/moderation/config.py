"""`ModerationConfig`: the `moderation:` section of `genforge serve`'s config (and the defaults
`genforge generate` uses). Checked when the config is read, so a missing list fails at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from genforge.config import StrictModel

LISTS_DIR = Path(__file__).parent / "lists"
BUNDLED = ("slurs", "sexual", "violence", "drugs", "weapons", "self_harm")  # lists/<name>.txt
BUNDLED_ALLOW = LISTS_DIR / "allow.txt"  # known-safe words and compounds, always applied


class ModerationConfig(StrictModel):
    enabled: bool = True
    lists: list[str] = list(BUNDLED)  # the bundled block lists to use, by name
    block_files: list[Path] = []  # more block lists: plain text, one term per line; named by file stem
    allow_files: list[Path] = []  # more known-safe words and compounds, same format
    pii: Literal["off", "block", "redact"] = "redact"  # personal data (genforge.data.pii) in the checked text
    check_prompts: bool = True
    check_outputs: bool = True

    @field_validator("lists")
    @classmethod
    def _known(cls, lists: list[str]) -> list[str]:
        unknown = [n for n in lists if n not in BUNDLED]
        if unknown:
            raise ValueError(f"unknown bundled lists {unknown}; bundled: {', '.join(BUNDLED)}")
        return lists

    @field_validator("block_files", "allow_files")
    @classmethod
    def _exist(cls, files: list[Path]) -> list[Path]:
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"list files not found: {', '.join(missing)}")
        return files

    @model_validator(mode="after")
    def _unique_names(self) -> "ModerationConfig":
        names = list(self.lists) + [f.stem for f in self.block_files]
        if len(set(names)) < len(names):
            raise ValueError(f"block list names (bundled names and file stems) must be unique, got {names}")
        return self
