"""FFT convolution with spectral thresholding and activation, SpecNet (Guan et al. 2019) Alg. 1.

A :class:`SpectralBlock` FFTs its spatial input once, zero-padded to (H + S_h, W + S_w) where S is
the summed kernel support growth of its convolutions (SpecNet's M + N_k - 1 for one convolution), runs
one or more :class:`SpectralConv2d` on the spectrum, and inverse-FFTs and crops back to (H, W) ('same')
or (H - S_h, W - S_w) ('valid'). Zero padding makes the products linear (not circular) convolutions.
Kernels are centred on the origin of the padded grid (their 'same' alignment), so every convolution's
output is aligned with its input and a block crops once, at the end.

Spectra are computed with ``norm="ortho"`` (unitary); the threshold beta is nevertheless on the scale
of SpecNet's eq. 7, an unnormalised DFT: an entry is zeroed when ``|Y_ortho| sqrt(P Q) < beta``.

Inside a block spectra are kept **frequency-major**: complex (P, Q//2+1, N, C). Channel mixing is
then one real batched matmul per frequency whose operands are free views of the complex tensors.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ._fft import (
    check_map,
    constant_cache,
    fft_dtype,
    fft_precision,
    hermitian_repair,
    padded_rfft2,
    rfft2_adjoint,
)
from .compact import (
    STORAGES,
    CompactChain,
    PackedSpectrum,
    Replay,
    mix_channels_backward,
    split_tanh_backward,
)
from .split_tanh import SplitTanh

__all__ = [
    "SpectralConv2d", "SpectralBlock", "SpectralChain", "block_fft_size", "fast_fft_size", "mix_channels", "spectral_conv_chain",
    "set_spectral_density", "spectral_densities",
]

_FAST_RADICES = (2, 3, 5, 7)


def block_fft_size(height: int, width: int) -> tuple[int, int]:
    """The padded FFT size (P, Q) of a block whose linear convolutions need ``height`` x ``width``.

    P is exactly ``height``: any larger P grows the stored (P, Q // 2 + 1) spectra. Q may grow by one to a
    2,3,5,7-smooth size when that keeps Q // 2 + 1 (e.g. 34 -> 35): the same stored size, a faster FFT.
    """
    q = width
    if q % 2 == 0 and fast_fft_size(q) != q and fast_fft_size(q + 1) == q + 1:
        q += 1
    return height, q


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


@constant_cache(maxsize=128)
def _tap_phases(
    kernel_size: tuple[int, int], dilation: tuple[int, int], fft_size: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Real (2 P Q', k_h k_w): rows [Re z; Im z] of every kernel tap's unnormalised DFT.

    The flipped, dilated kernel is centred as ``nn.Conv2d(padding="same")`` centres it: tap (a, b) sits
    at (c_h - d_h a, c_w - d_w b) with c = (d (k - 1)) // 2 (negative positions wrap around the padded
    grid), so its DFT is ``z = exp(-2 pi i (k_y u / P + k_x v / Q))`` at frequency (k_y, k_x) and the
    product leaves each output aligned with its input.
    """
    (kh, kw), (dh, dw), (p, q) = kernel_size, dilation, fft_size
    u = (dh * (kh - 1)) // 2 - dh * torch.arange(kh, dtype=torch.float64)
    v = (dw * (kw - 1)) // 2 - dw * torch.arange(kw, dtype=torch.float64)
    k_y = torch.arange(p, dtype=torch.float64)
    k_x = torch.arange(q // 2 + 1, dtype=torch.float64)
    theta = -2 * math.pi * (
        (u[:, None, None, None] * k_y[None, None, :, None]) / p + (v[None, :, None, None] * k_x[None, None, None, :]) / q
    )  # (k_h, k_w, P, Q')
    theta = theta.reshape(kh * kw, -1).T  # (P Q', taps)
    return torch.cat([torch.cos(theta), torch.sin(theta)]).to(dtype=dtype, device=device)


def kernel_matrices(
    weight: torch.Tensor, dilation: tuple[int, int], fft_size: tuple[int, int], dtype: torch.dtype,
    freqs: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Real (2, F, C_in, C_out): Re and Im of the flipped kernel's unnormalised rfft2 per frequency.

    One GEMM of the cached tap phases with the (C_out, C_in, k_h, k_w) spatial taps; ``freqs`` = (a, b)
    restricts it to the flattened frequencies a..b-1 (F = b - a, default all P Q').
    """
    c_out, c_in, k_h, k_w = weight.shape
    phases = _phase_rows(weight, dilation, fft_size, dtype, freqs)
    taps = weight.to(dtype).permute(2, 3, 1, 0).reshape(-1, c_in * c_out)
    return (phases @ taps).reshape(2, -1, c_in, c_out)


def _phase_rows(weight, dilation, fft_size, dtype, freqs) -> torch.Tensor:
    k_h, k_w = weight.shape[-2:]
    phases = _tap_phases((k_h, k_w), tuple(dilation), tuple(fft_size), dtype, weight.device)
    if freqs is None:
        return phases
    n_freq = phases.shape[0] // 2
    a, b = freqs
    return torch.cat([phases[a:b], phases[n_freq + a : n_freq + b]])


def kernel_matrices_backward(
    grad: torch.Tensor, weight: torch.Tensor, dilation: tuple[int, int], fft_size: tuple[int, int],
    freqs: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Gradient of ``weight`` (C_out, C_in, k_h, k_w) from that of :func:`kernel_matrices` (2, F, C_in, C_out)."""
    c_out, c_in, k_h, k_w = weight.shape
    phases = _phase_rows(weight, dilation, fft_size, grad.dtype, freqs)
    taps = phases.T @ grad.reshape(phases.shape[0], c_in * c_out)
    return taps.reshape(k_h, k_w, c_in, c_out).permute(3, 2, 0, 1).to(weight.dtype)


_CHUNK_BYTES = 32 * 2**20


def frequency_chunks(n_freq: int, bytes_per_freq: int) -> list[tuple[int, int]]:
    """Split ``n_freq`` frequencies into ranges whose temporaries stay within 32 MiB each.

    Channel mixing is independent per frequency, so forward and backward can build kernel spectra and
    stacked operands a chunk at a time. This bounds a step's peak memory: wide layers on small maps
    (512 x 512 channels on 4 x 4 maps in VGG-16) have kernel spectra several times larger than their
    activations, and large maps have many dense temporaries per frequency.
    """
    step = max(1, _CHUNK_BYTES // max(1, bytes_per_freq))
    return [(a, min(a + step, n_freq)) for a in range(0, n_freq, step)]


def mix_with_weight(
    spectrum: torch.Tensor, weight: torch.Tensor, dilation: tuple[int, int], fft_size: tuple[int, int]
) -> torch.Tensor:
    """:func:`mix_channels` with the kernel spectrum of ``weight``, built and applied in frequency chunks.

    Shape: complex (P, Q', N, C_in) -> complex (P, Q', N, C_out).
    """
    real = spectrum.real.dtype
    p, q, n, c_in = spectrum.shape
    c_out = weight.shape[0]
    per_freq = spectrum.real.element_size() * (2 * n * (c_in + 3 * c_out) + 2 * c_in * c_out)
    chunks = frequency_chunks(p * q, per_freq)
    if len(chunks) == 1:
        return mix_channels(spectrum, kernel_matrices(weight, dilation, fft_size, real))
    flat = spectrum.reshape(p * q, 1, n, c_in)
    if torch.is_grad_enabled() and (spectrum.requires_grad or weight.requires_grad):
        parts = [mix_channels(flat[a:b], kernel_matrices(weight, dilation, fft_size, real, (a, b))) for a, b in chunks]
        return torch.cat(parts).reshape(p, q, n, c_out)
    out = spectrum.new_empty((p * q, 1, n, c_out))
    for a, b in chunks:
        out[a:b] = mix_channels(flat[a:b], kernel_matrices(weight, dilation, fft_size, real, (a, b)))
    return out.reshape(p, q, n, c_out)


def mix_with_weight_backward(
    spectrum: torch.Tensor, weight: torch.Tensor, dilation: tuple[int, int], fft_size: tuple[int, int],
    grad: torch.Tensor, need_input_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Gradients of :func:`mix_with_weight` w.r.t. the spectrum (or None) and ``weight``, chunk by chunk."""
    real = spectrum.real.dtype
    p, q, n, c_in = spectrum.shape
    c_out = weight.shape[0]
    per_freq = spectrum.real.element_size() * (2 * n * (3 * c_in + 3 * c_out) + 8 * c_in * c_out)
    flat, flat_grad = spectrum.reshape(p * q, 1, n, c_in), grad.reshape(p * q, 1, n, c_out)
    grad_in = spectrum.new_empty((p * q, 1, n, c_in)) if need_input_grad else None
    grad_weight = None
    for a, b in frequency_chunks(p * q, per_freq):
        kernel = kernel_matrices(weight, dilation, fft_size, real, (a, b))
        part_in, part_kernel = mix_channels_backward(flat[a:b], kernel, flat_grad[a:b], need_input_grad)
        del kernel
        if grad_in is not None:
            grad_in[a:b] = part_in
        part_weight = kernel_matrices_backward(part_kernel, weight, dilation, fft_size, (a, b))
        grad_weight = part_weight if grad_weight is None else grad_weight.add_(part_weight)
    return (None if grad_in is None else grad_in.reshape(spectrum.shape)), grad_weight


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

    Sparsity (SpecNet eq. 4) is set by either ``threshold`` (the paper's absolute beta) or ``density``
    (keep the largest-magnitude fraction of each sample's rfft half-spectrum, i.e. a per-sample beta:
    a fixed beta lets density collapse with depth). After every forward ``measured_density`` holds the
    kept fraction (a 0-d tensor). ``storage`` picks what backward keeps: see
    :mod:`specnet_zoo.layers.compact` ("compact" lossless by default, "float16"/"int8" lossy, "dense").
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
        density: float | None = None,
        storage: str = "compact",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {arg} must be a positive int, got {value!r}")
        k, d = _pair(kernel_size), _pair(dilation)
        for arg, pair in (("kernel_size", k), ("dilation", d)):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
                raise ValueError(f"{name} {arg} must be a positive int or a pair of them, got {pair!r}")
        if _pair(stride) != (1, 1):
            raise ValueError(f"{name} supports stride 1 only, got stride={stride}; pool after the spectral block instead")
        if groups != 1:
            raise ValueError(f"{name} supports groups=1 only, got groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"{name} supports padding_mode='zeros' only, got {padding_mode!r}")
        same_int = tuple((di * (ki - 1)) // 2 for ki, di in zip(k, d))
        odd = all((di * (ki - 1)) % 2 == 0 for ki, di in zip(k, d))
        if padding in (0, (0, 0)):
            padding = "valid"
        elif padding != "valid" and padding != "same":
            if not (odd and _pair(padding) == same_int):
                raise ValueError(
                    f"{name} computes 'same' or 'valid' convolutions (SpecNet crops after the inverse FFT); "
                    f"got padding={padding!r}, expected 'same', 'valid'" + (f", {same_int}" if odd else "") + " or 0"
                )
            padding = "same"
        check_sparsity(name, threshold, density, storage)
        super().__init__(in_channels, out_channels, k, 1, padding, d, 1, bias, "zeros", device, dtype)
        self.threshold = float(threshold)
        self.density = None if density is None else float(density)
        self.storage = storage
        self.activation = _resolve_activation(activation)
        self.allow_small_input = allow_small_input
        self.measured_density: torch.Tensor | None = None

    def extra_repr(self) -> str:
        sparsity = f"density={self.density}" if self.density is not None else f"threshold={self.threshold}"
        return super().extra_repr() + f", {sparsity}, storage={self.storage!r}"

    def keep_mask(self, spectrum: torch.Tensor, fft_size: tuple[int, int]) -> torch.Tensor | None:
        """Bool mask of the entries eq. 4 keeps in an ortho (P, Q', N, C) spectrum; None keeps everything.

        ``threshold`` beta is on the scale of SpecNet's unnormalised DFT (eq. 7): entries with
        ``|Y| sqrt(P Q) < beta`` are zeroed. With ``density`` d, sample n keeps its ceil(d M) largest
        magnitudes (M = P Q' C; ties keep more).
        """
        if self.density is not None and self.density < 1.0:
            magnitude = spectrum.abs()
            n = magnitude.shape[2]
            per_sample = magnitude.permute(2, 0, 1, 3).reshape(n, -1)
            total = per_sample.shape[1]
            keep = max(1, math.ceil(self.density * total))
            cut = torch.kthvalue(per_sample, total - keep + 1, dim=1).values
            return magnitude >= cut[:, None]
        if self.threshold > 0:
            return spectrum.abs() >= self.threshold / math.sqrt(fft_size[0] * fft_size[1])
        return None

    def _record_density(self, mask: torch.Tensor | None, like: torch.Tensor) -> None:
        if mask is None:
            self.measured_density = torch.ones((), device=like.device)
        else:
            self.measured_density = mask.float().mean().detach()

    def spectral_step(
        self, spectrum: torch.Tensor, fft_size: tuple[int, int], weight: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 3-6 on a frequency-major spectrum: returns (activation output, keep mask or None)."""
        p, q = fft_size
        real_dtype = spectrum.real.dtype
        out = mix_with_weight(spectrum, weight, self.dilation, fft_size)
        if bias is not None:
            # A constant b on the P x Q grid has ortho DC coefficient b * sqrt(P Q) and nothing else.
            out[0, 0] += bias.to(real_dtype) * (p * q) ** 0.5
        mask = self.keep_mask(out, fft_size)
        self._record_density(mask, out)
        if mask is not None:
            out = out * mask
        if self.activation is not None:
            out = self.activation(out)
        return out, mask

    @property
    def effective_kernel_size(self) -> tuple[int, int]:
        """Spatial extent of the (dilated) kernel: d * (k - 1) + 1 per dimension."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))  # type: ignore[return-value]

    @property
    def valid(self) -> bool:
        """True for ``padding="valid"`` (output (H - K + 1, W - K + 1)), False for 'same'."""
        return self.padding == "valid"

    @property
    def centre(self) -> tuple[int, int]:
        """Offset of the centred kernel's origin: nn.Conv2d 'same' pads (K - 1) // 2 before."""
        return tuple((kk - 1) // 2 for kk in self.effective_kernel_size)  # type: ignore[return-value]

    def kernel_matrices(self, fft_size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Real (2, P Q', C_in, C_out): Re and Im of the centred, flipped kernel's unnormalised rfft2 per frequency.

        One GEMM of the cached tap phases with the k_h k_w spatial taps, written directly in the
        layout ``bmm`` consumes: no kernel FFT, flip, permute or complex temporaries. Those dominated
        the step time of wide layers on small maps (512 channels on 4x4 maps in VGG-16), where the
        kernel spectrum is far larger than the activations.
        """
        return kernel_matrices(self.weight, self.dilation, fft_size, dtype)

    def spectral_forward(self, spectrum: torch.Tensor, fft_size: tuple[int, int]) -> torch.Tensor:
        """Map a frequency-major complex (P, Q//2+1, N, C_in) spectrum to (P, Q//2+1, N, C_out)."""
        p, q = fft_size
        if not spectrum.is_complex() or spectrum.dim() != 4 or spectrum.shape[-1] != self.in_channels \
                or tuple(spectrum.shape[:2]) != (p, q // 2 + 1):
            raise ValueError(
                f"{type(self).__name__}.spectral_forward expects a complex frequency-major "
                f"({p}, {q // 2 + 1}, N, {self.in_channels}) spectrum, got {spectrum.dtype} shape {tuple(spectrum.shape)}"
            )
        return self.spectral_step(spectrum, fft_size, self.weight, self.bias)[0]

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


class SpectralChain:
    """One SpecNet block on one input: geometry, forward, and the compact backward.

    ``epilogue(irfft(conv_L(... conv_1(rfft(prologue(*inputs))))))`` where ``prologue`` (e.g. a DenseNet
    layer's concat + BatchNorm) and ``epilogue`` (e.g. BatchNorm + pooling) are optional
    :class:`~specnet_zoo.layers.compact.Replay` ops. The dense path is ordinary autograd; the packed
    path runs under :class:`~specnet_zoo.layers.compact.CompactChain`.
    """

    def __init__(self, convs: Sequence[SpectralConv2d], size: tuple[int, int], prologue: Replay | None,
                 epilogue: Replay | None, dense: bool = False) -> None:
        self.convs, self.prologue, self.epilogue, self.dense = list(convs), prologue, epilogue, dense
        self.name = type(convs[0]).__name__ if len(convs) == 1 else ("SpectralDenseBlock" if dense else "SpectralBlock")
        if dense:
            channels = convs[0].in_channels
            for i, conv in enumerate(convs):
                if conv.in_channels != channels:
                    raise ValueError(f"{self.name}: convolution {i} sees the {channels} channels of the block input and "
                                     f"every earlier output, but has in_channels={conv.in_channels}")
                channels += conv.out_channels
        height, width = size
        grow_h = sum(c.effective_kernel_size[0] - 1 for c in convs)
        grow_w = sum(c.effective_kernel_size[1] - 1 for c in convs)
        self.fft_size = block_fft_size(height + grow_h, width + grow_w)
        paddings = {c.valid for c in convs}
        if len(paddings) > 1:
            raise ValueError(f"{self.name}: all convolutions of a block must share one padding ('same' or 'valid')")
        self.valid = paddings.pop()
        self.grow = (grow_h, grow_w)
        if self.valid:  # centred kernels: the valid window starts after the summed 'same' offsets
            top, left = sum(c.centre[0] for c in convs), sum(c.centre[1] for c in convs)
            self.crop = (top, left, height - grow_h, width - grow_w)
        else:
            self.crop = (0, 0, height, width)
        storages = {c.storage for c in convs}
        if len(storages) > 1:
            raise ValueError(f"{self.name}: all convolutions of a block must share one storage, got {sorted(storages)}")
        self.storage = storages.pop()
        self.x_like: tuple[torch.dtype, bool] = (torch.float32, False)

    # pieces shared by both paths
    def check_input(self, x: torch.Tensor) -> None:
        first = self.convs[0]
        check_map(x, self.name, channels=first.in_channels)
        k_h = max(c.effective_kernel_size[0] for c in self.convs)
        k_w = max(c.effective_kernel_size[1] for c in self.convs)
        height, width = x.shape[-2:]
        if self.valid and (height <= self.grow[0] or width <= self.grow[1]):
            raise ValueError(
                f"{self.name}: 'valid' convolutions shrink the map by {self.grow[0]}x{self.grow[1]}; an input of "
                f"{height}x{width} leaves nothing (it needs at least {self.grow[0] + 1}x{self.grow[1] + 1} pixels)"
            )
        if (height < k_h or width < k_w) and not all(c.allow_small_input for c in self.convs):
            raise ValueError(
                f"{self.name}: input map {height}x{width} is smaller than the {k_h}x{k_w} kernel; most kernel taps "
                "would only see zero padding. Use a larger input or pass allow_small_input=True."
            )
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self.x_like = (x.dtype, channels_last)

    def input_spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Real (N, C, H, W) -> complex frequency-major (P, Q', N, C), ortho, zero-padded."""
        spectrum = padded_rfft2(x.to(fft_dtype(x)), self.fft_size, norm="ortho")
        return spectrum.permute(2, 3, 0, 1).contiguous()

    def to_map(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Frequency-major (P, Q', N, C) spectrum -> real (N, C, H, W) map, cropped, in the input's dtype."""
        spectrum = spectrum.permute(2, 3, 0, 1)
        if spectrum.device.type != "cpu":  # CPU's c2r already keeps only the Hermitian part
            spectrum = hermitian_repair(spectrum, self.fft_size[1])
        top, left, height, width = self.crop
        y = torch.fft.irfft2(spectrum, s=self.fft_size, norm="ortho")[..., top : top + height, left : left + width]
        dtype, channels_last = self.x_like
        y = y.to(dtype)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y.contiguous()

    def params(self) -> list[torch.Tensor]:
        conv_params = [p for c in self.convs for p in (c.weight, c.bias) if p is not None]
        ends = [r.params for r in (self.prologue, self.epilogue) if r is not None]
        return conv_params + [p for group in ends for p in group]

    def compact_ok(self, inputs: Sequence[torch.Tensor]) -> bool:
        """Use the packed path: grads are wanted, storage is not dense and activations are supported."""
        if self.storage == "dense" or not torch.is_grad_enabled():
            return False
        if not all(c.activation is None or isinstance(c.activation, SplitTanh) for c in self.convs):
            return False
        return any(t.requires_grad for t in (*inputs, *self.params()))

    def forward_empty(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """An empty batch: FFT libraries reject zero-size transforms, and there is nothing to transform.

        The spatial convolutions give the same (0, C_out, H, W) output, with every parameter in the graph
        (their gradients are zero, as the spectral block's would be).
        """
        x = self.prologue.run(*inputs) if self.prologue is not None else inputs[0]
        self.check_input(x)
        features = [x]
        for conv in self.convs:
            inp = torch.cat(features, dim=1) if self.dense else features[-1]
            features.append(F.conv2d(inp.to(conv.weight.dtype), conv.weight, conv.bias, padding=conv.padding,
                                     dilation=conv.dilation))
        y = (torch.cat(features, dim=1) if self.dense else features[-1]).to(self.x_like[0])
        return self.epilogue.run(y) if self.epilogue is not None else y

    # dense path: plain autograd
    def forward_dense(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.prologue.run(*inputs) if self.prologue is not None else inputs[0]
        self.check_input(x)
        with fft_precision(x):
            features = [self.input_spectrum(x)]
            for conv in self.convs:
                features.append(conv.spectral_forward(self.conv_input(features), self.fft_size))
            y = self.to_map(torch.cat(features, dim=-1) if self.dense else features[-1])
        return self.epilogue.run(y) if self.epilogue is not None else y

    def conv_input(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The next convolution's input: the last spectrum, or (dense) all of them along channels."""
        return torch.cat(list(features), dim=-1) if self.dense and len(features) > 1 else features[-1]

    # packed path
    def forward_packed(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[PackedSpectrum]]:
        self.autocast = _autocast_state(inputs[0].device.type)
        x = self.prologue.run(*inputs) if self.prologue is not None else inputs[0]
        self.check_input(x)
        packs = []
        with fft_precision(x):
            features = [self.input_spectrum(x)]
            for conv in self.convs:
                spectrum, mask = conv.spectral_step(self.conv_input(features), self.fft_size, conv.weight, conv.bias)
                packs.append(PackedSpectrum.pack(spectrum, mask, self.storage))
                features.append(spectrum)
                if not self.dense:
                    features = features[-1:]  # a plain chain needs only the last spectrum
            y = self.to_map(torch.cat(features, dim=-1) if self.dense else features[-1])
        return (self.epilogue.run(y) if self.epilogue is not None else y), packs

    def replay_output(self, params: Sequence[torch.Tensor], last: PackedSpectrum) -> torch.Tensor:
        """The chain's output recomputed from its last packed spectrum (for a consumer's backward)."""
        with torch.autocast(**self.autocast):
            with fft_precision(last.values):
                y = self.to_map(last.unpack()[0])
            if self.epilogue is None:
                return y
            return self.epilogue.replay(params[len(params) - len(self.epilogue.params):], y)

    def backward_packed(self, inputs, params, packs, grad_out, needs):
        n_in, n_conv = len(inputs), sum(1 + (c.bias is not None) for c in self.convs)
        n_pro = len(self.prologue.params) if self.prologue is not None else 0
        grads: list[torch.Tensor | None] = [None] * (n_in + len(params))
        need_x = any(needs[:n_in]) or any(needs[n_in + n_conv : n_in + n_conv + n_pro])

        def leaf(t, need):
            return t.detach().requires_grad_(need)

        # Replay the prologue (with a graph when x needs a gradient) and the output side.
        with torch.enable_grad(), torch.autocast(**self.autocast):
            in_leaves = [leaf(t, nd) for t, nd in zip(inputs, needs[:n_in])]
            pro_leaves = [leaf(p, nd) for p, nd in zip(params[n_conv : n_conv + n_pro], needs[n_in + n_conv :])]
            x = self.prologue.replay(pro_leaves, *in_leaves) if self.prologue is not None else in_leaves[0]
            x_value = x.detach()
            with fft_precision(x_value):
                if self.dense:  # the block output is every spectrum, the input's included
                    features = [self.input_spectrum(x_value)] + [p.unpack()[0] for p in packs]
                    last, last_mask = torch.cat(features, dim=-1), None
                else:
                    last, last_mask = packs[-1].unpack()
                last_leaf = last.requires_grad_()
                y = self.to_map(last_leaf)
            epi_leaves, out = [], y
            if self.epilogue is not None:
                epi_needs = needs[n_in + n_conv + n_pro :]
                epi_leaves = [leaf(p, nd) for p, nd in zip(params[n_conv + n_pro :], epi_needs)]
                out = self.epilogue.replay(epi_leaves, y)
            wrt = [last_leaf] + [p for p in epi_leaves if p.requires_grad]
            found = list(torch.autograd.grad(out, wrt, grad_out))
        grad = found.pop(0)
        for i, p in enumerate(epi_leaves):
            if p.requires_grad:
                grads[n_in + n_conv + n_pro + i] = found.pop(0)
        if self.dense:
            del out, y, wrt, last, last_leaf
            with fft_precision(x_value):
                grad = self._dense_convs_backward(features, packs, params, grad, grads, needs, n_in, n_conv, need_x)
            return self._input_backward(grad, grads, x, x_value, in_leaves, pro_leaves, n_in, n_conv, need_x)
        carried = [last.detach(), last_mask]  # X_l and its mask, dropped as soon as they are used
        del out, y, wrt, last, last_leaf, last_mask

        # Convolutions, last to first, from the packed spectra.
        with fft_precision(x_value):
            slot = n_in + n_conv
            for index in range(len(self.convs) - 1, -1, -1):
                conv = self.convs[index]
                slot -= 1 + (conv.bias is not None)
                out_mask = carried.pop()
                if conv.activation is not None:
                    grad = split_tanh_backward(grad, carried.pop())
                carried.clear()
                if out_mask is not None:
                    grad = grad.mul_(out_mask)
                if index > 0:
                    in_spec, in_mask = packs[index - 1].unpack()
                else:
                    in_spec, in_mask = self.input_spectrum(x_value), None
                grad_in = self._conv_grads(index, in_spec, grad, params, grads, needs, slot, n_in, index > 0 or need_x)
                grad = grad_in
                carried = [in_spec, in_mask]
                del in_spec, in_mask, grad_in
        return self._input_backward(grad, grads, x, x_value, in_leaves, pro_leaves, n_in, n_conv, need_x)

    def _conv_grads(self, index, in_spec, grad, params, grads, needs, slot, n_in, need_in):
        """Weight and bias gradients of convolution ``index`` (into ``grads``); returns the input gradient."""
        conv = self.convs[index]
        grad_in, grad_weight = mix_with_weight_backward(in_spec, params[slot - n_in], conv.dilation, self.fft_size, grad,
                                                        need_in)
        if needs[slot]:
            grads[slot] = grad_weight
        if conv.bias is not None and needs[slot + 1]:
            p, q = self.fft_size
            grads[slot + 1] = (grad.real[0, 0].sum(0) * (p * q) ** 0.5).to(params[slot + 1 - n_in].dtype)
        return grad_in

    def _dense_convs_backward(self, features, packs, params, grad_out, grads, needs, n_in, n_conv, need_x):
        """Dense block: conv l reads cat(X_0 .. X_{l-1}), so its input gradient is split and added to each X_j.

        ``grad_out`` is the gradient of cat(X_0 .. X_L); returns the gradient of the input spectrum X_0.
        """
        sizes = [f.shape[-1] for f in features]
        feature_grads = list(torch.split(grad_out, sizes, dim=-1))
        slot = n_in + n_conv
        for index in range(len(self.convs) - 1, -1, -1):
            conv = self.convs[index]
            slot -= 1 + (conv.bias is not None)
            grad = feature_grads[index + 1].clone()
            if conv.activation is not None:
                grad = split_tanh_backward(grad, features[index + 1])
            mask = packs[index].mask()
            if mask is not None:
                grad = grad.mul_(mask)
            in_spec = self.conv_input(features[: index + 1])
            grad_in = self._conv_grads(index, in_spec, grad, params, grads, needs, slot, n_in, index > 0 or need_x)
            if grad_in is not None:
                for j, part in enumerate(torch.split(grad_in, sizes[: index + 1], dim=-1)):
                    feature_grads[j] = feature_grads[j] + part
        return feature_grads[0]

    def _input_backward(self, grad, grads, x, x_value, in_leaves, pro_leaves, n_in, n_conv, need_x):
        """From the input spectrum's gradient to the block inputs' (through the prologue when there is one)."""
        if not need_x:
            return grads
        with fft_precision(x_value):
            grad_x = rfft2_adjoint(grad.permute(2, 3, 0, 1), tuple(x_value.shape[-2:]), self.fft_size, "ortho")
        grad_x = grad_x.to(x_value.dtype)
        if self.prologue is None:
            grads[0] = grad_x
            return grads
        wrt = [t for t in in_leaves + pro_leaves if t.requires_grad]
        found = list(torch.autograd.grad(x, wrt, grad_x))
        for i, t in enumerate(in_leaves):
            if t.requires_grad:
                grads[i] = found.pop(0)
        for i, t in enumerate(pro_leaves):
            if t.requires_grad:
                grads[n_in + n_conv + i] = found.pop(0)
        return grads


def _autocast_state(device_type: str) -> dict:
    """The autocast settings in force, to replay BatchNorm/pooling under the same ones in backward."""
    if device_type not in ("cpu", "cuda"):
        return {"device_type": device_type, "enabled": False}
    try:
        enabled, dtype = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4: per-device functions
        cpu = device_type == "cpu"
        enabled = torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()
        dtype = torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()
    return {"device_type": device_type, "enabled": enabled, "dtype": dtype}


def spectral_conv_chain(
    x: torch.Tensor | Sequence[torch.Tensor],
    convs: Sequence[SpectralConv2d],
    prologue: Replay | None = None,
    epilogue: Replay | None = None,
    dense: bool = False,
) -> torch.Tensor:
    """Run ``convs`` on a real (N, C, H, W) map with one FFT in and one inverse FFT out.

    Args:
        x: the block input, or the inputs of ``prologue`` (which must keep the spatial size).
        convs: the block's convolutions, in order.
        prologue, epilogue: cheap ops before / after the block, fused so their inputs need not be kept.
        dense: DenseNet connectivity inside the spectrum (SpecNet Table 1): convolution l reads the
            concatenation of the block input and every earlier output, and the block returns all of them
            concatenated, (N, C + sum(C_l), H, W).

    Returns the real (N, C_out, H, W) map (``epilogue`` of it) in the input's dtype; the FFT runs in
    float32 (float64 for float64 input) with autocast disabled. When gradients are needed and the
    convolutions' ``storage`` is not "dense", only packed spectra are kept for backward.
    """
    name = type(convs[0]).__name__ if len(convs) == 1 else "SpectralBlock"
    inputs = [x] if isinstance(x, torch.Tensor) else list(x)
    if prologue is None and len(inputs) != 1:
        raise ValueError(f"{name} takes one input map without a prologue, got {len(inputs)} tensors")
    if not inputs:
        raise ValueError(f"{name}: the prologue got no input tensors")
    for t in inputs:
        check_map(t, name)
    sizes = {(t.shape[0], *t.shape[-2:]) for t in inputs}
    if len(sizes) > 1:
        raise ValueError(f"{name}: prologue inputs must share batch and spatial size (N, H, W), got {sorted(sizes)}")
    chain = SpectralChain(convs, tuple(inputs[0].shape[-2:]), prologue, epilogue, dense)
    if inputs[0].shape[0] == 0:
        return chain.forward_empty(inputs)
    if not chain.compact_ok(inputs):
        return chain.forward_dense(inputs)
    return CompactChain.apply(chain, len(inputs), *inputs, *chain.params())


def set_spectral_density(model: nn.Module, density: float | Sequence[float] | None) -> None:
    """Give every :class:`SpectralConv2d` of ``model`` a density target: one value, or one per layer in order.

    ``None`` switches density targets off (the layers' ``threshold`` applies again). Raises if a
    sequence's length is not the number of spectral convolutions, or a layer has a threshold set.
    """
    convs = [m for m in model.modules() if isinstance(m, SpectralConv2d)]
    values = [density] * len(convs) if density is None or isinstance(density, (int, float)) else list(density)
    if len(values) != len(convs):
        raise ValueError(f"{type(model).__name__} has {len(convs)} spectral convolutions; got {len(values)} densities")
    for conv, value in zip(convs, values):
        check_sparsity(type(conv).__name__, conv.threshold, value, conv.storage)
        conv.density = None if value is None else float(value)


def spectral_densities(model: nn.Module) -> dict[str, float]:
    """Each :class:`SpectralConv2d`'s kept fraction in the last forward pass, by module name."""
    return {
        name: float(m.measured_density)
        for name, m in model.named_modules()
        if isinstance(m, SpectralConv2d) and m.measured_density is not None
    }


class SpectralBlock(nn.Module):
    """SpecNet convolutional block: FFT once -> [SpectralConv2d]* -> inverse FFT -> crop (Alg. 1).

    Args:
        in_channels: C_in of the spatial input.
        channels: output channels of each convolution in order (an int for a one-conv block).
        kernel_size: kernel size of every convolution.
        threshold: beta of SpecNet eq. 4 for every convolution (>= 0; 0 keeps every entry).
        density: instead of ``threshold``, the kept fraction of each spectrum (per sample).
        storage: what backward keeps ("compact", "float16", "int8", "dense"; see ``compact``).
        activation: spectral activation after every convolution: 'split_tanh' (SpecNet eq. 5/6),
            None/'identity', or an nn.Module acting on complex tensors.
        bias: whether the convolutions have a bias.
        allow_small_input: accept maps smaller than the kernel (well defined, but most taps see padding).
        padding: "same" (crop back to H x W) or "valid" (crop to H - sum(k - 1), as SpecNet's LeNet).

    Shape:
        (N, C_in, H, W) real -> (N, channels[-1], H, W) real ('same') or (N, channels[-1], H - S, W - S)
        ('valid', S = sum(k - 1)). Spectral maps between the convolutions are complex with P = H + S rows.
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
        density: float | None = None,
        storage: str = "compact",
        padding: str = "same",
    ) -> None:
        super().__init__()
        channels = [channels] if isinstance(channels, int) else list(channels)
        if not channels:
            raise ValueError("SpectralBlock needs at least one convolution (channels is empty)")
        widths = [in_channels] + channels
        self.convs = nn.ModuleList(
            SpectralConv2d(
                c_in, c_out, kernel_size, bias=bias, threshold=threshold,
                activation=activation, allow_small_input=allow_small_input, density=density, storage=storage,
                padding=padding,
            )
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.in_channels = in_channels
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral_conv_chain(x, list(self.convs))
