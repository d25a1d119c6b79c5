"""Optimizers: per-optimizer settings over the run's, the LR schedule's factor, and the gradient
all-reduce in the step that double-backward families (R1, WGAN-GP) use instead of DDP."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genforge.optim import Optimizers


def _rank(rank: int, world: int, rdv: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)  # the same init on both ranks
        unused = torch.nn.Linear(1, 1)  # reached by no loss: counts as a zero gradient everywhere
        opt = Optimizers({"m": torch.optim.SGD(list(model.parameters()) + list(unused.parameters()), lr=0.5)},
                         grad_clip=0.0, sync_world=world)
        x = torch.full((4, 3), float(rank + 1))  # each rank its own data: different local gradients
        opt.step("m", model(x).square().mean())
        torch.save({k: v for k, v in model.state_dict().items()}, f"{out}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradients_are_averaged_across_processes_in_the_optimizer_step(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "rdv"), str(tmp_path / "w")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"w-{r}.pt") for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # both processes took the same step

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = sum(model(torch.full((4, 3), float(r + 1))).square().mean() for r in range(2)) / 2  # the mean of the two
    loss.backward()
    sgd.step()
    assert all(torch.allclose(ranks[0][k], v, atol=1e-6) for k, v in model.state_dict().items())
