"""Text metrics on plain lists and arrays; the LM family supplies log-probabilities and samples.

Tokens here are words for scripts with spaces and single characters for CJK, so the figures mean
the same for English and Chinese and need no trained tokenizer. References: distinct-n, Li et al.
2016; self-BLEU, Zhu et al. 2018 (Texygen); repetition, Welleck et al. 2019 (seq-rep-n).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

# one CJK ideograph / kana / hangul syllable, a run of other word characters, or one punctuation mark
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, CJK characters one by one, punctuation marks as tokens."""
    return _TOKEN.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def perplexity(token_logprobs: Iterable[np.ndarray]) -> float:
    """exp of the mean negative log-likelihood per token, over every token of every sequence.

    `token_logprobs`: one array per sequence of natural-log probabilities the model gave each
    actual next token (padding already removed). Pooled over tokens, not averaged per sequence,
    so long texts weigh as much as their tokens.
    """
    total, count = 0.0, 0
    for lp in token_logprobs:
        lp = np.asarray(lp, dtype=np.float64).ravel()
        if (lp > 0).any():
            raise ValueError("token log-probabilities must be <= 0 (natural log of a probability)")
        total += lp.sum()
        count += lp.size
    if count == 0:
        raise ValueError("perplexity needs at least one token")
    return math.exp(-total / count)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams across the texts (0 when there are none)."""
    grams = [g for t in texts for g in ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 4) -> float:
    """Mean over texts of the share of n-grams that repeat an earlier n-gram of the same text."""
    rates = []
    for t in texts:
        grams = ngrams(tokenize(t), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else 0.0


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    """Token counts: mean, std, min, median, max."""
    lengths = np.array([len(tokenize(t)) for t in texts], dtype=np.float64)
    if lengths.size == 0:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "median": 0.0, "max": 0.0}
    return {"mean": float(lengths.mean()), "std": float(lengths.std()), "min": float(lengths.min()),
            "median": float(np.median(lengths)), "max": float(lengths.max())}


def _bleu(hyp: list[Counter], ref_max, hyp_len: int, ref_len: int, max_n: int) -> float:
    """BLEU from the hypothesis n-gram counts (index n-1) and `ref_max(n, gram)`, the most any
    one reference holds of that n-gram (the clipping count)."""
    if hyp_len == 0:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        total = max(1, sum(hyp[n - 1].values()))  # a text shorter than n scores 0.1 there, as in NLTK
        clipped = sum(min(c, ref_max(n, g)) for g, c in hyp[n - 1].items())
        log_p += math.log((clipped or 0.1) / total) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def _counts(tokens: Sequence[str], max_n: int) -> list[Counter]:
    return [Counter(ngrams(tokens, n)) for n in range(1, max_n + 1)]


def _closest_length(hyp_len: int, ref_lens: Iterable[int]) -> int:
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Sentence BLEU of token lists: clipped n-gram precisions with uniform weights up to `max_n`,
    the closest-length brevity penalty, and zero precisions smoothed to 0.1 / total
    ("method1" of Chen & Cherry 2014, as NLTK and Texygen use)."""
    refs = [_counts(r, max_n) for r in references]

    def ref_max(n: int, g: tuple) -> int:
        return max(r[n - 1][g] for r in refs)

    return _bleu(_counts(hypothesis, max_n), ref_max, len(hypothesis), _closest_length(len(hypothesis), map(len, references)), max_n)


def self_bleu(texts: Sequence[str], max_n: int = 4, max_texts: int = 1000, seed: int = 0) -> float:
    """Mean BLEU of each text against all the others: 1 = every text alike, near 0 = all different.

    The clipping counts come from an index of each n-gram's two largest counts, so the cost is
    linear in the number of texts; beyond `max_texts` a seeded sample is scored.
    """
    if len(texts) < 2:
        raise ValueError(f"self-BLEU needs at least 2 texts, got {len(texts)}")
    chosen = np.random.default_rng(seed).permutation(len(texts))[:max_texts]
    tokens = [tokenize(texts[i]) for i in chosen]
    counts = [_counts(t, max_n) for t in tokens]
    top2: dict[tuple, list[tuple[int, int]]] = {}  # n-gram -> [(count, text), (count, text)], largest first
    for j, per_n in enumerate(counts):
        for c in per_n:
            for g, k in c.items():
                best = top2.setdefault(g, [])
                best.append((k, j))
                best.sort(reverse=True)
                del best[2:]
    scores = []
    for i, per_n in enumerate(counts):
        def ref_max(n: int, g: tuple, i: int = i) -> int:
            return next((k for k, j in top2[g] if j != i), 0)
        others = (len(t) for j, t in enumerate(tokens) if j != i)
        scores.append(_bleu(per_n, ref_max, len(tokens[i]), _closest_length(len(tokens[i]), others), max_n))
    return float(np.mean(scores))


def ngram_memorisation(generated: Sequence[str], train_texts: Iterable[str], n: int = 8) -> float:
    """Share of generated n-grams (default 8-grams) found verbatim in the training text."""
    seen = {g for t in train_texts for g in ngrams(tokenize(t), n)}
    grams = [g for t in generated for g in ngrams(tokenize(t), n)]
    return sum(g in seen for g in grams) / len(grams) if grams else 0.0
