"""Spectral resampling: crop or zero-pad a map's spectrum (Rippel, Snoek & Adams 2015, Algorithm 1).

Convention (documented once, used everywhere in specnet-zoo):

* Spectra are computed with ``norm="forward"`` both ways, so the DC coefficient is the mean and a
  constant map stays the same constant at any output size (like adaptive average pooling).
* Output size h keeps the frequencies ``|k| <= h / 2``. For even h the two frequencies ``+h/2`` and
  ``-h/2`` land on the same output bin and are **summed** (aliased), exactly what sampling the
  band-limited signal on the output grid does. The result is therefore Hermitian, the output is
  real, the op is linear, and its autograd backward is its exact adjoint.
* Growing a size (used for reconstruction) zero-pads the spectrum and splits an even input's Nyquist
  bin in two halves, so ``resize(resize(x, up), back) == x`` and ``resize(resize(x, down), back)`` is
  the orthogonal projection onto the kept band.
* Output pixel (i, j) sits at input coordinate (i * H / h, j * W / w): grids are aligned at the origin.

The op is separable, ``y = A_h x A_w^T`` with real 1-D resize matrices A (built once per size pair by
the FFT path on an identity). For CNN-sized maps (<= 256) two small matmuls are several times faster
than four FFTs (forward and backward) and autograd's matmul backward is the exact adjoint; large maps
use the FFT path. Frequency dropout's kept square is separable too (a band limit per axis).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch

from ._fft import check_map, constant_cache, fft_dtype, fft_precision, output_like

if TYPE_CHECKING:  # duck-typed here: frequency_dropout imports this module
    from .frequency_dropout import FrequencyDropout

__all__ = ["MATMUL_MAX_SIZE", "resize_matrix", "spectral_resize2d"]

MATMUL_MAX_SIZE = 256
_METHODS = ("auto", "fft", "matmul")
_NORMS = ("forward", "ortho")


def _check_norm(norm: str) -> None:
    if norm not in _NORMS:
        raise ValueError(f"norm must be 'forward' (mean-preserving) or 'ortho' (unitary, Rippel Sec. 2), got {norm!r}")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _mirror_rows(spectrum: torch.Tensor) -> torch.Tensor:
    """Row k -> row (-k) mod H along dim -2 (frequency negation on the full FFT axis)."""
    return torch.roll(spectrum.flip(-2), shifts=1, dims=-2)


def _resize_full_axis(spectrum: torch.Tensor, n_in: int, n_out: int, fold: float, split: float) -> torch.Tensor:
    """Resize the full (two-sided) frequency axis dim -2 from n_in to n_out bins.

    Shrinking adds ``fold`` times each of +n_out/2 and -n_out/2 into one bin (even n_out); growing puts
    ``split`` times an even input's Nyquist bin at both +n_in/2 and -n_in/2.
    """
    if n_out == n_in:
        return spectrum
    if n_out < n_in:
        pos, neg = (n_out + 1) // 2, (n_out - 1) // 2  # k = 0..pos-1 and k = -neg..-1
        parts = [spectrum[..., :pos, :]]
        if n_out % 2 == 0:  # +n_out/2 and -n_out/2 alias onto one bin
            parts.append(fold * (spectrum[..., pos : pos + 1, :] + spectrum[..., n_in - pos : n_in - pos + 1, :]))
        parts.append(spectrum[..., n_in - neg :, :])
        return torch.cat(parts, dim=-2)
    pos, neg = (n_in + 1) // 2, (n_in - 1) // 2
    zeros_shape = list(spectrum.shape)
    parts = [spectrum[..., :pos, :]]
    if n_in % 2 == 0:  # the input Nyquist bin stands for +n_in/2 and -n_in/2
        half = split * spectrum[..., pos : pos + 1, :]
        zeros_shape[-2] = n_out - n_in - 1
        parts += [half, spectrum.new_zeros(zeros_shape), half]
    else:
        zeros_shape[-2] = n_out - n_in
        parts.append(spectrum.new_zeros(zeros_shape))
    parts.append(spectrum[..., n_in - neg :, :])
    return torch.cat(parts, dim=-2)


def _resize_half_axis(spectrum: torch.Tensor, n_in: int, n_out: int, fold: float, split: float) -> torch.Tensor:
    """Resize the one-sided rfft axis dim -1 (n // 2 + 1 bins) from width n_in to n_out (weights as above)."""
    if n_out == n_in:
        return spectrum
    if n_out < n_in:
        kept = spectrum[..., : n_out // 2 + 1]
        if n_out % 2 == 0:  # bin n_out/2 also receives -n_out/2 = conj of the mirrored row
            edge = kept[..., -1:]
            kept = torch.cat([kept[..., :-1], fold * (edge + _mirror_rows(edge).conj())], dim=-1)
        return kept
    parts = [spectrum]
    if n_in % 2 == 0:
        parts = [spectrum[..., :-1], split * spectrum[..., -1:]]
    zeros_shape = list(spectrum.shape)
    zeros_shape[-1] = n_out // 2 + 1 - spectrum.shape[-1]
    parts.append(spectrum.new_zeros(zeros_shape))
    return torch.cat(parts, dim=-1)


def resize_spectrum(
    spectrum: torch.Tensor,
    size_in: tuple[int, int],
    size_out: tuple[int, int],
    fold: float = 1.0,
    split: float = 0.5,
) -> torch.Tensor:
    """Resize an rfft2 spectrum (..., H, W // 2 + 1) of a real (H, W) map to (..., h, w // 2 + 1).

    The defaults are the convention of this module (alias sum, split halves); the transposed weights
    (fold=0.5, split=1.0) give the adjoint used by the backward pass.
    """
    spectrum = _resize_full_axis(spectrum, size_in[0], size_out[0], fold, split)
    return _resize_half_axis(spectrum, size_in[1], size_out[1], fold, split)


class _SpectralResize(torch.autograd.Function):
    """``y = IDFT_out(mask * M DFT_in x)`` with forward-normalised transforms and its exact adjoint.

    For real M, ``y^T = (|out| / |in|) IDFT_in(M^T mask DFT_out g)``, and M^T swaps the Nyquist
    weights (sum-fold <-> copy, half-split <-> average). This costs two real FFTs instead of
    autograd's path through ``cat``/slice backward and a complex c2c transform (3-4x faster).
    """

    @staticmethod
    def forward(ctx, x, size_out, mask):
        size_in = (x.shape[-2], x.shape[-1])
        ctx.size_in, ctx.size_out = size_in, size_out
        ctx.save_for_backward(mask)
        spectrum = resize_spectrum(torch.fft.rfft2(x, norm="forward"), size_in, size_out)
        if mask is not None:
            spectrum = spectrum * mask
        return torch.fft.irfft2(spectrum, s=size_out, norm="forward")

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        spectrum = torch.fft.rfft2(grad, norm="forward")
        if mask is not None:
            spectrum = spectrum * mask
        spectrum = resize_spectrum(spectrum, ctx.size_out, ctx.size_in, fold=0.5, split=1.0)
        scale = (ctx.size_out[0] * ctx.size_out[1]) / (ctx.size_in[0] * ctx.size_in[1])
        return torch.fft.irfft2(spectrum, s=ctx.size_in, norm="forward") * scale, None, None


@constant_cache(maxsize=1024)
def _resize_matrix_cached(
    n_in: int, n_out: int, band: int | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    identity = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)
    mask = None
    if band is not None:  # keep |k| <= band on the output axis (frequency dropout)
        mask = (torch.fft.fftfreq(n_out, 1.0 / n_out).abs() <= band).reshape(1, 1, n_out, 1)
    columns = _SpectralResize.apply(identity, (n_out, 1), mask)  # column m = resize of the m-th unit map
    return columns.reshape(n_in, n_out).T.contiguous().to(dtype=dtype, device=device)


def resize_matrix(
    n_in: int, n_out: int, dtype: torch.dtype = torch.float64, device=None, band: int | None = None
) -> torch.Tensor:
    """The real (n_out, n_in) matrix of 1-D spectral resizing under this module's convention.

    ``band`` additionally zeroes every output frequency with ``|k| > band`` (frequency dropout).
    """
    if band is not None and band >= n_out // 2:
        band = None  # nothing to drop
    return _resize_matrix_cached(n_in, n_out, band, dtype, torch.device(device or "cpu"))


def _dropout_matrices(n_in: int, n_out: int, resolution: torch.Tensor, dtype, device) -> torch.Tensor:
    """(B, 1, n_out, n_in) band-limited resize matrices for drawn resolutions R (band R // 2)."""
    mats = [resize_matrix(n_in, n_out, dtype, device, band=r // 2) for r in resolution.tolist()]
    return torch.stack(mats)[:, None]


def spectral_resize2d(
    x: torch.Tensor,
    size: int | Sequence[int],
    frequency_dropout: FrequencyDropout | None = None,
    method: str = "auto",
    norm: str = "forward",
) -> torch.Tensor:
    """Resample a real map to ``size`` by cropping or zero-padding its spectrum (module docstring).

    Args:
        x: real (N, C, H, W) tensor, float16/bfloat16/float32/float64, any memory format.
        size: (h, w) or an int for both, each >= 1; smaller sizes low-pass filter, larger interpolate.
        frequency_dropout: optional randomized-resolution mask applied to the resized spectrum.
        method: "fft", "matmul" (separable resize matrices) or "auto" (matmul when both input sizes
            are <= MATMUL_MAX_SIZE). Both compute the same map, frequency dropout included.
        norm: "forward" (default: mean-preserving, a constant map stays that constant) or "ortho"
            (the unitary DFT of Rippel Sec. 2 both ways: the output is ``sqrt(H W / (h w))`` times larger,
            so a constant 1 pooled 32 -> 16 becomes 2).

    Returns:
        real (N, C, h, w) tensor in ``x``'s dtype (and channels_last layout when ``x`` has it).
    """
    check_map(x, "spectral_resize2d")
    size_out = _pair(size, "size")
    if min(size_out) < 1:
        raise ValueError(f"output size must be >= 1 in both dimensions, got {size_out}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    _check_norm(norm)
    resolution = None
    if frequency_dropout is not None and frequency_dropout.training:
        resolution = frequency_dropout.sample_resolution(size_out, x.shape[0])
    height, width = x.shape[-2:]
    use_matmul = method == "matmul" or (method == "auto" and max(height, width) <= MATMUL_MAX_SIZE)
    if x.numel() == 0:  # FFT libraries reject empty transforms; the matmuls give the same empty map
        use_matmul, resolution = True, None
    with fft_precision(x):
        data = x.to(fft_dtype(x))
        if use_matmul:
            if resolution is None:
                rows = resize_matrix(height, size_out[0], data.dtype, data.device)
                cols = resize_matrix(width, size_out[1], data.dtype, data.device)
            else:  # the kept square is separable: band-limit each axis
                rows = _dropout_matrices(height, size_out[0], resolution[0], data.dtype, data.device)
                cols = _dropout_matrices(width, size_out[1], resolution[1], data.dtype, data.device)
            y = rows @ (data @ cols.transpose(-1, -2))
        else:
            mask = None
            if resolution is not None:
                mask = frequency_dropout.spectrum_mask(size_out, x.shape[0], x.device, resolution)
            y = _SpectralResize.apply(data, size_out, mask)
        if norm == "ortho":
            y = y * math.sqrt((height * width) / (size_out[0] * size_out[1]))
    return output_like(y, x)


