"""The spectral convolution product of SpecNet eq. 3 and its backward: kernel spectra and channel mixing.

Inside a block a spectrum is **frequency-major**: complex (F, C, N), F = P (Q // 2 + 1) frequencies of
the padded P x Q grid (rfft2 layout, flattened row by row), then channels, then samples. A convolution
is then, per frequency f,

    Y[f] = K[f] X[f]          K[f]: complex (C_out, C_in),  X[f]: (C_in, N),  Y[f]: (C_out, N)

which is one complex batched GEMM over all frequencies (``torch.bmm``: cuBLAS/MKL ``cgemm``), and the
kernel spectra of every frequency are one GEMM of the cached tap phases with the k_h k_w spatial taps.
No operand is split into chunks or copied between chained convolutions; each function is written next
to its backward.

Backward runs on **conjugated** gradients: with G = dL/dRe Y + i dL/dIm Y (PyTorch's convention for
complex tensors), the adjoints take and return conj(G). Then ``conj(dL/dX) = K^T conj(G)`` and
``conj(dL/dK) = conj(G) X^T`` need only transposed views, never a conjugated operand (which CPU
``bmm`` would first copy whole: for a DenseNet layer, every earlier feature map).
"""
from __future__ import annotations

import math

import torch

from ._fft import constant_cache

__all__ = [
    "kernel_spectrum", "kernel_spectrum_backward", "mix_channels", "mix_channels_input_grad",
    "mix_channels_kernel_grad", "tap_phases",
]


@constant_cache(maxsize=256)
def tap_phases(
    kernel_size: tuple[int, int], dilation: tuple[int, int], fft_size: tuple[int, int], dtype: torch.dtype,
    device: torch.device, conjugate: bool = False, interior_scale: float = 1.0,
) -> torch.Tensor:
    """Complex (P Q', k_h k_w): every kernel tap's unnormalised DFT ``z`` (its conjugate if ``conjugate``).

    ``interior_scale`` multiplies the rows of the rfft columns that stand for two bins (all but DC and an
    even Q's Nyquist): a per-frequency factor that backward folds in here instead of scaling a spectrum.

    The flipped, dilated kernel is centred as ``nn.Conv2d(padding="same")`` centres it: tap (a, b) sits
    at (c_h - d_h a, c_w - d_w b) with c = (d (k - 1)) // 2 (negative positions wrap around the padded
    grid), so ``z = exp(-2 pi i (y u / P + x v / Q))`` at frequency (u, v) and the product leaves each
    output aligned with its input. ``dtype`` is the complex dtype.
    """
    (kh, kw), (dh, dw), (p, q) = kernel_size, dilation, fft_size
    y = (dh * (kh - 1)) // 2 - dh * torch.arange(kh, dtype=torch.float64)
    x = (dw * (kw - 1)) // 2 - dw * torch.arange(kw, dtype=torch.float64)
    u = torch.arange(p, dtype=torch.float64)
    v = torch.arange(q // 2 + 1, dtype=torch.float64)
    theta = -2 * math.pi * ((u[:, None, None, None] * y[None, None, :, None]) / p
                            + (v[None, :, None, None] * x[None, None, None, :]) / q)  # (P, Q', k_h, k_w)
    magnitude = torch.ones_like(theta)
    magnitude[:, 1 : (q + 1) // 2] = interior_scale
    z = torch.polar(magnitude, -theta if conjugate else theta).reshape(p * (q // 2 + 1), kh * kw)
    return z.to(dtype=dtype, device=device)


def kernel_spectrum(
    weight: torch.Tensor, dilation: tuple[int, int], fft_size: tuple[int, int], dtype: torch.dtype,
    conjugate: bool = False, interior_scale: float = 1.0,
) -> torch.Tensor:
    """K (or conj K if ``conjugate``): complex (P Q', C_out, C_in), the centred flipped kernel's rfft2.

    One GEMM ``z (F, taps) @ w (taps, C_out C_in)`` of :func:`tap_phases` with the spatial taps of
    ``weight`` (C_out, C_in, k_h, k_w): no kernel FFT, flip or padding, and written directly in the
    layout ``bmm`` consumes. ``dtype`` is the complex dtype of the spectra; ``interior_scale``: see
    :func:`tap_phases`.
    """
    c_out, c_in, k_h, k_w = weight.shape
    phases = tap_phases((k_h, k_w), tuple(dilation), tuple(fft_size), dtype, weight.device, conjugate, interior_scale)
    taps = weight.to(dtype, memory_format=torch.contiguous_format)
    taps_t = taps.as_strided((k_h * k_w, c_out * c_in), (1, k_h * k_w))  # (taps, C_out C_in): one view op
    return torch.mm(phases, taps_t).view(-1, c_out, c_in)


def kernel_spectrum_backward(
    conj_grad: torch.Tensor, weight: torch.Tensor, dilation: tuple[int, int], fft_size: tuple[int, int],
    interior_scale: float = 1.0,
) -> torch.Tensor:
    """Gradient of ``weight`` (C_out, C_in, k_h, k_w) from the conjugated gradient of :func:`kernel_spectrum`.

    K is linear in the real taps w: ``dL/dw = Re(sum_f conj(z[f]) G[f]) = Re(sum_f z[f] conj(G)[f])``
    (G = dL/dRe K + i dL/dIm K); ``conj_grad`` is conj(G), complex (F, C_out, C_in); ``interior_scale``
    scales its two-bin columns first (:func:`tap_phases`).
    """
    c_out, c_in, k_h, k_w = weight.shape
    phases = tap_phases((k_h, k_w), tuple(dilation), tuple(fft_size), conj_grad.dtype, conj_grad.device, False,
                        interior_scale)
    n_freq, pairs, n_taps = conj_grad.shape[0], c_out * c_in, k_h * k_w
    conj_grad = conj_grad.contiguous()
    taps = torch.mm(conj_grad.as_strided((pairs, n_freq), (1, pairs)), phases)  # (C_out C_in, taps)
    # The real part as (C_out, C_in, k_h, k_w), in one view op; the copy makes it contiguous for AccumulateGrad.
    real = torch.view_as_real(taps).as_strided((c_out, c_in, k_h, k_w), (2 * c_in * n_taps, 2 * n_taps, 2 * k_w, 2))
    return real.to(weight.dtype, memory_format=torch.contiguous_format, copy=True)


def mix_channels(spectrum: torch.Tensor, kernel: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``Y[f] = K[f] X[f]``: complex (F, C_in, N) and (F, C_out, C_in) -> complex (F, C_out, N), one ``bmm``
    (into ``out`` when given: no copy into a block's buffer afterwards)."""
    return torch.bmm(kernel, spectrum, out=out)


def mix_channels_input_grad(kernel: torch.Tensor, conj_grad: torch.Tensor,
                            accumulate: torch.Tensor | None = None) -> torch.Tensor:
    """``conj(dL/dX) = K^T conj(G)`` for :func:`mix_channels` and a real loss (``dL/dX = K^H G``).

    ``kernel`` is K (F, C_out, C_in), ``conj_grad`` conj(G) (F, C_out, N). Returns complex (F, C_in, N),
    or adds it to ``accumulate`` in place (one ``baddbmm_``) and returns that.
    """
    if accumulate is not None:
        return accumulate.baddbmm_(kernel.transpose(1, 2), conj_grad)
    return torch.bmm(kernel.transpose(1, 2), conj_grad)


def mix_channels_kernel_grad(spectrum: torch.Tensor, conj_grad: torch.Tensor) -> torch.Tensor:
    """``conj(dL/dK) = conj(G) X^T`` for :func:`mix_channels` (``dL/dK = G X^H``): complex (F, C_out, C_in).

    ``X^T`` is a transposed view of the (F, C_in, N) spectrum, which ``bmm`` reads without a copy.
    """
    return torch.bmm(conj_grad, spectrum.transpose(1, 2))
