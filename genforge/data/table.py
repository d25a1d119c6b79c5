"""Table datasets: read csv (delimiter sniffed, encoding as for text), parquet or a built-in
table, find and optionally redact PII, give every column a type, count missing values, drop
duplicate rows, split, and write `<split>.parquet` with types that survive the round trip.

Column types, tried in this order on a column's non-missing values (the first rule that holds
wins; `table.types` overrides any column):
1. boolean: bool dtype, or every value is one of true/false, yes/no, t/f, y/n, 是/否 (any case).
2. numeric: a numeric dtype, or every value is a decimal number without leading zeros ('007' and
   '0123' are codes, not numbers); stored as Int64 when all are integers, else float64.
   Distinct integers in a column named like an id (id, *_id, *Id, uuid, key) are type id instead.
3. datetime: datetime dtype, or every value is a real ISO 8601 date or date-time (2023-10-01,
   2023/10/01 08:30, 2023-10-01T08:30:00+08:00; also 2023年10月1日; not 2023-02-30); with a time
   zone anywhere the column is stored in UTC. Other spellings (01/10/2023) are ambiguous and left
   alone; set the type to datetime to parse them (month first, and only with a 4-digit year).
4. categorical: category dtype, or at most `max_categories` distinct values that repeat (distinct
   values at most half the values); categories are sorted and shared by every split.
5. id: every value distinct, at most 64 characters without whitespace, each with a digit (A0001,
   00123, uuids; not names or e-mail addresses, which are text).
6. text: anything else.
In csv files, empty cells and the tokens NA, N/A, n/a, NaN, nan, NULL, null, None, #N/A are
missing values; missing values are kept (as <NA>/NaN/NaT), counted per column and gated.
A column with some numbers and some words is not numeric: the schema notes how many values are
numbers, and an override to numeric turns the rest into missing values (counted per column).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genforge.data.gate import GateStats
from genforge.data.prepared import Prepared, source_info
from genforge.data.options import IngestConfig
from genforge.data.pii import PiiTally, find_pii, redact
from genforge.data.split import SPLIT_NAMES, assign_splits, split_summary
from genforge.data.store import DatasetWriter
from genforge.data.text import listed, read_csv_rows, read_text_file
from genforge.errors import ConfigError, DataError

MISSING_TOKENS = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "NULL", "null", "None", "#N/A"})
TRUE_TOKENS = frozenset({"true", "yes", "t", "y", "是"})
FALSE_TOKENS = frozenset({"false", "no", "f", "n", "否"})
MAX_CATEGORIES_LISTED = 1000

_INT = r"[+-]?(?:0|[1-9][0-9]*)"
_NUMBER = r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_ISO_DATE = r"[0-9]{4}([-/])[0-9]{1,2}\1[0-9]{1,2}(?:[ T][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
_CN_DATE = r"^([0-9]{4})年([0-9]{1,2})月([0-9]{1,2})日"
_TZ = re.compile(r"(?:Z|[+-][0-9]{2}:?[0-9]{2})$")
_ID_NAME = re.compile(r"(?:^|[\W_])(?:id|uuid|key)$|[a-z](?:Id|ID)$", re.IGNORECASE)


# ---- reading ------------------------------------------------------------------------------


def _read(source: str, cfg: IngestConfig) -> tuple[pd.DataFrame, list[int], dict[str, Any], dict[str, Any]]:
    """(frame, row ids, source details, reading decisions). csv cells stay strings here."""
    if source.startswith("builtin:"):
        from genforge.data.sources import get_builtin

        _, b = get_builtin(source)
        frame = b.load().reset_index(drop=True)
        return frame, list(range(len(frame))), {}, {"row_ids": "0-based row of the built-in table"}
    path = Path(source)
    if path.suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise DataError(f"{path} is not a readable parquet file: {e}") from None
        frame.columns = [str(c) for c in frame.columns]
        return frame.reset_index(drop=True), list(range(len(frame))), {"format": "parquet"}, {"row_ids": "0-based row of the parquet file"}
    text, enc = read_text_file(path, cfg.table.encoding, option="table.encoding")
    rows = read_csv_rows(path, text)
    cells = [[None if f.strip() in MISSING_TOKENS else f for f in fields] for _, fields in rows.rows]
    frame = pd.DataFrame(cells, columns=rows.header, dtype=object)
    details = {"format": "csv", "delimiter": rows.delimiter, **enc}
    reading = {"row_ids": "1-based line number in the file", "skipped": rows.skipped, "blank_lines": rows.blank_lines,
               "renamed_columns": rows.renamed, "missing_tokens": sorted(MISSING_TOKENS)}
    return frame, [line for line, _ in rows.rows], details, reading


# ---- types --------------------------------------------------------------------------------


def _is_numeric_dtype(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _integral(values: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(values):
        return True
    v = values.to_numpy(dtype=float, na_value=np.nan)
    return bool(np.isfinite(v).all() and (v == np.round(v)).all())


def infer_type(name: str, s: pd.Series, max_categories: int) -> tuple[str, str]:
    """(type, the rule that decided it) for one column; see the module docstring."""
    values = s.dropna()
    if pd.api.types.is_bool_dtype(s):
        return "boolean", "bool dtype"
    if pd.api.types.is_datetime64_any_dtype(s):
        return "datetime", "datetime dtype"
    if _is_numeric_dtype(s):
        if len(values) and _integral(values) and values.is_unique and _ID_NAME.search(name):
            return "id", "distinct integers in a column named like an id"
        return "numeric", f"{s.dtype} dtype"
    if isinstance(s.dtype, pd.CategoricalDtype):
        return "categorical", "category dtype"
    v = values.astype(str).str.strip()
    if v.empty:
        return "text", "no values (all missing)"
    if v.str.lower().isin(TRUE_TOKENS | FALSE_TOKENS).all():
        return "boolean", "every value is true/false, yes/no, t/f, y/n or 是/否"
    if v.str.fullmatch(_NUMBER).all():
        if v.str.fullmatch(_INT).all() and v.is_unique and _ID_NAME.search(name):
            return "id", "distinct integers in a column named like an id"
        return "numeric", "every value is a number"
    if v.str.replace(_CN_DATE, r"\1-\2-\3", regex=True).str.fullmatch(_ISO_DATE).all() and _to_datetime(v).notna().all():
        return "datetime", "every value is an ISO 8601 date or date-time"
    distinct = v.nunique()
    if distinct <= max_categories and distinct <= len(v) / 2:
        return "categorical", f"{distinct} distinct values (at most {max_categories}, repeating)"
    if distinct == len(v) and v.str.fullmatch(r"[^\s]{1,64}").all() and v.str.contains(r"[0-9]").all():
        return "id", "every value distinct, short, with a digit, without whitespace"
    return "text", f"{distinct} distinct values of {len(v)}"


def _to_datetime(s: pd.Series) -> pd.Series:
    """ISO 8601 (and 2023年10月1日) strings; other spellings are parsed month-first and only when
    they hold a 4-digit year (pandas fills a missing year or date from today: not reproducible)."""
    strings = s.astype("string").str.strip().str.replace(_CN_DATE, r"\1-\2-\3", regex=True)
    iso = strings.dropna().str.fullmatch(_ISO_DATE).all()
    if not iso:
        strings = strings.where(strings.str.contains(r"[0-9]{4}").fillna(False))
    utc = bool(strings.dropna().str.contains(_TZ).any())
    return pd.to_datetime(strings, format="ISO8601" if iso else "mixed", errors="coerce", utc=utc)


def _all_ints(s: pd.Series) -> bool:
    return bool(s.dropna().astype(str).str.strip().str.fullmatch(_INT).all())


def _to_number(s: pd.Series) -> pd.Series:
    """Int64 for integer dtypes and all-integer strings, else float64; unparsable strings -> missing."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_integer_dtype(s):
        return s.astype("Int64")
    if _is_numeric_dtype(s):
        return s.astype("float64")
    strings = s.astype("string").str.strip()
    num = pd.to_numeric(strings, errors="coerce").astype("Float64")
    if strings[num.notna()].str.fullmatch(_INT).all():
        try:
            return num.astype("Int64")
        except (TypeError, ValueError, OverflowError):  # beyond int64
            pass
    return pd.Series(num.to_numpy(dtype="float64", na_value=np.nan), index=s.index, name=s.name)


def convert(s: pd.Series, kind: str) -> pd.Series:
    """The column as `kind`, in a dtype that holds missing values and survives parquet: Int64 or
    float64, boolean, datetime64, category (sorted string categories), string. Values that cannot
    be converted become missing (the caller counts them)."""
    if kind == "numeric" or (kind == "id" and (_is_numeric_dtype(s) or _all_ints(s))):
        return _to_number(s)
    if kind == "boolean":
        if pd.api.types.is_bool_dtype(s):
            return s.astype("boolean")
        low = s.astype("string").str.strip().str.lower()
        mapped = low.map(lambda x: True if x in TRUE_TOKENS or x == "1" else False if x in FALSE_TOKENS or x == "0" else None, na_action="ignore")
        return mapped.astype("boolean")
    if kind == "datetime":
        return s if pd.api.types.is_datetime64_any_dtype(s) else _to_datetime(s)
    strings = s.astype("string")
    if kind == "categorical":
        return pd.Series(pd.Categorical(strings, categories=sorted(strings.dropna().unique())), name=s.name)
    return strings  # id (non-numeric) and text


def _column_schema(name: str, kind: str, how: str, rule: str, s: pd.Series, note: str | None) -> dict[str, Any]:
    missing = int(s.isna().sum())
    entry: dict[str, Any] = {"name": name, "type": kind, "dtype": str(s.dtype), "source": how, "rule": rule,
                             "missing": missing, "missing_share": round(missing / len(s), 6) if len(s) else 0.0}
    values = s.dropna()
    if kind == "categorical":
        cats = [str(c) for c in s.cat.categories]
        entry["categories"] = cats[:MAX_CATEGORIES_LISTED]
        entry["n_categories"] = len(cats)
    elif kind == "numeric" and len(values):
        lo, hi = values.min(), values.max()
        entry["min"], entry["max"] = (int(lo), int(hi)) if pd.api.types.is_integer_dtype(s) else (float(lo), float(hi))
    elif kind == "datetime" and len(values):
        entry["min"], entry["max"] = values.min().isoformat(), values.max().isoformat()
    elif kind == "boolean":
        entry["true"], entry["false"] = int(values.sum()), int((~values.astype(bool)).sum())
    elif kind in ("id", "text") and len(values):
        entry["distinct"] = int(values.nunique())
    if note:
        entry["note"] = note
    return entry


def _mixed_note(name: str, s: pd.Series, kind: str, row_ids: list[int]) -> str | None:
    """For a string column that is mostly numbers but not all: say so, and how to make it numeric."""
    if kind not in ("categorical", "text", "id") or _is_numeric_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype):
        return None
    v = s.dropna().astype(str).str.strip()
    is_num = v.str.fullmatch(_NUMBER)
    if not len(v) or is_num.all() or is_num.mean() < 0.5:
        return None
    first = row_ids[int(v.index[~is_num.to_numpy()][0])]
    return (f"mixed: {int(is_num.sum())} of {len(v)} values are numbers, the others are not (the first at row {first}); "
            f"--set table.types.{name}=numeric makes those missing values")


# ---- the pipeline -------------------------------------------------------------------------


def _row_keys(frame: pd.DataFrame) -> list[str]:
    """sha256 of each row's values (a missing value hashes apart from any string)."""
    if frame.shape[1] == 0:
        return [hashlib.sha256(b"").hexdigest()] * len(frame)
    parts = [frame[c].astype("string").fillna("\x00") for c in frame.columns]
    joined = parts[0].str.cat(parts[1:], sep="\x1f") if len(parts) > 1 else parts[0]
    return [hashlib.sha256(x.encode("utf-8")).hexdigest() for x in joined]


def _scan_pii(frame: pd.DataFrame, row_ids: list[int], tally: PiiTally, do_redact: bool) -> pd.DataFrame:
    """Scan string, categorical and integer columns (phone and card numbers are often stored as integers)."""
    for col in frame.columns:
        s = frame[col]
        if not (s.dtype == object or pd.api.types.is_string_dtype(s) or pd.api.types.is_integer_dtype(s)
                or isinstance(s.dtype, pd.CategoricalDtype)):
            continue
        strings = s.astype("string")
        candidates = strings.str.contains(r"@|[0-9]{3}", regex=True).fillna(False).to_numpy(dtype=bool)
        redacted = {}
        for i in np.flatnonzero(candidates):
            spans = find_pii(strings.iat[i])
            if spans:
                tally.add(row_ids[i], spans, column=col)
                if do_redact:
                    redacted[i] = redact(strings.iat[i], spans)
        if redacted:
            new = s.astype(object).copy()
            for i, value in redacted.items():
                new.iat[i] = value
            frame[col] = new
    return frame


def prepare_table(source: str, cfg: IngestConfig, writer: DatasetWriter) -> Prepared:
    """Read, type, clean, split and write a table; see the module docstring for the rules."""
    opts = cfg.table
    raw, row_ids, details, reading = _read(source, cfg)
    columns = list(raw.columns)
    unknown = sorted(set(opts.types) - set(columns))
    if unknown:
        raise ConfigError(f"table.types names columns that {source} does not have: {', '.join(unknown)}; columns: {', '.join(columns)}")
    label_col = opts.label_column
    if label_col is not None and label_col not in columns:
        raise ConfigError(f"table.label_column={label_col!r} is not a column of {source}; columns: {', '.join(columns)}")
    skipped = reading.get("skipped", [])
    n_input = len(raw) + len(skipped)

    # 1. PII (on the values as read, so a phone column that becomes '[PHONE]' is typed as such)
    tally = PiiTally()
    if cfg.pii.detect:
        raw = _scan_pii(raw, row_ids, tally, cfg.pii.redact)

    # 2. duplicate rows, on the values as read (first occurrence kept), before typing so that an
    # id column stays distinct
    keys = _row_keys(raw)
    first: dict[str, int] = {}
    dupes, keep = [], np.ones(len(raw), dtype=bool)
    for i, k in enumerate(keys):
        if k in first:
            dupes.append({"item": row_ids[i], "duplicate_of": row_ids[first[k]]})
            keep[i] = not opts.drop_duplicate_rows
        else:
            first[k] = i
    raw = raw[keep].reset_index(drop=True)
    keys = [k for k, ok in zip(keys, keep) if ok]
    row_ids = [r for r, ok in zip(row_ids, keep) if ok]

    # 3. types
    typed, schema_cols, coerced = {}, [], {}
    for col in columns:
        if col in opts.types:
            kind, how, rule = opts.types[col], "override", "table.types"
        else:
            kind, rule = infer_type(col, raw[col], opts.max_categories)
            how = "inferred"
        series = convert(raw[col], kind)
        lost = np.flatnonzero(series.isna().to_numpy() & raw[col].notna().to_numpy())
        if len(lost):
            coerced[col] = {"type": kind, "count": len(lost), "rows": [row_ids[i] for i in lost[:20]]}
        typed[col] = series.reset_index(drop=True)
        schema_cols.append((col, kind, how, rule, _mixed_note(col, raw[col], kind, row_ids) if how == "inferred" else None))
    frame = pd.DataFrame(typed, columns=columns)

    # 4. labels, split, write
    labels, classes, per_class = None, [], None
    if label_col is not None:
        lab = frame[label_col].astype("string")
        classes = sorted(lab.dropna().unique())
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index.get(x, -1) if not pd.isna(x) else -1 for x in lab], dtype=np.int64)
        per_class = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    assignment = assign_splits(keys, labels, cfg.split)
    for split in SPLIT_NAMES:
        writer.write_frame(str(split), frame[assignment == split].reset_index(drop=True))

    schema_entries = [_column_schema(c, k, h, r, frame[c], n) for c, k, h, r, n in schema_cols]
    missing = {e["name"]: e["missing"] for e in schema_entries}
    counts: dict[str, Any] = {"input": n_input, "kept": len(frame), "skipped": len(skipped), "exact_duplicates": len(dupes),
                              "columns": len(columns), "missing_cells": sum(missing.values()),
                              "pii_found": sum(tally.found.values()), **({"per_class": per_class} if per_class else {})}
    cleaning = {
        "settings": {"drop_duplicate_rows": opts.drop_duplicate_rows, "max_categories": opts.max_categories,
                     "overrides": dict(opts.types), "pii_detect": cfg.pii.detect, "pii_redact": cfg.pii.redact},
        **{k: v for k, v in reading.items() if k != "skipped"},
        "skipped": listed(skipped),
        "missing_values": missing,  # per column; kept in the data as <NA>/NaN/NaT
        "coerced_to_missing": coerced,
        "exact_duplicates": listed(dupes, dropped=opts.drop_duplicate_rows, rule="identical values in every column, as read; first occurrence kept"),
        "pii": tally.to_json(redacted=cfg.pii.detect and cfg.pii.redact) if cfg.pii.detect else {"detect": False},
    }
    n = max(len(frame), 1)
    stats = GateStats(n_examples=len(frame), per_class=per_class, duplicate_share=len(dupes) / max(n_input, 1),
                      unreadable_share=len(skipped) / max(n_input, 1), missing_share={c: m / n for c, m in missing.items()})
    schema = {"columns": schema_entries, "label_column": label_col, "rows": len(frame)}
    return Prepared(source=source_info(source, **details), counts=counts, schema=schema,
                    split=split_summary(assignment, labels, classes, cfg.split), cleaning=cleaning, gate_stats=stats, classes=classes)
