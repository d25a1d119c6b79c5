"""The text watermark: generated text with it is detected with a tiny p-value after a few dozen
tokens, text without it (generated or real) is not, and it changes nothing when off."""

import math

import torch

from genforge.models import gpt
from genforge.textmark import TextMark, detect, workspace_key
from genforge.tokenizer import TextTokenizer
from textsets import corpus


def model(vocab: int) -> gpt.GPT:
    torch.manual_seed(0)
    return gpt.GPT(gpt.Config(family="gpt", block_size=256, n_layer=2, n_head=2, n_embd=16), vocab).eval()


def test_marked_text_is_detected_unmarked_and_real_text_is_not(tmp_path):
    texts, _ = corpus()
    tok = TextTokenizer.train(texts, 400)
    m, key = model(tok.vocab_size), workspace_key()
    assert workspace_key() == key and 0 <= key < 2 ** 31  # created once, then read
    mark = TextMark(key)
    prompts = [tok.encode(t[:8]) for t in texts[:8]]
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(8)]  # noqa: E731
    on = gpt.SampleConfig(max_tokens=120, watermark=True)
    marked = gpt.generate(m, prompts, gens(), on, frozenset(), mark=mark).tokens
    plain = gpt.generate(m, prompts, gens(), gpt.SampleConfig(max_tokens=120), frozenset()).tokens
    assert gpt.generate(m, prompts, gens(), gpt.SampleConfig(max_tokens=120, watermark=True), frozenset()).tokens == plain
    for toks in marked:  # each of 120 tokens: far beyond chance
        d = detect(toks, mark)
        assert d.scored > 60 and d.p_value < 1e-6, d
    assert max(detect(t, mark).z for t in plain) < 4
    assert detect(marked[0], TextMark(key ^ 1)).p_value > 1e-3  # another key sees nothing
    real = [detect(tok.encode(t), mark) for t in texts[:200]]
    assert sum(d.p_value < 1e-3 for d in real) <= 1  # false positives on real text: at the test's level


def test_verify_text_cli_reads_a_runs_samples(tmp_path):
    import json

    import genforge
    from clirun import invoke
    from typer.testing import CliRunner

    from genforge.cli import _app
    from genforge.errors import ConfigError
    from textsets import write_texts
    texts, _ = corpus()
    write_texts("corpus", texts, val=24)
    run = genforge.train({"name": "lm", "data": {"dataset": "corpus"},
                          "model": {"family": "gpt", "vocab_size": 300, "block_size": 128, "n_layer": 1, "n_head": 2, "n_embd": 16},
                          "train": {"steps": 2, "batch_size": 8, "precision": "fp32", "threads": 1}})
    out = genforge.generate(run.id, 3, seed=0, options={"watermark": True, "max_tokens": 100}, out=tmp_path / "marked")
    # the CLI tests what a verifier holds, the decoded text re-encoded (a 2-step model's random merges
    # re-encode differently, so detection itself is measured on a trained model: benchmarks/textmark_eval.py)
    res = invoke("verify", str(out.path), "--text", "--run", run.id)
    from genforge.textmark import verify_text_file
    got = verify_text_file(out.path, run.id)
    assert [r["label"] for r in got] == ["samples.jsonl:1", "samples.jsonl:2", "samples.jsonl:3"]
    assert all(f"p-value {r['p_value']:.3g} over {r['scored']} token pairs" in " ".join(res.output.split()) for r in got)
    plain = tmp_path / "real.txt"
    plain.write_text(texts[0], encoding="utf-8")
    assert "no watermark found" in " ".join(invoke("verify", str(plain), "--text", "--run", run.id).output.split())
    assert isinstance(CliRunner().invoke(_app, ["verify", str(plain), "--text"]).exception, ConfigError)  # needs --run
    assert json.loads(out.path.read_text().splitlines()[0])["text"]


def test_stop_tokens_are_never_raised_and_the_p_value_is_the_exact_binomial_tail():
    from scipy.stats import binom
    mark = TextMark(12345)
    seq = gpt.Sequence([7], gpt.SampleConfig(), torch.Generator(), stop_ids=frozenset({0, 3}), mark=mark)
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)) * 3
    raised = gpt._watermarked(logits, [seq])
    green = mark.green(torch.tensor([[7]]), torch.arange(50)[None, :])[0]
    before, after = logits.softmax(-1)[0], raised.softmax(-1)[0]
    # end-of-text keeps its probability (so lengths do not move with the mark), the others their total mass
    assert torch.allclose(after[[0, 3]], before[[0, 3]], atol=1e-6) and abs(after.sum() - 1) < 1e-6
    lift = (after / before)[4:]
    assert green[4:].any() and (lift[green[4:]].min() > lift[~green[4:]].max())  # every green above every red
    assert torch.allclose(lift[green[4:]] / lift[~green[4:]].mean(), torch.tensor(math.e ** 2), rtol=1e-4)
    d = detect(list(range(40)), mark)
    assert d.scored == 39 and abs(d.p_value - binom.sf(d.green - 1, 39, 0.25)) < 1e-12
