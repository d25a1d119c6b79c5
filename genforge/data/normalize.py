"""Text normalisation shared by ingest and the service's moderation: Unicode NFKC, whitespace and
control characters, without harming Chinese.

NFKC folds compatibility forms, which is what we want for full-width letters and digits
('ＡＢＣ１２３' -> 'ABC123'), the ideographic space, ligatures and half-width katakana, and it makes
'＠' and '＋８６' match e-mail and phone patterns. But it also rewrites the punctuation Chinese is
written with ('，' -> ',', '！' -> '!', '（）' -> '()', '…' -> '...') and list markers ('①' -> '1',
'㈠' -> '(一)'), which would teach a model to write Chinese with ASCII punctuation and would lose
meaning. So those characters (`CJK_KEPT`) are left as they are and NFKC runs on the text between
them. Characters NFKC does not touch ('。', '、', '“”', '《》', '【】', ideographs) stay as they are anyway.
Not handled: NFKC still folds superscripts ('m²' -> 'm2') and unit squares ('㎏' -> 'kg').
"""

from __future__ import annotations

import re
import unicodedata

# Full-width punctuation of Chinese writing, the ellipsis (Chinese '……'), and circled /
# parenthesised numbers and ideographs used as list markers.
CJK_KEPT = "，！？：；（）～…" + "".join(map(chr, range(0x2460, 0x2500))) + "".join(map(chr, range(0x3220, 0x3244)))
_KEPT_RE = re.compile("([" + re.escape(CJK_KEPT) + "]+)")

_NEWLINES_RE = re.compile(r"\r\n|[\r\x85\u2028\u2029]")
# Control characters (Cc) but newline and tab; invisible format characters that only hide or
# reorder text (zero-width space, BOM, soft hyphen, word joiner, bidi overrides). ZWJ/ZWNJ stay:
# emoji sequences and some scripts need them.
_INVISIBLE_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u00ad\u2060\ufeff\u202a-\u202e\u2066-\u2069]")
_SPACES_RE = re.compile(r"[^\S\n]+")  # any run of whitespace other than newlines
_EDGE_SPACE_RE = re.compile(r" *\n *")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


def nfkc(text: str, keep_cjk_punctuation: bool = True) -> str:
    """NFKC, leaving `CJK_KEPT` characters untouched unless `keep_cjk_punctuation` is False."""
    if not keep_cjk_punctuation:
        return unicodedata.normalize("NFKC", text)
    parts = _KEPT_RE.split(text)  # odd indices are the kept runs
    return "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))


def normalize_text(text: str, keep_cjk_punctuation: bool = True) -> str:
    """Normalise one text: NFKC (see module docstring), line breaks to '\\n', control and invisible
    characters removed, runs of spaces/tabs to one space, spaces at line ends and more than one
    blank line removed, the whole stripped. Idempotent."""
    text = _INVISIBLE_RE.sub("", _NEWLINES_RE.sub("\n", text))
    text = nfkc(text, keep_cjk_punctuation)
    text = _SPACES_RE.sub(" ", text)
    text = _EDGE_SPACE_RE.sub("\n", text)
    return _BLANK_LINES_RE.sub("\n\n", text).strip()


NORMALISATION_RULES = {
    "unicode": "NFKC, except full-width Chinese punctuation ，！？：；（）～, the ellipsis …, circled/parenthesised numbers (kept as written)",
    "line_breaks": "\\r\\n, \\r, U+0085, U+2028, U+2029 -> \\n",
    "removed": "control characters except \\n and \\t; zero-width space, BOM, soft hyphen, word joiner, bidi overrides",
    "whitespace": "runs of spaces/tabs -> one space; no spaces at line ends; at most one blank line; stripped",
}
