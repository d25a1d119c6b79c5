"""Personal data in text: find it (with its type and position) and redact it. Used by ingest for
text and table columns, and by the service's moderation, so it is plain functions on strings.

Types and rules (each pattern, then a validation that rejects plain numbers and dates):
- email: local@domain.tld with ASCII letters, digits and ._%+- (no IDN domains).
- id_card: Chinese resident ID number, 18 characters: region (first digit 1-8), a real birth date
  YYYYMMDD, sequence, and the ISO 7064 MOD 11-2 check character (0-9 or X). The old 15-digit form
  has no check digit and is not detected (too many false positives on plain numbers).
- credit_card: 13-19 digits, contiguous or in groups of 4 (Amex 4-6-5) split by spaces or
  hyphens, passing the Luhn check and starting with a real issuer prefix (Visa, Mastercard, Amex,
  Discover, UnionPay, JCB, Diners): one random number in ten passes Luhn, far fewer also match a prefix.
- phone: Chinese mobile numbers 1[3-9]X XXXX XXXX with optional +86 / 0086 / (+86) and
  space/hyphen separators; Chinese landlines with an area code (010-12345678, (0755)1234567);
  international numbers written with '+' and a country code (8-15 digits); North-American style
  (555) 123-4567 / 555-123-4567 / 555.123.4567. A bare 11-digit number starting 13-19 is taken
  for a mobile number; other bare digit runs, dates and times are not phones.
Where candidates overlap, the earlier type in that list wins. Digits are matched as ASCII 0-9
only: run `normalize_text` first so full-width digits ('１３８...') become ASCII.
Values found are never written to any report, only their type, count and row.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from datetime import date
from typing import Any, Iterable

PII_TYPES = ("email", "id_card", "credit_card", "phone")
PLACEHOLDERS = {"email": "[EMAIL]", "id_card": "[ID_CARD]", "credit_card": "[CARD]", "phone": "[PHONE]"}


@dataclass(frozen=True)
class PiiSpan:
    type: str
    start: int
    end: int
    value: str


_EMAIL = re.compile(r"(?<![A-Za-z0-9_%+-])[A-Za-z0-9_%+-](?:[A-Za-z0-9._%+-]*[A-Za-z0-9_%+-])?@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])")
_ID_CARD = re.compile(r"(?<![0-9])[1-8][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?![0-9A-Za-z])")
_CARD = re.compile(r"(?<![0-9])(?:[0-9]{13,19}|[0-9]{4}(?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,3})?|3[47][0-9]{2}[ -][0-9]{6}[ -][0-9]{5})(?![0-9])")
_PHONES = (
    re.compile(r"(?<![0-9+])(?:\(?(?:\+|00)?86\)?[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])"),  # CN mobile
    re.compile(r"(?<![0-9])(?:\(0[1-9][0-9]{1,2}\) ?|0[1-9][0-9]{1,2}-)[0-9]{7,8}(?![0-9])"),  # CN landline
    re.compile(r"(?<![0-9A-Za-z+])\+[1-9][0-9]{0,2}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-]?[0-9]{2,4}){1,5}(?![0-9])"),  # international
    re.compile(r"(?<![0-9])(?:\([0-9]{3}\) ?[0-9]{3}[ .-]|[0-9]{3}([.-])[0-9]{3}\1)[0-9]{4}(?![0-9])"),  # North American
)
_MAYBE_PII = re.compile(r"@|[0-9]{3}")  # cheap test: every type needs an '@' or three digits in a row

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_cn_id(number: str) -> bool:
    """An 18-character Chinese resident ID number with a real birth date and a correct check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_issuer(digits: str) -> str | None:
    """The issuer whose prefix and length `digits` matches, else None."""
    n, p2, p3, p4 = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16:
        return "mastercard"
    if p2 in (34, 37) and n == 15:
        return "amex"
    if (p4 == 6011 or 644 <= p3 <= 649 or p2 == 65) and 16 <= n <= 19:
        return "discover"
    if p2 == 62 and 16 <= n <= 19:
        return "unionpay"
    if 3528 <= p4 <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (p2 in (36, 38, 39) or 300 <= p3 <= 305) and 14 <= n <= 19:
        return "diners"
    return None


def _valid(kind: str, value: str) -> bool:
    if kind == "id_card":
        return valid_cn_id(value)
    if kind == "credit_card":
        digits = re.sub(r"[ -]", "", value)
        return 13 <= len(digits) <= 19 and luhn_ok(digits) and card_issuer(digits) is not None
    if kind == "phone" and value.startswith("+"):
        return 8 <= sum(c.isdigit() for c in value) <= 15
    return True


def find_pii(text: str, types: Iterable[str] = PII_TYPES) -> list[PiiSpan]:
    """Non-overlapping PII spans in `text`, in order of position."""
    wanted = set(types)
    unknown = wanted - set(PII_TYPES)
    if unknown:
        raise ValueError(f"unknown PII types {sorted(unknown)}; known: {', '.join(PII_TYPES)}")
    if not _MAYBE_PII.search(text):
        return []
    detectors = [("email", _EMAIL), ("id_card", _ID_CARD), ("credit_card", _CARD)] + [("phone", p) for p in _PHONES]
    taken: list[PiiSpan] = []
    for kind, pattern in detectors:  # in priority order: an earlier type keeps an overlapping span
        if kind not in wanted:
            continue
        for m in pattern.finditer(text):
            if _valid(kind, m.group()) and not any(m.start() < s.end and s.start < m.end() for s in taken):
                taken.append(PiiSpan(kind, m.start(), m.end(), m.group()))
    return sorted(taken, key=lambda s: s.start)


def redact(text: str, spans: list[PiiSpan] | None = None) -> str:
    """`text` with each PII span replaced by its placeholder ([EMAIL], [PHONE], [ID_CARD], [CARD])."""
    spans = find_pii(text) if spans is None else spans
    out, pos = [], 0
    for s in sorted(spans, key=lambda s: s.start):
        out += [text[pos:s.start], PLACEHOLDERS[s.type]]
        pos = s.end
    return "".join(out) + text[pos:]


def _scramble(text: str, rng: random.Random) -> str:
    """Each ASCII digit and letter replaced by a random one of its kind and case; the rest kept."""
    out = []
    for ch in text:
        if "0" <= ch <= "9":
            ch = rng.choice(string.digits)
        elif "a" <= ch <= "z":
            ch = rng.choice(string.ascii_lowercase)
        elif "A" <= ch <= "Z":
            ch = rng.choice(string.ascii_uppercase)
        out.append(ch)
    return "".join(out)


def _with_digits(template: str, digits: str) -> str:
    """`template` with its ASCII digits replaced, in order, by `digits` (separators kept)."""
    it = iter(digits)
    return "".join(next(it) if "0" <= ch <= "9" else ch for ch in template)


def _random_digits(n: int, rng: random.Random) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def fake_pii(span: PiiSpan, rng: random.Random) -> str:
    """A random value of the same type and format as `span.value`, for a table column of PII that
    is kept in form but not in substance. Kept: length, separators, letter case and where the
    digits are; an e-mail's top-level domain; a Chinese mobile number's +86/0086 prefix and
    1[3-9] start; another phone's first digit group (country or area code) when it has several;
    a card's 4-digit issuer prefix (the Luhn digit is recomputed); for an ID number a random
    region, a real birth date (1940-2005) and a correct check character. The result depends only
    on `rng`, never on the digits it replaces, and may equal the real value by chance: callers
    that must never emit a real value compare and draw again."""
    v = span.value
    digits = "".join(ch for ch in v if "0" <= ch <= "9")
    if span.type == "email":
        local, _, domain = v.rpartition("@")
        labels = domain.split(".")
        return _scramble(local, rng) + "@" + ".".join([_scramble(x, rng) for x in labels[:-1]] + labels[-1:])
    if span.type == "id_card":
        birth = date.fromordinal(rng.randint(date(1940, 1, 1).toordinal(), date(2005, 12, 31).toordinal()))
        body = str(rng.randint(1, 8)) + _random_digits(5, rng) + birth.strftime("%Y%m%d") + _random_digits(3, rng)
        check = _ID_CHECK[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS)) % 11]
        return body + (check.lower() if v[-1] == "x" else check)
    if span.type == "credit_card":
        body = digits[:4] + _random_digits(len(digits) - 5, rng)
        check = next(d for d in string.digits if luhn_ok(body + d))
        return _with_digits(v, body + check)
    if _PHONES[0].fullmatch(v):  # Chinese mobile: the last 11 digits are 1[3-9]XXXXXXXXX
        prefix = digits[:-11]
        return _with_digits(v, prefix + "1" + rng.choice("3456789") + _random_digits(9, rng))
    groups = re.findall(r"[0-9]+", v)
    keep = len(groups[0]) if len(groups) > 1 else 1
    return _with_digits(v, digits[:keep] + rng.choice("23456789") + _random_digits(len(digits) - keep - 1, rng))


class PiiTally:
    """What a dataset's PII scan found, for the manifest: per type the number of matches, of rows,
    the first row ids (and, for tables, matches per column). Never the values themselves."""

    def __init__(self, max_examples: int = 20):
        self.max_examples = max_examples
        self.found: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.examples: dict[str, list[Any]] = {t: [] for t in PII_TYPES}
        self.columns: dict[str, Counter[str]] = {t: Counter() for t in PII_TYPES}

    def add(self, row_id: Any, spans: list[PiiSpan], column: str | None = None) -> None:
        for kind, n in Counter(s.type for s in spans).items():
            self.found[kind] += n
            self.rows[kind] += 1
            if column is not None:
                self.columns[kind][column] += n
            if len(self.examples[kind]) < self.max_examples:
                self.examples[kind].append(row_id if column is None else {"row": row_id, "column": column})

    def to_json(self, redacted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in PII_TYPES:
            out[t] = {"found": self.found[t], "rows": self.rows[t], "example_rows": self.examples[t]}
            if self.columns[t]:
                out[t]["columns"] = dict(sorted(self.columns[t].items()))
        return {**out, "redacted": redacted}
