"""PII detection and redaction on strings: each type found, validated, and plain numbers left alone."""

import pytest

from genforge.data.normalize import normalize_text
from genforge.data.pii import PiiTally, card_issuer, find_pii, luhn_ok, redact, valid_cn_id


def _with_check_digit(first17: str) -> str:
    """A Chinese ID number with its MOD 11-2 check character."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights)) % 11]


def _luhn_complete(prefix: str) -> str:
    return next(prefix + str(d) for d in range(10) if luhn_ok(prefix + str(d)))


CN_ID = "11010519491231002X"  # the standard published example, checksum valid
CN_ID_2 = _with_check_digit("44030619900307123")
UNIONPAY = _luhn_complete("621700001234567")  # 16 digits


@pytest.mark.parametrize("text, expected", [
    ("联系我：zhang.san@example.com.cn，谢谢", [("email", "zhang.san@example.com.cn")]),
    ("回复.CHUNLING219@SOHU.COM", [("email", "CHUNLING219@SOHU.COM")]),
    ("手机13812345678，", [("phone", "13812345678")]),
    ("电话 +86 138-1234-5678 或 (+86)139 1234 5678 或 008613912345678",
     [("phone", "+86 138-1234-5678"), ("phone", "(+86)139 1234 5678"), ("phone", "008613912345678")]),
    ("office 010-12345678, (0755)1234567", [("phone", "010-12345678"), ("phone", "(0755)1234567")]),
    ("Call +1 (555) 123-4567 or 555-123-4567; London +44 20 7946 0958",
     [("phone", "+1 (555) 123-4567"), ("phone", "555-123-4567"), ("phone", "+44 20 7946 0958")]),
    (f"身份证号{CN_ID}。", [("id_card", CN_ID)]),
    (f"id {CN_ID_2.lower()} ok", [("id_card", CN_ID_2.lower())]),
    ("card 4111 1111 1111 1111 and amex 3782-822463-10005", [("credit_card", "4111 1111 1111 1111"), ("credit_card", "3782-822463-10005")]),
    (f"银联卡{UNIONPAY}", [("credit_card", UNIONPAY)]),
    ("13812345678@163.com", [("email", "13812345678@163.com")]),  # an e-mail, not a phone
])
def test_finds_each_type(text, expected):
    assert [(s.type, s.value) for s in find_pii(text)] == expected
    for s in find_pii(text):
        assert text[s.start:s.end] == s.value


@pytest.mark.parametrize("text", [
    "Order 20231001, total 12345678 yuan, on 2023-10-01 12:30:59, price 1,299.00 or 3.1415926535",
    "ISBN 9787111213826, timestamp 1696156800123, version 1.2.3, ip 192.168.100.200, years 2008-2012",
    "本人还有几张2000-100 1000-50 东券，qq 673946022，房号 1203",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
    "110105194912310021 has a wrong check digit; 11010519491331002X a month 13",
    "4111 1111 1111 1112 fails Luhn; 1234567812345670 passes Luhn but no issuer starts with 1",
    "12812345678 is no mobile (second digit 2); 238123456789 neither",
    "user@localhost and @handle are no addresses",
])
def test_plain_numbers_and_dates_are_not_pii(text):
    assert find_pii(text) == []


def test_validators():
    assert valid_cn_id(CN_ID) and valid_cn_id(CN_ID_2)
    assert not valid_cn_id(CN_ID[:-1] + "1") and not valid_cn_id("110105194902301234")  # bad check, 30 Feb
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert card_issuer("4111111111111111") == "visa" and card_issuer("378282246310005") == "amex"
    assert card_issuer(UNIONPAY) == "unionpay" and card_issuer("1234567812345670") is None


def test_redact_replaces_each_span_with_its_placeholder():
    text = f"邮箱 a.b@example.com, 手机 +86 13912345678, 身份证 {CN_ID}, 卡 4111-1111-1111-1111."
    out = redact(text)
    assert out == "邮箱 [EMAIL], 手机 [PHONE], 身份证 [ID_CARD], 卡 [CARD]."
    assert find_pii(out) == [] and redact(out) == out
    assert redact("nothing here 2023-10-01") == "nothing here 2023-10-01"


def test_full_width_digits_need_normalising_first():
    raw = "电话：１３８１２３４５６７８，邮箱：ｌｉ＠ｅｘａｍｐｌｅ．ｃｏｍ"
    assert find_pii(raw) == []
    assert [s.type for s in find_pii(normalize_text(raw))] == ["phone", "email"]


def test_types_filter_and_unknown_type():
    text = f"a@b.cn 13812345678 {CN_ID}"
    assert [s.type for s in find_pii(text, types=["phone"])] == ["phone"]
    with pytest.raises(ValueError, match="unknown PII types"):
        find_pii(text, types=["ssn"])


def test_tally_counts_rows_and_never_values():
    tally = PiiTally(max_examples=2)
    for row, text in enumerate(["a@b.cn c@d.cn", "nothing", "13812345678", "e@f.cn", "g@h.cn"]):
        tally.add(row, find_pii(text), column="contact")
    report = tally.to_json(redacted=True)
    assert report["email"] == {"found": 4, "rows": 3, "example_rows": [{"row": 0, "column": "contact"}, {"row": 3, "column": "contact"}],
                               "columns": {"contact": 4}}
    assert report["phone"]["found"] == 1 and report["id_card"]["found"] == 0 and report["redacted"] is True
    assert "a@b.cn" not in str(report) and "13812345678" not in str(report)
