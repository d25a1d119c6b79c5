"""Text datasets: read txt / jsonl / csv files (any encoding we can be sure of) or a built-in
corpus, normalise, drop texts out of the length bounds, find and optionally redact PII, remove
exact and near-duplicates, split, and write `<split>.parquet`.

Every decision lands in the manifest's `cleaning` section with the row it concerns (`row_ids`
says what a row id means for this source). Malformed lines are reported and skipped, never fatal;
a text field that no record has is an error naming the fields found.

Order of the steps, and why: normalise first (so everything after sees one form of the text);
length bounds on the normalised text; PII before de-duplication (redacted texts that differ only
in a phone number are duplicates); exact duplicates by sha256 of the normalised text; near-
duplicates by MinHash LSH over character shingles (characters, not words, so Chinese works).
The first occurrence in source order is kept, for exact and near duplicates alike. PII counts
cover every text within the length bounds, duplicates included. Texts are held in memory (the
MinHash index must see them all anyway).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from genforge.data.gate import GateStats
from genforge.data.prepared import Prepared, source_info
from genforge.data.normalize import NORMALISATION_RULES, normalize_text
from genforge.data.options import IngestConfig, TextOptions
from genforge.data.pii import PiiTally, find_pii, redact
from genforge.data.split import SPLIT_NAMES, assign_splits, split_summary
from genforge.data.store import DatasetWriter
from genforge.errors import ConfigError, DataError

MAX_LISTED = 1000  # decisions listed per kind in the manifest; the count is always complete
DETECT_SAMPLE = 1 << 20  # bytes of a non-UTF-8 file the encoding detector looks at
UTF8_LINE_SHARE = 0.9  # share of the non-ASCII lines that must be UTF-8 to read a file as UTF-8 with bad lines
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")  # the breaks _lines() splits on, so line numbers agree
# Python's gb2312 and gbk codecs differ from gb18030 (their superset, the Chinese national standard)
# only in a few punctuation mappings ('—' vs '―'), so all three are read as gb18030.
_SUPERSET = {"gb2312": "gb18030", "gbk": "gb18030"}
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def listed(items: list, **extra: Any) -> dict[str, Any]:
    """A cleaning decision list for the manifest: the full count and the first MAX_LISTED items."""
    return {"count": len(items), **extra, "items": items[:MAX_LISTED]}


# ---- reading files ------------------------------------------------------------------------


def _decode(path: Path, data: bytes, encoding: str, option: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid {encoding}: bytes {e.start}-{e.end} cannot be decoded ({e.reason}); "
                        f"pass its encoding with --set {option}=NAME (e.g. gb18030, utf-16, cp1252)") from None


def _utf8_but_for_lines(data: bytes) -> tuple[str, dict[int, str]] | None:
    """(text, {1-based line number: reason}) when `data` is UTF-8 apart from a few lines, else None.

    The rule: at least UTF8_LINE_SHARE (90%) of the lines holding non-ASCII bytes decode as UTF-8.
    Only non-ASCII lines are evidence (pure ASCII reads the same in UTF-8, GBK or cp1252), and a
    file really in GBK, gb18030, Big5 or cp1252 almost never has a non-ASCII line that is valid
    UTF-8, so such files still go to the encoding detector. An undecodable line reads as one U+FFFD
    in the text (so it keeps its line number, last line included); line breaks are normalised to
    "\n" (as _lines() does anyway)."""
    pieces, bad, non_ascii, start = [], {}, 0, 0
    for i, brk in enumerate(itertools.chain(_LINE_BREAK.finditer(data), [None])):
        end = brk.start() if brk else len(data)
        raw = data[start:end]
        if not raw.isascii():
            non_ascii += 1
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad[i + 1] = f"invalid UTF-8 at byte {start + e.start} ({e.reason})"
                raw = "\ufffd".encode()
        pieces.append(raw)
        start = brk.end() if brk else start
    if not bad or (non_ascii - len(bad)) < UTF8_LINE_SHARE * non_ascii:
        return None
    return b"\n".join(pieces).decode("utf-8"), bad


def read_text_file(path: Path, encoding: str = "auto", option: str = "text.encoding",
                   bad_lines: dict[int, str] | None = None) -> tuple[str, dict[str, Any]]:
    """The file's text and how it was decoded. `encoding='auto'`: a BOM decides; else valid UTF-8 is
    UTF-8; else a file that is UTF-8 but for a few lines (see _utf8_but_for_lines: at least 90% of
    its non-ASCII lines are UTF-8) is UTF-8 with those lines blanked out and their reasons put in
    `bad_lines`, when the caller passes that dict (it can skip lines), or refused naming them when
    it does not (a csv line may sit inside a quoted field); else charset-normalizer's best guess is
    used only when no equally clean guess reads the bytes differently, otherwise a DataError tells
    the user which `option` to set. A given encoding is used strictly: no line is skipped."""
    data = path.read_bytes()
    if encoding != "auto":
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ConfigError(f"{option}: unknown encoding {encoding!r} (e.g. utf-8, gb18030, utf-16, cp1252, or auto)") from None
        return _decode(path, data, encoding, option), {"encoding": encoding, "how": "given"}
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return _decode(path, data, enc, option), {"encoding": enc, "how": "byte-order mark"}
    if b"\x00" not in data:  # NUL bytes are valid UTF-8 but mean UTF-16/32 without a BOM, or binary
        try:
            return data.decode("utf-8"), {"encoding": "utf-8", "how": "valid UTF-8"}
        except UnicodeDecodeError:
            pass
        mostly = _utf8_but_for_lines(data)
        if mostly is not None:
            text, bad = mostly
            if bad_lines is None:
                line, reason = next(iter(bad.items()))
                raise DataError(f"{path} is UTF-8 except for {len(bad)} line(s) that cannot be decoded (line {line}: {reason}); "
                                f"fix or remove them, or if the file is in another encoding pass it with --set {option}=NAME")
            bad_lines.update(bad)
            return text, {"encoding": "utf-8", "how": f"UTF-8 but for {len(bad)} undecodable line(s), skipped",
                          "undecodable_lines": len(bad)}
    from charset_normalizer import from_bytes

    sample = data[:DETECT_SAMPLE]
    if len(data) > DETECT_SAMPLE and b"\n" in sample:
        sample = sample[: sample.rindex(b"\n") + 1]
    matches = list(from_bytes(sample))  # only decodings with at most 20% "mess" (its default threshold)
    hint = f"pass its encoding with --set {option}=NAME (Chinese: gb18030 or big5; Western European: cp1252)"
    if not matches:
        raise DataError(f"{path} is not UTF-8 and no encoding reads it as text; is it a text file? If it is, {hint}")
    best = min(matches, key=lambda m: m.chaos)
    encoding = _SUPERSET.get(best.encoding, best.encoding)
    rivals = sorted({m.encoding for m in matches if m.chaos <= best.chaos + 0.01
                     and _SUPERSET.get(m.encoding, m.encoding) != encoding and str(m) != str(best)})
    if rivals:
        raise DataError(f"{path} is not UTF-8, and its encoding is ambiguous: {best.encoding} and {', '.join(rivals)} "
                        f"read it equally well but differently; {hint}")
    info = {"encoding": encoding, "how": "detected by charset-normalizer", "chaos": round(float(best.chaos), 4),
            "language": best.language}
    return _decode(path, data, encoding, option), info


def sniff_delimiter(sample: str) -> str:
    """The delimiter among , tab ; | that splits the most of the first 50 rows into the header's
    (more than one) number of fields; ',' when none does."""
    best, best_score = ",", (0, 0)
    for delim in (",", "\t", ";", "|"):
        try:
            rows = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=delim) if r][:50]
        except csv.Error:
            continue
        width = len(rows[0]) if rows else 0
        score = (sum(len(r) == width for r in rows) if width > 1 else 0, width)
        if score > best_score:
            best, best_score = delim, score
    return best


@dataclass
class CsvRows:
    header: list[str]
    rows: list[tuple[int, list[str]]]  # (first line number, fields)
    skipped: list[dict[str, Any]]
    blank_lines: int
    delimiter: str
    renamed: list[dict[str, Any]]


def read_csv_rows(path: Path, text: str) -> CsvRows:
    """Parse csv text: delimiter sniffed, header = first row; rows whose field count differs from
    the header, or that break the quoting rules, are skipped with their line number."""
    delim = "\t" if path.suffix.lower() == ".tsv" else sniff_delimiter(text[:65536])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim, strict=True)
    old_limit = csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    header: list[str] | None = None
    rows, skipped, renamed, blank, prev_line = [], [], [], 0, 0
    try:
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                lines = f"lines {prev_line + 1}-{reader.line_num}" if reader.line_num > prev_line + 1 else f"line {prev_line + 1}"
                skipped.append({"item": prev_line + 1, "reason": f"malformed csv ({lines}): {e}"})
                prev_line = reader.line_num
                continue
            line, prev_line = prev_line + 1, reader.line_num
            if not fields or fields == [""]:
                blank += 1
            elif header is None:
                header = []
                for i, name in enumerate(fields):
                    name = name.strip()
                    if not name:
                        name = f"column_{i + 1}"
                        renamed.append({"column": i + 1, "name": name, "reason": "empty header"})
                    header.append(name)
                dupes = sorted(n for n, c in Counter(header).items() if c > 1)
                if dupes:
                    raise DataError(f"{path}: the header names these columns more than once: {', '.join(dupes)}")
            elif len(fields) != len(header):
                skipped.append({"item": line, "reason": f"{len(fields)} fields, the header has {len(header)}"})
            else:
                rows.append((line, fields))
    finally:
        csv.field_size_limit(old_limit)
    if header is None:
        raise DataError(f"{path} holds no csv header row (the file is empty)")
    return CsvRows(header, rows, skipped, blank, delim, renamed)


# ---- records ------------------------------------------------------------------------------


@dataclass
class _Record:
    row: int
    parts: tuple[str, ...]  # (text,) or (prompt, completion)
    label: str | None


def _text_format(path: Path, opts: TextOptions) -> str:
    if opts.format != "auto":
        return opts.format
    fmt = {".txt": "lines", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv"}.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot tell the text format of {path} from its suffix; pass --set text.format=lines|paragraphs|jsonl|csv")
    return fmt


def _fields(opts: TextOptions) -> tuple[str, ...]:
    if (opts.prompt_field is None) != (opts.completion_field is None):
        raise ConfigError("text.prompt_field and text.completion_field go together: set both for prompt/completion "
                          f"pairs, or neither (got prompt_field={opts.prompt_field!r}, completion_field={opts.completion_field!r})")
    return (opts.prompt_field, opts.completion_field) if opts.prompt_field else (opts.field,)  # type: ignore[return-value]


def _from_mapping(row: int, obj: Mapping[str, Any], fields: tuple[str, ...], label_field: str | None) -> _Record | str:
    """A record, or the reason it cannot be one."""
    parts = []
    for f in fields:
        if f not in obj:
            return f"no field {f!r}"
        v = obj[f]
        if not isinstance(v, str):
            return f"field {f!r} is {'null' if v is None else type(v).__name__}, not a string"
        parts.append(v)
    label = None
    if label_field:
        v = obj.get(label_field)
        if v is None or v == "":
            return f"no label in field {label_field!r}"
        if isinstance(v, str):
            label = v
        else:
            try:
                label = json.dumps(v, ensure_ascii=False)
            except RecursionError:
                return f"label in field {label_field!r} nested too deeply"
    return _Record(row, tuple(parts), label)


def _lines(text: str) -> list[str]:
    """Physical lines; a final newline ends the last line rather than opening an empty one."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _txt_records(text: str, fmt: str, bad: Mapping[int, str]) -> tuple[list[tuple[int, str]], int, list[dict[str, Any]]]:
    """(line number, example) for one example per line or per blank-line-separated paragraph,
    the number of blank lines (separators, not examples), and the skipped examples: those with an
    undecodable line (`bad`: line number -> reason; a paragraph with one is skipped whole)."""
    lines = _lines(text)
    blank = sum(not line.strip() and i + 1 not in bad for i, line in enumerate(lines))
    if fmt == "lines":
        skipped = [{"item": n, "reason": r} for n, r in bad.items()]
        return [(i + 1, line) for i, line in enumerate(lines) if line.strip() and i + 1 not in bad], blank, skipped
    out, skipped, start, para, why = [], [], 0, [], ""
    for i, line in enumerate(lines + [""]):
        if line.strip() or i + 1 in bad:
            start = start or i + 1
            para.append(line)
            why = why or (f"{bad[i + 1]} (line {i + 1})" if i + 1 in bad else "")
        elif para:
            if why:
                skipped.append({"item": start, "reason": why})
            else:
                out.append((start, "\n".join(para)))
            start, para, why = 0, [], ""
    return out, blank, skipped


def _is_json_array(text: str, lines: list[str]) -> bool:
    """Whether a .jsonl file is really one JSON array: it starts with '[' and either is one line or
    its first line is no complete JSON value (a pretty-printed '[', or '[{...},'). A JSON Lines
    file whose first line is a list, even one too deeply nested to parse, is not."""
    if not text.lstrip("\ufeff \t\r\n").startswith("["):
        return False
    filled = [line for line in lines if line.strip()]
    if len(filled) <= 1:
        return True
    try:
        json.loads(filled[0].lstrip("\ufeff"))
    except json.JSONDecodeError:
        return True
    except (RecursionError, ValueError):
        return False
    return False


@dataclass
class _Read:
    records: list[_Record]
    skipped: list[dict[str, Any]]
    blank_lines: int
    row_ids: str
    info: dict[str, Any]


def _read_mappings(items: list[tuple[int, Mapping[str, Any]]], skipped: list, opts: TextOptions, where: str,
                   label_field: str | None) -> list[_Record]:
    fields = _fields(opts)
    wanted = fields + ((label_field,) if label_field else ())
    seen: dict[str, None] = {}
    for _, obj in items[:1000]:
        seen.update(dict.fromkeys(obj))
    for f in wanted:
        if items and not any(f in obj for _, obj in items):
            raise DataError(f"{where}: no record has the field {f!r}; fields found: {', '.join(seen) or 'none'}. "
                            f"Choose one with --set text.field=NAME (or prompt_field/completion_field/label_field)")
    records = []
    for row, obj in items:
        rec = _from_mapping(row, obj, fields, label_field)
        if isinstance(rec, str):
            skipped.append({"item": row, "reason": rec})
        else:
            records.append(rec)
    return records


def _read_source(source: str, opts: TextOptions) -> _Read:
    if source.startswith("builtin:"):
        from genforge.data.sources import get_builtin

        _, b = get_builtin(source)
        frame: pd.DataFrame = b.load()
        label_field = opts.label_field
        items = list(enumerate(frame.to_dict("records")))
        skipped: list = []
        records = _read_mappings(items, skipped, opts, source, label_field)
        return _Read(records, skipped, 0, "0-based row of the built-in corpus", {"label_field": label_field})

    path = Path(source)
    fmt = _text_format(path, opts)
    # csv keeps a strict read: a line skipped inside a quoted field would shift every field after it.
    bad: dict[int, str] | None = None if fmt == "csv" else {}
    text, enc = read_text_file(path, opts.encoding, bad_lines=bad)
    bad = bad or {}
    info = {"format": fmt, **enc}
    if fmt in ("lines", "paragraphs"):
        if opts.prompt_field or opts.label_field:
            raise ConfigError(f"text.format={fmt} holds plain texts, but text.prompt_field={opts.prompt_field!r} and "
                              f"text.label_field={opts.label_field!r} were set; fields need jsonl or csv")
        pairs, blank, skipped = _txt_records(text, fmt, bad)
        return _Read([_Record(r, (t,), None) for r, t in pairs], skipped, blank, "1-based line number in the file", info)

    skipped = []
    items: list[tuple[int, Mapping[str, Any]]] = []
    blank = 0
    if fmt == "jsonl":
        lines = _lines(text)
        if _is_json_array(text, lines):
            raise DataError(f"{path} holds a JSON array; text is read as JSON Lines (one object per line). "
                            f"Convert it, e.g. `jq -c '.[]' {path.name} > {path.stem}.jsonl`")
        for i, line in enumerate(lines):
            if i + 1 in bad:
                skipped.append({"item": i + 1, "reason": bad[i + 1]})
                continue
            if not line.strip():
                blank += 1
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                skipped.append({"item": i + 1, "reason": f"invalid JSON: {e.msg} (column {e.colno})"})
                continue
            except RecursionError:  # the C parser's guard against stack overflow, one line's problem
                skipped.append({"item": i + 1, "reason": "JSON nested too deeply"})
                continue
            except ValueError as e:  # e.g. an integer over Python's 4300-digit conversion limit
                skipped.append({"item": i + 1, "reason": f"invalid JSON: {e}"})
                continue
            if not isinstance(obj, dict):
                skipped.append({"item": i + 1, "reason": f"a JSON {type(obj).__name__}, not an object"})
                continue
            items.append((i + 1, obj))
    else:
        rows = read_csv_rows(path, text)
        skipped, blank = rows.skipped, rows.blank_lines
        items = [(line, dict(zip(rows.header, fields))) for line, fields in rows.rows]
        info["delimiter"] = rows.delimiter
    records = _read_mappings(items, skipped, opts, str(path), opts.label_field)
    return _Read(records, skipped, blank, "1-based line number in the file", info)


# ---- near-duplicates ----------------------------------------------------------------------


def shingles(text: str, k: int) -> list[bytes]:
    """Character k-grams of the case-folded text (the whole text when shorter than k)."""
    t = text.casefold()
    return [t[i:i + k].encode("utf-8") for i in range(max(1, len(t) - k + 1))]


def near_duplicates(texts: list[str], threshold: float, k: int, num_perm: int) -> dict[int, tuple[int, float]]:
    """{index: (index of the earlier text it nearly repeats, estimated Jaccard)}. Greedy in order:
    a text is compared only with earlier texts that were kept, so the first of a group stays."""
    if threshold >= 1.0 or not texts:
        return {}
    from datasketch import MinHash, MinHashLSH

    sketches = MinHash.bulk((shingles(t, k) for t in texts), num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    found: dict[int, tuple[int, float]] = {}
    for i, m in enumerate(sketches):
        hits = [(m.jaccard(sketches[j]), j) for j in lsh.query(m)]
        hits = [(s, j) for s, j in hits if s >= threshold]
        if hits:
            score, j = max(hits, key=lambda h: (h[0], -h[1]))
            found[i] = (j, score)
        else:
            lsh.insert(i, m)
    return found


# ---- the pipeline -------------------------------------------------------------------------


def prepare_text(source: str, cfg: IngestConfig, writer: DatasetWriter) -> Prepared:
    """Read, clean, split and write a text dataset; see the module docstring for the steps."""
    opts = cfg.text
    if opts.min_chars > opts.max_chars:
        raise ConfigError(f"text.min_chars ({opts.min_chars}) must not exceed text.max_chars ({opts.max_chars})")
    fields = _fields(opts)
    read = _read_source(source, opts)
    n_input = len(read.records) + len(read.skipped)

    # 1. normalise, 2. length bounds
    short, long_, changed, records = [], [], 0, []
    for rec in read.records:
        parts = tuple(normalize_text(p) for p in rec.parts)
        changed += parts != rec.parts
        if min(len(p) for p in parts) < opts.min_chars:
            short.append({"item": rec.row, "chars": min(len(p) for p in parts)})
        elif sum(len(p) for p in parts) > opts.max_chars:
            long_.append({"item": rec.row, "chars": sum(len(p) for p in parts)})
        else:
            records.append(_Record(rec.row, parts, rec.label))

    # 3. PII
    tally = PiiTally()
    if cfg.pii.detect:
        for rec in records:
            spans = [find_pii(p) for p in rec.parts]
            tally.add(rec.row, [s for ss in spans for s in ss])
            if cfg.pii.redact and any(spans):
                rec.parts = tuple(redact(p, ss) for p, ss in zip(rec.parts, spans))

    # 4. exact duplicates
    first: dict[str, _Record] = {}
    exact, conflicts, unique, keys = [], 0, [], []
    for rec in records:
        key = hashlib.sha256("\x1f".join(rec.parts).encode("utf-8")).hexdigest()
        if key in first:
            exact.append({"item": rec.row, "duplicate_of": first[key].row})
            conflicts += rec.label != first[key].label
        else:
            first[key] = rec
            unique.append(rec)
            keys.append(key)

    # 5. near-duplicates
    near_map = near_duplicates(["\n".join(r.parts) for r in unique], opts.near_duplicate_jaccard, opts.shingle_chars, opts.num_perm)
    near = [{"item": unique[i].row, "near": unique[j].row, "jaccard": round(float(s), 3)} for i, (j, s) in near_map.items()]
    kept = [r for i, r in enumerate(unique) if i not in near_map]
    keys = [k for i, k in enumerate(keys) if i not in near_map]

    # 6. split and write
    classes = sorted({r.label for r in kept if r.label is not None})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[r.label] for r in kept], dtype=np.int64) if classes else None
    assignment = assign_splits(keys, labels, cfg.split)
    columns = ("prompt", "completion") if len(fields) == 2 else ("text",)
    for split in SPLIT_NAMES:
        rows = [r for r, s in zip(kept, assignment) if s == split]
        frame = pd.DataFrame({c: pd.array([r.parts[i] for r in rows], dtype="string") for i, c in enumerate(columns)})
        if classes:
            frame["label"] = np.array([index[r.label] for r in rows], dtype=np.int64)
        frame["row_id"] = np.array([r.row for r in rows], dtype=np.int64)
        writer.write_frame(str(split), frame)

    per_class = {c: int((labels == i).sum()) for i, c in enumerate(classes)} if classes else None
    dropped = len(short) + len(long_)
    counts: dict[str, Any] = {"input": n_input, "kept": len(kept), "skipped": len(read.skipped),
                              "exact_duplicates": len(exact), "near_duplicates": len(near), "too_short": len(short),
                              "too_long": len(long_), "normalised": changed, "blank_lines": read.blank_lines,
                              "pii_found": sum(tally.found.values()), **({"per_class": per_class} if per_class else {})}
    schema = {"format": "prompt_completion" if len(fields) == 2 else "text", "columns": [
        *({"name": c, "dtype": "string", "source_field": f} for c, f in zip(columns, fields)),
        *([{"name": "label", "dtype": "int64", "meaning": "index into classes", "source_field": read.info.get("label_field", opts.label_field)}] if classes else []),
        {"name": "row_id", "dtype": "int64", "meaning": read.row_ids}]}
    cleaning = {
        "settings": {**opts.model_dump(include={"min_chars", "max_chars", "near_duplicate_jaccard", "shingle_chars", "num_perm"}),
                     "pii_detect": cfg.pii.detect, "pii_redact": cfg.pii.redact},
        "row_ids": read.row_ids,
        "skipped": listed(read.skipped),
        "normalisation": {"changed": changed, "rules": NORMALISATION_RULES},
        "length": {"min_chars": opts.min_chars, "max_chars": opts.max_chars, "too_short": listed(short), "too_long": listed(long_)},
        "pii": tally.to_json(redacted=cfg.pii.detect and cfg.pii.redact) if cfg.pii.detect else {"detect": False},
        "exact_duplicates": listed(exact, label_conflicts=conflicts, rule="sha256 of the normalised text; first occurrence kept"),
        "near_duplicates": listed(near, rule=f"MinHash LSH on {opts.shingle_chars}-character shingles, estimated Jaccard >= "
                                             f"{opts.near_duplicate_jaccard}; first occurrence kept"),
    }
    seen = max(n_input, 1)  # every share is of the records read, malformed ones included
    stats = GateStats(n_examples=len(kept), per_class=per_class, duplicate_share=(len(exact) + len(near)) / seen,
                      unreadable_share=len(read.skipped) / seen, length_violation_share=dropped / seen)
    src = source_info(source, **{k: v for k, v in read.info.items() if k != "label_field"})
    return Prepared(source=src, counts=counts, schema=schema, split=split_summary(assignment, labels, classes, cfg.split),
                    cleaning=cleaning, gate_stats=stats, classes=classes)
