"""Checkpoints: what is written, checksums that catch damage, pruning only after a complete write,
RNG and optimizer state that round-trip exactly."""

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from genforge import checkpoint as C


def make(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    return model, opt


def train_steps(model, opt, n):
    for _ in range(n):
        x = torch.randn(5, 2, 6, 6).to(memory_format=torch.channels_last)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def save(root, step, model, opt, keep=3, fitted_dir=None):
    return C.save_checkpoint(root, step, modules={"net": model}, ema={"net": model}, optimizers={"net": opt},
                             state={"elapsed_s": 1.5, "rng": [C.capture_rng()]}, keep=keep,
                             model_info={"family": "test"}, fitted_dir=fitted_dir or root / "no-fitted-state")


def test_layout_checksums_and_pruning(tmp_path):
    model, opt = make()
    train_steps(model, opt, 1)
    for step in (1, 2, 3, 4):
        save(tmp_path, step, model, opt, keep=2)
    assert [p.name for p in C.list_checkpoints(tmp_path)] == ["step-0000003", "step-0000004"]
    assert not list(tmp_path.glob(".tmp-*"))
    path = tmp_path / "step-0000004"
    assert sorted(p.name for p in path.iterdir()) == ["ema.safetensors", "model.json", "model.safetensors",
                                                      "optimizer.safetensors", "state.json"]
    state = json.loads((path / "state.json").read_text())
    assert state["format"] == C.FORMAT and state["step"] == 4 and set(state["files"]) == {
        "model.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors"}
    assert C.open_checkpoint(path).model_info() == {"format": C.MODEL_FORMAT, "family": "test", "fitted": {}}
    assert C.verify(path)[0] is not None


@pytest.mark.parametrize("damage,problem", [
    (lambda p: p.joinpath("model.safetensors").write_bytes(p.joinpath("model.safetensors").read_bytes()[:-100]), "checksum"),
    (lambda p: p.joinpath("optimizer.safetensors").unlink(), "missing"),
    (lambda p: p.joinpath("state.json").write_text('{"format": "genforge-checkpoint/1", "st'), "unreadable"),
])
def test_damaged_newest_falls_back_to_previous(tmp_path, damage, problem):
    model, opt = make()
    save(tmp_path, 1, model, opt)
    save(tmp_path, 2, model, opt)
    damage(tmp_path / "step-0000002")
    (tmp_path / ".tmp-step-0000003-dead").mkdir()  # a write cut off by a crash
    warnings = []
    ckpt = C.latest_checkpoint(tmp_path, warnings.append)  # read-only: nothing moves
    assert ckpt.step == 1 and problem in warnings[0] and "falling back" in warnings[0]
    assert (tmp_path / "step-0000002").exists()
    ckpt = C.latest_checkpoint(tmp_path, warnings.append, repair=True)
    assert ckpt.step == 1 and len(list(tmp_path.glob("step-0000002.damaged-*"))) == 1
    assert not list(tmp_path.glob(".tmp-*")) and [p.name for p in C.list_checkpoints(tmp_path)] == ["step-0000001"]


def test_no_good_checkpoint(tmp_path):
    assert C.latest_checkpoint(tmp_path / "none", print) is None


def test_rng_states_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(C.capture_rng()))  # it must survive json
    expect = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    C.restore_rng(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expect[:2] and torch.equal(got[2], expect[2])


def test_weights_and_optimizer_continue_bitwise(tmp_path):
    """Save after 3 steps, load into fresh objects, 3 more steps: equal to 6 uninterrupted steps."""
    model, opt = make()
    torch.manual_seed(10)
    train_steps(model, opt, 3)
    rng = C.capture_rng()
    save(tmp_path, 3, model, opt)
    train_steps(model, opt, 3)

    model2, opt2 = make(seed=5)  # different init: everything must come from the checkpoint
    ckpt = C.latest_checkpoint(tmp_path, print)
    C.load_modules(ckpt, {"net": model2})
    C.load_optimizers(ckpt, {"net": opt2})
    C.restore_rng(rng)
    train_steps(model2, opt2, 3)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


def test_wrong_module_is_a_checkpoint_error(tmp_path):
    model, opt = make()
    save(tmp_path, 1, model, opt)
    with pytest.raises(C.CheckpointError, match="does not fit module 'net'"):
        C.load_modules(C.latest_checkpoint(tmp_path, print), {"net": nn.Linear(2, 2)})


class Tied(nn.Module):
    """GPT-2's layout in small: the output layer shares the embedding's weight."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.out = nn.Linear(4, 11, bias=False)
        self.out.weight = self.emb.weight


def test_tied_weights_are_stored_once_and_stay_tied_on_load(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    path = save(tmp_path, 1, model, opt)
    stored = C.load_tensors(path / "model.safetensors")
    assert torch.equal(stored["net.emb.weight"], stored["net.out.weight"])
    from safetensors import safe_open
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["net.emb.weight"]  # one copy on disk
    fresh = Tied()
    C.load_modules(C.open_checkpoint(path), {"net": fresh})
    assert torch.equal(fresh.out.weight, model.emb.weight) and fresh.out.weight is fresh.emb.weight


def test_fitted_state_is_copied_checksummed_and_never_silently_changed(tmp_path):
    from genforge.models import Fitted
    fitted = Fitted("toy-transformer/1", {"columns": ["a", "b"], "vocab": {"x": 1}}, {"means": torch.arange(3.0)})
    hashes = C.save_fitted(tmp_path / "fitted", fitted)
    assert set(hashes) == {"fitted.json", "fitted.safetensors"}
    back = C.load_fitted(tmp_path / "fitted", hashes)
    assert back.format == fitted.format and back.meta == fitted.meta and torch.equal(back.tensors["means"], fitted.tensors["means"])
    model, opt = make()
    path = save(tmp_path / "ckpts", 1, model, opt, fitted_dir=tmp_path / "fitted")
    info = C.open_checkpoint(path).model_info()
    assert info["fitted"] == hashes and C.load_fitted(path, info["fitted"]).meta == fitted.meta  # the folder alone
    doc = json.loads((path / "fitted.json").read_text())
    doc["meta"]["vocab"]["x"] = 2
    (path / "fitted.json").write_text(json.dumps(doc))
    with pytest.raises(C.CheckpointError, match="does not match its checksum"):
        C.load_fitted(path, info["fitted"])
    assert C.save_fitted(tmp_path / "none", None) == {} and C.load_fitted(tmp_path / "none", {}) is None
