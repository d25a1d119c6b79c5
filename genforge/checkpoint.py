"""Checkpoints: safetensors weights plus a json state, written so a crash never costs a good one.

`checkpoints/step-<0000000>/` holds
  model.json             what the weights are: format, family, model and sample config, data spec and
                         the fitted state's checksums: enough to load the model from this folder alone
  fitted.json (+ .safetensors)  the family's fitted state (a tokenizer, a table transformer), if any
  model.safetensors      every module of the family, keys `<module>.<parameter>`; a tensor tied to an
                         earlier one (GPT-2's embedding and output layer) is stored once, its other
                         names listed in the file's `aliases` metadata
  ema.safetensors        the EMA copies (when EMA is on), same keys
  optimizer.safetensors  every optimizer's tensors, keys `<optimizer>.<param index>.<name>`
  state.json             step, data position, RNG states, optimizer hyper-parameters, whatever the
                         trainer adds, and the sha256 of each file above (written last)
A checkpoint is assembled in a hidden directory and renamed into place when complete; older ones
are pruned only after that. On resume, a checkpoint whose files do not match their checksums is
set aside (renamed `*.damaged-*`) and the previous good one is used.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from genforge.errors import CheckpointError
from genforge.models import Fitted
from genforge.models.lora import ADAPTER
from genforge.workspace import atomic_write_json, atomic_write_text, atomic_write_with, publish_dir, sha256_file

FORMAT = "genforge-checkpoint/1"
MODEL_FORMAT = "genforge-model/1"
FITTED_FORMAT = "genforge-fitted/1"
FITTED_FILES = ("fitted.json", "fitted.safetensors")
_NAME = re.compile(r"^step-(\d{7,})$")


# ----------------------------------------------------------------------------- RNG states

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step may touch: Python, NumPy, torch CPU and each CUDA device."""
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ----------------------------------------------------------------------------- writing

def _module_tensors(modules: dict[str, nn.Module]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, aliases): every state tensor once, in the standard layout (channels-last weights are
    copied back in place on load); a tensor that shares storage with an earlier one is an alias of it,
    since safetensors refuses shared tensors."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, m in modules.items():
        for k, v in m.state_dict(keep_vars=True).items():
            key = f"{name}.{k}"
            ident = (v.data_ptr(), tuple(v.shape), tuple(v.stride()))
            if v.numel() and ident in seen:
                aliases[key] = seen[ident]
                continue
            seen[ident] = key
            tensors[key] = v.detach().contiguous().cpu()
    return tensors, aliases


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], aliases: dict[str, str] | None = None) -> None:
    meta = {"format": FORMAT, "aliases": json.dumps(aliases or {})}
    atomic_write_with(path, lambda p: save_file(tensors, p, metadata=meta))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, with every alias filled in (tied weights)."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    return {**tensors, **{alias: tensors[src] for alias, src in aliases.items()}}


# ----------------------------------------------------------------------------- fitted state

def save_fitted(directory: Path, fitted: Fitted | None) -> dict[str, str]:
    """Write a family's fitted state into `directory`; returns {file name: sha256} (empty for none)."""
    if fitted is None:
        return {}
    # compact: json's C encoder (an indent takes its pure-Python one), for a table's thousands of row hashes
    doc = {"format": FITTED_FORMAT, "content": fitted.format, "meta": fitted.meta}
    atomic_write_text(directory / "fitted.json", json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
    if fitted.tensors:
        _save_tensors(directory / "fitted.safetensors", {k: v.contiguous().cpu() for k, v in fitted.tensors.items()})
    return {f: sha256_file(directory / f) for f in FITTED_FILES if (directory / f).is_file()}


def load_fitted(directory: Path, hashes: dict[str, str]) -> Fitted | None:
    """The fitted state recorded by `hashes`, checked against them: never refitted, never silently changed."""
    if not hashes:
        return None
    for fname, sha in hashes.items():
        path = directory / fname
        if not path.is_file():
            raise CheckpointError(f"fitted state {path} is missing")
        if sha256_file(path) != sha:
            raise CheckpointError(f"fitted state {path} does not match its checksum (changed or damaged)")
    doc = json.loads((directory / "fitted.json").read_text(encoding="utf-8"))
    if doc.get("format") != FITTED_FORMAT:
        raise CheckpointError(f"{directory / 'fitted.json'} has format {doc.get('format')!r}, expected {FITTED_FORMAT!r}")
    tensors = load_tensors(directory / "fitted.safetensors") if "fitted.safetensors" in hashes else {}
    return Fitted(doc["content"], doc["meta"], tensors)


def _optimizer_tensors(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, groups = {}, {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"{name}.{idx}.{k}"] = torch.as_tensor(v).detach().contiguous().cpu()
        groups[name] = sd["param_groups"]
    return tensors, groups


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (in-progress and damaged ones are hidden)."""
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()] if root.is_dir() else []
    return [p for _, p in sorted(found)]


def save_checkpoint(root: Path, step: int, *, modules: dict[str, nn.Module], ema: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any], keep: int,
                    model_info: dict[str, Any], fitted_dir: Path) -> Path:
    """Write checkpoint `step`, then prune to the newest `keep`. Returns its directory.

    `model_info` (family, configs, data spec) becomes model.json with the checksums of the fitted
    files copied from `fitted_dir`, so the folder describes itself."""
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        opt_tensors, param_groups = _optimizer_tensors(optimizers)
        files = {"model.safetensors": _module_tensors(modules), "optimizer.safetensors": (opt_tensors, {})}
        if ema:
            files["ema.safetensors"] = _module_tensors(ema)
        sums = {}
        for fname in FITTED_FILES:
            if (fitted_dir / fname).is_file():
                atomic_write_with(tmp / fname, lambda p, f=fname: shutil.copyfile(fitted_dir / f, p))
                sums[fname] = sha256_file(tmp / fname)
        atomic_write_json(tmp / "model.json", {"format": MODEL_FORMAT, **model_info,
                                               "fitted": {f: sums[f] for f in FITTED_FILES if f in sums}})
        sums["model.json"] = sha256_file(tmp / "model.json")
        for fname, (tensors, aliases) in files.items():
            _save_tensors(tmp / fname, tensors, aliases)
            sums[fname] = sha256_file(tmp / fname)
        atomic_write_json(tmp / "state.json", {"format": FORMAT, "step": step, **state,
                                                "param_groups": param_groups, "files": sums})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # left by a run that crashed after this step; ours is the one to keep
        shutil.rmtree(final)
    publish_dir(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_model_folder(final: Path, *, modules: dict[str, nn.Module], model_info: dict[str, Any],
                      fitted: Fitted | None) -> Path:
    """A checkpoint folder of weights alone, at step 0 with no optimizer or RNG state: a model that
    was not trained here (an import). `load_model` samples from it and `train.init_from` fine-tunes
    it like any checkpoint. Assembled aside and renamed into place; an existing folder is never replaced."""
    if final.exists():
        raise CheckpointError(f"{final} already exists")
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        sums = save_fitted(tmp, fitted)
        atomic_write_json(tmp / "model.json", {"format": MODEL_FORMAT, **model_info, "fitted": dict(sums)})
        tensors, aliases = _module_tensors(modules)
        _save_tensors(tmp / "model.safetensors", tensors, aliases)
        sums.update({f: sha256_file(tmp / f) for f in ("model.json", "model.safetensors")})
        atomic_write_json(tmp / "state.json", {"format": FORMAT, "step": 0, "files": sums})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not publish_dir(tmp, final):
        raise CheckpointError(f"{final} already exists")
    return final


# ----------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def tensors(self, fname: str) -> dict[str, torch.Tensor]:
        return load_tensors(self.path / fname)

    def model_info(self) -> dict[str, Any]:
        """model.json: what these weights are (family, configs, data spec, fitted-state checksums)."""
        info = json.loads((self.path / "model.json").read_text(encoding="utf-8"))
        if info.get("format") != MODEL_FORMAT:
            raise CheckpointError(f"{self.path / 'model.json'} has format {info.get('format')!r}, expected {MODEL_FORMAT!r}")
        return info

    def has(self, fname: str) -> bool:
        return fname in self.state["files"]


def verify(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(state, "") when every file matches its checksum, else (None, what is wrong)."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"state.json is unreadable ({e.__class__.__name__})"
    if state.get("format") != FORMAT:
        return None, f"state.json has format {state.get('format')!r}, expected {FORMAT!r}"
    for fname, sha in state.get("files", {}).items():
        p = path / fname
        if not p.is_file():
            return None, f"{fname} is missing"
        if sha256_file(p) != sha:
            return None, f"{fname} does not match its checksum (truncated or changed)"
    return state, ""


def latest_checkpoint(root: Path, warn: Callable[[str], None], repair: bool = False) -> Checkpoint | None:
    """The newest checkpoint that verifies; each damaged newer one is reported via `warn`.

    With `repair` (the trainer, about to write here again) damaged ones are renamed
    `step-N.damaged-*` so step N can be written anew, and half-written `.tmp-*` ones are removed."""
    if repair:
        for tmp in root.glob(".tmp-step-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    for path in reversed(list_checkpoints(root)):
        state, problem = verify(path)
        if state is not None:
            return Checkpoint(path, state)
        aside = path.with_name(f"{path.name}.damaged-{uuid.uuid4().hex[:6]}")
        warn(f"checkpoint {path.name} is damaged: {problem}; " + (f"moved to {aside.name}; " if repair else "")
             + "falling back to the previous one")
        if repair:
            path.rename(aside)
    return None


def open_checkpoint(path: Path) -> Checkpoint:
    """One checkpoint folder, verified file by file."""
    state, problem = verify(Path(path))
    if state is None:
        raise CheckpointError(f"{path} is not a usable checkpoint: {problem}")
    return Checkpoint(Path(path), state)


def load_modules(ckpt: Checkpoint, modules: dict[str, nn.Module], fname: str = "model.safetensors") -> None:
    """Copy weights into `modules` in place (their device and memory format are kept)."""
    tensors = ckpt.tensors(fname)
    for name, m in modules.items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            missing, unexpected = m.load_state_dict(sd, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt.path / fname} does not fit module {name!r}: {e}") from None
        missing = [k for k in missing if ADAPTER not in k]  # new LoRA adapters start at their init
        if missing or unexpected:
            raise CheckpointError(f"{ckpt.path / fname} does not fit module {name!r}: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")


def load_optimizers(ckpt: Checkpoint, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    tensors = ckpt.tensors("optimizer.safetensors")
    for name, opt in optimizers.items():
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            opt_name, idx, k = key.rsplit(".", 2)
            if opt_name == name:
                state.setdefault(int(idx), {})[k] = v
        opt.load_state_dict({"state": state, "param_groups": ckpt.state["param_groups"][name]})
        for p, st in opt.state.items():  # moments in the parameter's own layout (channels-last),
            for k, v in st.items():      # as fused kernels walk them element by element with it
                if v.shape == p.shape:
                    st[k] = torch.empty_like(p).copy_(v)
