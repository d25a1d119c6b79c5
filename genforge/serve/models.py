"""What each served name answers with now, and the swap to a new version without a restart.

A `Slot` follows its source: the registry alias (`champion` by default) or a run's newest
checkpoint. `refresh()` (called every `reload_interval_s`) loads a new version beside the old one,
then swaps the reference: requests that already hold the old `Served` finish on it (its engine
drains, then stops), new ones get the new one. No request fails, and each says which version
answered it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from genforge.sampling import Model, load_model
from genforge.serve import metrics
from genforge.serve.batching import ItemBatcher, TextEngine
from genforge.serve.config import ServeConfig, ServedModel
from genforge.tabular.columns import ColumnSpec
from genforge.tabular.family import TableState

log = logging.getLogger("genforge.serve")


@dataclass
class Served:
    name: str
    version: str  # registry version number, or the run's checkpoint name
    source: str  # "registry:digits@champion" or "run:<id>"
    model: Model
    engine: TextEngine | ItemBatcher
    table: TableState | None = None  # a table model's columns and categories: requests are checked against them

    @property
    def kind(self) -> str:
        return self.model.spec.kind

    @property
    def fingerprint(self) -> str:
        """OpenAI's `system_fingerprint`: which backend answered; here the model and its version."""
        return f"{self.name}:{self.version}"

    def card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "genforge", "kind": self.kind,
                "family": self.model.family_name, "version": self.version, "source": self.source}

    def details(self) -> dict[str, Any]:
        """`GET /v1/models/{id}`: the card plus what a client needs to build a request without reading the
        docs: the model card (registered versions carry MODEL_CARD.md), the options a request may set with
        their defaults, and the classes (images) or columns and categories (tables) it accepts."""
        model, spec = self.model, self.model.spec
        card_file = model.checkpoint.path / "MODEL_CARD.md"
        defaults = model.sample_defaults.model_dump(mode="json")
        out = {**self.card(), "model_card": card_file.read_text(encoding="utf-8") if card_file.is_file() else None,
               "options": {k: defaults.get(k) for k in model.family.REQUEST_OPTIONS if k != "where"}}
        if self.kind == "image":
            out.update(classes=list(spec.classes), size=f"{spec.width}x{spec.height}")
        if self.table is not None:
            out["columns"] = [_column(c) for c in self.table.codec.columns]
        return out


MAX_LISTED = 200  # categories listed per table column; a longer list is cut and says so


def _column(c: ColumnSpec) -> dict[str, Any]:
    """A table column as a client sees it: the categories it may condition on, the range of a number."""
    out: dict[str, Any] = {"name": c.name, "type": c.type, "nullable": c.nullable}
    if c.categories:
        values = [v for v in c.categories if v is not None]
        out.update(categories=values[:MAX_LISTED], categories_listed_all=len(values) <= MAX_LISTED)
    if c.type == "numeric" and c.lo is not None:
        out.update(min=c.lo, max=c.hi)
    return out


def _locate(cfg: ServedModel) -> tuple[str, Any]:
    """(version, where to load it from) for the source's current version."""
    if cfg.registry is not None:
        from genforge import registry
        v = registry.resolve(cfg.registry, cfg.alias)
        return v.version, ("registry", cfg.registry, v.version)
    from genforge.runs import load_run
    run = load_run(cfg.run)
    ckpt = run.checkpoint()
    return f"{run.id}/{ckpt.path.name}", ("run", ckpt)


class Slot:
    def __init__(self, cfg: ServedModel, serve: ServeConfig):
        self.cfg, self.serve = cfg, serve
        self.current: Served | None = None
        self._lock = threading.Lock()  # one refresh at a time

    def _load(self, version: str, where: Any) -> Served:
        if where[0] == "registry":
            from genforge import registry
            folder = registry.download(where[1], where[2])
            model, source = load_model(folder), f"registry:{self.cfg.registry}@{self.cfg.alias}"
        else:
            model, source = load_model(where[1]), f"run:{self.cfg.run}"
        b, name = self.serve.batching, self.cfg.name

        def on_step(rows: int, depth: int) -> None:
            metrics.BATCH.labels(name).observe(rows)
            metrics.QUEUE.labels(name).set(depth)
        kind = model.spec.kind
        engine = (TextEngine(model, b.max_batch, b.max_queue, on_step) if kind == "text" else
                  ItemBatcher(model, b.max_rows if kind == "table" else b.max_batch, b.max_wait_ms, b.max_queue,
                              on_step))
        return Served(name, version, source, model, engine, TableState.of(model.fitted) if kind == "table" else None)

    def refresh(self) -> bool:
        """Load the source's current version if it is not the one served; True when it swapped."""
        with self._lock:
            version, where = _locate(self.cfg)
            old = self.current
            if old is not None and old.version == version:
                return False
            new = self._load(version, where)
            self.current = new
            metrics.VERSION.labels(self.cfg.name, version).set(1)
            if old is not None:
                metrics.VERSION.labels(self.cfg.name, old.version).set(0)
                old.engine.close()
                log.info("model swapped", extra={"model": self.cfg.name, "from": old.version, "to": version})
            return True
