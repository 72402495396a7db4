"""Independent float64 references built from explicit DFT sums (no torch.fft)."""
import math

import torch


def dft_matrix(n: int, inverse: bool = False) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    sign = 1.0 if inverse else -1.0
    return torch.exp(sign * 2j * math.pi * torch.outer(k, k) / n)


def signed_frequencies(n: int) -> list[int]:
    """Signed frequency of each DFT bin; an even n's Nyquist bin is reported as +n/2."""
    return [k if k <= n // 2 else k - n for k in range(n)]


def reference_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Spectral pooling by definition: alias-sum every frequency |k| <= h/2, |l| <= w/2 onto an h x w grid.

    x: real (..., H, W) float64. Returns (..., h, w) float64; asserts the inverse is real.
    """
    height, width = x.shape[-2:]
    h, w = size
    spectrum = dft_matrix(height) @ x.to(torch.complex128) @ dft_matrix(width).T / (height * width)
    out = torch.zeros(*x.shape[:-2], h, w, dtype=torch.complex128)
    for ky, sy in enumerate(signed_frequencies(height)):
        if abs(sy) * 2 > h and h < height:
            continue
        for kx, sx in enumerate(signed_frequencies(width)):
            if abs(sx) * 2 > w and w < width:
                continue
            out[..., sy % h, sx % w] += spectrum[..., ky, kx]
    y = dft_matrix(h, inverse=True) @ out @ dft_matrix(w, inverse=True).T
    assert y.imag.abs().max() < 1e-9 * max(1.0, y.real.abs().max()), "reference inverse is not real"
    return y.real


def reference_conv_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """nn.Conv2d(padding='same') cross-correlation written as an explicit sum (float64)."""
    k_h, k_w = weight.shape[-2:]
    top, left = (k_h - 1) // 2, (k_w - 1) // 2
    padded = torch.nn.functional.pad(x, (left, k_w - 1 - left, top, k_h - 1 - top))
    height, width = x.shape[-2:]
    out = torch.zeros(x.shape[0], weight.shape[0], height, width, dtype=x.dtype)
    for u in range(k_h):
        for v in range(k_w):
            patch = padded[:, :, u : u + height, v : v + width]
            out += torch.einsum("nihw,oi->nohw", patch, weight[:, :, u, v])
    if bias is not None:
        out += bias[None, :, None, None]
    return out
