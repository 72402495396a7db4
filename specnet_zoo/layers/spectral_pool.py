"""Spectral pooling, Rippel, Snoek & Adams 2015, Algorithm 1 (and Sec. 3.2's frequency dropout).

Pooling is spectral resampling to a smaller size; the convention (mean-preserving ``norm="forward"``,
Nyquist aliasing, grid alignment) is documented once, in :mod:`.spectral_resize`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ._fft import check_map
from .frequency_dropout import FrequencyDropout
from .spectral_resize import _METHODS, _check_norm, _pair, spectral_resize2d

__all__ = ["SpectralPool2d", "pooled_size", "spectral_pool2d"]


def pooled_size(n: int, scale_factor: float) -> int:
    """Rippel eq. 5's pooled size ``max(1, floor(gamma * n))`` for one dimension.

    The epsilon keeps e.g. 0.85 * 20 = 16.999999999999996 from flooring to 16.
    """
    return max(1, math.floor(scale_factor * n + 1e-9))


def spectral_pool2d(
    x: torch.Tensor,
    output_size: int | Sequence[int],
    frequency_dropout: FrequencyDropout | None = None,
    method: str = "auto",
    norm: str = "forward",
) -> torch.Tensor:
    """Spectral pooling of a real (N, C, H, W) map to (N, C, h, w), 1 <= h <= H, 1 <= w <= W (``norm``: see
    :func:`spectral_resize2d`)."""
    check_map(x, "spectral_pool2d")
    h, w = _pair(output_size, "output_size")
    height, width = x.shape[-2:]
    if min(h, w) < 1:
        raise ValueError(f"spectral_pool2d output size must be >= 1 in both dimensions, got ({h}, {w})")
    if h > height or w > width:
        raise ValueError(
            f"spectral_pool2d output size ({h}, {w}) is larger than the input: it must satisfy 1 <= h <= H and 1 <= w <= W "
            f"for an input of spatial size ({height}, {width}); use spectral_resize2d to upsample"
        )
    return spectral_resize2d(x, (h, w), frequency_dropout, method, norm)


class SpectralPool2d(nn.Module):
    """Spectral pooling (Rippel Alg. 1): keep the central h x w block of the spectrum.

    Exactly one of ``output_size`` and ``scale_factor`` is given. ``scale_factor=gamma`` gives
    ``(floor(gamma * H), floor(gamma * W))``, clamped below at 1, as in Rippel eq. 5. The Nyquist
    convention and amplitude semantics are in this module's docstring: a constant map stays the same
    constant, and ``output_size == (H, W)`` is the identity.

    Args:
        output_size: (h, w) or an int for a square output.
        scale_factor: gamma in (0, 1].
        frequency_dropout: a :class:`FrequencyDropout` (or its ``min_fraction`` as a float) applied to
            the pooled spectrum while training, Rippel Sec. 3.2.
        method: "auto", "fft" or "matmul", see :func:`spectral_resize2d`.
        norm: "forward" (default) keeps a map's mean, like the average and max pooling it replaces, so
            a deep stack of pooling layers keeps activations at one scale whatever gamma and the input
            size are; "ortho" is Rippel Sec. 2's unitary DFT (energy-preserving crop: activations grow by
            sqrt(H W / (h w)) per layer, 1/gamma, i.e. 2.6x over eq. 5's six gamma-0.85 layers).

    Shape:
        (N, C, H, W) real -> (N, C, h, w) real, same dtype; the FFT runs in float32 under autocast.
    """

    def __init__(
        self,
        output_size: int | Sequence[int] | None = None,
        scale_factor: float | None = None,
        frequency_dropout: FrequencyDropout | float | None = None,
        method: str = "auto",
        norm: str = "forward",
    ) -> None:
        super().__init__()
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        _check_norm(norm)
        self.method, self.norm = method, norm
        if (output_size is None) == (scale_factor is None):
            raise ValueError(
                "SpectralPool2d takes exactly one of output_size and scale_factor, "
                f"got output_size={output_size!r}, scale_factor={scale_factor!r}"
            )
        self.output_size = _pair(output_size, "output_size") if output_size is not None else None
        if self.output_size is not None and min(self.output_size) < 1:
            raise ValueError(f"output_size must be >= 1, got {self.output_size}")
        if scale_factor is not None and not 0.0 < float(scale_factor) <= 1.0:
            raise ValueError(f"scale_factor must be in (0, 1] (pooling only shrinks), got {scale_factor}")
        self.scale_factor = float(scale_factor) if scale_factor is not None else None
        if isinstance(frequency_dropout, (int, float)) and not isinstance(frequency_dropout, bool):
            frequency_dropout = FrequencyDropout(frequency_dropout)
        self.frequency_dropout = frequency_dropout

    def output_size_for(self, size: tuple[int, int]) -> tuple[int, int]:
        """The pooled (h, w) for an input of spatial ``size``."""
        if self.output_size is not None:
            return self.output_size
        return pooled_size(size[0], self.scale_factor), pooled_size(size[1], self.scale_factor)

    def extra_repr(self) -> str:
        size = f"output_size={self.output_size}" if self.output_size is not None else f"scale_factor={self.scale_factor}"
        return size if self.norm == "forward" else f"{size}, norm={self.norm!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map(x, type(self).__name__)
        size = self.output_size_for((x.shape[-2], x.shape[-1]))
        return spectral_pool2d(x, size, self.frequency_dropout, self.method, self.norm)
