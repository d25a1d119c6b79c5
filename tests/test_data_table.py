"""Table ingest: type inference and overrides, missing values, duplicates, PII, round-tripping types."""

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genforge.config import load_config
from genforge.data.ingest import ingest
from genforge.data.options import IngestConfig
from genforge.data.store import open_dataset
from genforge.data.pii import PiiSpan, fake_pii, find_pii
from genforge.data.table import NumberFormat, convert, infer_type, number_format
from genforge.errors import ConfigError, DataError

ORDERS = Path(__file__).parent / "data" / "orders_gbk.csv"  # as Excel exports it: GBK, Chinese headers, 40 orders
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
        "score": "numeric", "zip": "id", "notes": "text"}
    assert {n: c["missing"] for n, c in cols.items()} == {
        "id": 0, "name": 0, "age": 1, "joined": 1, "active": 1, "city": 0, "score": 1, "zip": 0, "notes": 3}
    assert m.cleaning["missing_values"]["notes"] == 3 and m.counts["missing_cells"] == 7
    # contact holds only e-mail addresses: a PII column, excluded by default; notes only mentions PII
    assert m.data_schema["excluded_columns"] == [{"name": "contact", "reason": "PII column (table.pii_columns=exclude)", "pii": {
        "types": {"email": 3}, "pii_values": 3, "values": 3, "other_values": 0, "handling": "exclude"}}]
    assert (m.counts["columns"], m.counts["excluded_columns"]) == (9, 1) and "contact" not in frame.columns
    assert "mixed: 5 of 6 values are numbers" in cols["age"]["note"] and "first at row 4" in cols["age"]["note"]
    assert cols["city"]["categories"] == ["Beijing", "Shanghai", "Shenzhen"]
    assert (cols["score"]["min"], cols["score"]["max"]) == (55.0, 92.0)
    assert (cols["joined"]["min"], cols["joined"]["max"]) == ("2023-01-05T00:00:00", "2023-08-15T00:00:00")
    assert (cols["active"]["true"], cols["active"]["false"]) == (3, 3)
    assert res.gate.passed and [r.figure for r in res.gate.rules if r.rule == "max_missing_share"] == [pytest.approx(3 / 7)]

    pii = m.cleaning["pii"]
    assert {t: pii[t]["found"] for t in ("email", "phone", "id_card", "credit_card")} == {"email": 3, "phone": 1, "id_card": 2, "credit_card": 0}
    assert pii["email"]["columns"] == {"contact": 3} and pii["phone"]["example_rows"] == [{"row": 3, "column": "notes"}]

    # types survive the parquet round trip, categories are shared by every split
    dtypes = {c: str(t) for c, t in ds.frame("train").dtypes.items()}
    assert dtypes == {"id": "Int64", "name": "string", "age": "string", "joined": "datetime64[us]", "active": "boolean",
                      "city": "category", "score": "float64", "zip": "string", "notes": "string"}
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
    assert "contact" not in frame.columns  # a PII column is excluded, redacted or not
    assert by_id.loc[5, "notes"] == "plain 20231001 2023-10-01"  # numbers and dates left alone
    assert "alice@example.com" not in json.dumps(res.manifest.to_json())

    # kept on request (a false positive), it is redacted like any other column
    res, _, frame = run(mixed, "pii.redact=true", "gate.max_unreadable_share=0.2", "table.keep_pii_columns=[contact]", name="k")
    assert set(frame["contact"].dropna()) == {"[EMAIL]"} and columns(res.manifest)["contact"]["type"] == "categorical"
    assert res.manifest.cleaning["pii_columns"]["count"] == 0 and res.manifest.data_schema["excluded_columns"] == []
    assert res.manifest.cleaning["pii_columns"]["kept"]["contact"]["handling"] == "kept (table.keep_pii_columns)"

    # faked: same shape, never a real address; the label column cannot be a PII column
    res, _, frame = run(mixed, "gate.max_unreadable_share=0.2", "table.pii_columns=fake", name="f")
    fakes, real = list(frame.set_index("id")["contact"].dropna().sort_index()), ["alice@example.com", "carol@example.org", "eve@example.com"]
    assert [len(f) for f in fakes] == [len(r) for r in real] and not set(fakes) & set(real)
    assert all(find_pii(f)[0].type == "email" and f.endswith((".com", ".org")) for f in fakes)
    assert columns(res.manifest)["contact"]["type"] == "id" and columns(res.manifest)["contact"]["pii"]["handling"] == "fake"
    with pytest.raises(ConfigError, match="table.label_column='contact' is a PII column"):
        run(mixed, "gate.max_unreadable_share=0.2", "table.label_column=contact", name="l")
    with pytest.raises(ConfigError, match="table.keep_pii_columns names columns that .* does not have: mail"):
        run(mixed, "table.keep_pii_columns=[mail]", name="l")


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
    (["1,234.50", "442,820", "88", "-1,000"], "金额", "numeric"),  # thousands separators
    (["12%", "7.5%", "0%", "12%"], "折扣率", "numeric"),  # percentages
    (["12%", "7", "12%", "7"], "x", "categorical"),  # some in %, some not: different scales
    (["1,23", "4,56", "1,23", "4,56"], "x", "categorical"),  # a decimal comma is not a thousands separator
    (["2023001", "2023002", "2023003"], "订单号", "id"),
    (["A-001", "A-002", "A-003"], "sku", "id"),
    ([None, None], "empty", "text"),
])
def test_inference_rules(values, name, expected):
    assert infer_type(name, pd.Series(values, dtype=object), max_categories=50)[0] == expected


def test_formatted_numbers_parse_and_keep_their_format():
    amounts = pd.Series(["1,234.50", "442,820", "abc", None], dtype=object)  # as an override to numeric sees them
    fmt = number_format(amounts)
    assert fmt == NumberFormat(thousands_separator=True, percent=False, decimals=2)
    parsed = convert(amounts, "numeric", fmt)  # 'abc' becomes a missing value (ingest counts it)
    assert str(parsed.dtype) == "float64" and parsed.tolist()[:2] == [1234.5, 442820.0] and parsed.isna().tolist()[2:] == [True, True]
    ints = pd.Series(["1,000", "22,000", "5"], dtype=object)
    assert convert(ints, "numeric", number_format(ints)).astype(object).tolist() == [1000, 22000, 5]  # still Int64
    rates = pd.Series(["12%", "7.5%", "-1%"], dtype=object)
    assert convert(rates, "numeric", number_format(rates)).tolist() == pytest.approx([0.12, 0.075, -0.01])
    assert number_format(pd.Series(["12%", "7"], dtype=object)) is None  # mixed scales
    assert number_format(pd.Series(["12", "7"], dtype=object)) is None  # plain numbers need no format


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
                                                       "grade": "categorical", "order_id": "id"}
    assert res.manifest.cleaning["pii"]["phone"]["found"] == 4  # integer columns are scanned too...
    assert [c["name"] for c in res.manifest.data_schema["excluded_columns"]] == ["phone"]  # ...and a PII column is never modelled
    frame = frame.sort_values("order_id").reset_index(drop=True)
    assert str(frame["when"].dtype).startswith("datetime64") and pd.isna(frame.loc[1, "when"])
    assert frame["n"].dtype == "Int64" and frame["ok"].dtype == "boolean" and frame["grade"].dtype == "category"
    assert frame["f"].isna().sum() == 1 and cols["n"]["missing"] == 1

    _, _, faked = run(p, "table.pii_columns=fake", name="f")
    assert faked["phone"].dtype == "Int64" and not set(faked["phone"]) & set(src["phone"])
    assert all(re.fullmatch(r"1[3-9][0-9]{9}", str(x)) for x in faked["phone"])


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


def _mobile_core(value):
    """The 11 digits of a Chinese mobile number however it is written (+86 138 1234 5678)."""
    return re.sub(r"[^0-9]", "", value)[-11:]


@pytest.mark.parametrize("mode", ["exclude", "fake"])
def test_business_export_gbk_orders(mode):
    """The order table from the issue: amounts with thousands separators and percentages are numbers
    (the schema says what was removed), the mobile column is PII and never reaches a model."""
    res, _, frame = run(ORDERS, f"table.pii_columns={mode}", name=f"orders-{mode}")
    m, cols = res.manifest, columns(res.manifest)
    assert m.source["encoding"] == "gb18030" and m.counts["kept"] == 40
    assert {n: (c["type"], c["dtype"]) for n, c in cols.items() if n != "客户手机"} == {
        "订单号": ("id", "string"), "下单日期": ("datetime", "datetime64[us]"), "金额": ("numeric", "float64"),
        "折扣率": ("numeric", "float64"), "地区": ("categorical", "category")}
    assert cols["金额"]["format"] == {"thousands_separator": ",", "percent": False, "decimals": 2,
                                      "stripped": ["thousands separators ',' removed"]}
    assert cols["折扣率"]["format"] == {"thousands_separator": None, "percent": True, "decimals": 1,
                                       "stripped": ["'%' removed, value divided by 100 (12% -> 0.12)"]}
    assert "thousands separators ',' removed" in cols["金额"]["rule"] and "divided by 100" in cols["折扣率"]["rule"]
    by_order = frame.set_index("订单号")
    assert by_order.loc["DD2023000001", "金额"] == 1234.5 and by_order.loc["DD2023000002", "金额"] == 442820.0
    assert by_order.loc["DD2023000003", "折扣率"] == pytest.approx(0.12) and by_order["折扣率"].max() == pytest.approx(0.3)
    assert m.cleaning["pii"]["phone"]["columns"] == {"客户手机": 40}
    pii = {"types": {"phone": 40}, "pii_values": 40, "values": 40, "other_values": 0, "handling": mode}
    assert m.cleaning["pii_columns"] == {"count": 1, "handling": mode, "min_share": 0.5, "columns": {"客户手机": pii}, "kept": {}}

    real = pd.read_csv(ORDERS, encoding="gbk", dtype=str).set_index("订单号")["客户手机"]
    if mode == "exclude":
        assert "客户手机" not in frame.columns and m.data_schema["excluded_columns"][0]["name"] == "客户手机"
    else:
        assert (cols["客户手机"]["type"], cols["客户手机"]["source"], cols["客户手机"]["pii"]) == ("id", "pii", pii)
        fake = by_order["客户手机"]
        for order, value in fake.items():  # same layout, a valid mobile number, never the real one
            original = real[order]
            assert len(value) == len(original) and re.sub(r"[0-9]", "9", value) == re.sub(r"[0-9]", "9", original)
            assert value.startswith("+86 ") == original.startswith("+86 ") and re.fullmatch(r"1[3-9][0-9]{9}", _mobile_core(value))
        assert not {_mobile_core(v) for v in fake} & {_mobile_core(v) for v in real}
        again, _, _ = run(ORDERS, f"table.pii_columns={mode}", name=f"orders-{mode}")
        assert again.manifest.version == m.version and not again.created  # seeded: the same fakes every time
    assert not any(_mobile_core(v) in json.dumps(m.to_json(), ensure_ascii=False) for v in real)


@pytest.mark.parametrize("value, kind", [
    ("13812345678", "phone"), ("+86 138-1234-5678", "phone"), ("010-12345678", "phone"), ("(555) 123-4567", "phone"),
    ("alice.smith@example.com", "email"), (CN_ID, "id_card"), ("4111 1111 1111 1111", "credit_card"),
])
def test_fake_pii_keeps_the_format(value, kind):
    span = find_pii(value)[0]
    assert (span.type, span.value) == (kind, value)
    fakes = [fake_pii(span, random.Random(seed)) for seed in range(20)]
    for fake in fakes:
        again = find_pii(fake)
        assert len(fake) == len(value) and [(s.type, s.value) for s in again] == [(kind, fake)]  # still valid of its type
        if kind != "email":  # digits where digits were (an ID's check character may be X or a digit)
            assert re.sub(r"[0-9X]", "9", fake) == re.sub(r"[0-9X]", "9", value)
    assert len(set(fakes)) == 20 and value not in fakes
    assert fake_pii(span, random.Random(1)) == fake_pii(span, random.Random(1))
    assert fake_pii(PiiSpan("phone", 0, 11, "13812345678"), random.Random(0))[:1] == "1"


def _wide_csv(path, n_columns, n_rows=5):
    rng = random.Random(0)
    lines = [",".join(f"c{i}" for i in range(n_columns))]
    lines += [",".join(str(rng.randint(0, 999)) for _ in range(n_columns)) for _ in range(n_rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_too_many_columns_refused_before_the_work(tmp_path):
    wide = _wide_csv(tmp_path / "wide.csv", 20000)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"has 20000 columns, more than table.max_columns=2000; .*--set table.max_columns=20000"):
        run(wide)
    assert time.monotonic() - start < 20  # a generous guard: the refusal comes before any per-column work

    p = tmp_path / "w.parquet"
    pd.DataFrame({f"c{i}": [1, 2] for i in range(5)}).to_parquet(p, index=False)
    with pytest.raises(DataError, match="has 5 columns, more than table.max_columns=4"):
        run(p, "table.max_columns=4")
    with pytest.raises(ConfigError, match="max_columns"):
        run(p, "table.max_columns=0")

    start = time.monotonic()
    res, _, frame = run(_wide_csv(tmp_path / "w3000.csv", 3000), "table.max_columns=3000", name="w")
    assert time.monotonic() - start < 120  # per-column work is linear and light (seconds here)
    assert res.manifest.counts["columns"] == 3000 and frame.shape == (5, 3000) and str(frame["c0"].dtype) == "Int64"
