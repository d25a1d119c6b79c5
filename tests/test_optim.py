"""Optimizers: per-optimizer settings over the run's, the LR schedule's factor, and the gradient
all-reduce in the step that double-backward families (R1, WGAN-GP) use instead of DDP."""

import copy

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genforge.optim import Optimizers, fused_adamw_step, steps_directly


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


def _adamw_pair() -> tuple[list[torch.nn.Module], list[torch.optim.AdamW]]:
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.AdamW([{"params": [n[0].weight, n[2].weight], "weight_decay": 0.1},
                               {"params": [n[0].bias, n[2].bias], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.8, 0.99), eps=1e-6, fused=True) for n in nets]
    return nets, opts


def test_the_direct_fused_adamw_step_is_torchs_step():
    """Bit for bit, with two groups' own weight decay, a changed learning rate, a parameter without a
    gradient in a step (its state and step count stay put), and a state_dict that torch's own step
    continues from."""
    nets, opts = _adamw_pair()
    assert all(steps_directly(o) for o in opts)
    x = torch.randn(8, 5)
    for i in range(6):
        for net, opt in zip(nets, opts):
            for g in opt.param_groups:
                g["lr"] = 1e-2 / (i + 1)
            for p in net.parameters():
                p.grad = None
            net(x).square().mean().backward()
            if i == 2:
                net[2].bias.grad = None
        opts[0].step()
        fused_adamw_step(opts[1])
        assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters())), i
    states = [o.state_dict() for o in opts]
    assert states[0]["state"][3]["step"].item() == 5 and states[1]["state"][3]["step"].item() == 5
    for a, b in zip(states[0]["state"].values(), states[1]["state"].values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    opts[0].load_state_dict(copy.deepcopy(states[1]))  # what a checkpoint holds, stepped on by torch
    opts[0].step()
    fused_adamw_step(opts[1])
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))


def test_optimizers_the_direct_step_does_not_serve_fall_back_to_torchs():
    model = torch.nn.Linear(2, 2)
    assert not steps_directly(torch.optim.AdamW(model.parameters(), fused=True, amsgrad=True))
    assert not steps_directly(torch.optim.AdamW(model.parameters(), foreach=True))
    assert not steps_directly(torch.optim.SGD(model.parameters(), lr=0.1))
    mixed = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    assert not steps_directly(torch.optim.AdamW(mixed, fused=True))
    opt = Optimizers({"m": torch.optim.AdamW(model.parameters(), fused=True, amsgrad=True)}, grad_clip=0.0)
    before = model.weight.detach().clone()
    opt.step("m", model(torch.ones(1, 2)).sum())
    assert opt.direct == set() and not torch.equal(before, model.weight)


def test_the_logged_gradient_norm_is_each_optimizers_at_its_latest_update():
    """Read when a log row asks: without clipping from the gradients the latest update left in place
    (another optimizer's steps in between do not touch them), with clipping the norm before the rescale."""
    torch.manual_seed(0)
    a, b, x = torch.nn.Linear(3, 2), torch.nn.Linear(3, 1), torch.randn(4, 3)
    for clip in (0.0, 1e-3):
        for p in [*a.parameters(), *b.parameters()]:
            p.grad = None
        opt = Optimizers({"a": torch.optim.AdamW(a.parameters(), fused=True),
                          "b": torch.optim.AdamW(b.parameters(), fused=True)}, grad_clip=clip)
        assert opt.grad_norms() == {}  # nothing updated yet
        loss = b(x).square().mean()
        b_norm = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(b.parameters()), retain_graph=True)]).norm()
        opt.step("b", loss)
        for i in range(3):  # a steps on; b's norm stays that of its update
            loss = a(x * (i + 1)).square().mean()
            a_norm = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(a.parameters()), retain_graph=True)]).norm()
            opt.step("a", loss)
        norms = opt.grad_norms()
        assert set(norms) == {"a", "b"} and torch.allclose(norms["a"], a_norm) and torch.allclose(norms["b"], b_norm), clip
        assert (norms["a"] > clip) and (clip == 0 or torch.cat([p.grad.flatten() for p in a.parameters()]).norm() < 2e-3)
