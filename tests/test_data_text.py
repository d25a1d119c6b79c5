"""Text ingest: formats, encodings, malformed input, normalisation, PII, duplicates, split, versions."""

import json
import random

import pandas as pd
import pytest
from typer.testing import CliRunner

from genforge.cli import _app
from genforge.config import load_config
from genforge.data.ingest import ingest
from genforge.data.normalize import normalize_text
from genforge.data.options import IngestConfig
from genforge.data.store import open_dataset
from genforge.errors import ConfigError, DataError, GateError

SMALL_GATE = ["gate.min_examples=1", "gate.min_per_class=1"]
CN_ID = "11010519491231002X"


def run(source, *overrides, name="t", force=False):
    """Ingest with a gate sized for tiny test data; returns (result, all splits as one frame)."""
    res = ingest(str(source), name, load_config(IngestConfig, None, [*SMALL_GATE, *overrides]), force=force)
    ds = open_dataset(res.manifest.ref)
    return res, pd.concat([ds.frame(s) for s in ("train", "val", "test")], ignore_index=True)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def filler(rng: random.Random) -> str:
    """A distinct text (random ideographs and letters) that is no near-duplicate of any other."""
    zh = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(20))
    en = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))) for _ in range(6))
    return f"{zh} {en}"


# ---- normalisation -----------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("ＡＢＣ１２３　全角，保留中文标点！（好）～…①②", "ABC123 全角，保留中文标点！（好）～…①②"),
    ("“引号”《书名》【括号】、。", "“引号”《书名》【括号】、。"),
    ("  tabs\tand   spaces  \r\nline two\r\rline three  ", "tabs and spaces\nline two\n\nline three"),
    ("a\n\n\n\n\nb", "a\n\nb"),
    ("zero\u200bwidth\ufeff soft\u00adhyphen bell\x07 nul\x00 bidi\u202e", "zerowidth softhyphen bell nul bidi"),
    ("ﬁne café\u0301 ＠＃％", "fine caf\u00e9\u0301 @#%"),
    ("e\u0301", "\u00e9"),  # composed
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected
    assert normalize_text(expected) == expected  # idempotent


def test_full_nfkc_on_request():
    assert normalize_text("价格，质量！（好）…", keep_cjk_punctuation=False) == "价格,质量!(好)..."


# ---- the mixed Chinese/English corpus (issue 3, must-show 3) ---------------------------------

ZH = ("这家酒店的位置非常好，离地铁站只有五分钟的步行距离，房间干净整洁，服务员的态度也很热情，早餐的种类很丰富，"
      "周围有很多餐馆和便利店，晚上也很安静，性价比很高，下次出差还会选择这里入住，推荐给大家。")
EN = ("The hotel is in a great location, five minutes from the subway station; the room was clean and quiet, "
      "the staff were friendly and breakfast had plenty of choice. We would happily stay here again next time.")
BAD_ZH = "质量很差，用了两天就坏了，客服也不理人。"
BAD_EN = "Terrible battery life, it died after two days and support never answered."
PII_ZH = f"发票请寄给我，电话 138 1234 5678，邮箱 li.lei@example.com，身份证 {CN_ID}。"
PII_EN = "Refund to card 4111 1111 1111 1111 please, or call +1 (555) 123-4567."


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(0)
    records = [
        {"text": ZH, "label": "pos"},                                  # line 1
        {"text": EN, "label": "pos"},                                  # 2
        {"text": BAD_ZH, "label": "neg"},                              # 3
        {"text": BAD_EN, "label": "neg"},                              # 4
        {"text": f"  {BAD_ZH}\u3000 ", "label": "neg"},                # 5 exact duplicate of 3 once normalised
        {"text": BAD_EN.replace(" it", "\u200b  it"), "label": "pos"}, # 6 exact duplicate of 4, other label
        {"text": ZH.replace("五分钟", "六分钟"), "label": "pos"},       # 7 near-duplicate of 1
        {"text": EN.replace("great", "superb"), "label": "pos"},       # 8 near-duplicate of 2
        {"text": PII_ZH, "label": "neg"},                              # 9 phone, e-mail, ID card
        {"text": PII_EN, "label": "neg"},                              # 10 card, phone
        {"text": " \t ", "label": "pos"},                              # 11 empty once normalised
        {"text": "ＡＢＣ１２３ 全角字符，价格很实惠！", "label": "pos"},    # 12 normalised
        {"text": "长" * 301, "label": "neg"},                          # 13 too long
    ]
    records += [{"text": filler(rng), "label": ("pos", "neg")[i % 2]} for i in range(20)]  # 14..33
    return write_jsonl(tmp_path / "reviews.jsonl", records)


def test_mixed_corpus_each_case_handled_and_reported(corpus):
    res, frame = run(corpus, "text.label_field=label", "text.max_chars=300", "pii.redact=true")
    m = res.manifest
    c, cl = m.counts, m.cleaning
    assert (c["input"], c["kept"], c["skipped"], c["too_short"], c["too_long"]) == (33, 27, 0, 1, 1)
    assert (c["exact_duplicates"], c["near_duplicates"]) == (2, 2)
    assert cl["exact_duplicates"]["items"] == [{"item": 5, "duplicate_of": 3}, {"item": 6, "duplicate_of": 4}]
    assert cl["exact_duplicates"]["label_conflicts"] == 1
    assert [(d["item"], d["near"]) for d in cl["near_duplicates"]["items"]] == [(7, 1), (8, 2)]
    assert all(0.8 <= d["jaccard"] < 1 for d in cl["near_duplicates"]["items"])
    assert cl["length"]["too_short"]["items"] == [{"item": 11, "chars": 0}]
    assert cl["length"]["too_long"]["items"] == [{"item": 13, "chars": 301}]
    pii = cl["pii"]
    assert {t: pii[t]["found"] for t in ("email", "phone", "id_card", "credit_card")} == {"email": 1, "phone": 2, "id_card": 1, "credit_card": 1}
    assert pii["phone"]["example_rows"] == [9, 10] and pii["redacted"] is True
    assert c["per_class"] == {"neg": 14, "pos": 13} and m.classes == ["neg", "pos"]
    assert sum(m.split["sizes"].values()) == 27 and all(m.split["per_class"][s]["neg"] >= 1 for s in ("val", "test"))
    assert res.gate.passed and m.kind == "text"

    texts = dict(zip(frame["row_id"], frame["text"]))
    assert texts[9] == "发票请寄给我，电话 [PHONE]，邮箱 [EMAIL]，身份证 [ID_CARD]。"
    assert texts[10] == "Refund to card [CARD] please, or call [PHONE]."
    assert texts[12] == "ABC123 全角字符，价格很实惠！" and texts[3] == BAD_ZH
    assert not {5, 6, 7, 8, 11, 13} & set(texts)
    assert list(frame.columns) == ["text", "label", "row_id"] and str(frame["text"].dtype) == "string"
    stored = json.dumps(m.to_json(), ensure_ascii=False) + "".join(texts.values())
    assert all(v not in stored for v in ("li.lei@example.com", "138 1234 5678", CN_ID, "4111 1111"))

    again, _ = run(corpus, "text.label_field=label", "text.max_chars=300", "pii.redact=true")
    assert again.manifest.version == m.version and not again.created
    other, _ = run(corpus, "text.label_field=label", "text.max_chars=300")  # unredacted: other data, other version
    assert other.manifest.version != m.version and other.manifest.cleaning["pii"]["redacted"] is False


def test_near_duplicate_removal_can_be_switched_off(corpus):
    res, _ = run(corpus, "text.near_duplicate_jaccard=1.0", "text.max_chars=300")
    assert res.manifest.counts["near_duplicates"] == 0 and res.manifest.counts["kept"] == 29


# ---- formats ------------------------------------------------------------------------------


def test_txt_lines_and_paragraphs(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("第一行 line one\n\n  \nsecond line\r\nthird\n", encoding="utf-8")
    res, frame = run(p)
    assert res.manifest.counts["blank_lines"] == 2 and res.manifest.source["format"] == "lines"
    assert sorted(zip(frame["row_id"], frame["text"])) == [(1, "第一行 line one"), (4, "second line"), (5, "third")]
    p.write_text("para one a\npara one b\n\n\npara two\n", encoding="utf-8")
    res, frame = run(p, "text.format=paragraphs", name="p")
    assert sorted(zip(frame["row_id"], frame["text"])) == [(1, "para one a\npara one b"), (5, "para two")]
    with pytest.raises(ConfigError, match="label_field"):
        run(p, "text.label_field=label", name="q")


def test_csv_text_with_field_and_label(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('id;review;stars\n1;"很好, 推荐";5\n2;"Bad; broke\nafter a day";1\n3;ok;5\n', encoding="utf-8")
    res, frame = run(p, "kind=text", "text.field=review", "text.label_field=stars")
    assert res.manifest.source["delimiter"] == ";" and res.manifest.classes == ["1", "5"]
    assert sorted(zip(frame["row_id"], frame["text"])) == [(2, "很好, 推荐"), (3, "Bad; broke\nafter a day"), (5, "ok")]


def test_prompt_completion_pairs(tmp_path):
    p = write_jsonl(tmp_path / "ft.jsonl", [
        {"prompt": "翻译：你好", "completion": "Hello"},
        {"prompt": "Translate: 谢谢", "completion": "Thanks"},
        {"prompt": "翻译：你好 ", "completion": " Hello"},  # duplicate pair once normalised
        {"prompt": "Say hi", "completion": ""},  # nothing to learn
    ])
    res, frame = run(p, "text.prompt_field=prompt", "text.completion_field=completion", "gate.max_length_violation_share=0.5")
    assert list(frame.columns) == ["prompt", "completion", "row_id"] and res.manifest.data_schema["format"] == "prompt_completion"
    assert sorted(zip(frame["prompt"], frame["completion"])) == [("Translate: 谢谢", "Thanks"), ("翻译：你好", "Hello")]
    assert res.manifest.counts["exact_duplicates"] == 1 and res.manifest.counts["too_short"] == 1
    with pytest.raises(ConfigError, match="go together"):
        run(p, "text.prompt_field=prompt", name="x")


# ---- encodings ----------------------------------------------------------------------------

ZH_LINES = "这个产品非常好，我很喜欢。\n质量一般，价格太贵了。\n物流很快，包装完好，推荐购买。\n"


@pytest.mark.parametrize("encoding, expected", [("gb18030", "gb18030"), ("gbk", "gb18030"), ("utf-16", "utf-16"), ("utf-8-sig", "utf-8-sig"), ("utf-8", "utf-8")])
def test_encodings_detected(tmp_path, encoding, expected):
    p = tmp_path / "zh.txt"
    p.write_bytes(ZH_LINES.encode(encoding))
    res, frame = run(p)
    assert res.manifest.source["encoding"] == expected
    assert sorted(frame["text"]) == sorted(ZH_LINES.split())


def test_ambiguous_encoding_is_refused_and_can_be_given(tmp_path):
    p = tmp_path / "fr.txt"
    p.write_bytes("Café crème brûlée, naïve façade.\nÜber die Straße zur Bäckerei.\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        run(p)
    assert str(p) in str(e.value) and "--set text.encoding=" in str(e.value) and "ambiguous" in str(e.value)
    res, frame = run(p, "text.encoding=latin-1")
    assert sorted(frame["text"]) == ["Café crème brûlée, naïve façade.", "Über die Straße zur Bäckerei."]


def test_binary_and_wrong_encodings_are_refused(tmp_path):
    p = tmp_path / "noise.txt"
    p.write_bytes(random.Random(1).randbytes(600))
    with pytest.raises(DataError, match="text.encoding"):
        run(p)
    p.write_bytes(ZH_LINES.encode("gb18030"))
    with pytest.raises(DataError, match="not valid utf-8: bytes 0-1"):
        run(p, "text.encoding=utf-8")
    with pytest.raises(ConfigError, match="unknown encoding 'klingon'"):
        run(p, "text.encoding=klingon")


# ---- malformed input ----------------------------------------------------------------------


def test_malformed_jsonl_lines_are_reported_and_skipped(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join([
        '{"text": "good one", "label": "a"}',
        '{"text": "broken", ',
        "[1, 2]",
        '{"label": "a"}',
        '{"text": 42, "label": "b"}',
        "",
        '{"text": "good two", "label": null}',
        '{"text": "good three", "label": "b"}',
    ]) + "\n", encoding="utf-8")
    res, frame = run(p, "text.label_field=label", force=True)
    m = res.manifest
    assert sorted(frame["text"]) == ["good one", "good three"]
    assert [(s["item"], s["reason"]) for s in m.cleaning["skipped"]["items"]] == [
        (2, "invalid JSON: Expecting property name enclosed in double quotes (column 20)"),
        (3, "a JSON list, not an object"),
        (4, "no field 'text'"),
        (5, "field 'text' is int, not a string"),
        (7, "no label in field 'label'"),
    ]
    assert (m.counts["input"], m.counts["skipped"], m.counts["blank_lines"]) == (7, 5, 1)
    assert not res.gate.passed and m.gate["forced"]
    assert [r.rule for r in res.gate.failed] == ["max_unreadable_share"] and res.gate.failed[0].figure == pytest.approx(5 / 7)


def test_malformed_csv_rows_are_reported_and_skipped(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text('id,text\n1,hello world\n2,"bad"quote\n3,too,many\n4,"two\nlines"\n5,last\n', encoding="utf-8")
    res, frame = run(p, "kind=text", force=True)
    assert sorted(zip(frame["row_id"], frame["text"])) == [(2, "hello world"), (5, "two\nlines"), (7, "last")]
    assert [(s["item"], s["reason"]) for s in res.manifest.cleaning["skipped"]["items"]] == [
        (3, "malformed csv (line 3): ',' expected after '\"'"), (4, "3 fields, the header has 2")]


def test_missing_field_names_the_fields_found(tmp_path):
    p = write_jsonl(tmp_path / "x.jsonl", [{"content": "a", "meta": 1}, {"content": "b", "extra": 2}])
    with pytest.raises(DataError) as e:
        run(p)
    assert "no record has the field 'text'" in str(e.value) and "content, meta, extra" in str(e.value) and "text.field" in str(e.value)
    res, _ = run(p, "text.field=content")
    assert res.manifest.counts["kept"] == 2
    (tmp_path / "arr.json").write_text('[{"text": "a"}]', encoding="utf-8")
    with pytest.raises(DataError, match="JSON array"):
        run(tmp_path / "arr.json")


# ---- the command line ---------------------------------------------------------------------


def test_cli_ingest_same_version_twice_and_gate_failure(corpus):
    args = ["data", "ingest", str(corpus), "--name", "cli", "--set", "text.max_chars=300", "--set", "text.label_field=label", "--set", "gate.min_examples=5"]
    first = CliRunner().invoke(_app, args)
    assert first.exit_code == 0, first.output
    version = open_dataset("cli").version
    assert f"cli@{version}" in first.output and "new version" in first.output
    second = CliRunner().invoke(_app, args)
    assert second.exit_code == 0 and "same version" in second.output and f"cli@{version}" in second.output
    failed = CliRunner().invoke(_app, args[:-1] + ["gate.min_examples=1000"])
    assert failed.exit_code == 1 and isinstance(failed.exception, GateError)
    assert "min_examples: 27 examples, at least 1000 required" in str(failed.exception)


@pytest.mark.slow
def test_builtin_reviews():
    res = ingest("builtin:reviews", "reviews", IngestConfig(), force=True)
    c = res.manifest.counts
    assert c["input"] == 35124 and c["exact_duplicates"] > 17000 and c["kept"] + c["exact_duplicates"] + c["near_duplicates"] + c["too_short"] == 35124
    assert res.manifest.classes == ["negative", "positive"]


def test_builtin_news():
    """gensim's Lee corpus, read offline from site-packages without importing gensim."""
    res = ingest("builtin:news", "news", IngestConfig())
    m = res.manifest
    c = m.counts
    assert c["input"] == 350 and c["skipped"] == 0 and c["exact_duplicates"] == 7 and c["kept"] > 330
    assert m.classes == [] and m.source["licence"].startswith("gensim LGPL-2.1") and res.gate.passed
    ds = open_dataset(m.ref)
    texts = pd.concat([ds.frame(s) for s in ("train", "val", "test")])["text"]
    assert texts.str.len().sum() > 350_000
    assert texts.str.contains("bushfire").any()
    assert texts.str.contains("£3,000", regex=False).any()  # lee.cor's one cp1252 byte, decoded
