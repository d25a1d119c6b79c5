"""Softmax over every one-hot span of an encoded row at once, in a grouped column order.

A table row holds a dozen or more one-hot spans of different sizes (categories, modes, missing
flags) between its value columns. A Python loop of one softmax per span costs a few kernel launches
each and dominated a CTGAN step on small tables, and torch's reductions over a span's few options
are slow: over dimension 1 of a (500, 10, 6) view (six spans of ten), amax took 88 us where exp of
the same view took 14 (2-core Xeon, one thread). So a span's softmax is computed from the row's largest one-hot logit m: e = exp(y - m) over every
one-hot column at once, each span's sum of e by one product with a 0/1 (columns, spans) matrix, and
back to the columns by its transpose (`span_sums`). Where a span's logits all lie some 70 below m
its sum would underflow, and the per-span maximum is used instead (`each_span`, the version before).

CTGAN and TVAE learn on the columns in a *grouped* order: the value columns first, then the one-hot
spans sorted by size, the spans of one size forming one contiguous block, option-major (option 1 of
every span, then option 2, ...) so that `each_span` takes one softmax per block over dimension 1 of a
(rows, size, spans) view. A block of one span (a 46-category city) keeps its options in place.

The real rows are put in that order once, when they are encoded (`encode_grouped`); a network's
output is grouped as it is used in training (`Segments.group`, whose backward is the inverse
permutation). The networks themselves still produce the transformer's order, so saved weights and
sampling mean what they meant before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from genforge.kernels import linear
from genforge.tabular.draws import gumbel_of
from genforge.tabular.family import TableState, encode_table

if TYPE_CHECKING:
    from genforge.data.store import Dataset
    from genforge.tabular.vgm import TableTransformer


class _Permute(torch.autograd.Function):
    """x.index_select(dim, order), with the gradient put back by the inverse order (a gather, not a
    scatter-add)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.dim = dim
        return x.index_select(dim, order)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return g.index_select(ctx.dim, inverse), None, None, None


class Segments(nn.Module):
    """A row of `width` columns in grouped order: `n_values` value columns, then the one-hot spans
    by size. `values`: the value columns' positions in the transformer's order."""

    def __init__(self, spans: Sequence[tuple[int, int, bool]], width: int):
        """`spans`: (start, size, is_one_hot) per span, in the transformer's order."""
        super().__init__()
        values = [s for s, _, hot in spans if not hot]
        onehot = sorted((n, s) for s, n, hot in spans if hot)  # by size, then by place
        order = list(values)
        self.groups: list[tuple[int, int, int]] = []  # (offset in the one-hot part, spans, size)
        for size in sorted({n for n, _ in onehot}):
            starts = [s for n, s in onehot if n == size]
            self.groups.append((len(order) - len(values), len(starts), size))
            order += [s + i for i in range(size) for s in starts]  # option-major (one span: its options in place)
        if sorted(order) != list(range(width)):
            raise ValueError(f"the spans do not tile the {width} columns of a row")
        span, first = [], 0
        for _, c, size in self.groups:  # each one-hot column's span, numbered in grouped order
            span += [first + j for _ in range(size) for j in range(c)] if c > 1 else [first] * size
            first += c
        member = torch.zeros(len(span), first)
        member[torch.arange(len(span)), torch.tensor(span, dtype=torch.long)] = 1.0
        self.register_buffer("member", member, persistent=False)  # (one-hot columns, spans): 1 where it belongs
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("inverse", torch.argsort(self.order), persistent=False)
        self.register_buffer("values", torch.tensor(values, dtype=torch.long), persistent=False)
        self.n_values, self.width = len(values), width

    @classmethod
    def of(cls, transformer: "TableTransformer") -> "Segments":
        """The spans of a table transformer's encoded rows (value spans are the tanh columns)."""
        return cls([(s.start, s.size, s.role != "value") for s in transformer.spans], transformer.width)

    def onehot_position(self, column: torch.Tensor) -> torch.Tensor:
        """Where the one-hot column(s) at transformer position `column` lie in the one-hot part of a grouped row."""
        return self.inverse[column] - self.n_values

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """(B, width) in the transformer's order -> grouped order."""
        return _Permute.apply(x, self.order, self.inverse, 1)

    def grouped_linear(self, layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        """`layer(h)` with its output columns in grouped order: the layer's weight rows and bias are
        gathered into that order, in place of a gather of its (B, width) output, forward and backward."""
        return linear(h, self._group_rows(layer.weight), self._group_rows(layer.bias))

    def _group_rows(self, w: torch.Tensor) -> torch.Tensor:
        return _Permute.apply(w, self.order, self.inverse, 0)

    def span_sums(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(shifted, e, z) for the one-hot part `y` (fp32): shifted = y less each row's largest logit,
        e = exp(shifted), z each span's sum of e, by one product with the 0/1 `member` matrix; None when
        a span's sum underflows (its logits lie some 70 below the row's largest), where only the
        per-span maximum of `each_span` is exact. On 500 rows of txhousing-like spans (134 one-hot columns
        in 15 spans), TVAE's one-hot cross-entropy and its gradient took 2,440 us through `each_span` and
        autograd, 450 us so."""
        shifted = y - y.detach().amax(1, keepdim=True)
        e = shifted.exp()
        z = e @ self.member
        return None if bool(z.detach().min() < 1e-30) else (shifted, e, z)

    def spread(self, z: torch.Tensor) -> torch.Tensor:
        """(B, spans) -> (B, one-hot columns): each span's value on each of its columns."""
        return z @ self.member.t()

    def each_span(self, y: torch.Tensor, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        """The per-span path, exact where `span_sums` underflows: fn(view, dim) over each span's options
        in every group of the one-hot part `y`: dimension 1 of a (B, size, spans) view, or the last of
        a one-span group's (B, size)."""
        parts = [fn(y[:, o:o + c * s].view(-1, s, c), 1).view(-1, c * s) if c > 1 else fn(y[:, o:o + s], -1)
                 for o, c, s in self.groups]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        """(B, one-hot columns) of a grouped row: log-probabilities within each span, in the dtype of
        `member` (fp32, also under bf16 autocast)."""
        y = x[:, self.n_values:].to(self.member.dtype)
        with torch.autocast(y.device.type, enabled=False):  # the span sums in fp32, not bf16
            sums = self.span_sums(y)
            if sums is None:
                return self.each_span(y, torch.log_softmax)
            shifted, _, z = sums
            return shifted - self.spread(z.log())

    def softmax(self, y: torch.Tensor) -> torch.Tensor:
        """Probabilities within each span of the one-hot part `y`, in the dtype of `member`."""
        y = y.to(self.member.dtype)
        with torch.autocast(y.device.type, enabled=False):
            sums = self.span_sums(y)
            if sums is None:
                return self.each_span(y, torch.softmax)
            _, e, z = sums
            return e / self.spread(z)

    def gumbel_softmax(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        """The relaxed one-hot draw of every span (Jang et al. 2017): softmax((logits + Gumbel) / tau)."""
        y = x[:, self.n_values:]
        return self.softmax((y + gumbel_of(torch.rand_like(y))) / tau)


def encode_grouped(state: TableState, dataset: "Dataset", split: str) -> dict[str, Any]:
    """`encode_table`'s tensors with the rows in grouped order (what CTGAN and TVAE learn on)."""
    batch = encode_table(state, dataset, split)
    return {**batch, "x": Segments.of(state.transformer).group(batch["x"])}
