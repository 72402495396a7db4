"""SpecNet eq. 4: which spectral entries a convolution keeps (threshold beta or a per-sample density)."""
from __future__ import annotations

import math

import torch

from .packing import STORAGES

__all__ = ["check_sparsity", "keep_mask"]


def check_sparsity(name: str, threshold: float, density: float | None, storage: str) -> None:
    """Reject meaningless SpecNet sparsity settings with the reason."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"{name} threshold must be a real number (SpecNet's beta), got {type(threshold).__name__}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"{name} threshold must be finite and >= 0 (it zeroes entries with |Y| < threshold; inf would "
                         f"zero every spectrum and nan none), got {threshold}")
    if density is not None:
        if isinstance(density, bool) or not isinstance(density, (int, float)):
            raise TypeError(f"{name} density must be a number in (0, 1] or None, got {type(density).__name__}")
        if threshold > 0:
            raise ValueError(f"{name}: set either threshold (absolute beta) or density (kept fraction), not both "
                             f"(got threshold={threshold}, density={density})")
        if not 0 < density <= 1:
            raise ValueError(f"{name} density is the kept fraction of spectral entries, in (0, 1]; got {density}")
    if storage not in STORAGES:
        raise ValueError(f"{name} storage must be one of {STORAGES}, got {storage!r}")


@torch.no_grad()
def keep_mask(spectrum: torch.Tensor, fft_size: tuple[int, int], threshold: float, density: float | None) -> torch.Tensor | None:
    """Bool mask of the entries eq. 4 keeps in an ortho, frequency-major (F, C, N) spectrum; None keeps all.

    ``threshold`` beta is on the scale of SpecNet's unnormalised DFT (eq. 7): entries with
    ``|Y| sqrt(P Q) < beta`` are zeroed. With ``density`` d, sample n keeps its ceil(d M) largest
    magnitudes (M = F C, the rfft half-spectrum of every channel; ties keep more).
    """
    if density is not None and density < 1.0:
        magnitude = spectrum.abs()
        total = magnitude.shape[0] * magnitude.shape[1]
        keep = max(1, math.ceil(density * total))
        # one sample's magnitudes contiguous: kthvalue along the last dim is ~2.5x faster than along a strided one
        per_sample = magnitude.as_strided((magnitude.shape[2], total), (1, magnitude.shape[2])).contiguous()
        cut = torch.kthvalue(per_sample, total - keep + 1, dim=1).values  # (N,)
        return magnitude >= cut
    if threshold > 0:
        return spectrum.abs() >= threshold / math.sqrt(fft_size[0] * fft_size[1])
    return None
