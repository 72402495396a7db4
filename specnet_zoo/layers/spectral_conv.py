"""SpecNet's FFT convolution layers (Guan et al. 2019, Alg. 1): :class:`SpectralConv2d` and :class:`SpectralBlock`.

A :class:`SpectralBlock` FFTs its spatial input once, zero-padded to (H + S_h, W + S_w) where S is
the summed kernel support growth of its convolutions (SpecNet's M + N_k - 1 for one convolution), runs
one or more :class:`SpectralConv2d` on the spectrum, and inverse-FFTs and crops back to (H, W) ('same')
or (H - S_h, W - S_w) ('valid'). Zero padding makes the products linear (not circular) convolutions.
Kernels are centred on the origin of the padded grid (their 'same' alignment), so every convolution's
output is aligned with its input and a block crops once, at the end.

Spectra are computed with ``norm="ortho"`` (unitary); the threshold beta is nevertheless on the scale
of SpecNet's eq. 7, an unnormalised DFT: an entry is zeroed when ``|Y_ortho| sqrt(P Q) < beta``.
The engine (one block call, forward and backward) is :mod:`.spectral_chain`; the product is
:mod:`.spectral_product`, the threshold :mod:`.sparsity`, what backward keeps :mod:`.packing`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .sparsity import check_sparsity, keep_mask
from .spectral_chain import REAL, block_fft_size, fast_fft_size, spectral_conv_chain
from .spectral_product import kernel_spectrum, mix_channels
from .split_tanh import SplitTanh, split_tanh

__all__ = [
    "SpectralConv2d", "SpectralBlock", "block_fft_size", "fast_fft_size", "spectral_conv_chain",
    "set_spectral_density", "spectral_densities",
]


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
    :mod:`specnet_zoo.layers.packing` ("compact" lossless by default, "float16"/"int8" lossy, "dense").
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
        self._kept: torch.Tensor | int | None = None  # kept entries in the last forward (None: nothing zeroed)
        self._entries = 0  # entries of the last forward's spectrum (0: no forward yet)

    def extra_repr(self) -> str:
        sparsity = f"density={self.density}" if self.density is not None else f"threshold={self.threshold}"
        return super().extra_repr() + f", {sparsity}, storage={self.storage!r}"

    @property
    def measured_density(self) -> torch.Tensor | None:
        """The kept fraction of spectral entries in the last forward pass (0-d tensor; None before any)."""
        if not self._entries:
            return None
        if self._kept is None:
            return torch.ones((), device=self.weight.device)
        return torch.as_tensor(self._kept, device=self.weight.device).float() / self._entries

    def record_density(self, entries: int, kept: torch.Tensor | int | None) -> None:
        """Remember the last forward's spectrum size and kept count (an int when packing counted it)."""
        self._entries, self._kept = entries, kept

    def keep_mask(self, spectrum: torch.Tensor, fft_size: tuple[int, int]) -> torch.Tensor | None:
        """Bool mask of the entries eq. 4 keeps in a frequency-major (F, C, N) spectrum (:func:`.sparsity.keep_mask`)."""
        return keep_mask(spectrum, fft_size, self.threshold, self.density)

    def spectral_step(
        self, spectrum: torch.Tensor, fft_size: tuple[int, int], inplace: bool = False, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 3-6 on a frequency-major (F, C_in, N) spectrum: returns (activation output, keep mask or None).

        ``inplace`` applies bias, mask and split tanh to the product in place (no autograd: the packed path);
        the product is then written into ``out`` (F, C_out, N) when given, e.g. a view of a DenseNet block's
        spectra buffer.
        """
        if out is not None and not inplace:
            raise ValueError(f"{type(self).__name__}.spectral_step writes into `out` only with inplace=True "
                             "(the packed path, without autograd)")
        p, q = fft_size
        kernel = kernel_spectrum(self.weight, self.dilation, fft_size, spectrum.dtype)
        out = mix_channels(spectrum, kernel, out=out)
        del kernel  # large for wide layers on small maps: freed before the mask and activation
        if self.bias is not None:
            # A constant b on the P x Q grid has ortho DC coefficient b * sqrt(P Q) and nothing else.
            bias = self.bias.to(REAL[out.dtype])
            if inplace:  # the DC row of the (F, C, N) product as (N, C): one view op
                out.as_strided(out.shape[:0:-1], out.stride()[:0:-1]).add_(bias, alpha=math.sqrt(p * q))
            else:
                out[0].add_(bias.unsqueeze(1), alpha=math.sqrt(p * q))
        mask = self.keep_mask(out, fft_size)
        if not inplace:  # the packed path counts the kept entries while packing, for free
            self.record_density(out.numel(), None if mask is None else mask.sum())
        if mask is not None:
            out = out.mul_(mask) if inplace else out * mask
        if isinstance(self.activation, SplitTanh):
            if inplace:
                torch.view_as_real(out).tanh_()
            else:
                out = split_tanh(out)
        elif self.activation is not None:
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

    def spectral_forward(self, spectrum: torch.Tensor, fft_size: tuple[int, int]) -> torch.Tensor:
        """Map a frequency-major complex (P, Q//2+1, C_in, N) spectrum to (P, Q//2+1, C_out, N).

        (P, Q) is the padded FFT size; the spectrum is the ortho ``rfft2`` of the zero-padded input.
        """
        p, q = fft_size
        if not spectrum.is_complex() or spectrum.dim() != 4 or spectrum.shape[2] != self.in_channels \
                or tuple(spectrum.shape[:2]) != (p, q // 2 + 1):
            raise ValueError(
                f"{type(self).__name__}.spectral_forward expects a complex frequency-major "
                f"({p}, {q // 2 + 1}, {self.in_channels}, N) spectrum, got {spectrum.dtype} shape {tuple(spectrum.shape)}"
            )
        flat = spectrum.reshape(p * (q // 2 + 1), *spectrum.shape[2:])
        return self.spectral_step(flat, fft_size)[0].view(spectrum.shape[:2] + (self.out_channels, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral_conv_chain(x, [self])


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
        storage: what backward keeps ("compact", "float16", "int8", "dense"; see ``packing``).
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
