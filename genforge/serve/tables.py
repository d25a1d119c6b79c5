"""POST /v1/tables/generations for the table families (copula, ctgan, tvae): `n` rows, `conditions`
(one mapping for every row, or one per row; column -> value, or -> {"min", "max"}), `seed`, and the
family's options (`where`, `max_rounds`) as extra fields. Rows come back as JSON objects (`data`)
or as one csv text (`csv`), with the columns and their types, as OpenAI has no such endpoint to
follow. Each row has its own seed, so a request's rows are the same alone or merged with others
(up to `rules.unique`: see `batching`)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import pandas as pd
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from genforge.errors import ConfigError, ModelError
from genforge.models import SampleRequest, item_seeds
from genforge.serve.context import bound, family_extras, generate_items, options, provenance, seed_of, served, state
from genforge.serve.errors import APIError
from genforge.serve.feedback import new_id, record, table_generation
from genforge.serve.moderation import check_values
from genforge.serve.protocol import Condition, TableRequest
from genforge.tabular.family import TableState
from genforge.tabular.provenance import TYPES, check_free, with_columns

router = APIRouter()


def _per_row(req: TableRequest) -> tuple[Condition, ...]:
    if req.conditions is None or isinstance(req.conditions, dict):
        return (req.conditions or {},) * req.n
    if len(req.conditions) != req.n:
        raise APIError(400, f"conditions holds {len(req.conditions)} mappings for n = {req.n} rows: give one mapping "
                            "for every row, or a list of one per row", param="conditions", code="invalid_value")
    return tuple(req.conditions)


def _check(table: TableState, conditions: Sequence[Condition], param: str) -> None:
    """Unknown columns and categories are refused here, naming the known ones: a merged call would
    otherwise fail first and run every request in it again alone."""
    try:
        table.check(conditions, len(conditions))
    except ConfigError as e:
        raise APIError(400, f"{param}: {e}", param=param, code="invalid_condition") from None


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON values: missing ones (NaN, NaT, NA) as null, datetimes in ISO 8601, numpy scalars as Python's."""
    out = frame.astype(object)
    for col in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[col]):
            out[col] = frame[col].map(lambda t: t.isoformat(), na_action="ignore").astype(object)
    return out.where(frame.notna(), None).to_dict("records")


@router.post("/v1/tables/generations")
async def generate_tables(req: TableRequest, request: Request) -> Any:
    started = time.perf_counter()
    current = served(request, req.model, "table")
    bound(req.n, state(request).config.limits.max_rows, "n", "max_rows")
    conditions = _per_row(req)
    check_values(request, conditions, "conditions")
    chosen = family_extras(request, current, req.extras())
    chosen_options = options(current, chosen)
    _check(current.table, conditions, "conditions")
    _check(current.table, [chosen_options.where], "where")
    labelled = chosen_options.provenance != "sidecar"  # the response's `provenance` object is always there
    if labelled:
        try:
            check_free(current.table.output_columns)
        except ConfigError as e:
            raise APIError(400, str(e), param="provenance", code="invalid_value") from None
    try:
        sample = SampleRequest(item_seeds(seed_of(req.seed), req.n), conditions=conditions, options=chosen)
        samples, current = await generate_items(request, current, sample, "rows")
    except ModelError as e:  # no row met a condition in max_rounds: the request asked for what the model cannot make
        param = "conditions" if req.conditions else "where" if chosen.get("where") else None
        raise APIError(400, str(e), param=param, code="condition_unmet") from None
    gid = new_id("tbl")
    frame, types = samples.frame, {c.name: c.type for c in current.model.spec.columns}
    if labelled:
        frame = with_columns(frame, current.name, current.version, gid)
        types |= TYPES
    await record(request, current, [table_generation(gid, req, len(frame))])
    body = {"object": "table", "generation_id": gid, "created": int(time.time()), "model": current.name,
            "system_fingerprint": current.fingerprint, "provenance": provenance(current, generation_ids=[gid]),
            "columns": [{"name": c, "type": types[c]} for c in frame.columns],
            **({"csv": frame.to_csv(index=False)} if req.response_format == "csv" else {"data": _records(frame)}),
            "usage": {"rows": len(frame), "seconds": round(time.perf_counter() - started, 3)}}
    return JSONResponse(body, headers={"x-genforge-model-version": current.fingerprint})
