"""Hugging Face GPT-2 <-> genforge GPT, both ways, verified by equal logits (tests/test_interop.py).

genforge's GPT keeps GPT-2's layout and parameter names (genforge.models.gpt), so a conversion is a
renaming plus one transpose: Hugging Face's `Conv1D` stores a projection as (in, out), an
`nn.Linear` as (out, in). Nothing here imports `transformers`: the files are written and read by
hand, so genforge does not need it installed.

Export (`export_hf`): a folder that `GPT2LMHeadModel.from_pretrained` and `AutoTokenizer.from_pretrained`
load: config.json, model.safetensors (EMA weights where the run kept them, as generation uses; LoRA
adapters merged into their weights), and
the run's own tokenizer as tokenizer.json with tokenizer_config.json naming its special tokens. The
tokenizer is a `PreTrainedTokenizerFast` over our json, so Hugging Face encodes with our pre-tokenizer
(Han runs cut first) and gets our ids; `split_special_tokens` keeps our rule that text never yields a
control token, and `clean_up_tokenization_spaces` is off so decoding returns the text exactly.

Import (`import_hf`): a local GPT-2-architecture folder (config.json, safetensors weights,
tokenizer.json) becomes a checkpoint folder under `$GENFORGE_HOME/models/<name>/` that `load_model`
samples from and `train.init_from` fine-tunes. Pickle weights (pytorch_model.bin) are refused: loading
one can run code. An architecture our GPT does not compute the same way is refused, naming the field.
GPT-2 has <|endoftext|> only; genforge's prompt/completion format needs <|prompt|>, <|completion|> and
<|pad|>, so missing ones are added to the tokenizer and the embedding grows by rows set to the mean
of the existing ones (what Hugging Face users do with `resize_token_embeddings`: a new token starts
as an average token, not as noise of another scale); model.json's `imported` records this.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer

from genforge.checkpoint import Checkpoint, load_tensors, open_checkpoint, save_model_folder
from genforge.config import validate
from genforge.errors import ModelError
from genforge.models import DataSpec
from genforge.models.gpt import GPT, Config, SampleConfig
from genforge.models.lora import LoraConfig, adapter_tensors, apply_lora, merge_lora
from genforge.runs import load_run
from genforge.sampling import load_model
from genforge.tokenizer import COMPLETION, EOT, PAD, PROMPT, TextTokenizer
from genforge.workspace import atomic_write_json, atomic_write_text, atomic_write_with, models_dir, publish_dir

IMPORT_FORMAT = "huggingface-gpt2"
# Hugging Face `Conv1D` weights, stored (in, out): transposed to and from our nn.Linear (out, in)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GPT2Config fields that change what the network computes, with the only value our GPT computes
# (also GPT2Config's default, used when a config.json leaves the field out)
FIXED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
         "add_cross_attention": False, "tie_word_embeddings": True}
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both GELU's tanh approximation
LAYER_NORM_EPS = 1e-5  # torch's nn.LayerNorm default, which our GPT uses
CAUSAL_MASKS = (".attn.bias", ".attn.masked_bias")  # buffers older transformers saved; not weights
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# ----------------------------------------------------------------------------- export

def _checkpoint(ref: str | Path) -> Checkpoint:
    """A checkpoint folder, or a run (its newest good checkpoint): what `train.init_from` accepts too."""
    p = Path(ref)
    return open_checkpoint(p) if (p / "model.json").is_file() else load_run(ref).checkpoint()


def _hf_config(c: Config, vocab_size: int, tok: TextTokenizer) -> dict[str, Any]:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab_size,
            "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
            "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": LAYER_NORM_EPS,
            "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "initializer_range": 0.02,
            **FIXED, "bos_token_id": tok.eot, "eos_token_id": tok.eot, "pad_token_id": tok.pad, "use_cache": True}


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict under GPT-2's names; the output layer is left out: Hugging Face ties it to wte."""
    return {f"transformer.{k}": (t.t() if k.endswith(CONV1D) else t).contiguous()
            for k, t in model.state_dict().items() if k != "lm_head.weight"}


def export_hf(run_or_checkpoint: str | Path, out: Path) -> Path:
    """Write a gpt run (its newest good checkpoint) or checkpoint folder as a Hugging Face GPT-2 folder."""
    ckpt = _checkpoint(run_or_checkpoint)
    family = ckpt.model_info()["family"]
    if family != "gpt":
        raise ModelError(f"only gpt models export to Hugging Face GPT-2; {ckpt.path} is a {family} model")
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ModelError(f"{out} already exists and is not an empty folder; choose a new --out")
    model = load_model(ckpt, device="cpu")  # EMA weights where kept
    gpt: GPT = model.modules["model"]
    if gpt.config.lora:  # GPT-2 has no adapters: each is folded into its weight, with the same outputs
        merge_lora(gpt)
    tok = TextTokenizer.from_fitted(model.fitted)
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": PAD,
               "additional_special_tokens": [PROMPT, COMPLETION]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        atomic_write_json(tmp / "config.json", _hf_config(gpt.config, gpt.vocab_size, tok))
        tensors = hf_state_dict(gpt)
        atomic_write_with(tmp / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        atomic_write_text(tmp / "tokenizer.json", tok.tokenizer.to_str())
        atomic_write_json(tmp / "special_tokens_map.json", special)
        atomic_write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", **special, "model_max_length": gpt.config.block_size,
            "split_special_tokens": True, "clean_up_tokenization_spaces": False})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.is_dir():
        out.rmdir()  # empty, checked above
    if not publish_dir(tmp, out):
        raise ModelError(f"{out} was created by something else during the export; nothing was written to it")
    return out


# ----------------------------------------------------------------------------- LoRA adapters

ADAPTER_FORMAT = "genforge-lora/1"


def _lora_model(ckpt: Checkpoint):
    model = load_model(ckpt, device="cpu")  # EMA weights where kept
    if model.family_name != "gpt" or not model.config.lora:
        raise ModelError(f"{ckpt.path} has no LoRA adapters (model.lora is not set)")
    return model


def export_adapter(run_or_checkpoint: str | Path, out: Path) -> Path:
    """The adapter alone: adapter.safetensors (the `*.lora_*` tensors, a few MB where the model is
    hundreds) and adapter.json (rank, alpha, targets, and the base it was trained on)."""
    ckpt = _checkpoint(run_or_checkpoint)
    model = _lora_model(ckpt)
    tensors = {k: v.contiguous() for k, v in adapter_tensors(model.modules["model"].state_dict()).items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_with(out / "adapter.safetensors", lambda p: save_file(tensors, p))
    atomic_write_json(out / "adapter.json", {"format": ADAPTER_FORMAT, "lora": model.config.lora.model_dump(),
                                             "checkpoint": str(ckpt.path), "base": ckpt.model_info().get("init_from")})
    return out


def load_adapter(model: GPT, folder: Path) -> GPT:
    """Put an exported adapter on a base model (the one it was trained from): `model` gains the
    adapted layers and their weights."""
    info = json.loads((Path(folder) / "adapter.json").read_text(encoding="utf-8"))
    if info.get("format") != ADAPTER_FORMAT:
        raise ModelError(f"{folder}/adapter.json has format {info.get('format')!r}, expected {ADAPTER_FORMAT!r}")
    apply_lora(model, validate(LoraConfig, info["lora"], source=str(folder / "adapter.json")))
    tensors = load_tensors(Path(folder) / "adapter.safetensors")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(".lora_" in k for k in missing):
        raise ModelError(f"{folder} does not fit this model: unexpected {unexpected[:3]}, missing "
                         f"{[k for k in missing if '.lora_' in k][:3]}")
    return model


def export_merged(run_or_checkpoint: str | Path, out: Path) -> Path:
    """A checkpoint folder with every adapter folded into its weight (model.lora unset): the same
    outputs, the plain model's speed, and loadable, servable and exportable as any gpt checkpoint."""
    ckpt = _checkpoint(run_or_checkpoint)
    model = _lora_model(ckpt)
    merge_lora(model.modules["model"])
    info = ckpt.model_info()
    info = {k: v for k, v in info.items() if k not in ("format", "fitted")}
    info["model"] = {**info["model"], "lora": None}
    info["merged_from"] = str(ckpt.path)
    return save_model_folder(Path(out), modules=model.modules, model_info=info, fitted=model.fitted)


# ----------------------------------------------------------------------------- import

def _check_name(name: str) -> str:
    if not (name and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")):
        raise ModelError(f"model name must be 1-64 characters of letters, digits, '-', '_', '.', got {name!r}")
    return name


def _read_config(path: Path) -> dict[str, Any]:
    """config.json, refused unless our GPT computes exactly what GPT2LMHeadModel would."""
    file = path / "config.json"
    if not file.is_file():
        raise ModelError(f"{path} has no config.json: not a Hugging Face model folder")
    cfg = json.loads(file.read_text(encoding="utf-8"))
    if cfg.get("model_type") != "gpt2":
        raise ModelError(f"{file}: model_type is {cfg.get('model_type')!r}; only the GPT-2 architecture (gpt2) imports")
    for field, value in FIXED.items():
        if cfg.get(field, value) != value:
            raise ModelError(f"{file}: {field} is {cfg[field]!r}; genforge's GPT supports only {value!r}")
    if cfg.get("activation_function", "gelu_new") not in ACTIVATIONS:
        raise ModelError(f"{file}: activation_function is {cfg['activation_function']!r}; genforge's GPT supports "
                         f"only {' or '.join(ACTIVATIONS)}")
    n_embd = cfg.get("n_embd", 768)
    if cfg.get("n_inner") not in (None, 4 * n_embd):
        raise ModelError(f"{file}: n_inner is {cfg['n_inner']}; genforge's GPT supports only 4 * n_embd ({4 * n_embd})")
    if not math.isclose(cfg.get("layer_norm_epsilon", LAYER_NORM_EPS), LAYER_NORM_EPS, rel_tol=1e-9):
        raise ModelError(f"{file}: layer_norm_epsilon is {cfg['layer_norm_epsilon']}; genforge's GPT supports only "
                         f"{LAYER_NORM_EPS}")
    return cfg


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors (or its shards) under our names: no "transformer." prefix,
    no causal-mask buffers, the output layer checked to be tied to the embedding and dropped."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({path / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    else:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLES)
        if pickles:
            raise ModelError(f"{path} has weights only in {', '.join(pickles)}: pickle files, which can run code when "
                             "loaded, so genforge does not load them. Convert them to model.safetensors first, in an "
                             "environment you trust (transformers: GPT2LMHeadModel.from_pretrained(folder)"
                             ".save_pretrained(new_folder))")
        raise ModelError(f"{path} has no model.safetensors")
    tensors = {k.removeprefix("transformer."): t for f in files for k, t in load_tensors(f).items()
               if not k.endswith(CAUSAL_MASKS)}
    head = tensors.pop("lm_head.weight", None)
    if head is not None and "wte.weight" in tensors and not torch.equal(head, tensors["wte.weight"]):
        raise ModelError(f"{path}: lm_head.weight differs from transformer.wte.weight; genforge's GPT ties its output "
                         "layer to the token embedding")
    return tensors


def _read_tokenizer(path: Path) -> tuple[Tokenizer, dict[str, int]]:
    """tokenizer.json with genforge's special tokens; returns it and {token: id} of those it lacked.
    Its pre-tokenizer is kept as it is: the model learned on its pieces. Truncation and padding
    (settings of Hugging Face's runtime) are switched off: genforge cuts and pads rows itself."""
    file = path / "tokenizer.json"
    if not file.is_file():
        raise ModelError(f"{path} has no tokenizer.json; genforge reads the fast tokenizer's file (save one with "
                         "transformers: AutoTokenizer.from_pretrained(folder).save_pretrained(folder))")
    tok = Tokenizer.from_file(str(file))
    if tok.token_to_id(EOT) is None:
        raise ModelError(f"{file} has no {EOT} token; genforge's GPT ends every document with it")
    tok.no_truncation()
    tok.no_padding()
    missing = [s for s in (PROMPT, COMPLETION, PAD) if tok.token_to_id(s) is None]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in missing])
    return tok, {s: tok.token_to_id(s) for s in missing}


def import_hf(path: Path, name: str) -> Path:
    """Convert a local Hugging Face GPT-2 folder into the checkpoint folder `models/<name>/`; returns it."""
    path, final = Path(path), models_dir() / _check_name(name)
    if final.exists():
        raise ModelError(f"a model named {name!r} already exists ({final}); choose another --name")
    if not path.is_dir():
        raise ModelError(f"{path} is not a folder")
    cfg = _read_config(path)
    tensors = _read_weights(path)
    tok, added = _read_tokenizer(path)

    # the embedding grows to the tokenizer's size; each added token's row is the mean of the old rows
    wte = tensors.get("wte.weight")
    if wte is None:
        raise ModelError(f"{path}: the weights have no transformer.wte.weight")
    rows, vocab = wte.shape[0], tok.get_vocab_size(with_added_tokens=True)
    if vocab - len(added) > rows:
        raise ModelError(f"{path}: tokenizer.json has {vocab - len(added)} tokens but the embedding only {rows} rows")
    grown = torch.cat([wte.float(), wte.new_zeros(max(vocab - rows, 0), wte.shape[1], dtype=torch.float32)])
    if added:
        grown[list(added.values())] = wte.float().mean(0)
    tensors["wte.weight"] = grown

    sizes = {"block_size": cfg.get("n_positions", 1024), "n_layer": cfg.get("n_layer", 12),
             "n_head": cfg.get("n_head", 12), "n_embd": cfg.get("n_embd", 768)}  # GPT2Config's defaults
    config = validate(Config, {"family": "gpt", "vocab_size": grown.shape[0], **sizes}, source=str(path / "config.json"))
    gpt = GPT(config, grown.shape[0])
    expected = set(gpt.state_dict()) - {"lm_head.weight"}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ModelError(f"{path}: the weights do not match the GPT-2 layout of config.json"
                         + (f"; missing {', '.join(missing[:5])}" if missing else "")
                         + (f"; unexpected {', '.join(unexpected[:5])}" if unexpected else ""))
    state = {k: (t.float().t() if k.endswith(CONV1D) else t.float()) for k, t in tensors.items()}
    try:
        gpt.load_state_dict({**state, "lm_head.weight": state["wte.weight"]}, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path}: the weights do not fit config.json's sizes: {e}") from None

    spec = DataSpec("text", vocab_size=grown.shape[0], block_size=config.block_size)
    info = {"family": "gpt", "model": config.model_dump(mode="json"), "sample": SampleConfig().model_dump(mode="json"),
            "data_spec": spec.to_json(), "precision": "fp32", "channels_last": False,
            "imported": {"format": IMPORT_FORMAT, "from": str(path.resolve()), "name_or_path": cfg.get("_name_or_path"),
                         "added_tokens": added, "added_rows": "mean of the existing embedding rows"}}
    return save_model_folder(final, modules={"model": gpt}, model_info=info,
                             fitted=TextTokenizer(tok).to_fitted())
