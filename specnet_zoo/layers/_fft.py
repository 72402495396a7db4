"""Shared helpers for the spectral layers: input checks, float32 FFT under autocast, Hermitian repair.

Spectra are kept in ``torch.fft.rfft2`` layout: a real map of spatial size (H, W) has a complex
spectrum of shape (H, W // 2 + 1) holding the non-redundant half; rows are in FFT order
(0, 1, ..., -2, -1).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

_FFT_DTYPES = (torch.float32, torch.float64)


def check_map(x: torch.Tensor, name: str, channels: int | None = None, dtype: torch.dtype | None = None) -> None:
    """Raise a clear error unless ``x`` is a real (N, C, H, W) tensor (with ``channels`` channels).

    ``dtype``: the layer's parameter dtype, which ``x`` must have outside autocast (``TypeError``).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D (N, C, H, W) tensor, got {x.dim()}-D shape {tuple(x.shape)}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name} expects a real floating-point tensor, got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} expects {dtype} input (the dtype of its weights), got {x.dtype}; cast the input or "
                        "the layer, or run under torch.autocast")


def constant_cache(maxsize: int) -> Callable:
    """``functools.lru_cache`` for functions that build constant tensors (tap phases, resize matrices).

    The tensors are built with inference mode and autograd off: a constant first needed inside
    ``torch.inference_mode()`` (e.g. ``trainer.validate`` before ``fit``) must not become an
    inference tensor, which later training could not save for backward. Under ``torch.compile`` the
    builder is traced instead (its arguments are constants, so the compiler folds it).
    """

    def decorate(build: Callable) -> Callable:
        @functools.lru_cache(maxsize=maxsize)
        def cached(*args):
            with torch.inference_mode(False), torch.no_grad():
                return build(*args)

        @functools.wraps(build)
        def lookup(*args):
            if torch.compiler.is_compiling():
                return build(*args)
            return cached(*args)

        lookup.cache_clear = cached.cache_clear
        lookup.cache_info = cached.cache_info
        return lookup

    return decorate


def fft_dtype(x: torch.Tensor) -> torch.dtype:
    """The real dtype the FFT runs in: float64 stays float64, everything else (half, bf16) is float32."""
    return x.dtype if x.dtype in _FFT_DTYPES else torch.float32


def fft_precision(x: torch.Tensor) -> torch.autocast:
    """Disable autocast for the FFT region: cuFFT half needs power-of-two sizes, bf16/CPU half has no FFT, and
    no complex bf16 GEMM exists. (A plain ``torch.autocast``, which ``torch.compile`` traces through.)"""
    return torch.autocast(device_type=x.device.type, enabled=False)


def output_like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cast ``y`` to ``x``'s dtype and keep ``x``'s channels_last layout when it had one."""
    y = y.to(x.dtype)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return y.contiguous(memory_format=torch.channels_last)
    return y.contiguous()  # a crop of a larger FFT buffer must not keep that buffer alive


def needs_hermitian_repair(device: torch.device) -> bool:
    """Whether c2r transforms on ``device`` need :func:`hermitian_repair` first: every device but the CPU,
    whose pocketfft c2r already keeps only the Hermitian part of the self-conjugate columns."""
    return device.type != "cpu"


def hermitian_repair(spec: torch.Tensor, width: int) -> torch.Tensor:
    """Make the self-conjugate columns of an rfft2 spectrum exactly Hermitian.

    In rfft2 layout the column kx = 0 (and kx = W/2 for even W) holds both k_y and -k_y, which must be
    complex conjugates for the inverse to be the transform of a real map. ``irfft2`` on CPU silently
    keeps only the Hermitian part; CUDA does not always do so. Averaging each entry with the conjugate
    of its mirror does explicitly what the CPU does, so every device computes the same real map.

    Args:
        spec: complex (..., H, W // 2 + 1) spectrum.
        width: the spatial width W the spectrum belongs to.
    """
    cols = [0] if width % 2 else [0, width // 2]
    mirror = torch.roll(spec[..., cols].flip(-2), shifts=1, dims=-2)  # row k -> row (-k) mod H
    fixed = 0.5 * (spec[..., cols] + mirror.conj())
    if len(cols) == 1:
        return torch.cat([fixed, spec[..., 1:]], dim=-1)
    return torch.cat([fixed[..., :1], spec[..., 1:-1], fixed[..., 1:]], dim=-1)


_ADJOINT_NORM = {"backward": "forward", "ortho": "ortho", "forward": "backward"}


class _PaddedRfft2(torch.autograd.Function):
    """``rfft2(x, s=fft_size, norm=norm)`` with a c2r backward.

    For a real loss, the gradient of x is ``Re(sum over the stored half of g[k] e^{+i theta})``,
    i.e. ``irfft2`` (adjoint norm) of g with the interior columns halved (``irfft2`` counts them
    twice), cropped to x's size (the adjoint of zero padding). PyTorch's generic backward instead
    zero-fills a two-sided buffer and runs a complex c2c transform: 2-3x slower here.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, fft_size: tuple[int, int], norm: str) -> torch.Tensor:
        ctx.size, ctx.fft_size, ctx.norm = tuple(x.shape[-2:]), fft_size, norm
        return torch.fft.rfft2(x, s=fft_size, norm=norm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return rfft2_adjoint(grad, ctx.size, ctx.fft_size, ctx.norm), None, None


def rfft2_adjoint(grad: torch.Tensor, size: tuple[int, int], fft_size: tuple[int, int], norm: str) -> torch.Tensor:
    """Gradient of a real (..., H, W) map from the gradient of its ``rfft2(x, s=fft_size, norm=norm)``.

    Shape: complex (..., P, Q // 2 + 1) -> real (..., H, W) with (H, W) = ``size``.
    """
    width = fft_size[1]
    weights = torch.full((width // 2 + 1,), 0.5, dtype=grad.real.dtype, device=grad.device)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    grad = grad * weights
    if needs_hermitian_repair(grad.device):
        grad = hermitian_repair(grad, width)
    grad_x = torch.fft.irfft2(grad, s=fft_size, norm=_ADJOINT_NORM[norm])
    return grad_x[..., : size[0], : size[1]]


def padded_rfft2(x: torch.Tensor, fft_size: tuple[int, int], norm: str = "backward") -> torch.Tensor:
    """``torch.fft.rfft2(x, s=fft_size, norm=norm)`` (zero padding only) with a faster exact backward.

    Shape: real (..., H, W) -> complex (..., P, Q // 2 + 1) with P >= H, Q >= W.
    """
    if fft_size[0] < x.shape[-2] or fft_size[1] < x.shape[-1]:
        raise ValueError(f"padded_rfft2 pads only: fft_size {fft_size} is smaller than the map {tuple(x.shape[-2:])}")
    return _PaddedRfft2.apply(x, tuple(fft_size), norm)
