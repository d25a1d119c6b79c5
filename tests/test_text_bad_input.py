"""Text ingest of malformed files, made as a user would make them: a line too deeply nested for
the JSON parser, and a UTF-8 file with a line of undecodable bytes. Each bad line is skipped with
its reason; every other line is kept, and genuinely non-UTF-8 files are still detected."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from genforge.cli import _app
from genforge.config import load_config
from genforge.data.ingest import ingest
from genforge.data.options import IngestConfig
from genforge.data.store import open_dataset
from genforge.data.text import _from_mapping
from genforge.errors import DataError

ZH = ["这个产品非常好，我很喜欢。", "质量一般，价格太贵了。", "物流很快，包装完好，推荐购买。", "客服态度很差，不会再买。", "屏幕清晰，电池耐用。"]
EN = ["Great product, works as described", "The battery died after two days", "Fast shipping and good packaging",
      "Would not buy again, poor quality", "Exactly what I needed for the office"]
# 100 distinct texts, Chinese and English alternating; the numbers keep them distinct, and the
# near-duplicate check is off in these tests so that every good line must come back.
GOOD = [f"{ZH[i % 5]}第{i}条评论。" if i % 2 else f"{EN[i % 5]}, review number {i}." for i in range(100)]
OPTS = ["gate.min_examples=1", "gate.min_per_class=1", "text.near_duplicate_jaccard=1.0"]


def run(path, *overrides):
    """The library call behind `genforge data ingest` (forced: the gate is not under test here)."""
    res = ingest(str(path), "bad", load_config(IngestConfig, None, [*OPTS, *overrides]), force=True)
    ds = open_dataset(res.manifest.ref)
    return res, pd.concat([ds.frame(s) for s in ("train", "val", "test")], ignore_index=True)


def skipped(res):
    return [(s["item"], s["reason"]) for s in res.manifest.cleaning["skipped"]["items"]]


# ---- a JSON value nested too deeply ---------------------------------------------------------


def test_deeply_nested_jsonl_lines_are_skipped(tmp_path):
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in GOOD]
    lines.insert(0, "[" * 100_000 + "]" * 100_000)  # first: must not pass for a JSON array file
    lines.insert(50, '{"text": ' * 100_000 + '"x"' + "}" * 100_000)
    lines.insert(80, '{"text": "a", "n": ' + "7" * 5000 + "}")  # past Python's int-conversion limit
    p = tmp_path / "deep.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res, frame = run(p)
    found = skipped(res)
    assert found[:2] == [(1, "JSON nested too deeply"), (51, "JSON nested too deeply")]
    assert found[2][0] == 81 and found[2][1].startswith("invalid JSON: Exceeds the limit (4300 digits)")
    assert sorted(frame["text"]) == sorted(GOOD)
    c = res.manifest.counts
    assert (c["input"], c["kept"], c["skipped"]) == (103, 100, 3)


def test_deeply_nested_label_is_a_reason_not_a_crash():
    """A label the parser just accepted can be too deep to write back as text one call deeper."""
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert _from_mapping(7, {"text": "a", "label": deep}, ("text",), "label") == "label in field 'label' nested too deeply"


def test_cli_reports_deep_json_without_a_traceback(tmp_path):
    p = tmp_path / "deep.jsonl"
    p.write_text("\n".join([json.dumps({"text": t}, ensure_ascii=False) for t in GOOD] + ["[" * 100_000 + "]" * 100_000]) + "\n",
                 encoding="utf-8")
    out = CliRunner().invoke(_app, ["data", "ingest", str(p), "--name", "deep", *(a for o in OPTS for a in ("--set", o))])
    assert out.exit_code == 0, out.output
    assert open_dataset("deep").manifest.counts["skipped"] == 1


def test_json_array_files_are_still_refused(tmp_path):
    for text in ('[{"text": "a"}]\n', '[\n  {"text": "a"},\n  {"text": "b"}\n]\n', '[{"text": "a"},\n{"text": "b"}]\n'):
        p = tmp_path / "arr.jsonl"
        p.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match="JSON array"):
            run(p)


# ---- a line of bytes that are not UTF-8 -----------------------------------------------------


BAD_LINES = [  # (the bad line, offset of its first undecodable byte, the decoder's reason)
    (b"\xff\xfe broken \x80 bytes", 0, "invalid start byte"),
    ("这一行是GBK编码的".encode("gbk"), 0, "invalid continuation byte"),  # two files concatenated
    ("Café crème".encode("latin-1"), 3, "invalid continuation byte"),
    ("截断的字".encode()[:-1], 9, "unexpected end of data"),  # cut mid-character
]


@pytest.mark.parametrize("bad, at, why", BAD_LINES)
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_undecodable_line_in_utf8_file_is_skipped(tmp_path, suffix, bad, at, why):
    enc = (lambda t: json.dumps({"text": t}, ensure_ascii=False)) if suffix == ".jsonl" else (lambda t: t)
    head = "".join(enc(t) + "\r\n" for t in GOOD[:40]).encode()  # Windows line ends: numbering must agree
    data = head + bad + b"\r\n" + "".join(enc(t) + "\n" for t in GOOD[40:]).encode()
    p = tmp_path / f"mixed{suffix}"
    p.write_bytes(data)
    res, frame = run(p)
    assert skipped(res) == [(41, f"invalid UTF-8 at byte {len(head) + at} ({why})")]
    assert sorted(frame["text"]) == sorted(GOOD)  # Chinese and English, all kept
    m = res.manifest
    assert (m.counts["input"], m.counts["kept"], m.counts["skipped"], m.counts["blank_lines"]) == (101, 100, 1, 0)
    assert m.source["encoding"] == "utf-8" and m.source["undecodable_lines"] == 1


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_undecodable_last_line_without_newline_is_reported(tmp_path, suffix):
    enc = (lambda t: json.dumps({"text": t}, ensure_ascii=False)) if suffix == ".jsonl" else (lambda t: t)
    head = "".join(enc(t) + "\n" for t in GOOD).encode()
    p = tmp_path / f"tail{suffix}"
    p.write_bytes(head + b"caf\xe9")
    res, frame = run(p)
    assert skipped(res) == [(101, f"invalid UTF-8 at byte {len(head) + 3} (unexpected end of data)")]
    assert sorted(frame["text"]) == sorted(GOOD)


def test_undecodable_line_skips_its_paragraph(tmp_path):
    p = tmp_path / "paras.txt"
    p.write_bytes("第一段。\nfirst paragraph\n\n第二段。\n".encode() + b"second \xff paragraph\n\n"
                  + "".join(f"{t}\n\n" for t in GOOD[:20]).encode())
    res, frame = run(p, "text.format=paragraphs")  # the paragraph starts on line 4; byte 0xff is on line 5
    assert skipped(res) == [(4, "invalid UTF-8 at byte 50 (invalid start byte) (line 5)")]
    assert sorted(frame["text"]) == sorted(["第一段。\nfirst paragraph", *GOOD[:20]])
    assert res.manifest.counts["blank_lines"] == 22


def test_many_undecodable_lines_are_not_read_as_utf8(tmp_path):
    """Past the 90% rule the file is not UTF-8 with bad lines; it goes to encoding detection."""
    p = tmp_path / "half.txt"
    p.write_bytes("".join(f"{t}\n" for t in GOOD[1:20:2]).encode() + "".join(f"{t}\n" for t in GOOD[21:40:2]).encode("gb18030"))
    with pytest.raises(DataError) as e:
        run(p)
    assert "is not UTF-8" in str(e.value) and "text.encoding" in str(e.value)


@pytest.mark.parametrize("encoding, expected", [("gb18030", "gb18030"), ("gbk", "gb18030"), ("utf-16", "utf-16")])
def test_files_in_other_encodings_are_still_detected(tmp_path, encoding, expected):
    p = tmp_path / "legacy.txt"
    p.write_bytes("".join(f"{t}\n" for t in GOOD).encode(encoding))
    res, frame = run(p)
    assert res.manifest.source["encoding"] == expected and res.manifest.counts["skipped"] == 0
    assert sorted(frame["text"]) == sorted(GOOD)


def test_csv_with_undecodable_line_is_refused_naming_it(tmp_path):
    """A csv line may sit inside a quoted field, so csv is never read with lines left out."""
    p = tmp_path / "t.csv"
    p.write_bytes(b"id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(GOOD)).encode() + b"101,caf\xe9\n")
    with pytest.raises(DataError) as e:
        run(p, "kind=text")
    assert "UTF-8 except for 1 line(s)" in str(e.value) and "line 102" in str(e.value) and "text.encoding" in str(e.value)
