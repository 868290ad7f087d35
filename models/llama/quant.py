"""Int8 weight-only linear layers for CPU decoding, next to their bfloat16 weights.

A decode step multiplies a few rows (one per running request) by every weight, so it
is bound by reading the weights: int8 weights (one scale per output row, symmetric)
halve what bfloat16 reads. ``torch._weight_int8pack_mm`` is that kernel; it computes in
bfloat16 and is slower than a bfloat16 matmul once many rows come at once (a prefill,
a large batch), so each layer keeps its bfloat16 weight too and picks per call:
int8 for at most ``INT8_MAX_ROWS`` rows, bfloat16 above. The weights come from a
4-bit GGUF, so int8 rows lose little; greedy answers still match bfloat16 ones for
many tokens, not exactly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import linear

INT8_MAX_ROWS = 8  # measured crossover on a 2-core AVX-512 CPU, one thread: 6 to 12 rows


class Int8Linear(nn.Module):
    """A bias-free ``nn.Linear`` with int8 row-scaled weights for few-row inputs."""

    in_features: int
    out_features: int
    max_rows: int
    weight: nn.Parameter  # (out, in) bfloat16
    qweight: torch.Tensor  # (out, in) int8
    scale: torch.Tensor  # (out,) bfloat16

    def __init__(self, source: nn.Linear, max_rows: int = INT8_MAX_ROWS) -> None:
        super().__init__()
        if source.bias is not None:
            raise ValueError("Int8Linear does not support a bias")
        weight = source.weight.detach()  # (out, in)
        scale = weight.float().abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,)
        qweight = torch.round(weight.float() / scale[:, None]).clamp(-127, 127)
        self.in_features = source.in_features
        self.out_features = source.out_features
        self.max_rows = max_rows
        self.weight = nn.Parameter(weight.to(torch.bfloat16), requires_grad=False)
        self.register_buffer("qweight", qweight.to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 2-D on purpose: a strided 3-D input (the last position of a prefill) sends
        # ``linear`` to a batched matmul that copies the weight once per row.
        rows = x.reshape(-1, x.shape[-1])  # (N, in)
        if rows.shape[0] > self.max_rows:
            out = linear(rows, self.weight)
        else:
            out = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.qweight, self.scale)
        return out.reshape(*x.shape[:-1], self.out_features)  # (..., out)


def quantize_int8(model: nn.Module, max_rows: int = INT8_MAX_ROWS) -> int:
    """Replace every bias-free ``nn.Linear`` of ``model`` in place; how many were."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.bias is None:
                setattr(parent, name, Int8Linear(child, max_rows))
                replaced += 1
    return replaced
