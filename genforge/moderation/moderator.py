"""`Moderator(config).check(text, where)`: block lists, allow lists and personal data, on the
skeleton of the text (`normalize.skeleton`), with all block terms compiled into one regex
(and the allow terms into another).

Matching, and why: Latin-script terms match whole words of the skeleton, with common inflections
('kill' -> 'kills', 'killed', 'killing', 'killer'), so 'Scunthorpe' and 'grape' never match
a short term inside them; a term ending in '*' matches any word it starts ('porn*'). Chinese has no
spaces, so a term with a Chinese character matches anywhere; known-safe compounds in an allow list
('大麻烦' around '大麻', '体操' overlapping '操你') cancel a match they overlap, as known-safe
words do for Latin terms ('rapeseed' for 'rape*'); so an allow-list entry is also a way around
the list, and is kept to real words. A refusal names the list and the rule (`<list>:<line>` of
its file), never the matched text.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from genforge.data.normalize import normalize_text
from genforge.data.pii import find_pii, redact
from genforge.errors import ConfigError
from genforge.moderation.config import BUNDLED_ALLOW, LISTS_DIR, ModerationConfig
from genforge.moderation.normalize import HAN, leet_pattern, skeleton

if TYPE_CHECKING:
    from genforge.models import TextSamples

Where = Literal["prompt", "output"]
_WORD = r"[0-9a-z\u00c0-\u024f]"  # a letter or digit of a Latin-script word, in the skeleton
_INFLECTIONS = "(?:" + "|".join(leet_pattern(x) for x in ("s", "es", "ed", "d", "ing", "er", "ers")) + ")?"
_HAN_CHAR = re.compile(f"[{HAN}]")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str | None = None  # '<list>:<line>' of the term that fired, or 'pii:<type>'
    list: str | None = None  # the list it is in ('pii' for personal data)
    redacted_text: str | None = None  # the text with personal data replaced, when pii is 'redact' and some was found

    def message(self, where: Where) -> str:
        """The refusal to show a person: which rule fired, never the text that fired it."""
        return (f"the {where} was refused by content moderation: rule {self.rule} of list {self.list} matched; "
                "rephrase it, or ask the operator if this is a mistake")


PASS = Verdict(True)


@dataclass(frozen=True)
class Term:
    rule: str  # '<list>:<line>'
    list: str
    atoms: tuple[str, ...]  # regex pieces, one per character (and word gap), then the word's tail
    latin: bool  # matched at a word start, or (a term with a Chinese character) anywhere


def parse_term(term: str, rule: str, name: str) -> Term | None:
    """One list entry as a pattern over skeleton text (see the module docstring); None for a
    term with no letter, digit or character left once normalised."""
    s = skeleton(term.rstrip("*")).strip()
    if not re.search(r"[^\W_]", s):
        return None
    if _HAN_CHAR.search(s):
        return Term(rule, name, tuple(re.escape(c) for c in s), latin=False)
    atoms: list[str] = []
    for word in s.split():  # 'kill yourself' also matches 'killyourself' and 'kill.yourself'
        atoms += ([r"[\W_]*"] if atoms else []) + [leet_pattern(c) for c in word]
    tail = _WORD + "*" if term.endswith("*") else _INFLECTIONS
    return Term(rule, name, (*atoms, rf"{tail}(?!{_WORD})"), latin=True)


def read_list(path: Path, name: str) -> list[Term]:
    """A list file: one term per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"moderation list {path} cannot be read as UTF-8 text: {e}") from None
    terms = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        term = parse_term(line, f"{name}:{number}", name)
        if term is None:
            raise ConfigError(f"{path}, line {number}: the term has no letter, digit or character once normalised; "
                              "remove it")
        terms.append(term)
    return terms


def _trie(paths: list[tuple[str, ...]]) -> str:
    """One regex for many atom sequences, sharing their common prefixes: each alternative then
    starts with a plain character or class, which the regex engine skips at once when it does not
    match, instead of trying every term at every position."""
    root: dict = {}
    for path in paths:
        node = root
        for atom in path:
            node = node.setdefault(atom, {})

    def emit(node: dict) -> str:
        alts = [atom + emit(child) for atom, child in node.items()]
        return "" if not alts else alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return emit(root)


def compile_terms(terms: list[Term], marked: bool) -> re.Pattern | None:
    """Latin terms after a word start, then the rest; with `marked`, an empty group `r<i>` ends
    term i, so the match's `lastgroup` names the rule."""
    def paths(latin: bool) -> list[tuple[str, ...]]:
        return [(*t.atoms, f"(?P<r{i}>)" if marked else "") for i, t in enumerate(terms) if t.latin == latin]
    latin, other = paths(True), paths(False)
    parts = ([f"(?<!{_WORD}){_trie(latin)}"] if latin else []) + ([_trie(other)] if other else [])
    return re.compile("|".join(parts)) if parts else None


class Moderator:
    def __init__(self, config: ModerationConfig = ModerationConfig()):
        self.config = config
        self.terms = [t for name in config.lists for t in read_list(LISTS_DIR / f"{name}.txt", name)]
        self.terms += [t for f in config.block_files for t in read_list(f, f.stem)]
        self._block = compile_terms(self.terms, marked=True)
        self._allow = compile_terms([t for f in (BUNDLED_ALLOW, *config.allow_files) for t in read_list(f, "allow")],
                                    marked=False)

    def blocked(self, text: str) -> Term | None:
        """The first block-list term in `text` that no allow-list match overlaps."""
        if self._block is None:
            return None
        s, pos, safe = skeleton(text), 0, None
        while m := self._block.search(s, pos):
            if safe is None:  # only texts with a match pay for the allow list
                safe = [a.span() for a in self._allow.finditer(s)] if self._allow else []
            if not any(a < m.end() and m.start() < b for a, b in safe):
                return self.terms[int(m.lastgroup[1:])]
            pos = m.start() + 1  # a shorter or later match may still be unsafe
        return None

    def check(self, text: str, where: Where = "prompt") -> Verdict:
        """Allowed or not, and which rule decided. With pii 'redact', personal data is replaced in
        `redacted_text` (the text also NFKC- and whitespace-normalised, as the detector needs)."""
        if where not in ("prompt", "output"):
            raise ValueError(f"where must be 'prompt' or 'output', got {where!r}")
        c = self.config
        if not c.enabled or not (c.check_prompts if where == "prompt" else c.check_outputs):
            return PASS
        term = self.blocked(text)
        if term is not None:
            return Verdict(False, term.rule, term.list)
        if c.pii != "off":
            normal = normalize_text(text)
            spans = find_pii(normal)
            if spans:
                rule = f"pii:{spans[0].type}"
                if c.pii == "block":
                    return Verdict(False, rule, "pii")
                return Verdict(True, rule, "pii", redact(normal, spans))
        return PASS


def moderate_samples(moderator: Moderator, samples: "TextSamples") -> "TextSamples":
    """Generated texts as moderated outputs: a blocked one emptied, with finish reason
    'content_filter' (OpenAI's value); personal data redacted as configured."""
    verdicts = [moderator.check(t, "output") for t in samples.texts]
    reasons = samples.finish_reasons or [None] * len(samples)
    texts = [("" if not v.allowed else t if v.redacted_text is None else v.redacted_text)
             for t, v in zip(samples.texts, verdicts)]
    return dataclasses.replace(samples, texts=texts, finish_reasons=[
        r if v.allowed else "content_filter" for r, v in zip(reasons, verdicts)])
