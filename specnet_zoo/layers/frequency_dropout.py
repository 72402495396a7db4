"""Frequency dropout (randomized resolution), Rippel, Snoek & Adams 2015, Sec. 3.2 and eq. 5."""
from __future__ import annotations

import math

import torch
from torch import nn

from ._fft import check_map
from .spectral_resize import spectral_resize2d

__all__ = ["FrequencyDropout", "frequency_dropout_schedule"]


def frequency_dropout_schedule(alpha: float, beta: float, depth: int) -> list[float]:
    """Per-layer minimum fractions ``c_m = alpha + (m / M) (beta - alpha)`` for m = 1..M (Rippel eq. 5)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    return [alpha + (m / depth) * (beta - alpha) for m in range(1, depth + 1)]


class FrequencyDropout(nn.Module):
    """Zero every frequency outside a random low-frequency square while training.

    For a map of size (H, W) a resolution R is drawn uniformly from the integers
    ``[ceil(c * H), H]`` and every frequency with ``|k_y| > R // 2`` or ``|k_x| > R_w // 2`` is
    zeroed, where ``R_w = clamp(round(R * W / H), ceil(c * W), W)`` keeps the square in relative
    frequency for non-square maps. ``R = H`` keeps every frequency, so the layer never removes more
    than the schedule allows. The kept band is symmetric in k, so real maps stay real. In eval mode
    the layer is the identity.

    Use it standalone on a spatial map or pass it to :class:`SpectralPool2d`, which applies the band
    limit to the pooled spectrum at no extra cost. Both run through ``spectral_resize2d``: a band-limited
    separable matmul for maps up to 256 pixels, a masked rfft2/irfft2 round trip above.

    Args:
        min_fraction: c in (0, 1], the smallest kept resolution as a fraction of the map size.
            :func:`frequency_dropout_schedule` gives eq. 5's per-layer values.
        per_sample: draw one R per sample instead of one per batch (the paper draws per batch).
        seed: seed a private generator so the drawn resolutions are reproducible; ``None`` uses
            torch's global RNG (seeded by ``lightning.seed_everything``).

    Shape:
        (N, C, H, W) real -> (N, C, H, W) real.
    """

    def __init__(self, min_fraction: float, per_sample: bool = False, seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 < float(min_fraction) <= 1.0:
            raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
        self.min_fraction = float(min_fraction)
        self.per_sample = per_sample
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def extra_repr(self) -> str:
        return f"min_fraction={self.min_fraction}, per_sample={self.per_sample}, seed={self.seed}"

    def sample_resolution(self, size: tuple[int, int], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (R_h, R_w) as int64 CPU tensors of length ``batch`` (per_sample) or 1."""
        height, width = size
        count = batch if self.per_sample else 1
        low_h = min(height, math.ceil(self.min_fraction * height))
        r_h = torch.randint(low_h, height + 1, (count,), generator=self._generator)
        low_w = min(width, math.ceil(self.min_fraction * width))
        r_w = torch.round(r_h.double() * width / height).long().clamp(low_w, width)
        return r_h, r_w

    def spectrum_mask(
        self,
        size: tuple[int, int],
        batch: int,
        device: torch.device,
        resolution: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """A {0, 1} mask of shape (B, 1, H, W // 2 + 1) in rfft2 layout, B = batch or 1.

        ``resolution`` is a (R_h, R_w) pair from :meth:`sample_resolution`; drawn here when omitted.
        """
        height, width = size
        r_h, r_w = resolution if resolution is not None else self.sample_resolution(size, batch)
        r_h, r_w = (r_h // 2).to(device), (r_w // 2).to(device)
        k_y = torch.fft.fftfreq(height, 1.0 / height, device=device).abs()  # |k_y| in FFT order
        k_x = torch.arange(width // 2 + 1, device=device)
        keep = (k_y[None, :, None] <= r_h[:, None, None]) & (k_x[None, None, :] <= r_w[:, None, None])
        return keep[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map(x, type(self).__name__)
        if not self.training:
            return x
        return spectral_resize2d(x, (x.shape[-2], x.shape[-1]), frequency_dropout=self)
