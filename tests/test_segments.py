"""The grouped column order CTGAN and TVAE learn on: each span's softmax is the one a per-span loop
would compute, the value columns come first, and the permutation's gradient lands where it belongs."""

import pytest
import torch

from genforge.tabular.segments import Segments

# a value, a 3-mode one-hot, a value, 2 missing flags, 3 modes, 46 categories, a value, 2 missing flags
SPANS = [(0, 1, False), (1, 3, True), (4, 1, False), (5, 2, True), (7, 3, True), (10, 46, True), (56, 1, False),
         (57, 2, True)]
WIDTH = 59


def _rows(n: int = 6) -> torch.Tensor:
    return torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 40


def test_grouped_log_softmax_is_each_spans_own():
    seg, x = Segments(SPANS, WIDTH).double(), _rows()
    g = seg.group(x)
    assert torch.equal(g[:, :seg.n_values], x[:, [0, 4, 56]])
    assert [(c, s) for _, c, s in seg.groups] == [(2, 2), (2, 3), (1, 46)]
    logp = seg.log_softmax(g)
    assert logp.shape == (6, WIDTH - 3)
    for start, size, hot in SPANS:
        if hot:  # logits 40 apart: a row-wide maximum would underflow; each span's own does not
            at = seg.onehot_position(torch.arange(start, start + size))
            assert torch.allclose(logp[:, at], torch.log_softmax(x[:, start:start + size], -1))


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
