"""Compact saved activations for SpecNet blocks: what backward keeps, and how little of it.

SpecNet (Guan et al. 2019, Sec. 3.3) argues that thresholded spectral maps can be stored sparsely for
backward. Plain autograd through a spectral block instead keeps the stacked [Re X; Im X] rows of every
channel mix, both tanh outputs, the complex product and a dense mask per threshold. A compact chain keeps,
for each convolution, only its output spectrum X_l (after threshold and activation) as

    kept values (the entries the threshold did not zero) + a 1-bit mask over the rfft half-spectrum,

which is everything backward needs: the split-tanh derivative comes from its output
(1 - tanh^2), the threshold derivative is the mask, and X_l is the next convolution's input for its
weight gradient. The block's input spectrum is recomputed with one FFT from the input map, kernel
spectra with one GEMM from the k x k taps, and a block's spatial output, its BatchNorm and its pooling
(a :class:`Replay`) are replayed from X_L. A block whose input is another compact block's output
stores no copy of it at all: it asks that block to replay it.

Storage modes (``storage=``):
    "compact": lossless; gradients equal the dense computation to rounding.
    "float16": kept values in float16 (relative error <= 2^-11 per value; split-tanh outputs lie in
        [-1, 1], so no overflow). Forward is unchanged; backward sees the rounded values.
    "int8": kept values as int8 with one absmax scale per 128 values (error <= scale / 2, 3% overhead).
    "dense": no compaction; ordinary autograd (the reference path).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ._fft import constant_cache

__all__ = [
    "STORAGES",
    "PackedSpectrum",
    "Replay",
    "NormPool",
    "ConcatNorm",
    "CompactChain",
    "can_replay",
    "mix_channels_backward",
    "pack_bits",
    "unpack_bits",
]

STORAGES = ("compact", "float16", "int8", "dense")


@constant_cache(maxsize=16)
def _bit_weights(device: torch.device) -> torch.Tensor:
    return (2 ** torch.arange(8, device=device)).to(torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 entries per byte (little-endian bit order): (ceil(numel / 8),)."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8).to(torch.uint8) * _bit_weights(mask.device)).sum(1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the bool tensor of ``shape``."""
    numel = 1
    for n in shape:
        numel *= n
    flat = (bits[:, None] & _bit_weights(bits.device)).ne(0).reshape(-1)
    return flat[:numel].reshape(tuple(shape))


@dataclass
class PackedSpectrum:
    """A complex spectrum stored as kept values (+ a bitmask of where they go).

    ``values`` is real (k, 2) [Re, Im] in the spectrum's real dtype, float16 or int8 (with ``scale``);
    ``bits`` is None when nothing was zeroed (values then hold every entry, in order).
    """

    values: torch.Tensor
    bits: torch.Tensor | None
    scale: torch.Tensor | None
    shape: tuple[int, ...]
    dtype: torch.dtype  # complex dtype of the spectrum

    @classmethod
    def pack(cls, spectrum: torch.Tensor, mask: torch.Tensor | None, storage: str) -> "PackedSpectrum":
        if storage not in STORAGES[:3]:
            raise ValueError(f"cannot pack a spectrum with storage={storage!r}; expected one of {STORAGES[:3]}")
        kept = spectrum.reshape(-1) if mask is None else spectrum[mask]
        values = torch.view_as_real(kept)
        scale = None
        if storage == "float16":
            values = values.to(torch.float16)
        elif storage == "int8":
            values, scale = _quantize_int8(values)
        elif mask is None:
            values = values.clone()  # a view of the live forward tensor otherwise (masked selection copies)
        bits = None if mask is None else pack_bits(mask)
        return cls(values, bits, scale, tuple(spectrum.shape), spectrum.dtype)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in (self.values, self.bits, self.scale) if t is not None)

    def with_tensors(self, tensors: Sequence[torch.Tensor]) -> "PackedSpectrum":
        it = iter(tensors)
        values = next(it)
        bits = next(it) if self.bits is not None else None
        scale = next(it) if self.scale is not None else None
        return PackedSpectrum(values, bits, scale, self.shape, self.dtype)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def mask(self) -> torch.Tensor | None:
        return None if self.bits is None else unpack_bits(self.bits, self.shape)

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(complex spectrum of ``shape``, bool mask or None)."""
        real = torch.empty((), dtype=self.dtype).real.dtype
        if self.scale is None:
            values = self.values.to(real)
        else:
            values = _dequantize_int8(self.values, self.scale, real)
        kept = torch.view_as_complex(values.contiguous())
        if self.bits is None:
            return kept.reshape(self.shape), None
        mask = self.mask()
        out = torch.zeros(self.shape, dtype=self.dtype, device=values.device)
        return out.masked_scatter_(mask, kept), mask


INT8_GROUP = 128  # values sharing one scale: neighbours in storage order are one frequency's channels


def _quantize_int8(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax int8: (k, 2) real -> int8 (k, 2) and one float32 scale per ``INT8_GROUP`` reals."""
    flat = values.reshape(-1)
    pad = (-flat.numel()) % INT8_GROUP
    groups = torch.cat([flat, flat.new_zeros(pad)]).view(-1, INT8_GROUP)
    scale = (groups.abs().amax(1, keepdim=True).float() / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(groups / scale.to(groups.dtype)).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1)[: flat.numel()].view_as(values), scale.reshape(-1)


def _dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    flat = q.reshape(-1)
    pad = (-flat.numel()) % INT8_GROUP
    groups = torch.cat([flat, flat.new_zeros(pad)]).view(-1, INT8_GROUP).to(dtype) * scale.to(dtype)[:, None]
    return groups.reshape(-1)[: flat.numel()].view(q.shape)


class Replay:
    """A cheap, deterministic op fused into a compact chain: run once in forward, replayed in backward.

    ``run(*inputs)`` is the module call (it may update running statistics); ``replay(params, *inputs)``
    recomputes the same output from ``params`` (the tensors in :attr:`params`, possibly detached
    copies) without side effects, differentiably.
    """

    params: tuple[torch.Tensor, ...] = ()

    def run(self, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def replay(self, params: Sequence[torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _norm_params(norm: nn.Module) -> tuple[torch.Tensor, ...]:
    if isinstance(norm, nn.BatchNorm2d) and norm.affine:
        return (norm.weight, norm.bias)
    return ()


def _replay_norm(norm: nn.Module, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """BatchNorm2d's forward output without touching its running statistics."""
    if not isinstance(norm, nn.BatchNorm2d):
        return x
    weight, bias = params if norm.affine else (None, None)
    batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
    if batch_stats:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, norm.eps)
    return F.batch_norm(x, norm.running_mean, norm.running_var, weight, bias, False, 0.0, norm.eps)


_REPLAYABLE_POOLS = (nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def can_replay(norm: nn.Module, pool: nn.Module) -> bool:
    """Whether ``pool(norm(y))`` is deterministic and side-effect free apart from BN running stats.

    SyncBatchNorm (DDP) is not: its statistics need the other processes, so it is never replayed.
    """
    return type(norm) in (nn.Identity, nn.BatchNorm2d) and type(pool) in _REPLAYABLE_POOLS


class NormPool(Replay):
    """``pool(norm(y))`` after a spectral block (SpecNet stage: BatchNorm, then spatial pooling)."""

    def __init__(self, norm: nn.Module, pool: nn.Module) -> None:
        if not can_replay(norm, pool):
            raise ValueError(f"NormPool replays BatchNorm2d/Identity and stateless pooling only, got {norm} and {pool}")
        self.norm, self.pool = norm, pool
        self.params = _norm_params(norm)

    def run(self, y: torch.Tensor) -> torch.Tensor:
        return self.pool(self.norm(y))

    def replay(self, params, y):
        return self.pool(_replay_norm(self.norm, params, y))


class ConcatNorm(Replay):
    """``norm(cat(features, dim=1))`` before a spectral conv (a DenseNet layer's input)."""

    def __init__(self, norm: nn.Module) -> None:
        if type(norm) not in (nn.Identity, nn.BatchNorm2d):
            raise ValueError(f"ConcatNorm replays BatchNorm2d or Identity only, got {norm}")
        self.norm = norm
        self.params = _norm_params(norm)

    def run(self, *features: torch.Tensor) -> torch.Tensor:
        channels = sum(t.shape[1] for t in features)
        expected = getattr(self.norm, "num_features", channels)
        if channels != expected:
            raise ValueError(f"ConcatNorm: the features have {channels} channels together, its BatchNorm expects "
                             f"{expected} (feature shapes {[tuple(t.shape) for t in features]})")
        return self.norm(torch.cat(features, dim=1))

    def replay(self, params, *features):
        return _replay_norm(self.norm, params, torch.cat(features, dim=1))


def producer_node(t: torch.Tensor):
    """The compact-chain autograd node whose output ``t`` is (so ``t`` can be replayed), else None."""
    node = t.grad_fn
    if node is None or getattr(node, "_forward_cls", None) is not CompactChain:
        return None
    if getattr(node.impl, "dense", False):  # its output includes its input spectrum: not replayable alone
        return None
    return node


def _saved(ctx) -> tuple[torch.Tensor, ...]:
    """``ctx.saved_tensors``, unpacked once: a consumer's replay and the node's own backward share them
    (``torch.utils.checkpoint`` forbids unpacking twice)."""
    if getattr(ctx, "unpacked", None) is None:
        ctx.unpacked = ctx.saved_tensors
    return ctx.unpacked


def replay_output(node) -> torch.Tensor:
    """Recompute a compact chain's output, without grad, from what its autograd node saved."""
    saved = _saved(node)
    with torch.no_grad():
        return node.impl.replay_output(saved[node.param_slice], _unflatten_packs(node, saved)[-1])


def _unflatten_packs(ctx, saved: Sequence[torch.Tensor]) -> list[PackedSpectrum]:
    flat, packs, start = saved[ctx.pack_slice], [], 0
    for has_bits, has_scale, shape, dtype in ctx.pack_meta:
        n = 1 + has_bits + has_scale
        values, rest = flat[start], list(flat[start + 1 : start + n])
        bits = rest.pop(0) if has_bits else None
        scale = rest.pop(0) if has_scale else None
        packs.append(PackedSpectrum(values, bits, scale, shape, dtype))
        start += n
    return packs


class CompactChain(torch.autograd.Function):
    """``epilogue(block(prologue(*inputs)))`` that keeps only packed spectra for backward.

    ``apply(impl, n_inputs, *inputs, *params)``: ``impl`` is the block's chain implementation
    (:class:`specnet_zoo.layers.spectral_conv.SpectralChain`), ``params`` are its conv weights and
    biases, then prologue and epilogue parameters. Everything kept goes through ``save_for_backward``
    (so saved-tensor hooks such as ``save_on_cpu`` and memory accounting see it); inputs produced by
    another compact chain are not kept but replayed from that chain's saved spectra.
    """

    @staticmethod
    def forward(ctx, impl, n_inputs: int, *tensors: torch.Tensor) -> torch.Tensor:
        inputs, params = tensors[:n_inputs], tensors[n_inputs:]
        out, packs = impl.forward_packed(inputs)
        ctx.impl = impl
        ctx.sources = [producer_node(t) for t in inputs]
        kept = [t for t, src in zip(inputs, ctx.sources) if src is None]
        ctx.param_slice = slice(len(kept), len(kept) + len(params))
        ctx.pack_slice = slice(ctx.param_slice.stop, None)
        ctx.pack_meta = [(p.bits is not None, p.scale is not None, p.shape, p.dtype) for p in packs]
        ctx.save_for_backward(*kept, *params, *(t for p in packs for t in p.tensors()))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        saved = _saved(ctx)
        ctx.unpacked = None
        kept = iter(saved[: ctx.param_slice.start])
        inputs = [next(kept) if src is None else replay_output(src) for src in ctx.sources]
        grads = ctx.impl.backward_packed(inputs, saved[ctx.param_slice], _unflatten_packs(ctx, saved), grad_out,
                                         ctx.needs_input_grad[2:])
        return (None, None, *grads)


def split_tanh_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Gradient through ``f(a + ib) = tanh(a) + i tanh(b)`` from its output: tanh' = 1 - tanh^2.

    Overwrites and returns ``grad`` (complex, same shape as ``out``): one real temporary, not four.
    """
    factor = torch.view_as_real(out).square().neg_().add_(1)
    torch.view_as_real(grad).mul_(factor)
    return grad


def mix_channels_backward(
    spectrum: torch.Tensor, kernel: torch.Tensor, grad: torch.Tensor, need_input_grad: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Gradients of ``Y = mix_channels(X, K)`` (per frequency ``Y = X K``, complex) for a real loss.

    With ``G = dL/dRe Y + i dL/dIm Y`` (PyTorch's convention) and rows [Re X; Im X]:
    ``dRe K = rows^T [Re G; Im G]``, ``dIm K = rows^T [Im G; -Re G]`` and
    ``[dRe X; dIm X] = [Re G; Im G] Re K^T + [Im G; -Re G] Im K^T``.

    Args:
        spectrum: complex (P, Q', N, C_in); kernel: real (2, P Q', C_in, C_out);
        grad: complex (P, Q', N, C_out).

    Returns:
        (complex (P, Q', N, C_in) or None, real (2, P Q', C_in, C_out)).
    """
    p, q, n, c_in = spectrum.shape
    rows = torch.view_as_real(spectrum).permute(0, 1, 4, 2, 3).reshape(p * q, 2 * n, c_in)
    g = torch.view_as_real(grad).permute(0, 1, 4, 2, 3).reshape(p * q, 2, n, -1)
    g_stack = g.reshape(p * q, 2 * n, -1)  # [Re G; Im G]
    g_turn = torch.cat([g[:, 1], -g[:, 0]], dim=1)  # [Im G; -Re G]
    rows_t = rows.transpose(1, 2)
    grad_kernel = torch.stack([torch.bmm(rows_t, g_stack), torch.bmm(rows_t, g_turn)])
    if not need_input_grad:
        return None, grad_kernel
    stacked = torch.bmm(g_stack, kernel[0].transpose(1, 2)) + torch.bmm(g_turn, kernel[1].transpose(1, 2))
    stacked = stacked.reshape(p, q, 2, n, c_in)
    return torch.complex(stacked[:, :, 0], stacked[:, :, 1]), grad_kernel
