"""Hugging Face GPT-2 <-> genforge GPT (genforge.interop), checked against transformers itself, offline.

Import: a tiny random GPT2LMHeadModel with a tiny byte-level BPE (GPT-2's recipe, <|endoftext|> only)
gives the same logits in genforge, in transformers' file layout and in the hub's older one; the
special tokens it lacked are added with mean rows, and fine-tuning from it trains them. Export: a
tiny trained run (plain, or with LoRA adapters, merged) loads in GPT2LMHeadModel and AutoTokenizer
with the same logits (its EMA weights) and the same token ids, and decodes back exactly; through the
CLI, an import exported again gives the original model. Refusals: pickle weights, architectures our GPT
does not compute, non-gpt models.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import genforge
from genforge import cli
from genforge.checkpoint import open_checkpoint, save_model_folder
from genforge.errors import ModelError
from genforge.interop import export_adapter, export_hf, export_merged, import_hf, load_adapter
from genforge.models import SampleRequest
from genforge.sampling import load_model
from genforge.tokenizer import COMPLETION, EOT, PAD, PROMPT, TextTokenizer
from genforge.workspace import models_dir
from test_families import TRAIN, tiny_config
from textsets import corpus, write_texts

BPE_VOCAB = 300  # merges learned on the corpus; <|endoftext|> comes last, as in GPT-2 (id 50256)
MIXED = "质量很好，物流也快 👍 The prime minister said: “fine” 😀🇨🇳 e\u0301\n\t好的"


def _gpt2_folder(path: Path) -> Path:
    """A GPT-2-architecture folder as transformers writes it: random weights (biases and LayerNorms
    too, so a misplaced transpose or name shows), a byte-level BPE trained on the corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus()[0], trainers.BpeTrainer(vocab_size=BPE_VOCAB, show_progress=False,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([EOT])
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT).save_pretrained(path)
    eot = tok.token_to_id(EOT)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=64,
                                       vocab_size=tok.get_vocab_size(), bos_token_id=eot, eos_token_id=eot))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return _gpt2_folder(tmp_path_factory.mktemp("hf") / "tiny-gpt2")


def _hf_logits(folder: Path, ids: list[int]) -> torch.Tensor:
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def _our_logits(folder: Path, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return load_model(folder, device="cpu").modules["model"](torch.tensor([ids]))[0]


def _hub_layout(folder: Path) -> None:
    """Rewrite the weights as the hub's gpt2 stores them: no "transformer." prefix, causal-mask buffers."""
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    tensors.update({f"h.{i}.attn.bias": torch.ones(1, 1, 64, 64).tril() for i in range(2)})
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("layout", ["transformers", "hub"])
def test_an_imported_gpt2_gives_transformers_logits_and_gains_the_special_tokens(hf_dir, tmp_path, layout):
    src = shutil.copytree(hf_dir, tmp_path / "src")
    if layout == "hub":
        _hub_layout(src)
    folder = import_hf(src, "tiny-gpt2")
    assert folder == models_dir() / "tiny-gpt2"

    hf_tok = AutoTokenizer.from_pretrained(src)
    ours = TextTokenizer.from_fitted(load_model(folder, device="cpu").fitted)
    ids = ours.encode(MIXED)
    assert ids == hf_tok.encode(MIXED) and ours.decode(ids) == MIXED  # its own pre-tokenizer, kept
    ids = [ours.eot, *ids][:64]

    theirs, got = _hf_logits(hf_dir, ids), _our_logits(folder, ids)
    V = BPE_VOCAB + 1
    assert got.shape == (len(ids), V + 3)
    assert (got[:, :V] - theirs).abs().max().item() < 1e-4
    # an added token's row is the mean of the old rows, so (tied output layer) its logit is their mean
    assert (got[:, V:] - theirs.mean(-1, keepdim=True)).abs().max().item() < 1e-4

    info = open_checkpoint(folder).model_info()
    assert info["imported"]["added_tokens"] == {PROMPT: V, COMPLETION: V + 1, PAD: V + 2}
    assert info["data_spec"]["vocab_size"] == V + 3 and info["model"]["block_size"] == 64
    assert (ours.prompt, ours.completion, ours.pad, ours.eot) == (V, V + 1, V + 2, V - 1)

    out = load_model(folder, device="cpu").sample(SampleRequest.make(2, seed=1, prompts=("好", "The"),
                                                                     options={"max_tokens": 5}))
    assert len(out.texts) == 2


def test_fine_tuning_from_an_import_trains_the_added_tokens(hf_dir):
    folder = import_hf(hf_dir, "tiny-gpt2")
    texts, labels = corpus()
    write_texts("pc", texts, val=24, prompts=[f"write a {label} text" for label in labels])
    imported = open_checkpoint(folder).model_info()["model"]
    run = genforge.train({"name": "tuned", "data": {"dataset": "pc"},
                          "model": {**imported, "format": "prompt_completion", "dropout": 0.1},
                          "train": {**TRAIN, "steps": 2, "init_from": str(folder)}, "sample": {"max_tokens": 4}})
    assert run.info["status"] == "completed" and run.info["data_spec"]["vocab_size"] == BPE_VOCAB + 4
    tok = TextTokenizer.from_fitted(run.model().fitted)
    before = open_checkpoint(folder).tensors("model.safetensors")["model.wte.weight"]
    after = run.checkpoint().tensors("model.safetensors")["model.wte.weight"]
    assert not torch.equal(before[tok.prompt], after[tok.prompt])  # <|prompt|> was in every row, and learned
    assert len(run.sample(SampleRequest.make(2, seed=0, prompts=("write a news text", "好"))).texts) == 2


@pytest.mark.parametrize("lora", [None, {"rank": 2, "targets": ["c_attn", "c_fc"]}])
def test_an_exported_run_loads_in_transformers_with_our_logits_and_token_ids(tmp_path, lora):
    write_texts("corpus", corpus()[0], val=24)
    config = tiny_config("gpt", lr=1e-2)
    text_run = genforge.train({**config, "model": {**config["model"], "lora": lora}})
    out = export_hf(text_run.id, tmp_path / "hf")
    ckpt = text_run.checkpoint()
    assert ckpt.has("ema.safetensors")  # the export holds the EMA weights, as generation uses
    exported, ema = load_file(str(out / "model.safetensors")), ckpt.tensors("ema.safetensors")
    assert torch.equal(exported["transformer.wte.weight"], ema["model.wte.weight"])
    if lora:  # the adapters learned something, and are folded into the weights
        assert ema["model.h.0.attn.c_attn.lora_B"].abs().max() > 0 and not any("lora" in k for k in exported)

    ours = TextTokenizer.from_fitted(text_run.model().fitted)
    hf_tok = AutoTokenizer.from_pretrained(out)
    ids = ours.encode(MIXED)
    assert hf_tok.encode(MIXED) == ids and hf_tok.decode(ids) == MIXED
    assert (hf_tok.eos_token_id, hf_tok.bos_token_id, hf_tok.pad_token_id) == (ours.eot, ours.eot, ours.pad)
    assert hf_tok.convert_tokens_to_ids([PROMPT, COMPLETION]) == [ours.prompt, ours.completion]

    ids = [ours.eot, *ids][:64]
    assert (_hf_logits(out, ids) - _our_logits(ckpt.path, ids)).abs().max().item() < 1e-4


def test_a_lora_fine_tune_exports_its_adapter_alone_and_merged(tmp_path):
    """Pretrain, fine-tune with LoRA from it, then: base + exported adapter == the LoRA run ==
    the merged folder, in logits; the adapter file holds the adapters only."""
    write_texts("corpus", corpus()[0], val=24)
    base = genforge.train(tiny_config("gpt", name="base", ema=0))
    config = tiny_config("gpt", name="lora", ema=0, lr=1e-2, steps=4, init_from=base.id)
    tuned = genforge.train({**config, "model": {**config["model"], "lora": {"rank": 2, "targets": ["c_attn", "c_fc"]}}})
    adapter = export_adapter(tuned.id, tmp_path / "adapter")
    names = set(load_file(str(adapter / "adapter.safetensors")))
    assert names and all(".lora_" in k for k in names) and len(names) == 2 * 2 * 2  # layers x targets x (A, B)

    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.inference_mode():
        want = tuned.model().modules["model"](ids)
        on_base = load_adapter(load_model(base.checkpoint().path).modules["model"], adapter)(ids)
        merged_folder = export_merged(tuned.id, tmp_path / "merged")
        merged = load_model(merged_folder)
        assert merged.config.lora is None
        plain = load_model(base.checkpoint().path).modules["model"](ids)
        assert (on_base - want).abs().max() < 1e-5 and (merged.modules["model"](ids) - want).abs().max() < 1e-4
        assert (plain - want).abs().max() > 1e-3  # the adapter changed the model
    with pytest.raises(ModelError, match="has no LoRA adapters"):
        export_adapter(base.id, tmp_path / "none")


def test_the_cli_imports_then_exports_back_to_an_equal_model(hf_dir, tmp_path, monkeypatch, capsys):
    def cli_run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["genforge", *args])
        with pytest.raises(SystemExit) as e:
            cli.app()
        return e.value.code

    assert cli_run("import", str(hf_dir), "--name", "tiny-gpt2") == 0
    folder = models_dir() / "tiny-gpt2"
    assert f"train.init_from: {folder}" in capsys.readouterr().err.replace("\n", "")
    assert cli_run("import", str(hf_dir), "--name", "tiny-gpt2") == 1
    assert "already exists" in capsys.readouterr().err
    assert cli_run("export", str(folder), "--format", "onnx", "--out", str(tmp_path / "x")) == 1
    assert "--format must be one of hf, adapter, merged, got 'onnx'" in capsys.readouterr().err
    assert cli_run("export", str(folder), "--format", "hf", "--out", str(tmp_path / "back")) == 0

    ids = AutoTokenizer.from_pretrained(hf_dir).encode(MIXED)[:64]
    assert AutoTokenizer.from_pretrained(tmp_path / "back").encode(MIXED)[:64] == ids
    back, original = _hf_logits(tmp_path / "back", ids), _hf_logits(hf_dir, ids)
    assert (back[:, :BPE_VOCAB + 1] - original).abs().max().item() < 1e-4


def test_pickle_weights_and_bad_names_are_refused(hf_dir, tmp_path):
    with pytest.raises(ModelError, match="model name must be 1-64 characters"):
        import_hf(hf_dir, "../elsewhere")
    src = shutil.copytree(hf_dir, tmp_path / "src")
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ModelError, match=r"only in pytorch_model.bin: pickle files.*Convert them to model.safetensors"):
        import_hf(src, "x")
    assert not (models_dir() / "x").exists()


@pytest.mark.parametrize("field, value", [("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
                                          ("activation_function", "relu"), ("n_inner", 32),
                                          ("tie_word_embeddings", False), ("layer_norm_epsilon", 1e-6),
                                          ("model_type", "llama")])
def test_architectures_we_do_not_map_are_refused_by_field(hf_dir, tmp_path, field, value):
    src = shutil.copytree(hf_dir, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(ModelError, match=f"{field} is {value!r}" if isinstance(value, str) else f"{field} is {value}"):
        import_hf(src, "x")


def test_only_gpt_models_export(tmp_path):
    folder = save_model_folder(tmp_path / "vae", modules={"model": nn.Linear(1, 1)}, model_info={"family": "vae"},
                               fitted=None)
    with pytest.raises(ModelError, match="only gpt models export to Hugging Face GPT-2; .* is a vae model"):
        export_hf(folder, tmp_path / "out")
