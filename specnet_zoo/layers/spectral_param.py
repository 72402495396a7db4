"""Spectral parametrization of convolution filters, Rippel, Snoek & Adams 2015, Sec. 4.

A real k_h x k_w filter has exactly k_h * k_w real degrees of freedom in the frequency domain too:
the Hermitian half of its DFT, with the self-conjugate bins (DC, Nyquist) real and each conjugate
pair stored once. :class:`SpectralKernel` learns those coefficients (real and imaginary parts,
scaled so the map to the spatial kernel is orthonormal) and produces the spatial kernel by an
inverse DFT, implemented as one matmul with a fixed orthonormal basis built by ``irfft2``.

The model function is unchanged; only the coordinates the optimizer sees change. With SGD an
orthonormal change of coordinates gives identical updates; Adam's per-coordinate scaling is what
gives the faster convergence the paper reports.

It is a ``torch.nn.utils.parametrize`` parametrization, so ``conv.weight`` stays the spatial kernel,
the learnable tensor is ``conv.parametrizations.weight.original`` (C_out, C_in / groups, k_h * k_w),
and :func:`despectralize` turns a model back into plain spatial convolutions.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torch.nn.utils import parametrize

from ._fft import check_map
from .spectral_conv import SpectralConv2d

__all__ = [
    "SpectralKernel",
    "SpectralParamConv2d",
    "spectral_kernel_basis",
    "spectralize",
    "despectralize",
    "is_spectrally_parametrized",
]


def _independent_bins(kh: int, kw: int) -> list[tuple[int, int, int]]:
    """(k_y, k_x, part) of every real degree of freedom in rfft2 layout; part 0 = real, 1 = imaginary."""
    bins = []
    for kx in range(kw // 2 + 1):
        self_conjugate_column = kx == 0 or (kw % 2 == 0 and kx == kw // 2)
        for ky in range(kh):
            mirror = (-ky) % kh
            if not self_conjugate_column:
                bins += [(ky, kx, 0), (ky, kx, 1)]
            elif mirror == ky:  # DC / Nyquist: real only
                bins.append((ky, kx, 0))
            elif ky < mirror:  # conjugate pair inside the stored half: store it once
                bins += [(ky, kx, 0), (ky, kx, 1)]
    return bins


def spectral_kernel_basis(kernel_size: int | tuple[int, int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal (k_h k_w, k_h k_w) matrix whose row j is the spatial kernel of frequency coordinate j.

    Row j is ``irfft2`` of the Hermitian half-spectrum with a unit real or imaginary part at the j-th
    independent bin (and its conjugate mirror), normalised to unit norm.
    """
    kh, kw = _pair(kernel_size)
    bins = _independent_bins(kh, kw)
    assert len(bins) == kh * kw, (kh, kw, len(bins))
    spectra = torch.zeros(len(bins), kh, kw // 2 + 1, dtype=torch.complex128)
    for j, (ky, kx, part) in enumerate(bins):
        value = 1.0 if part == 0 else 1.0j
        spectra[j, ky, kx] = value
        mirror = (-ky) % kh
        if (kx == 0 or (kw % 2 == 0 and kx == kw // 2)) and mirror != ky:
            spectra[j, mirror, kx] = complex(value).conjugate()
    kernels = torch.fft.irfft2(spectra, s=(kh, kw), norm="ortho").reshape(len(bins), kh * kw)
    kernels = kernels / kernels.norm(dim=1, keepdim=True)
    return kernels.to(dtype)


class SpectralKernel(nn.Module):
    """Parametrization: (C_out, C_in/g, k_h k_w) frequency coefficients -> (C_out, C_in/g, k_h, k_w) kernel."""

    def __init__(self, kernel_size: int | tuple[int, int], device: torch.device | str | None = None) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        # float64 so float64 models (gradcheck) get an exact basis; forward casts to the weight dtype.
        basis = spectral_kernel_basis(self.kernel_size, torch.float64).to(device)
        self.register_buffer("basis", basis, persistent=False)

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        kernel = coefficients @ self.basis.to(coefficients.dtype)
        return kernel.reshape(*coefficients.shape[:-1], *self.kernel_size)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        if tuple(weight.shape[-2:]) != self.kernel_size:
            raise ValueError(f"expected a kernel of size {self.kernel_size}, got shape {tuple(weight.shape)}")
        basis = self.basis.to(weight.dtype)
        return weight.reshape(*weight.shape[:-2], -1) @ basis.T  # orthonormal: inverse = transpose

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class SpectralParamConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose filters are learned in the frequency domain (Rippel Sec. 4).

    Same constructor, forward and ``.weight`` (the spatial kernel) as ``nn.Conv2d``; initialised with
    ``nn.Conv2d``'s spatial init, so a fresh layer computes the same function family.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        parametrize.register_parametrization(self, "weight", SpectralKernel(self.kernel_size, self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map(x, type(self).__name__, channels=self.in_channels, dtype=self.parametrizations.weight.original.dtype)
        return super().forward(x)


def is_spectrally_parametrized(module: nn.Module) -> bool:
    """True when ``module.weight`` is produced by a :class:`SpectralKernel`."""
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, SpectralKernel) for p in module.parametrizations["weight"]
    )


def spectralize(model: nn.Module) -> nn.Module:
    """Parametrize every ``nn.Conv2d`` of ``model`` (subclasses included) spectrally, in place.

    Outputs are unchanged (up to float rounding of the orthonormal change of basis). SpecNet's
    :class:`SpectralConv2d` layers, which already compute in the frequency domain, and convolutions
    that are already parametrized are left alone. Returns ``model`` for chaining.
    """
    for module in list(model.modules()):
        if not isinstance(module, nn.Conv2d) or isinstance(module, SpectralConv2d):
            continue
        if parametrize.is_parametrized(module, "weight"):
            continue
        kernel = SpectralKernel(module.kernel_size, module.weight.device)
        parametrize.register_parametrization(module, "weight", kernel)
    return model


def despectralize(model: nn.Module) -> nn.Module:
    """Undo :func:`spectralize` in place: convolutions get plain spatial ``weight`` parameters again.

    The resulting ``state_dict`` loads into the original spatial model (same keys and shapes).
    """
    for module in list(model.modules()):
        if is_spectrally_parametrized(module):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
