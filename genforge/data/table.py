"""Table datasets: read csv (delimiter sniffed, encoding as for text), parquet or a built-in
table, find PII and keep models from learning it, give every column a type, count missing values,
drop duplicate rows, split, and write `<split>.parquet` with types that survive the round trip.

A table with more than `table.max_columns` columns is refused before any per-column work (a csv
after reading only its header), since time and memory grow with every column.

PII columns: a column where at least `table.pii_column_share` of the non-missing values are each
one whole PII value (a mobile number, an e-mail, an ID or card number; see pii.py) is never
learned from: it is excluded from the dataset (`table.pii_columns=exclude`, the default), or each
PII value in it is replaced by a random one of the same format (`fake`: seeded by `split.seed`
and the column name, one real value always gets the same fake, no fake equals a real value of
the column; the column is typed id). Values of such a column in which no PII was found are kept
as they are (counted in the schema). `table.keep_pii_columns` names columns to treat like any
other (false positives). PII inside other values (a note with a phone number) is counted and, with
`pii.redact`, replaced by placeholders.

Column types, tried in this order on a column's non-missing values (the first rule that holds
wins; `table.types` overrides any column):
1. boolean: bool dtype, or every value is one of true/false, yes/no, t/f, y/n, 是/否 (any case).
2. numeric: a numeric dtype, or every value is a decimal number without leading zeros ('007' and
   '0123' are codes, not numbers); stored as Int64 when all are integers, else float64.
   Distinct integers in a column named like an id (id, *_id, *Id, uuid, key, *号) are type id instead.
   Business exports: numbers written with thousands separators ('442,820', '1,234.50': the commas
   are removed), or where every value ends with '%' ('12%' is stored as 0.12, always float64; a
   column with some values in % and some not is not numeric: the scales differ). The schema's
   `format` says what was removed and how many decimals were written, to format values back.
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
Per-column work runs on plain Python lists: a pandas string call costs about a millisecond per
column whatever its length, which made wide files slow.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genforge.data.gate import GateStats
from genforge.data.prepared import Prepared, source_info
from genforge.data.options import IngestConfig, TableOptions
from genforge.data.pii import PiiSpan, PiiTally, fake_pii, find_pii, redact
from genforge.data.split import SPLIT_NAMES, assign_splits, split_summary
from genforge.data.store import DatasetWriter
from genforge.data.text import listed, read_csv_rows, read_text_file, sniff_delimiter
from genforge.errors import ConfigError, DataError

MISSING_TOKENS = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "NULL", "null", "None", "#N/A"})
TRUE_TOKENS = frozenset({"true", "yes", "t", "y", "是"})
FALSE_TOKENS = frozenset({"false", "no", "f", "n", "否"})
MAX_CATEGORIES_LISTED = 1000
HEADER_SCAN_CHARS = 1 << 20  # the column limit is checked on the first record within this much text

_INT = r"[+-]?(?:0|[1-9][0-9]*)"
_NUMBER = r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_GROUPED = r"[+-]?[1-9][0-9]{0,2}(?:,[0-9]{3})+(?:\.[0-9]*)?"  # 1,234.50 and 442,820
_ISO_DATE = r"[0-9]{4}([-/])[0-9]{1,2}\1[0-9]{1,2}(?:[ T][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
_CN_DATE = r"^([0-9]{4})年([0-9]{1,2})月([0-9]{1,2})日"
_INT_RE, _NUMBER_RE, _GROUPED_RE = re.compile(_INT), re.compile(_NUMBER), re.compile(_GROUPED)
_PLAIN_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # what an override to numeric parses
_FORMATTED_RE = re.compile(rf"(?:{_GROUPED}|{_NUMBER})%?")
_ISO_DATE_RE, _CN_DATE_RE = re.compile(_ISO_DATE), re.compile(_CN_DATE)
_ID_VALUE_RE = re.compile(r"[^\s]{1,64}")
_TZ = re.compile(r"(?:Z|[+-][0-9]{2}:?[0-9]{2})$")
_ID_NAME = re.compile(r"(?:^|[\W_])(?:id|uuid|key)$|[a-z](?:Id|ID)$|号$", re.IGNORECASE)


def _missing(x: Any) -> bool:
    return x is None or x is pd.NA or x is pd.NaT or (isinstance(x, float) and x != x)


def _strings(s: pd.Series) -> list[str]:
    """The column's non-missing values as stripped strings."""
    return [str(x).strip() for x in s.tolist() if not _missing(x)]


# ---- reading ------------------------------------------------------------------------------


def _check_width(n: int, where: str, opts: TableOptions, at_least: bool = False) -> None:
    """Refuse over-wide tables: every column costs time and memory, and 20,000 took minutes."""
    if n > opts.max_columns:
        raise DataError(f"{where} has {'at least ' if at_least else ''}{n} columns, more than table.max_columns={opts.max_columns}; "
                        f"keep only the columns you need, or raise the limit with --set table.max_columns={n}")


def _header_width(path: Path, text: str) -> tuple[int, bool]:
    """(fields in the csv's first non-blank record, whether that is only a lower bound): read from
    at most HEADER_SCAN_CHARS of text, so an over-wide file is refused before its rows are split."""
    delim = "\t" if path.suffix.lower() == ".tsv" else sniff_delimiter(text[:65536])
    prefix = text[:HEADER_SCAN_CHARS]
    try:
        for fields in csv.reader(io.StringIO(prefix, newline=""), delimiter=delim):
            if fields and fields != [""]:
                return len(fields), len(prefix) < len(text)
    except csv.Error:  # read_csv_rows reports it
        pass
    return 0, True


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
            import pyarrow.parquet as pq

            width = len(pq.read_schema(path).names)
        except Exception:  # damaged: read_parquet below says so
            width = 0
        _check_width(width, str(path), cfg.table)
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise DataError(f"{path} is not a readable parquet file: {e}") from None
        frame.columns = [str(c) for c in frame.columns]
        return frame.reset_index(drop=True), list(range(len(frame))), {"format": "parquet"}, {"row_ids": "0-based row of the parquet file"}
    text, enc = read_text_file(path, cfg.table.encoding, option="table.encoding")
    width, at_least = _header_width(path, text)
    _check_width(width, str(path), cfg.table, at_least)
    rows = read_csv_rows(path, text)
    cells = [[None if f.strip() in MISSING_TOKENS else f for f in fields] for _, fields in rows.rows]
    frame = pd.DataFrame(cells, columns=rows.header, dtype=object)
    details = {"format": "csv", "delimiter": rows.delimiter, **enc}
    reading = {"row_ids": "1-based line number in the file", "skipped": rows.skipped, "blank_lines": rows.blank_lines,
               "renamed_columns": rows.renamed, "missing_tokens": sorted(MISSING_TOKENS)}
    return frame, [line for line, _ in rows.rows], details, reading


# ---- types --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberFormat:
    """How a column's numbers were written, so they parse and can be written back the same way."""

    thousands_separator: bool  # ',' between groups of three digits, removed
    percent: bool  # a trailing '%', removed; the value is stored divided by 100
    decimals: int  # the most digits after the decimal point, as written (before dividing by 100)

    def stripped(self) -> list[str]:
        return ((["thousands separators ',' removed"] if self.thousands_separator else [])
                + (["'%' removed, value divided by 100 (12% -> 0.12)"] if self.percent else []))

    def to_json(self) -> dict[str, Any]:
        return {"thousands_separator": "," if self.thousands_separator else None, "percent": self.percent,
                "decimals": self.decimals, "stripped": self.stripped()}

    def plain(self, x: str) -> str | None:
        """`x` as a plain number string, or None when it is not written in this format."""
        if self.percent:
            if not x.endswith("%"):
                return None
            x = x[:-1]
        if "," in x:
            return x.replace(",", "") if self.thousands_separator and _GROUPED_RE.fullmatch(x) else None
        return x


def number_format(s: pd.Series) -> NumberFormat | None:
    """The format of a string column's numbers when they use thousands separators or '%'; None for
    plain numbers, non-string columns, or when only some numbers end with '%' (mixed scales)."""
    if _is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s) or pd.api.types.is_datetime64_any_dtype(s):
        return None
    nums = [x for x in _strings(s) if _FORMATTED_RE.fullmatch(x)]
    percent = sum(x.endswith("%") for x in nums)
    thousands = any("," in x for x in nums)
    if not nums or 0 < percent < len(nums) or not (percent or thousands):
        return None
    decimals = max(len(x.rstrip("%").partition(".")[2]) for x in nums)
    return NumberFormat(thousands, percent > 0, decimals)


def _is_numeric_dtype(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _integral(values: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(values):
        return True
    v = values.to_numpy(dtype=float, na_value=np.nan)
    return bool(np.isfinite(v).all() and (v == np.round(v)).all())


def infer_type(name: str, s: pd.Series, max_categories: int) -> tuple[str, str]:
    """(type, the rule that decided it) for one column; see the module docstring."""
    if pd.api.types.is_bool_dtype(s):
        return "boolean", "bool dtype"
    if pd.api.types.is_datetime64_any_dtype(s):
        return "datetime", "datetime dtype"
    if _is_numeric_dtype(s):
        values = s.dropna()
        if len(values) and _integral(values) and values.is_unique and _ID_NAME.search(name):
            return "id", "distinct integers in a column named like an id"
        return "numeric", f"{s.dtype} dtype"
    if isinstance(s.dtype, pd.CategoricalDtype):
        return "categorical", "category dtype"
    v = _strings(s)
    if not v:
        return "text", "no values (all missing)"
    distinct = len(set(v))
    if all(x.lower() in TRUE_TOKENS or x.lower() in FALSE_TOKENS for x in v):
        return "boolean", "every value is true/false, yes/no, t/f, y/n or 是/否"
    if all(_NUMBER_RE.fullmatch(x) for x in v):
        if distinct == len(v) and _ID_NAME.search(name) and all(_INT_RE.fullmatch(x) for x in v):
            return "id", "distinct integers in a column named like an id"
        return "numeric", "every value is a number"
    fmt = number_format(s) if all(_FORMATTED_RE.fullmatch(x) for x in v) else None
    if fmt is not None:
        return "numeric", "every value is a number; " + "; ".join(fmt.stripped())
    if (all(_ISO_DATE_RE.fullmatch(_CN_DATE_RE.sub(r"\1-\2-\3", x)) for x in v)
            and _to_datetime(pd.Series(v, dtype=object)).notna().all()):
        return "datetime", "every value is an ISO 8601 date or date-time"
    if distinct <= max_categories and distinct <= len(v) / 2:
        return "categorical", f"{distinct} distinct values (at most {max_categories}, repeating)"
    if distinct == len(v) and all(_ID_VALUE_RE.fullmatch(x) and re.search(r"[0-9]", x) for x in v):
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
    return all(_INT_RE.fullmatch(x) for x in _strings(s))


def _to_number(s: pd.Series, fmt: NumberFormat | None = None) -> pd.Series:
    """Int64 for integer dtypes and all-integer strings (not percentages), else float64; strings
    in `fmt` are made plain first; strings that are not then numbers -> missing."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_integer_dtype(s):
        return s.astype("Int64")
    if _is_numeric_dtype(s):
        return s.astype("float64")
    strings = [None if _missing(x) else str(x).strip() for x in s.tolist()]
    if fmt is not None:
        strings = [None if x is None else fmt.plain(x) for x in strings]
    strings = [x if x is not None and _PLAIN_RE.fullmatch(x) else None for x in strings]
    if (fmt is None or not fmt.percent) and all(x is None or _INT_RE.fullmatch(x) for x in strings):
        try:  # from the strings: float64 loses digits beyond 2**53
            return pd.Series(pd.array([None if x is None else int(x) for x in strings], dtype="Int64"), index=s.index, name=s.name)
        except (TypeError, ValueError, OverflowError):  # beyond int64
            pass
    scale = 100.0 if fmt is not None and fmt.percent else 1.0
    return pd.Series([np.nan if x is None else float(x) / scale for x in strings], index=s.index, name=s.name, dtype="float64")


def convert(s: pd.Series, kind: str, fmt: NumberFormat | None = None) -> pd.Series:
    """The column as `kind`, in a dtype that holds missing values and survives parquet: Int64 or
    float64, boolean, datetime64, category (sorted string categories), string. Values that cannot
    be converted become missing (the caller counts them). `fmt`: how numeric strings are written."""
    if kind == "numeric" or (kind == "id" and (_is_numeric_dtype(s) or _all_ints(s))):
        return _to_number(s, fmt if kind == "numeric" else None)
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


def _column_schema(name: str, kind: str, how: str, rule: str, s: pd.Series, note: str | None,
                   fmt: NumberFormat | None = None, pii: dict[str, Any] | None = None) -> dict[str, Any]:
    missing = int(s.isna().sum())
    entry: dict[str, Any] = {"name": name, "type": kind, "dtype": str(s.dtype), "source": how, "rule": rule,
                             "missing": missing, "missing_share": round(missing / len(s), 6) if len(s) else 0.0}
    values = s if kind == "numeric" else s.dropna()  # min and max skip missing values themselves
    if kind == "categorical":
        cats = [str(c) for c in s.cat.categories]
        entry["categories"] = cats[:MAX_CATEGORIES_LISTED]
        entry["n_categories"] = len(cats)
    elif kind == "numeric" and missing < len(s):
        lo, hi = values.min(), values.max()
        entry["min"], entry["max"] = (int(lo), int(hi)) if pd.api.types.is_integer_dtype(s) else (float(lo), float(hi))
    elif kind == "datetime" and len(values):
        entry["min"], entry["max"] = values.min().isoformat(), values.max().isoformat()
    elif kind == "boolean":
        entry["true"], entry["false"] = int(values.sum()), int((~values.astype(bool)).sum())
    elif kind in ("id", "text") and len(values):
        entry["distinct"] = int(values.nunique())
    if kind == "numeric" and fmt is not None:
        entry["format"] = fmt.to_json()
    if pii:
        entry["pii"] = pii
    if note:
        entry["note"] = note
    return entry


def _mixed_note(name: str, s: pd.Series, kind: str, row_ids: list[int]) -> str | None:
    """For a string column that is mostly numbers but not all: say so, and how to make it numeric."""
    if kind not in ("categorical", "text", "id") or _is_numeric_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype):
        return None
    values = [(i, str(x).strip()) for i, x in enumerate(s.tolist()) if not _missing(x)]
    is_num = [bool(_NUMBER_RE.fullmatch(x)) for _, x in values]
    if not values or all(is_num) or sum(is_num) < len(is_num) / 2:
        return None
    first = row_ids[values[is_num.index(False)][0]]
    return (f"mixed: {sum(is_num)} of {len(is_num)} values are numbers, the others are not (the first at row {first}); "
            f"--set table.types.{name}=numeric makes those missing values")


# ---- PII ----------------------------------------------------------------------------------


def _scan_pii(frame: pd.DataFrame, row_ids: list[int], tally: PiiTally) -> dict[str, dict[int, list[PiiSpan]]]:
    """{column: {row position: PII spans}} for string, categorical and integer columns (phone and
    card numbers are often stored as integers); every find is added to `tally`."""
    found: dict[str, dict[int, list[PiiSpan]]] = {}
    for col in frame.columns:
        s = frame[col]
        if not (s.dtype == object or pd.api.types.is_string_dtype(s) or pd.api.types.is_integer_dtype(s)
                or isinstance(s.dtype, pd.CategoricalDtype)):
            continue
        cells = {}
        for i, x in enumerate(s.tolist()):
            spans = [] if _missing(x) else find_pii(str(x))
            if spans:
                tally.add(row_ids[i], spans, column=col)
                cells[i] = spans
        if cells:
            found[col] = cells
    return found


def _pii_columns(frame: pd.DataFrame, found: dict[str, dict[int, list[PiiSpan]]], min_share: float) -> dict[str, dict[str, Any]]:
    """The PII columns: at least `min_share` of the non-missing values are each one whole PII value."""
    out = {}
    for col, cells in found.items():
        values = frame[col].tolist()
        whole = Counter(spans[0].type for i, spans in cells.items() if len(spans) == 1 and spans[0].value == str(values[i]).strip())
        present = sum(not _missing(x) for x in values)
        if sum(whole.values()) >= min_share * present:
            out[col] = {"types": dict(sorted(whole.items())), "pii_values": sum(whole.values()), "values": present,
                        "other_values": present - sum(whole.values())}
    return out


def _pii_key(kind: str, value: str) -> str:
    """What identifies a PII value however it is written: an e-mail in lower case; the digits of a
    number (a phone's last 11, so +86 138-1234-5678 and 13812345678 are one number)."""
    if kind == "email":
        return value.lower()
    key = re.sub(r"[^0-9Xx]", "", value).upper()
    return key[-11:] if kind == "phone" else key


def _draw_fake(column: str, span: PiiSpan, rng: random.Random, real: set[str]) -> str:
    """A fake of `span`'s format that is no real PII value of the column."""
    for _ in range(100):
        fake = fake_pii(span, rng)
        if _pii_key(span.type, fake) not in real:
            return fake
    raise DataError(f"column {column!r}: 100 fake {span.type} values of one of its formats were all real values of the column "
                    "(the format allows too few values); --set table.pii_columns=exclude")


def _fake_column(s: pd.Series, cells: dict[int, list[PiiSpan]], rng: random.Random) -> pd.Series:
    """`s` with every PII span replaced by a fake of the same format (pii.fake_pii): one real value
    gets one fake throughout the column, and no fake is any real PII value of the column."""
    real = {_pii_key(sp.type, sp.value) for spans in cells.values() for sp in spans}
    fakes: dict[str, str] = {}
    values = s.astype(object).tolist()
    for i, spans in cells.items():
        text, parts, pos = str(values[i]), [], 0
        for sp in spans:
            if sp.value not in fakes:
                fakes[sp.value] = _draw_fake(str(s.name), sp, rng, real)
            parts += [text[pos:sp.start], fakes[sp.value]]
            pos = sp.end
        values[i] = "".join(parts) + text[pos:]
    return pd.Series(values, index=s.index, name=s.name, dtype=object)


def _apply_pii(frame: pd.DataFrame, found: dict[str, dict[int, list[PiiSpan]]], pii_cols: dict[str, dict[str, Any]],
               cfg: IngestConfig) -> pd.DataFrame:
    """PII columns excluded or faked (table.pii_columns); PII in other columns redacted when pii.redact."""
    new = {}
    for col, cells in found.items():
        if col in pii_cols:
            if cfg.table.pii_columns == "fake":
                new[col] = _fake_column(frame[col], cells, random.Random(f"genforge-fake:{cfg.split.seed}:{col}"))
        elif cfg.pii.redact:
            values = frame[col].astype(object).tolist()
            for i, spans in cells.items():
                values[i] = redact(str(values[i]), spans)
            new[col] = pd.Series(values, index=frame.index, dtype=object)
    keep = [c for c in frame.columns if not (c in pii_cols and cfg.table.pii_columns == "exclude")]
    if not new and len(keep) == frame.shape[1]:
        return frame
    return pd.DataFrame({c: new.get(c, frame[c]) for c in keep}, columns=keep)


# ---- the pipeline -------------------------------------------------------------------------


def _row_keys(frame: pd.DataFrame) -> list[str]:
    """sha256 of each row's values (a missing value hashes apart from any string)."""
    if frame.shape[1] == 0:
        return [hashlib.sha256(b"").hexdigest()] * len(frame)
    parts = []
    for c in frame.columns:
        s = frame[c]
        if s.dtype == object:  # csv cells: str or None, as astype("string") would write them, without its per-column cost
            parts.append(["\x00" if _missing(x) else str(x) for x in s.tolist()])
        else:
            parts.append(s.astype("string").fillna("\x00").tolist())
    return [hashlib.sha256("\x1f".join(row).encode("utf-8")).hexdigest() for row in zip(*parts)]


def prepare_table(source: str, cfg: IngestConfig, writer: DatasetWriter) -> Prepared:
    """Read, type, clean, split and write a table; see the module docstring for the rules."""
    opts = cfg.table
    raw, row_ids, details, reading = _read(source, cfg)
    _check_width(raw.shape[1], source, opts)
    columns = list(raw.columns)
    for option, names in (("table.types", opts.types), ("table.keep_pii_columns", opts.keep_pii_columns)):
        unknown = sorted(set(names) - set(columns))
        if unknown:
            raise ConfigError(f"{option} names columns that {source} does not have: {', '.join(unknown)}; columns: {', '.join(columns)}")
    label_col = opts.label_column
    if label_col is not None and label_col not in columns:
        raise ConfigError(f"table.label_column={label_col!r} is not a column of {source}; columns: {', '.join(columns)}")
    skipped = reading.get("skipped", [])
    n_input = len(raw) + len(skipped)

    # 1. PII, on the values as read: PII columns excluded or faked, other PII redacted if asked
    tally = PiiTally()
    pii_cols: dict[str, dict[str, Any]] = {}
    kept_pii: dict[str, dict[str, Any]] = {}
    if cfg.pii.detect:
        found = _scan_pii(raw, row_ids, tally)
        for c, info in _pii_columns(raw, found, opts.pii_column_share).items():
            if c in opts.keep_pii_columns:
                kept_pii[c] = {**info, "handling": "kept (table.keep_pii_columns)"}
            else:
                pii_cols[c] = {**info, "handling": opts.pii_columns}
        raw = _apply_pii(raw, found, pii_cols, cfg)
    excluded = [c for c in columns if c not in raw.columns]
    if label_col in excluded:
        raise ConfigError(f"table.label_column={label_col!r} is a PII column ({pii_cols[label_col]['pii_values']} of "
                          f"{pii_cols[label_col]['values']} values are PII), so it is excluded; --set table.pii_columns=fake "
                          f"replaces its values, or --set table.keep_pii_columns=[{label_col}] keeps it if it is not PII")
    columns = list(raw.columns)

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

    # 3. types (a faked PII column is an id unless overridden)
    typed, schema_cols, coerced = {}, [], {}
    for col, column in raw.items():
        if col in opts.types:
            kind, how, rule = opts.types[col], "override", "table.types"
        elif col in pii_cols:
            kind, how, rule = "id", "pii", "PII column: its PII values are fakes of the same format (table.pii_columns=fake)"
        else:
            kind, rule = infer_type(col, column, opts.max_categories)
            how = "inferred"
        fmt = number_format(column) if kind == "numeric" else None
        series = convert(column, kind, fmt)
        lost = np.flatnonzero(series.isna().to_numpy() & column.notna().to_numpy())
        if len(lost):
            coerced[col] = {"type": kind, "count": len(lost), "rows": [row_ids[i] for i in lost[:20]]}
        typed[col] = series  # raw has a fresh RangeIndex, and so has every converted column
        schema_cols.append((col, kind, how, rule, _mixed_note(col, column, kind, row_ids) if how == "inferred" else None,
                            fmt, pii_cols.get(col)))
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

    schema_entries = [_column_schema(c, k, h, r, frame[c], note, f, p) for c, k, h, r, note, f, p in schema_cols]
    missing = {e["name"]: e["missing"] for e in schema_entries}
    counts: dict[str, Any] = {"input": n_input, "kept": len(frame), "skipped": len(skipped), "exact_duplicates": len(dupes),
                              "columns": len(columns), "excluded_columns": len(excluded), "missing_cells": sum(missing.values()),
                              "pii_found": sum(tally.found.values()), **({"per_class": per_class} if per_class else {})}
    cleaning = {
        "settings": {"drop_duplicate_rows": opts.drop_duplicate_rows, "max_categories": opts.max_categories,
                     "max_columns": opts.max_columns, "overrides": dict(opts.types), "pii_detect": cfg.pii.detect,
                     "pii_redact": cfg.pii.redact, "pii_columns": opts.pii_columns, "pii_column_share": opts.pii_column_share,
                     "keep_pii_columns": list(opts.keep_pii_columns)},
        **{k: v for k, v in reading.items() if k != "skipped"},
        "skipped": listed(skipped),
        "missing_values": missing,  # per column; kept in the data as <NA>/NaN/NaT
        "coerced_to_missing": coerced,
        "exact_duplicates": listed(dupes, dropped=opts.drop_duplicate_rows, rule="identical values in every column, as read; first occurrence kept"),
        "pii": tally.to_json(redacted=cfg.pii.detect and cfg.pii.redact) if cfg.pii.detect else {"detect": False},
        "pii_columns": {"count": len(pii_cols), "handling": opts.pii_columns, "min_share": opts.pii_column_share,
                        "columns": pii_cols, "kept": kept_pii},  # never their values
    }
    n = max(len(frame), 1)
    stats = GateStats(n_examples=len(frame), per_class=per_class, duplicate_share=len(dupes) / max(n_input, 1),
                      unreadable_share=len(skipped) / max(n_input, 1), missing_share={c: m / n for c, m in missing.items()})
    schema = {"columns": schema_entries, "label_column": label_col, "rows": len(frame),
              "excluded_columns": [{"name": c, "reason": "PII column (table.pii_columns=exclude)"
                                    + (f"; its table.types override ({opts.types[c]}) is not used" if c in opts.types else ""),
                                    "pii": pii_cols[c]} for c in excluded]}
    return Prepared(source=source_info(source, **details), counts=counts, schema=schema,
                    split=split_summary(assignment, labels, classes, cfg.split), cleaning=cleaning, gate_stats=stats, classes=classes)
