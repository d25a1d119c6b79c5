"""Softmax over every one-hot span of an encoded row at once.

A table row holds a dozen or more one-hot spans of different sizes (categories, modes, missing
flags). A Python loop of one softmax per span costs a few kernel launches each and dominated a
CTGAN step on small tables; these are the same functions as a handful of whole-batch operations,
with each span's maximum subtracted within the span (a row-wide maximum would underflow a span
whose logits are all far below another span's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from genforge.tabular.vgm import TableTransformer


class Segments(nn.Module):
    """The one-hot spans (start, size) of a row of `width` columns, and its value columns."""

    def __init__(self, spans: Sequence[tuple[int, int, bool]], width: int):
        """`spans`: (start, size, is_one_hot) per span."""
        super().__init__()
        onehot = [(s, n) for s, n, hot in spans if hot]
        cols = [s + i for s, n in onehot for i in range(n)]
        seg = [j for j, (_, n) in enumerate(onehot) for _ in range(n)]
        self.register_buffer("cols", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.register_buffer("seg", torch.tensor(seg, dtype=torch.long), persistent=False)
        self.register_buffer("values", torch.tensor([s for s, _, hot in spans if not hot], dtype=torch.long),
                             persistent=False)
        self.count, self.width = len(onehot), width

    @classmethod
    def of(cls, transformer: "TableTransformer") -> "Segments":
        """The spans of a table transformer's encoded rows (value spans are the tanh columns)."""
        return cls([(s.start, s.size, s.role != "value") for s in transformer.spans], transformer.width)

    def _shifted(self, y: torch.Tensor) -> torch.Tensor:
        seg = self.seg.expand(len(y), -1)
        top = torch.full((len(y), self.count), -torch.inf, device=y.device, dtype=y.dtype)
        top = top.scatter_reduce(1, seg, y, "amax", include_self=True)
        return y - top.gather(1, seg)

    def _sums(self, e: torch.Tensor) -> torch.Tensor:
        seg = self.seg.expand(len(e), -1)
        return torch.zeros(len(e), self.count, device=e.device, dtype=e.dtype).scatter_add(1, seg, e).gather(1, seg)

    def log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        """(B, one-hot columns): log-probabilities within each span."""
        y = self._shifted(x[:, self.cols])
        return y - torch.log(self._sums(torch.exp(y)))

    def softmax(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(self._shifted(x[:, self.cols]))
        return e / self._sums(e)

    def gumbel_softmax(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        """The relaxed one-hot draw of every span (Jang et al. 2017): softmax((logits + Gumbel) / tau)."""
        u = torch.rand(len(x), len(self.cols), device=x.device, dtype=x.dtype)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
        e = torch.exp(self._shifted((x[:, self.cols] + gumbel) / tau))
        return e / self._sums(e)

    def assemble(self, values: torch.Tensor, onehots: torch.Tensor) -> torch.Tensor:
        """A full row from its value columns and its one-hot columns."""
        out = torch.empty(len(values), self.width, device=values.device, dtype=values.dtype)
        out[:, self.values] = values
        out[:, self.cols] = onehots
        return out
