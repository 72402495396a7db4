"""What a SpecNet block keeps of a spectrum for backward: kept values + a 1-bit mask (Guan et al. 2019, Sec. 3.3).

A thresholded spectrum X_l (SpecNet eq. 4) is stored as the entries the threshold kept plus a bitmask
of where they go, which is all backward needs (the module docstring of :mod:`.compact` says why).
Storage modes (``storage=``):

    "compact": lossless. A spectrum nothing was zeroed in is kept as it is (no copy).
    "float16": kept values in float16 (relative error <= 2^-11; split-tanh outputs lie in [-1, 1]).
    "int8": kept values as int8 with one absmax scale per 128 values (error <= scale / 2, 3% overhead).
    "dense": no compaction; ordinary autograd (the reference path), never packed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ._fft import constant_cache

__all__ = ["INT8_GROUP", "STORAGES", "PackedSpectrum", "pack_bits", "unpack_bits"]

STORAGES = ("compact", "float16", "int8", "dense")
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}
INT8_GROUP = 128  # reals sharing one scale: neighbours in storage order are one frequency's channels


@constant_cache(maxsize=16)
def _bit_weights(device: torch.device) -> torch.Tensor:
    return (2 ** torch.arange(8, device=device)).to(torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 entries per byte (little-endian bit order): (ceil(numel / 8), 1)."""
    # Padding is skipped only when the leading dims make every batch size (the last dim) a multiple of 8, so
    # the number of operator calls never depends on the batch.
    if not mask.is_contiguous() or math.prod(mask.shape[:-1]) % 8:
        mask = F.pad(mask.reshape(-1), (0, (-mask.numel()) % 8))
    return mask.view(-1, 8).mul(_bit_weights(mask.device)).sum(1, keepdim=True, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the bool tensor of ``shape``."""
    flags = bits.bitwise_and(_bit_weights(bits.device)).ne(0)  # (bytes, 8)
    strides = [1]
    for n in reversed(tuple(shape)[1:]):
        strides.insert(0, strides[0] * n)
    return flags.as_strided(tuple(shape), tuple(strides))  # the first numel flags, in one view op


def _quantize_int8(kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax int8 of complex values as reals: int8 (groups, INT8_GROUP // 2, 2) [Re, Im] (zero-padded)
    and scales (groups, 1, 1) in the values' real dtype."""
    per_group = INT8_GROUP // 2
    flat = kept if kept.dim() == 1 else kept.reshape(-1)
    flat = F.pad(flat, (0, (-flat.numel()) % per_group))  # always: the kept count depends on the data
    groups = torch.view_as_real(flat.view(-1, per_group))
    absmax = torch.linalg.vector_norm(groups, float("inf"), dim=(1, 2), keepdim=True)
    scale = absmax.div_(127).clamp_min_(torch.finfo(absmax.dtype).tiny)
    return groups.div(scale).round_().to(torch.int8), scale


def _dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Real (groups, INT8_GROUP // 2, 2) values in ``dtype`` (padding included) from :func:`_quantize_int8`."""
    return q.to(dtype).mul_(scale.to(dtype))


@dataclass
class PackedSpectrum:
    """A complex spectrum stored as kept values (+ a bitmask of where they go).

    ``values`` holds the kept entries as reals [Re, Im, Re, ...]: in the spectrum's real dtype (or the
    spectrum itself when nothing was zeroed and storage is "compact"), float16, or int8 groups with
    ``scale``; ``bits`` is None when nothing was zeroed (values then hold every entry, in order).
    """

    values: torch.Tensor
    bits: torch.Tensor | None
    scale: torch.Tensor | None
    shape: tuple[int, ...]
    dtype: torch.dtype  # complex dtype of the spectrum
    kept: int = -1  # number of kept entries (-1: unknown, e.g. rebuilt from saved tensors)

    @classmethod
    def pack(cls, spectrum: torch.Tensor, mask: torch.Tensor | None, storage: str) -> "PackedSpectrum":
        """Pack ``spectrum`` (already zero outside ``mask``). Unmasked "compact" keeps the tensor itself (the
        caller must not modify it afterwards), or a copy when it is a view into a larger buffer (a DenseNet
        block's spectra), which keeping the view would pin whole."""
        if storage not in STORAGES[:3]:
            raise ValueError(f"cannot pack a spectrum with storage={storage!r}; expected one of {STORAGES[:3]}")
        kept = spectrum if mask is None else spectrum.masked_select(mask)
        if kept is spectrum and storage == "compact" and \
                spectrum.untyped_storage().nbytes() > spectrum.numel() * spectrum.element_size():
            kept = spectrum.clone()
        values, scale = kept, None
        if storage == "float16":
            values = torch.view_as_real(kept).to(torch.float16)
        elif storage == "int8":
            values, scale = _quantize_int8(kept)
        bits = None if mask is None else pack_bits(mask)
        return cls(values, bits, scale, tuple(spectrum.shape), spectrum.dtype, kept.numel())

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in (self.values, self.bits, self.scale) if t is not None)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def mask(self) -> torch.Tensor | None:
        return None if self.bits is None else unpack_bits(self.bits, self.shape)

    def _kept(self) -> torch.Tensor:
        """The kept entries as complex values, in order (int8 padding included at the end)."""
        values = self.values
        if values.is_complex():
            return values
        real = _REAL[self.dtype]
        reals = values.to(real) if self.scale is None else _dequantize_int8(values, self.scale, real)
        return torch.view_as_complex(reals)  # [..., 2]: float16 (K, 2) or int8 groups (G, INT8_GROUP // 2, 2)

    def _dense(self, kept: torch.Tensor) -> torch.Tensor:
        """``kept`` holding every entry (no bitmask), as a tensor of ``shape``."""
        return kept if kept.shape == self.shape else kept.view(-1)[: _numel(self.shape)].view(self.shape)

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(complex spectrum of ``shape``, bool mask or None)."""
        kept = self._kept()
        if self.bits is None:
            return self._dense(kept), None
        mask = self.mask()
        return torch.zeros(self.shape, dtype=self.dtype, device=kept.device).masked_scatter_(mask, kept), mask

    def unpack_into(self, out: torch.Tensor) -> torch.Tensor | None:
        """Write the spectrum into ``out`` (of ``shape``, already zero: e.g. a view of a block's zeroed
        buffer) and return its bool mask (None when nothing was zeroed)."""
        if tuple(out.shape) != self.shape or out.dtype != self.dtype:
            raise ValueError(f"unpack_into needs a {self.dtype} tensor of shape {self.shape}, got {out.dtype} "
                             f"{tuple(out.shape)}")
        kept = self._kept()
        if self.bits is None:
            out.copy_(self._dense(kept))
            return None
        mask = self.mask()
        out.masked_scatter_(mask, kept)
        return mask


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
