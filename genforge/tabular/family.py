"""The parts of the family contract the table families (ctgan, tvae, copula) share: fitting the
column transformer and the privacy guard once per run, encoding a split, and sampling through the
conditions / rules / guard loop.

The fitted state (`Fitted`, format FORMAT) holds the transformer (or, for the copula, the codec and
its marginals), the rules and the seed it was fitted with as json, and the 64-bit hashes of every
real row of the dataset's splits (not the rows) as a tensor: what the guard needs to refuse a
verbatim copy, nothing more.

The run's seed draws the mixture's start and each value's mode, so runs with two seeds are two
independent fits, as they are in SDV: with one fixed seed every run of a table shared one mixture,
and ten benchmark seeds measured one mixture's luck ten times (benchmarks/results/tables.md).
A split is encoded with the seed the state was fitted with: a run's encoded data never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from genforge.errors import DataError, ModelError
from genforge.models import Column, DataSpec, Fitted, SampleRequest, TableSamples
from genforge.tabular.columns import Codec
from genforge.tabular.provenance import check_free
from genforge.tabular.sampling import Guard, Rules, SampleOptions, check_conditions, draw_rows, row_hashes
from genforge.tabular.vgm import TableTransformer, TransformConfig

if TYPE_CHECKING:
    from genforge.data.store import Dataset

FORMAT = "genforge-table/1"


def schema_columns(dataset: "Dataset") -> list[dict[str, Any]]:
    if dataset.kind != "table":
        raise DataError(f"table families train on table datasets; {dataset.ref} holds {dataset.kind} data")
    return list(dataset.manifest.data_schema.get("columns", []))


def guarded_columns(schema: list[dict[str, Any]]) -> tuple[str, ...]:
    """The columns a copy is judged on: every learned one (ids are synthetic, text is not generated)."""
    return tuple(c["name"] for c in schema if c["type"] not in ("id", "text"))


def real_row_hashes(dataset: "Dataset", columns: tuple[str, ...]) -> torch.Tensor:
    """Hashes of every real row, of every split: a held-out row is as real as a train row."""
    splits = [s for s, n in dataset.manifest.split.get("sizes", {"train": 1}).items() if n]
    hashes = np.unique(np.concatenate([row_hashes(dataset.frame(s), columns) for s in splits]))
    return torch.from_numpy(hashes.view(np.int64))


def fit_table(rules: Rules, transform: TransformConfig | None, dataset: "Dataset", seed: int,
              extra: Callable[[Codec, pd.DataFrame, int], tuple[dict[str, Any], dict[str, torch.Tensor]]] | None = None
              ) -> tuple[DataSpec, Fitted]:
    """Fit the transformer (`transform` given: CTGAN, TVAE) or the codec alone (the copula, which adds
    its own `extra` meta and tensors), check the rules against the table, hash the real rows."""
    schema = schema_columns(dataset)
    frame = dataset.frame("train")
    if len(frame) == 0:
        raise DataError(f"dataset {dataset.ref} has no rows in its train split")
    rules.check_against(schema)
    meta: dict[str, Any] = {"rules": rules.model_dump(mode="json"), "rows": len(frame), "seed": seed}
    tensors: dict[str, torch.Tensor] = {}
    if transform is not None:
        t = TableTransformer.fit(frame, schema, transform, seed, rules.fixed_combinations)
        meta["transformer"] = t.to_json()
    else:
        codec = Codec.fit(frame, schema, rules.fixed_combinations)
        meta["codec"] = codec.to_json()
        if extra is not None:
            more, tensors = extra(codec, frame, seed)
            meta.update(more)
    guarded = guarded_columns(schema)
    meta["guard_columns"] = list(guarded)
    meta["output_columns"] = [c["name"] for c in schema if c["type"] != "text"]
    tensors["real_row_hashes"] = real_row_hashes(dataset, guarded)
    spec = DataSpec("table", columns=tuple(Column(c["name"], c["type"]) for c in schema))
    return spec, Fitted(FORMAT, meta, tensors)


@dataclass(frozen=True)
class TableState:
    """The fitted state in the form sampling uses, built once when a model is built."""

    rules: Rules
    guard: Guard
    transformer: TableTransformer | None
    codec: Codec
    output_columns: tuple[str, ...]  # the real table's columns in order, less free text
    rows: int  # in the train split
    seed: int  # the run's, which fitted it; states saved before it was kept were all fitted with 0

    @classmethod
    def of(cls, fitted: Fitted) -> "TableState":
        if fitted is None or fitted.format != FORMAT:
            raise DataError(f"a table model needs fitted state of format {FORMAT}, got {getattr(fitted, 'format', None)}")
        m = fitted.meta
        t = TableTransformer.from_json(m["transformer"]) if "transformer" in m else None
        codec = t.codec if t is not None else Codec.from_json(m["codec"])
        hashes = np.sort(fitted.tensors["real_row_hashes"].numpy().view(np.uint64))
        return cls(Rules.model_validate(m["rules"]), Guard(tuple(m["guard_columns"]), hashes), t, codec,
                   tuple(m["output_columns"]), m["rows"], m.get("seed", 0))

    def check(self, conditions: Sequence[dict[str, Any]], n: int) -> None:
        """ConfigError for a condition on a column not generated or a value the table never had (named,
        with the known ones), before any row is drawn: not 63 misses per row."""
        check_conditions(conditions, self.output_columns, n)
        values = {(col, repr(v)): (col, v) for c in conditions for col, v in c.items() if not isinstance(v, dict)}
        for col, value in values.values():
            self.codec.condition(col, value)


def table_state(spec: DataSpec, fitted: Fitted, family: str) -> TableState:
    """What a table family's `build` starts from: the fitted state, for a table data spec only."""
    if spec.kind != "table":
        raise ModelError(f"the {family} family trains on table datasets, got a {spec.kind} dataset")
    return TableState.of(fitted)


def encode_table(state: TableState, dataset: "Dataset", split: str) -> dict[str, torch.Tensor]:
    """{"x": float32 (N, width) in the transformer's spans, "codes": int64 (N, discrete columns)}."""
    schema_columns(dataset)
    frame = dataset.frame(split)
    t = state.transformer
    return {"x": torch.from_numpy(t.transform(frame, seed=state.seed)), "codes": torch.from_numpy(t.codes(frame))}


def sample_table(state: TableState, request: SampleRequest, options: SampleOptions,
                 propose: Callable[[list[int], list[dict[str, Any]]], pd.DataFrame]) -> TableSamples:
    """One row per item that meets its condition (`sample.where`, then the request's own for the
    item), the rules and the guard; `propose` is the model."""
    conditions = [{**options.where, **c} for c in request.conditions or [{}] * request.n]
    state.check(conditions, request.n)
    if options.provenance != "sidecar":
        check_free(state.output_columns)
    frame, _ = draw_rows(propose, list(request.seeds), conditions, state.rules, state.guard, options.max_rounds)
    return TableSamples(frame)
