"""Split-tanh activation on complex spectra, SpecNet (Guan et al. 2019) eq. 5/6."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SplitTanh", "split_tanh"]


def split_tanh(z: torch.Tensor) -> torch.Tensor:
    """``f(a + ib) = tanh(a) + i tanh(b)`` elementwise on a complex tensor of any shape.

    tanh is odd, so ``f(conj(z)) = conj(f(z))``: a Hermitian spectrum stays Hermitian and its inverse
    FFT stays real (a split ReLU would not).
    """
    if not isinstance(z, torch.Tensor) or not z.is_complex():
        got = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
        raise TypeError(f"split_tanh expects a complex tensor (a spectrum), got {got}")
    return torch.complex(torch.tanh(z.real), torch.tanh(z.imag))


class SplitTanh(nn.Module):
    """Module form of :func:`split_tanh`. Shape: any complex (*) -> same shape and dtype."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return split_tanh(z)
