"""The GPT family's parts: the tokenizer's exact round trip, the KV cache, batched and continuous
generation, packed decoding layers, the sampling filters, stop sequences, and how text and
prompt/completion data become rows."""

import pytest
import torch

from genforge import kernels
from genforge.data.store import open_dataset
from genforge.errors import DataError, ModelError
from genforge.models import SampleRequest
from genforge.models import gpt
from genforge.tokenizer import EOT, TextTokenizer
from textsets import corpus, write_texts

HARD = ["", "质量很好，物流也快！", "Great value 👍🏽👨‍👩‍👧 ok", "e\u0301 n\u0303 a\u030a", "\x00\x01\t\r\n\x7f\x1b[31m",
        "繁體與简体，全角ＡＢＣ１２３", " leading and trailing spaces  ", "<|endoftext|> is just text here", "🙂" * 50,
        "\ufeffBOM and \u200bzero width", "مرحبا שלום नमस्ते"]


@pytest.fixture(scope="module")
def tok():
    texts, _ = corpus()
    return TextTokenizer.train(texts, 400)


def model(vocab: int, block: int = 64, **kw) -> gpt.GPT:
    torch.manual_seed(0)
    return gpt.GPT(gpt.Config(family="gpt", block_size=block, n_layer=2, n_head=2, n_embd=16, **kw), vocab).eval()


@pytest.mark.parametrize("text", HARD)
def test_any_text_survives_encode_then_decode(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not set(ids) & tok.special_ids  # a literal special token in user text stays text


def test_the_tokenizer_reloads_unchanged_from_its_fitted_state(tok):
    again = TextTokenizer.from_fitted(tok.to_fitted())
    assert [again.encode(t) for t in HARD] == [tok.encode(t) for t in HARD]
    assert again.vocab_size == tok.vocab_size == 400 and again.eot == tok.tokenizer.token_to_id(EOT)
    assert len(tok.encode("质量很好物流也快")) < len("质量很好物流也快".encode())  # merges learned on Chinese
    with pytest.raises(ModelError, match="vocab_size must be at least 260"):
        TextTokenizer.train(["abc"], 100)


def test_cached_generation_equals_recomputing_the_whole_sequence():
    m = model(50)
    prompt = [3, 7, 1, 9]
    got = gpt.generate(m, [prompt], [torch.Generator()], gpt.SampleConfig(max_tokens=12, temperature=0), frozenset())
    seq = list(prompt)
    with torch.inference_mode():
        for _ in range(12):
            seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
    assert got.tokens[0] == seq[len(prompt):] and got.finish_reasons == ["length"]


@pytest.mark.parametrize("options", [{"temperature": 1.0}, {"temperature": 0.7, "top_k": 5, "top_p": 0.9,
                                                             "repetition_penalty": 1.3}, {"temperature": 0}])
def test_a_prompt_gets_the_same_output_alone_as_in_a_batch(options):
    m = model(60)
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7, 8, 9], [0], [4, 4, 4]]  # lengths 1 to 9
    o = gpt.SampleConfig(max_tokens=10, **options)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12, 13, 14)]  # noqa: E731
    batch = gpt.generate(m, prompts, gens(), o, frozenset())
    for i, p in enumerate(prompts):
        alone = gpt.generate(m, [p], [gens()[i]], o, frozenset())
        assert alone.tokens[0] == batch.tokens[i], i


def test_a_request_joining_a_running_batch_with_its_own_options_gets_what_it_gets_alone():
    m = model(60)
    items = [([5, 6], {"temperature": 0}), ([1, 2, 3, 4, 5, 6, 7], {"temperature": 0.7, "top_k": 5}),
             ([9], {"temperature": 1.2, "top_p": 0.9, "repetition_penalty": 1.3, "max_tokens": 4})]
    seq = lambda i: gpt.Sequence(items[i][0], gpt.SampleConfig(**{"max_tokens": 12, **items[i][1]}),  # noqa: E731
                                 torch.Generator().manual_seed(20 + i))
    with torch.inference_mode():
        run = gpt.Generation(m, 3, 32)
        joined = [seq(0), seq(1)]
        for s in joined:
            run.join(s)
        for _ in range(3):
            assert run.step() == []
        joined.append(seq(2))  # joins at step 4, while the others are mid-way
        run.join(joined[-1])
        done = []
        while run.rows:
            done += run.step()
        assert {id(s) for s in done} == {id(s) for s in joined}
        for i, s in enumerate(joined):
            alone = gpt.generate(m, [items[i][0]], [torch.Generator().manual_seed(20 + i)], s.options, frozenset())
            assert s.tokens == alone.tokens[0] and s.finish_reason == alone.finish_reasons[0], i
    assert len(joined[2].tokens) == 4 and len(joined[0].tokens) == 12


def test_a_cancelled_sequence_leaves_at_the_next_step():
    m = model(60)
    with torch.inference_mode():
        run = gpt.Generation(m, 2, 32)
        a, b = (gpt.Sequence([1, 2], gpt.SampleConfig(max_tokens=10), torch.Generator().manual_seed(i)) for i in (0, 1))
        run.join(a)
        run.join(b)
        run.step()
        a.cancelled = True
        assert run.step() == [a] and a.finish_reason == "cancelled" and len(a.tokens) == 1 and run.rows == [b]


@pytest.mark.parametrize("min_macs", [0, kernels.MIN_MACS])  # oneDNN on every layer; the small ones plain
def test_packed_layers_compute_what_the_model_computes_and_follow_weight_updates(monkeypatch, min_macs):
    monkeypatch.setattr(kernels, "MIN_MACS", min_macs)
    m = model(60)
    with torch.inference_mode():
        fast = gpt.packed(m)
        for rows in (1, 3, 8, 20, 40):  # one layout serves every row count
            x = torch.randint(0, 60, (rows, 5))
            assert torch.allclose(fast(x), m(x), atol=1e-5), rows
        assert gpt.packed(m) is fast and gpt.packed(gpt.quantized(m)) is gpt.quantized(m)  # int8: nothing to pack
    with torch.no_grad():
        m.h[0].mlp.c_fc.weight.add_(0.5)  # as an optimizer step would
    with torch.inference_mode():
        again = gpt.packed(m)
        x = torch.randint(0, 60, (8, 5))
        assert again is not fast and torch.allclose(again(x), m(x), atol=1e-5)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 run (precision auto on AMX)
        x = torch.randint(0, 60, (8, 5))
        assert torch.allclose(again(x).float(), m(x).float(), atol=0.1)  # the packs step aside for oneDNN's bf16


def test_top_k_1_and_a_tiny_top_p_are_greedy():
    m = model(40)
    greedy = gpt.generate(m, [[1, 2]], [torch.Generator()], gpt.SampleConfig(max_tokens=8, temperature=0), frozenset())
    for o in ({"top_k": 1}, {"top_p": 1e-6}):
        got = gpt.generate(m, [[1, 2]], [torch.Generator().manual_seed(3)],
                           gpt.SampleConfig(max_tokens=8, temperature=1.5, **o), frozenset())
        assert got.tokens == greedy.tokens, o


def test_filters_cut_what_they_should():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, False, False, False, True]])
    out = gpt._filter(logits, seen, [gpt.SampleConfig(repetition_penalty=2.0)])
    assert out.tolist() == [[2.0, 3.0, 2.0, 1.0, -2.0]]  # CTRL: positive seen logits halved, negative doubled
    out = gpt._filter(logits, seen, [gpt.SampleConfig(top_k=2)])
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    p = logits.softmax(-1)[0]  # 0.64, 0.24, ...: top_p 0.7 keeps the first two
    out = gpt._filter(logits, seen, [gpt.SampleConfig(top_p=float(p[0] + 0.05))])
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()


@pytest.mark.parametrize("scale", [0.5, 2.0, 6.0, 12.0])  # flat to peaked: the nucleus from 5 tokens to most of them
def test_the_nucleus_from_the_top_k_equals_the_one_from_a_full_sort(scale):
    torch.manual_seed(1)
    logits = torch.randn(16, 3000) * scale
    top_p = torch.tensor([0.5, 0.9, 0.95, 0.99, 1.0, 0.3, 0.999, 0.8] * 2)[:, None]  # per row, 1.0: no cut
    ordered, order = torch.sort(logits, descending=True, dim=-1)
    probs = ordered.softmax(-1)
    drop = (probs.cumsum(-1) - probs > top_p) & (top_p < 1)
    assert torch.equal(gpt._outside_nucleus(logits, top_p), drop.scatter(-1, order, drop))


def test_stop_tokens_stop_texts_and_the_context_limit(tok):
    m = model(tok.vocab_size)
    prompt = gpt.prompt_ids(tok, "好", "text")
    free = gpt.generate(m, [prompt], [torch.Generator().manual_seed(1)], gpt.SampleConfig(max_tokens=20), frozenset())
    first = free.tokens[0][3]
    stopped = gpt.generate(m, [prompt], [torch.Generator().manual_seed(1)], gpt.SampleConfig(max_tokens=20),
                           frozenset({first}))
    assert stopped.tokens[0] == free.tokens[0][:free.tokens[0].index(first)] and stopped.finish_reasons == ["stop"]
    text = tok.decode(free.tokens[0])
    stop = text[len(text) // 2:][:2]
    m_spec = gpt.DataSpec("text", vocab_size=tok.vocab_size, block_size=64)
    samples = gpt.sample({"model": m}, m_spec, tok.to_fitted(),
                         SampleRequest((1,), prompts=("好",)),
                         gpt.SampleConfig(max_tokens=20, stop=[stop]))
    assert samples.finish_reasons == ["stop"] and stop not in samples.texts[0] and text.startswith(samples.texts[0])
    with pytest.raises(ModelError, match="exceeds the model's context of 64 tokens"):
        gpt.generate(m, [list(range(60))], [torch.Generator()], gpt.SampleConfig(max_tokens=8), frozenset())


def test_packed_rows_and_prompt_completion_rows():
    texts, labels = corpus()
    ref = write_texts("zh", texts[:60], val=10, labels=labels[:60])
    ds = open_dataset(ref)
    cfg = gpt.Config(family="gpt", vocab_size=300, block_size=32)
    spec, fitted = gpt.fit(cfg, ds, 0)
    tok = TextTokenizer.from_fitted(fitted)
    packed = gpt.encode(cfg, spec, fitted, ds, "train")
    t = packed["tokens"]
    assert t.shape[1] == 33 and torch.equal(t[1:, 0], t[:-1, -1]) and packed["mask"].all()  # rows overlap by one
    stream = [i for x in texts[:50] for i in (*tok.encode(x), tok.eot)]
    assert t[0].tolist() == stream[:33]

    ft = gpt.Config(family="gpt", vocab_size=300, block_size=32, format="prompt_completion",
                    label_prompts={"positive": "写一条好评：", "negative": "写一条差评："})
    rows = gpt.encode(ft, spec, fitted, ds, "train")
    first = ds.frame("train").iloc[0]
    head = [tok.prompt, *tok.encode(ft.label_prompts[ds.classes[first["label"]]]), tok.completion]
    body = (tok.encode(first["text"]) + [tok.eot])[:33 - len(head)]
    assert rows["tokens"][0, :len(head) + len(body)].tolist() == head + body
    targets = rows["tokens"][0, 1:][rows["mask"][0].bool()].tolist()
    assert targets == body  # the loss is on the completion and its end only
    with pytest.raises(DataError, match=r"no prompt for the classes \['negative'\]"):
        gpt.encode(ft.model_copy(update={"label_prompts": {"positive": "x"}}), spec, fitted, ds, "train")
    with pytest.raises(DataError, match="model.label_prompts"):
        gpt.encode(ft.model_copy(update={"label_prompts": None}), spec, fitted, ds, "train")


def test_lora_trains_adapters_only_and_merges_to_the_same_outputs():
    from genforge.models.lora import LoraConfig, adapter_tensors, apply_lora, merge_lora

    m = model(50)
    x = torch.tensor([[1, 2, 3, 4, 5]])
    before = m(x)
    apply_lora(m, LoraConfig(rank=4, targets=["c_attn", "c_fc"]))
    assert torch.allclose(m(x), before)  # B starts at zero: the adapted model is the model
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable) and len(trainable) == 2 * 2 * 2  # 2 layers x 2 targets x A, B
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(m(x)[0, :-1], x[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    adapted = m(x)
    assert not torch.allclose(adapted, before, atol=1e-4)
    adapter = adapter_tensors(m.state_dict())
    assert set(adapter) == {f"h.{i}.{t}.lora_{ab}" for i in (0, 1) for t in ("attn.c_attn", "mlp.c_fc") for ab in "AB"}

    fresh = apply_lora(model(50), LoraConfig(rank=4, targets=["c_attn", "c_fc"]))
    fresh.load_state_dict(adapter, strict=False)  # the base is the same seeded model: adapter alone restores it
    assert torch.allclose(fresh(x), adapted, atol=1e-6)
    merged = merge_lora(m)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(merged(x), adapted, atol=1e-5)
    with pytest.raises(ModelError, match="names no linear layer"):
        apply_lora(model(50), LoraConfig(targets=["q_proj"]))


def test_int8_generation_runs_and_follows_the_model(tok):
    m = model(tok.vocab_size)
    spec = gpt.DataSpec("text", vocab_size=tok.vocab_size, block_size=64)
    request = SampleRequest((1, 2), prompts=("好", "The"))
    fp32 = gpt.sample({"model": m}, spec, tok.to_fitted(), request, gpt.SampleConfig(max_tokens=8, temperature=0))
    int8 = gpt.sample({"model": m}, spec, tok.to_fitted(), request,
                      gpt.SampleConfig(max_tokens=8, temperature=0, quantize="int8"))
    assert int8.completion_tokens == [8, 8] and gpt.quantized(m) is gpt.quantized(m)  # made once
    assert any(a[:2] == b[:2] for a, b in zip(fp32.texts, int8.texts))  # close logits: same first greedy tokens


def test_label_prompts_must_tell_classes_apart_and_not_shadow_real_prompts():
    with pytest.raises(ValueError, match="each class its own prompt"):
        gpt.Config(family="gpt", format="prompt_completion", label_prompts={"positive": "写：", "negative": "写："})
    texts, _ = corpus()
    ds = open_dataset(write_texts("pc", texts[:40], val=8, prompts=["写一条评论："] * 40))
    cfg = gpt.Config(family="gpt", vocab_size=300, block_size=32, format="prompt_completion",
                     label_prompts={"positive": "a", "negative": "b"})
    with pytest.raises(DataError, match="has its own prompts; remove model.label_prompts"):
        gpt.split_texts(ds, "train", cfg)
