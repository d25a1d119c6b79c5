"""Distributed data parallel under torchrun (gloo on CPU): 2 processes with batch b each follow the
loss curve of 1 process with batch 2b, only rank 0 writes, and a DDP run resumes exactly."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from genforge.batches import RowData
from genforge.distributed import Processes
from genforge.runconfig import parse_run_config
from genforge.runs import list_runs, load_run
from genforge.trainer import train
from imagesets import digits, write_images

CONFIG = {
    "name": "ddp",
    "data": {"dataset": "digits"},
    "model": {"family": "diffusion", "channels": [8, 16], "blocks": 1, "attention": [False, True],
              "head_dim": 8, "groups": 4, "timesteps": 100},
    "train": {"steps": 30, "batch_size": 32, "lr": 3e-3, "warmup_steps": 2, "log_every": 1, "val_every": 0,
              "checkpoint_every": 10, "threads": 1},
}
# Tolerance: the processes draw different noise and timesteps than the single process does, so the
# curves agree only statistically. Over windows of 10 steps the mean losses agree within 15%
# (measured: within 9%, at losses 0.99 -> 0.18); the curve itself falls ~5x, so a run that failed to
# learn, or learned at a different effective batch or learning rate, lands outside it.
WINDOW, REL_TOL = 10, 0.15


def two_processes(program: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`program args` as two processes under torchrun, which must both succeed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", program, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """The genforge CLI (`genforge args`) as two processes."""
    genforge = shutil.which("genforge", path=str(Path(sys.executable).parent)) or shutil.which("genforge")
    return two_processes(genforge, *args)


def test_each_process_takes_its_share_of_the_same_global_batch():
    rows = {"images": torch.arange(40, dtype=torch.uint8).reshape(40, 1, 1, 1), "labels": torch.arange(40)}
    one = RowData(rows, 8, seed=3, procs=Processes(0, 1, torch.device("cpu")))
    two = [RowData(rows, 8, seed=3, procs=Processes(r, 2, torch.device("cpu"))) for r in range(2)]
    for step in (0, 4, 5, 11):  # epochs of 5 steps: crosses into new permutations
        shares = [d.batch(step)["labels"] for d in two]
        assert torch.equal(torch.cat(shares), one.batch(step)["labels"])
        assert torch.equal(one.batch(step)["images"].flatten().long(), one.batch(step)["labels"])  # rows stay whole
    with pytest.raises(Exception, match="divisible by the number of processes"):
        RowData(rows, 7, seed=0, procs=Processes(0, 2, torch.device("cpu")))
    with pytest.raises(Exception, match="one common first dimension"):
        RowData({"a": torch.zeros(4), "b": torch.zeros(5)}, 2, seed=0, procs=Processes(0, 1, torch.device("cpu")))


def test_two_processes_match_one_with_double_batch_and_resume_exactly(tmp_path):
    x, y = digits(560)
    write_images("digits", x, y, [str(i) for i in range(10)], val=48)
    single = load_run(train(parse_run_config(CONFIG)))

    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    torchrun("train", str(cfg))
    ddp = load_run([p for p, _ in list_runs() if p != single.path][0])
    assert ddp.info["world_size"] == 2 and ddp.info["status"] == "completed" and ddp.info["step"] == 30
    assert ddp.info["device"] == "cpu x2"

    a = np.array([m["loss"] for m in single.metrics()])
    b = np.array([m["loss"] for m in ddp.metrics()])  # rank 0 alone wrote: one row per step
    assert len(a) == len(b) == 30
    assert a[-WINDOW:].mean() < 0.5 * a[:WINDOW].mean()  # it learns
    for w in range(0, 30, WINDOW):
        ma, mb = a[w:w + WINDOW].mean(), b[w:w + WINDOW].mean()
        assert abs(ma - mb) <= REL_TOL * ma, (w, ma, mb)

    # resume under DDP: both processes' RNG states come back, so the result is bitwise the same
    crashed = ddp.path.parent / "ddp-crashed"
    shutil.copytree(ddp.path, crashed)
    info = json.loads((crashed / "run.json").read_text())
    (crashed / "run.json").write_text(json.dumps({**info, "id": crashed.name, "status": "running"}))
    for step in (20, 30):
        shutil.rmtree(crashed / "checkpoints" / f"step-{step:07d}")
    torchrun("train", str(cfg), "--resume-from", str(crashed))
    ref = load_file(str(ddp.path / "checkpoints/step-0000030/model.safetensors"))
    got = load_file(str(crashed / "checkpoints/step-0000030/model.safetensors"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


TEARDOWN = """
import json, os, sys, torch, torch.distributed as dist
from pathlib import Path
from genforge.distributed import close_processes, init_processes
procs = init_processes("cpu")
# the first optimizer imports torch._dynamo, and with it torch.distributed.nn.functional (see init_processes)
torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
dist.barrier()
close_processes(procs)
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
Path(sys.argv[1], f"rank{os.environ['RANK']}.json").write_text(json.dumps([t for t in threads if "gloo" in t]))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc (Linux)")
def test_closing_the_process_group_stops_gloos_threads(tmp_path):
    """The cause of an intermittent SIGABRT after completed torchrun runs: a module torch imports lazily kept
    the gloo group alive past destroy_process_group, and its threads could abort the interpreter's exit."""
    script = tmp_path / "teardown.py"
    script.write_text(TEARDOWN)
    two_processes(str(script), str(tmp_path), timeout=300)
    # one file per rank: the two ranks' stdout interleaves
    left = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)}
    assert left == {0: [], 1: []}
