"""Table ingest: type inference and overrides, missing values, duplicates, PII, round-tripping types."""

import json

import numpy as np
import pandas as pd
import pytest

from genforge.config import load_config
from genforge.data.ingest import ingest
from genforge.data.options import IngestConfig
from genforge.data.store import open_dataset
from genforge.data.table import infer_type
from genforge.errors import ConfigError, DataError

SMALL_GATE = ["gate.min_examples=1", "gate.min_per_class=1", "gate.max_missing_share=0.6"]
CN_ID = "11010519491231002X"

# Semicolon-separated (sniffed), with missing-value tokens, a mixed number/word column, codes with
# leading zeros, ISO dates in two spellings, yes/no, a duplicate row, a row with an extra field and PII.
MIXED = f"""id;name;age;joined;active;city;score;zip;contact;notes
1;Alice;34;2023-01-05;yes;Beijing;88.5;00123;alice@example.com;likes tea
2;Bob;NA;2023-02-11;no;Shanghai;;01234;;call 138-1234-5678
3;Carol;twenty;2023/03/01;yes;Beijing;92;02345;carol@example.org;
4;Dave;41;;no;Shenzhen;75.25;03456;;ID {CN_ID}
4;Dave;41;;no;Shenzhen;75.25;03456;;ID {CN_ID}
5;Eve;29;2023-05-20 10:30;N/A;Beijing;61;04567;eve@example.com;plain 20231001 2023-10-01
6;Frank;38;2023-06-30;yes;Shanghai;70;05678;;
7;Grace;;2023-07-04;no;Beijing;99;06789;;x;extra
8;Heidi;52;2023-08-15;no;Beijing;55;07890;;
"""


def run(source, *overrides, name="t", force=False):
    """Ingest with a gate sized for tiny test data; returns (result, dataset, all splits as one frame)."""
    res = ingest(str(source), name, load_config(IngestConfig, None, [*SMALL_GATE, *overrides]), force=force)
    ds = open_dataset(res.manifest.ref)
    return res, ds, pd.concat([ds.frame(s) for s in ("train", "val", "test")], ignore_index=True)


@pytest.fixture
def mixed(tmp_path):
    p = tmp_path / "people.csv"
    p.write_text(MIXED, encoding="utf-8")
    return p


def columns(manifest):
    return {c["name"]: c for c in manifest.data_schema["columns"]}


def test_mixed_table_each_case_handled_and_reported(mixed):
    res, ds, frame = run(mixed, "gate.max_unreadable_share=0.2")
    m = res.manifest
    assert m.kind == "table" and m.source["delimiter"] == ";" and m.source["encoding"] == "utf-8"
    assert (m.counts["input"], m.counts["kept"], m.counts["skipped"], m.counts["exact_duplicates"]) == (9, 7, 1, 1)
    assert m.cleaning["skipped"]["items"] == [{"item": 9, "reason": "11 fields, the header has 10"}]
    assert m.cleaning["exact_duplicates"]["items"] == [{"item": 6, "duplicate_of": 5}]

    cols = columns(m)
    assert {n: c["type"] for n, c in cols.items()} == {
        "id": "id", "name": "text", "age": "text", "joined": "datetime", "active": "boolean", "city": "categorical",
        "score": "numeric", "zip": "id", "contact": "text", "notes": "text"}
    assert {n: c["missing"] for n, c in cols.items()} == {
        "id": 0, "name": 0, "age": 1, "joined": 1, "active": 1, "city": 0, "score": 1, "zip": 0, "contact": 4, "notes": 3}
    assert m.cleaning["missing_values"]["contact"] == 4 and m.counts["missing_cells"] == 11
    assert "mixed: 5 of 6 values are numbers" in cols["age"]["note"] and "first at row 4" in cols["age"]["note"]
    assert cols["city"]["categories"] == ["Beijing", "Shanghai", "Shenzhen"]
    assert (cols["score"]["min"], cols["score"]["max"]) == (55.0, 92.0)
    assert (cols["joined"]["min"], cols["joined"]["max"]) == ("2023-01-05T00:00:00", "2023-08-15T00:00:00")
    assert (cols["active"]["true"], cols["active"]["false"]) == (3, 3)
    assert res.gate.passed and [r.figure for r in res.gate.rules if r.rule == "max_missing_share"] == [pytest.approx(4 / 7)]

    pii = m.cleaning["pii"]
    assert {t: pii[t]["found"] for t in ("email", "phone", "id_card", "credit_card")} == {"email": 3, "phone": 1, "id_card": 2, "credit_card": 0}
    assert pii["email"]["columns"] == {"contact": 3} and pii["phone"]["example_rows"] == [{"row": 3, "column": "notes"}]

    # types survive the parquet round trip, categories are shared by every split
    dtypes = {c: str(t) for c, t in ds.frame("train").dtypes.items()}
    assert dtypes == {"id": "Int64", "name": "string", "age": "string", "joined": "datetime64[us]", "active": "boolean",
                      "city": "category", "score": "float64", "zip": "string", "contact": "string", "notes": "string"}
    for s in ("train", "val", "test"):
        assert list(ds.frame(s)["city"].cat.categories) == ["Beijing", "Shanghai", "Shenzhen"]
    row = frame.set_index("id").loc[3]
    assert row["joined"] == pd.Timestamp("2023-03-01") and row["zip"] == "02345" and row["age"] == "twenty"
    assert pd.isna(frame.set_index("id").loc[2, "score"]) and pd.isna(frame.set_index("id").loc[5, "active"])
    assert frame.set_index("id").loc[5, "joined"] == pd.Timestamp("2023-05-20 10:30")

    again, _, _ = run(mixed, "gate.max_unreadable_share=0.2")
    assert again.manifest.version == m.version and not again.created


def test_failed_gate_names_the_unreadable_share(mixed):
    from genforge.errors import GateError

    with pytest.raises(GateError, match="max_unreadable_share: 0.1111"):
        run(mixed)


def test_pii_redaction_in_string_columns(mixed):
    res, _, frame = run(mixed, "pii.redact=true", "gate.max_unreadable_share=0.2")
    by_id = frame.set_index("id")
    assert by_id.loc[2, "notes"] == "call [PHONE]" and by_id.loc[4, "notes"] == "ID [ID_CARD]"
    assert set(by_id["contact"].dropna()) == {"[EMAIL]"} and columns(res.manifest)["contact"]["type"] == "categorical"
    assert by_id.loc[5, "notes"] == "plain 20231001 2023-10-01"  # numbers and dates left alone
    assert "alice@example.com" not in json.dumps(res.manifest.to_json())


def test_type_overrides(mixed):
    res, ds, frame = run(mixed, "gate.max_unreadable_share=0.2", "table.types={age: numeric, city: text, zip: categorical, id: numeric}")
    cols = columns(res.manifest)
    assert {n: (cols[n]["type"], cols[n]["source"]) for n in ("age", "city", "zip", "id", "name")} == {
        "age": ("numeric", "override"), "city": ("text", "override"), "zip": ("categorical", "override"),
        "id": ("numeric", "override"), "name": ("text", "inferred")}
    assert res.manifest.cleaning["coerced_to_missing"] == {"age": {"type": "numeric", "count": 1, "rows": [4]}}
    assert cols["age"]["missing"] == 2 and str(ds.frame("train")["age"].dtype) == "Int64"
    assert sorted(frame["age"].dropna()) == [29, 34, 38, 41, 52]
    with pytest.raises(ConfigError) as e:
        run(mixed, "table.types={agee: numeric}")
    assert "agee" in str(e.value) and "columns: id, name, age" in str(e.value)
    with pytest.raises(ConfigError, match="table.label_column='kind' is not a column"):
        run(mixed, "table.label_column=kind")
    with pytest.raises(ConfigError, match="table.types.age"):
        run(mixed, "table.types={age: number}")


def test_label_column_stratifies_and_duplicates_can_be_kept(mixed):
    res, _, frame = run(mixed, "gate.max_unreadable_share=0.2", "gate.max_missing_share=0.7", "table.label_column=city",
                         "table.drop_duplicate_rows=false")
    m = res.manifest
    assert m.classes == ["Beijing", "Shanghai", "Shenzhen"] and m.counts["per_class"] == {"Beijing": 4, "Shanghai": 2, "Shenzhen": 2}
    assert m.counts["kept"] == 8 and m.counts["exact_duplicates"] == 1 and m.cleaning["exact_duplicates"]["dropped"] is False
    assert m.split["stratified"] and m.split["per_class"]["val"]["Beijing"] == 1


@pytest.mark.parametrize("values, name, expected", [
    (["true", "False", "YES", None, "n"], "flag", "boolean"),
    (["是", "否", "是"], "会员", "boolean"),
    (["1", "2", "2.5", "-3e2"], "x", "numeric"),
    (["0", "1", "1", "0"], "x", "numeric"),  # 0/1 stays numeric: override to boolean if meant
    (["10", "11", "12"], "user_id", "id"),
    (["10", "11", "12"], "count", "numeric"),
    (["007", "008", "009"], "code", "id"),  # leading zeros: codes, not numbers
    (["2023-10-01", "2023-10-02T08:30:00+08:00", "2023/1/5"], "d", "datetime"),
    (["01/10/2023", "02/10/2023", "03/10/2023"], "d", "id"),  # ambiguous day/month: not inferred
    (["2023-02-30", "2023-03-01", "2023-02-30", "2023-03-01"], "d", "categorical"),  # no such day
    (["2023年10月1日", "2024年1月15日 08:30"], "日期", "datetime"),
    (["a", "b", "a", "b", "c", "c"], "x", "categorical"),
    (["Alice", "Bob", "Carol"], "name", "text"),
    (["A-001", "A-002", "A-003"], "sku", "id"),
    ([None, None], "empty", "text"),
])
def test_inference_rules(values, name, expected):
    assert infer_type(name, pd.Series(values, dtype=object), max_categories=50)[0] == expected


def test_typed_sources_keep_their_types(tmp_path):
    src = pd.DataFrame({
        "when": pd.to_datetime(["2024-01-01 10:00", None, "2024-03-01", "2024-04-01"], format="ISO8601"),
        "ok": [True, False, True, True],
        "n": pd.array([1, None, 3, 4], dtype="Int64"),
        "f": [0.5, np.nan, 1.5, 2.5],
        "grade": pd.Categorical(["a", "b", "a", None]),
        "order_id": [101, 102, 103, 104],
        "phone": [13812345678, 13912345678, 15012345678, 18612345678],
    })
    p = tmp_path / "t.parquet"
    src.to_parquet(p, index=False)
    res, ds, frame = run(p)
    cols = columns(res.manifest)
    assert {n: c["type"] for n, c in cols.items()} == {"when": "datetime", "ok": "boolean", "n": "numeric", "f": "numeric",
                                                       "grade": "categorical", "order_id": "id", "phone": "numeric"}
    assert res.manifest.cleaning["pii"]["phone"]["found"] == 4  # integer columns are scanned too
    frame = frame.sort_values("order_id").reset_index(drop=True)
    assert str(frame["when"].dtype).startswith("datetime64") and pd.isna(frame.loc[1, "when"])
    assert frame["n"].dtype == "Int64" and frame["ok"].dtype == "boolean" and frame["grade"].dtype == "category"
    assert frame["f"].isna().sum() == 1 and cols["n"]["missing"] == 1


def test_gbk_csv_is_detected(tmp_path):
    p = tmp_path / "gbk.csv"
    rows = ["城市,评价,分数"] + [f"{c},{t},{s}" for c, t, s in [("北京", "服务很好，很满意", 5), ("上海", "一般般吧，价格太贵", 3), ("北京", "环境不错，下次再来", 4), ("广州", "早餐种类太少了", 2)]]
    p.write_bytes(("\n".join(rows) + "\n").encode("gbk"))
    res, _, frame = run(p)
    assert res.manifest.source["encoding"] == "gb18030" and set(frame["城市"]) == {"北京", "上海", "广州"}
    p.write_bytes("a,b\nCafé,crème\nnaïve,façade\n".encode("latin-1"))
    with pytest.raises(DataError, match="--set table.encoding="):
        run(p, name="u")


def test_builtin_penguins():
    res = ingest("builtin:penguins", "penguins", IngestConfig())
    m = res.manifest
    assert (m.counts["input"], m.counts["kept"], m.counts["exact_duplicates"]) == (344, 344, 0)
    assert m.classes == ["Adelie", "Chinstrap", "Gentoo"] and m.counts["per_class"] == {"Adelie": 152, "Chinstrap": 68, "Gentoo": 124}
    cols = columns(m)
    assert cols["sex"]["type"] == "categorical" and cols["sex"]["missing"] == 11 and cols["year"]["dtype"] == "Int64"
    assert cols["bill_length_mm"]["missing"] == 2 and m.data_schema["label_column"] == "species"
    assert res.gate.passed and sum(m.split["sizes"].values()) == 344
    assert ingest("builtin:penguins", "penguins", IngestConfig()).manifest.version == m.version
