"""FFT convolution with spectral thresholding and activation, SpecNet (Guan et al. 2019) Alg. 1.

A :class:`SpectralBlock` FFTs its spatial input once, zero-padded to (H + S_h, W + S_w) where S is
the summed kernel support growth of its convolutions (rounded up to an FFT-friendly size), runs one
or more :class:`SpectralConv2d` on the spectrum, and inverse-FFTs and crops back to (H, W). Zero
padding makes the products linear (not circular) convolutions. Spectra use ``norm="ortho"`` so the
transform is unitary and a threshold beta is on the scale of spatial values (Parseval).

Inside a block spectra are kept **frequency-major**: complex (P, Q//2+1, N, C). Channel mixing is
then one real batched matmul per frequency whose operands are free views of the complex tensors.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ._fft import check_map, fft_dtype, fft_precision, hermitian_repair, output_like, padded_rfft2
from .split_tanh import SplitTanh

__all__ = ["SpectralConv2d", "SpectralBlock", "fast_fft_size", "mix_channels", "spectral_conv_chain"]

_FAST_RADICES = (2, 3, 5, 7)


def fast_fft_size(n: int) -> int:
    """Smallest m >= n whose prime factors are all in {2, 3, 5, 7} (fast for pocketfft and cuFFT)."""
    m = max(1, n)
    while True:
        rest = m
        for p in _FAST_RADICES:
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


@functools.lru_cache(maxsize=128)
def _tap_phases(
    kernel_size: tuple[int, int], dilation: tuple[int, int], fft_size: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Real (2 P Q', k_h k_w): rows [Re z; Im z] of every kernel tap's unnormalised DFT.

    Tap (a, b) of the flipped, dilated kernel sits at (K_h - 1 - d_h a, K_w - 1 - d_w b), so its DFT
    is ``z = exp(-2 pi i (k_y u / P + k_x v / Q))`` at frequency (k_y, k_x).
    """
    (kh, kw), (dh, dw), (p, q) = kernel_size, dilation, fft_size
    u = (dh * (kh - 1)) - dh * torch.arange(kh, dtype=torch.float64)
    v = (dw * (kw - 1)) - dw * torch.arange(kw, dtype=torch.float64)
    k_y = torch.arange(p, dtype=torch.float64)
    k_x = torch.arange(q // 2 + 1, dtype=torch.float64)
    theta = -2 * math.pi * (
        (u[:, None, None, None] * k_y[None, None, :, None]) / p + (v[None, :, None, None] * k_x[None, None, None, :]) / q
    )  # (k_h, k_w, P, Q')
    theta = theta.reshape(kh * kw, -1).T  # (P Q', taps)
    return torch.cat([torch.cos(theta), torch.sin(theta)]).to(dtype=dtype, device=device)


def _resolve_activation(activation: str | nn.Module | None) -> nn.Module | None:
    if activation is None or activation == "identity":
        return None
    if isinstance(activation, nn.Module):
        return activation
    if activation in ("split_tanh", "tanh"):
        return SplitTanh()
    raise ValueError(f"unknown spectral activation {activation!r}; expected 'split_tanh', 'identity', None or an nn.Module")


class SpectralConv2d(nn.Conv2d):
    """SpecNet FConv2D: per-frequency channel mixing, magnitude threshold, spectral activation.

    The kernel is stored spatially, with the same ``weight`` (C_out, C_in, k_h, k_w) and ``bias``
    (C_out,) shapes and initialisation as ``nn.Conv2d``, so state_dicts move between a spectral
    network and its spatial twin. On a spectrum X (ortho rfft2 of the zero-padded input):

        Y[o, f] = sum_i X[i, f] * K[o, i, f] + b_o * sqrt(P Q) * [f = 0]      (SpecNet eq. 3)
        Y[o, f] = 0 where |Y[o, f]| < threshold                              (SpecNet eq. 4)
        Y = activation(Y)                                                     (SpecNet eq. 5/6)

    where K is the unnormalised FFT of the flipped, zero-padded kernel (flipping turns the FFT's
    convolution into ``nn.Conv2d``'s cross-correlation). Bias lands on the DC bin only: a constant
    over the whole padded grid.

    Called on a real (N, C_in, H, W) map it is a one-convolution :class:`SpectralBlock`; with
    ``threshold=0`` and no activation it equals ``nn.Conv2d(padding="same")``. Called through
    :meth:`spectral_forward` it maps spectra to spectra inside a block.

    Supported: any kernel size (odd or even, square or not), dilation, ``padding="same"`` (or the
    equivalent integer for odd kernels). Rejected with an error: stride != 1 (pool after the block),
    groups != 1, other paddings, padding modes other than "zeros".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = "same",
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        threshold: float = 0.0,
        activation: str | nn.Module | None = None,
        allow_small_input: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        k, d = _pair(kernel_size), _pair(dilation)
        if _pair(stride) != (1, 1):
            raise ValueError(f"{name} supports stride 1 only, got stride={stride}; pool after the spectral block instead")
        if groups != 1:
            raise ValueError(f"{name} supports groups=1 only, got groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"{name} supports padding_mode='zeros' only, got {padding_mode!r}")
        same_int = tuple((di * (ki - 1)) // 2 for ki, di in zip(k, d))
        odd = all((di * (ki - 1)) % 2 == 0 for ki, di in zip(k, d))
        if padding != "same" and not (odd and _pair(padding) == same_int):
            raise ValueError(
                f"{name} computes 'same' convolutions only (SpecNet crops back to the input size); "
                f"got padding={padding!r}, expected 'same'" + (f" or {same_int}" if odd else "")
            )
        if threshold < 0:
            raise ValueError(f"{name} threshold must be >= 0 (it zeroes entries with |Y| < threshold), got {threshold}")
        super().__init__(in_channels, out_channels, k, 1, "same", d, 1, bias, "zeros", device, dtype)
        self.threshold = float(threshold)
        self.activation = _resolve_activation(activation)
        self.allow_small_input = allow_small_input

    def extra_repr(self) -> str:
        return super().extra_repr() + f", threshold={self.threshold}"

    @property
    def effective_kernel_size(self) -> tuple[int, int]:
        """Spatial extent of the (dilated) kernel: d * (k - 1) + 1 per dimension."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))  # type: ignore[return-value]

    @property
    def crop_offset(self) -> tuple[int, int]:
        """Where the 'same' output starts inside the linear (full) convolution result."""
        # nn.Conv2d "same" pads (K - 1) // 2 before, so out[i] = full[i + K - 1 - (K - 1) // 2].
        return tuple(kk - 1 - (kk - 1) // 2 for kk in self.effective_kernel_size)  # type: ignore[return-value]

    def dilated_weight(self) -> torch.Tensor:
        """The spatial kernel with dilation zeros inserted: (C_out, C_in, K_h, K_w)."""
        if self.dilation == (1, 1):
            return self.weight
        kh, kw = self.effective_kernel_size
        dh, dw = self.dilation
        out = self.weight.new_zeros(self.weight.shape[:2] + (kh, kw))
        out[..., ::dh, ::dw] = self.weight
        return out

    def kernel_spectrum(self, fft_size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Unnormalised rfft2 of the flipped kernel, zero-padded to ``fft_size``: (C_out, C_in, P, Q//2+1)."""
        weight = self.dilated_weight().to(dtype).flip(-2, -1)
        return padded_rfft2(weight, fft_size)

    def kernel_matrices(self, fft_size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Real (2, P Q', C_in, C_out): Re and Im of ``kernel_spectrum`` per frequency, for :func:`mix_channels`.

        One GEMM of the cached tap phases with the k_h k_w spatial taps, written directly in the
        layout ``bmm`` consumes: no kernel FFT, flip, permute or complex temporaries. Those dominated
        the step time of wide layers on small maps (512 channels on 4x4 maps in VGG-16), where the
        kernel spectrum is far larger than the activations.
        """
        phases = _tap_phases(self.kernel_size, self.dilation, tuple(fft_size), dtype, self.weight.device)
        taps = self.weight.to(dtype).permute(2, 3, 1, 0).reshape(-1, self.in_channels * self.out_channels)
        return (phases @ taps).reshape(2, -1, self.in_channels, self.out_channels)

    def spectral_forward(self, spectrum: torch.Tensor, fft_size: tuple[int, int]) -> torch.Tensor:
        """Map a frequency-major complex (P, Q//2+1, N, C_in) spectrum to (P, Q//2+1, N, C_out)."""
        p, q = fft_size
        if not spectrum.is_complex() or spectrum.dim() != 4 or spectrum.shape[-1] != self.in_channels \
                or tuple(spectrum.shape[:2]) != (p, q // 2 + 1):
            raise ValueError(
                f"{type(self).__name__}.spectral_forward expects a complex frequency-major "
                f"({p}, {q // 2 + 1}, N, {self.in_channels}) spectrum, got {spectrum.dtype} shape {tuple(spectrum.shape)}"
            )
        real_dtype = spectrum.real.dtype
        out = mix_channels(spectrum, self.kernel_matrices(fft_size, real_dtype))
        if self.bias is not None:
            # A constant b on the P x Q grid has ortho DC coefficient b * sqrt(P Q) and nothing else.
            out[0, 0] += self.bias.to(real_dtype) * (p * q) ** 0.5
        if self.threshold > 0:
            out = out * (out.abs() >= self.threshold)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral_conv_chain(x, [self])


def mix_channels(spectrum: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``Y[f, n, o] = sum_i X[f, n, i] K[f, i, o]`` for a frequency-major complex spectrum.

    Args:
        spectrum: complex (P, Q', N, C_in).
        kernel: real (2, P Q', C_in, C_out), Re K and Im K (:meth:`SpectralConv2d.kernel_matrices`).

    Returns:
        complex (P, Q', N, C_out). Two real ``bmm`` per frequency on the stacked rows [Re X; Im X]
        (complex ``bmm`` on CPU falls back to a per-matrix loop with conjugate copies in backward;
        stacking copies only the activation, never the larger kernel).
    """
    p, q, n, c_in = spectrum.shape
    rows = torch.view_as_real(spectrum).permute(0, 1, 4, 2, 3).reshape(p * q, 2 * n, c_in)  # [Re X; Im X]
    by_re = torch.bmm(rows, kernel[0]).reshape(p, q, 2, n, -1)  # [Re X Re K; Im X Re K]
    by_im = torch.bmm(rows, kernel[1]).reshape(p, q, 2, n, -1)  # [Re X Im K; Im X Im K]
    return torch.complex(by_re[:, :, 0] - by_im[:, :, 1], by_re[:, :, 1] + by_im[:, :, 0])


def spectral_conv_chain(x: torch.Tensor, convs: Sequence[SpectralConv2d]) -> torch.Tensor:
    """Run ``convs`` on a real (N, C, H, W) map with one FFT in and one inverse FFT out.

    Returns the real (N, C_out, H, W) map in ``x``'s dtype; the FFT runs in float32 (float64 for
    float64 input) with autocast disabled.
    """
    first = convs[0]
    name = type(first).__name__ if len(convs) == 1 else "SpectralBlock"
    check_map(x, name, channels=first.in_channels)
    height, width = x.shape[-2:]
    k_h = max(c.effective_kernel_size[0] for c in convs)
    k_w = max(c.effective_kernel_size[1] for c in convs)
    if (height < k_h or width < k_w) and not all(c.allow_small_input for c in convs):
        raise ValueError(
            f"{name}: input map {height}x{width} is smaller than the {k_h}x{k_w} kernel; most kernel taps "
            "would only see zero padding. Use a larger input or pass allow_small_input=True."
        )
    grow_h = sum(c.effective_kernel_size[0] - 1 for c in convs)
    grow_w = sum(c.effective_kernel_size[1] - 1 for c in convs)
    fft_size = (fast_fft_size(height + grow_h), fast_fft_size(width + grow_w))
    off_h = sum(c.crop_offset[0] for c in convs)
    off_w = sum(c.crop_offset[1] for c in convs)
    with fft_precision(x):
        spectrum = padded_rfft2(x.to(fft_dtype(x)), fft_size, norm="ortho")
        spectrum = spectrum.permute(2, 3, 0, 1).contiguous()  # frequency-major (P, Q', N, C)
        for conv in convs:
            spectrum = conv.spectral_forward(spectrum, fft_size)
        spectrum = spectrum.permute(2, 3, 0, 1)
        if spectrum.device.type != "cpu":  # CPU's c2r already keeps only the Hermitian part
            spectrum = hermitian_repair(spectrum, fft_size[1])
        y = torch.fft.irfft2(spectrum, s=fft_size, norm="ortho")[..., off_h : off_h + height, off_w : off_w + width]
    return output_like(y, x)


class SpectralBlock(nn.Module):
    """SpecNet convolutional block: FFT once -> [SpectralConv2d]* -> inverse FFT -> crop (Alg. 1).

    Args:
        in_channels: C_in of the spatial input.
        channels: output channels of each convolution in order (an int for a one-conv block).
        kernel_size: kernel size of every convolution.
        threshold: beta of SpecNet eq. 4 for every convolution (>= 0; 0 keeps every entry).
        activation: spectral activation after every convolution: 'split_tanh' (SpecNet eq. 5/6),
            None/'identity', or an nn.Module acting on complex tensors.
        bias: whether the convolutions have a bias.
        allow_small_input: accept maps smaller than the kernel (well defined, but most taps see padding).

    Shape:
        (N, C_in, H, W) real -> (N, channels[-1], H, W) real. Spectral maps between the convolutions
        are complex (N, C, P, Q//2+1) with P >= H + sum(k - 1).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int | Sequence[int],
        kernel_size: int | tuple[int, int] = 3,
        threshold: float = 0.0,
        activation: str | nn.Module | None = "split_tanh",
        bias: bool = True,
        allow_small_input: bool = False,
    ) -> None:
        super().__init__()
        channels = [channels] if isinstance(channels, int) else list(channels)
        if not channels:
            raise ValueError("SpectralBlock needs at least one convolution (channels is empty)")
        widths = [in_channels] + channels
        self.convs = nn.ModuleList(
            SpectralConv2d(
                c_in, c_out, kernel_size, bias=bias, threshold=threshold,
                activation=activation, allow_small_input=allow_small_input,
            )
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.in_channels = in_channels
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral_conv_chain(x, list(self.convs))
