"""The grouped column order CTGAN and TVAE learn on: each span's softmax is the one a per-span loop
would compute, the value columns come first, and the permutation's gradient lands where it belongs."""

import pytest
import torch

from genforge.tabular.segments import Segments

# a value, a 3-mode one-hot, a value, 2 missing flags, 3 modes, 46 categories, a value, 2 missing flags
SPANS = [(0, 1, False), (1, 3, True), (4, 1, False), (5, 2, True), (7, 3, True), (10, 46, True), (56, 1, False),
         (57, 2, True)]
WIDTH = 59


def _rows(n: int = 6, scale: float = 40.0) -> torch.Tensor:
    return torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scale


def _encoded_rows(seg: Segments, n: int, q: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Real rows in grouped order: values in (-1, 1), each one-hot span exactly one option."""
    x = torch.zeros(n, WIDTH, dtype=dtype)
    for start, size, hot in SPANS:
        if hot:
            x[torch.arange(n), start + torch.randint(size, (n,), generator=q)] = 1.0
        else:
            x[:, start] = torch.rand(n, generator=q, dtype=dtype) * 2 - 1
    return seg.group(x)


@pytest.mark.parametrize("scale", [3.0, 40.0])
def test_grouped_log_softmax_and_softmax_are_each_spans_own(scale):
    seg, x = Segments(SPANS, WIDTH).double(), _rows(scale=scale)
    g = seg.group(x)
    assert torch.equal(g[:, :seg.n_values], x[:, [0, 4, 56]])
    assert [(c, s) for _, c, s in seg.groups] == [(2, 2), (2, 3), (1, 46)]
    # logits 3 apart: the row-wide maximum and the span matrix; 40 apart: a span's sum would underflow
    # from the row's maximum, and each span's own maximum is taken instead
    assert (seg.span_sums(g[:, seg.n_values:]) is None) == (scale > 10)
    logp, p = seg.log_softmax(g), seg.softmax(g[:, seg.n_values:])
    assert logp.shape == p.shape == (6, WIDTH - 3)
    for start, size, hot in SPANS:
        if hot:
            at = seg.onehot_position(torch.arange(start, start + size))
            assert torch.allclose(logp[:, at], torch.log_softmax(x[:, start:start + size], -1))
            assert torch.allclose(p[:, at], torch.softmax(x[:, start:start + size], -1))


def test_gumbel_softmax_gives_a_distribution_per_span_and_follows_the_seed():
    seg, g = Segments(SPANS, WIDTH).double(), Segments(SPANS, WIDTH).double().group(_rows())
    torch.manual_seed(3)
    a = seg.gumbel_softmax(g, 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, seg.gumbel_softmax(g, 0.2))
    for start, size, hot in SPANS:
        if hot:
            at = seg.onehot_position(torch.arange(start, start + size))
            assert torch.allclose(a[:, at].sum(1), torch.ones(6, dtype=torch.float64))


def test_the_permutation_sends_gradients_back_to_their_columns():
    seg, x = Segments(SPANS, WIDTH).double(), _rows().requires_grad_()
    w = torch.randn(6, WIDTH, dtype=torch.float64)
    (seg.group(x) * w).sum().backward()
    assert torch.equal(x.grad, w[:, seg.inverse])
    assert torch.equal(seg.group(x)[:, seg.inverse], x)


def test_spans_must_cover_the_row():
    with pytest.raises(ValueError, match="do not tile"):
        Segments(SPANS[:-1], WIDTH)


@pytest.mark.parametrize("scale", [3.0, 40.0])
def test_tvae_loss_and_its_hand_written_gradient_are_the_formula_autograd_differentiates(scale):
    """On both paths: the span sums (logits 3 apart), and each span's own log-softmax (40 apart)."""
    from genforge.models.tvae import _Loss
    seg, q = Segments(SPANS, WIDTH).double(), torch.Generator().manual_seed(1)
    x = _encoded_rows(seg, 8, q, torch.float64)
    leaves = [torch.randn(8, WIDTH, generator=q, dtype=torch.float64) * scale,  # recon
              torch.rand(WIDTH, generator=q, dtype=torch.float64) * 0.9 + 0.05,  # sigma
              torch.randn(8, 4, generator=q, dtype=torch.float64), torch.randn(8, 4, generator=q, dtype=torch.float64)]
    mine = [t.clone().requires_grad_(True) for t in leaves]
    ref = [t.clone().requires_grad_(True) for t in leaves]
    assert (seg.span_sums(leaves[0][:, seg.n_values:]) is None) == (scale > 10)
    recon, kl = _Loss.apply(x, *mine[:2], *mine[2:], seg)
    (2 * recon + 3 * kl).backward()
    r, s, mu, logvar = ref
    v, n = seg.n_values, len(x)
    sig = s[seg.values]
    values = ((x[:, :v] - torch.tanh(r[:, :v])) ** 2 / 2 / sig ** 2).sum() + torch.log(sig).sum() * n
    onehot = -(x[:, v:] * seg.log_softmax(r)).sum()
    recon_ref, kl_ref = (values + onehot) / n, -0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp()) / n
    (2 * recon_ref + 3 * kl_ref).backward()
    assert torch.allclose(recon, recon_ref) and torch.allclose(kl, kl_ref)
    for a, b in zip(mine, ref):
        assert torch.allclose(a.grad, b.grad)
    unused = torch.ones(WIDTH, dtype=torch.bool).index_fill_(0, seg.values, False)  # one-hot columns' sigma
    assert mine[1].grad[unused].abs().sum() == 0 and mine[1].grad[seg.values].abs().min() > 0


def test_a_layer_with_grouped_rows_computes_the_grouped_output_and_its_gradients():
    seg, q = Segments(SPANS, WIDTH).double(), torch.Generator().manual_seed(2)
    layers = [torch.nn.Linear(5, WIDTH).double() for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    h, w = torch.randn(4, 5, generator=q, dtype=torch.float64), torch.randn(4, WIDTH, generator=q, dtype=torch.float64)
    grouped = seg.grouped_linear(layers[0], h)
    assert torch.allclose(grouped, seg.group(layers[1](h)))
    (grouped * w).sum().backward()
    (seg.group(layers[1](h)) * w).sum().backward()
    assert torch.allclose(layers[0].weight.grad, layers[1].weight.grad)
    assert torch.allclose(layers[0].bias.grad, layers[1].bias.grad)


def test_tvae_loss_keeps_fp32_under_bf16_autocast():
    """A bf16 run's loss is computed in fp32: the span sums' product is not cast down by autocast."""
    from genforge.models.tvae import _Loss
    seg, q = Segments(SPANS, WIDTH), torch.Generator().manual_seed(3)
    x = _encoded_rows(seg, 16, q, torch.float32)
    recon, sigma = torch.randn(16, WIDTH, generator=q) * 3, torch.full((WIDTH,), 0.1)
    mu, logvar = torch.randn(16, 4, generator=q), torch.randn(16, 4, generator=q)
    plain = _Loss.apply(x, recon, sigma, mu, logvar, seg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = _Loss.apply(x, recon, sigma, mu, logvar, seg)
    assert all(torch.equal(a, b) for a, b in zip(plain, mixed))
