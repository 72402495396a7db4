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

Storage modes and the packed format: :mod:`.packing`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .packing import PackedSpectrum

__all__ = ["Replay", "NormPool", "ConcatNorm", "CompactChain", "can_replay"]


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
    """Recompute a compact chain's output (detached) from what its autograd node saved.

    The epilogue's graph of the replay is left on the node (``node.replayed``): the node's own backward
    runs next and differentiates it instead of replaying the same output again.
    """
    saved = _saved(node)
    out, node.replayed = node.impl.replay_output(saved[node.param_slice], _unflatten_packs(node, saved)[-1],
                                                 node.needs_input_grad[2:])
    return out


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


def _take_replayed(ctx):
    """The replay a consumer left on this node (None if none), removed from the node."""
    replayed, ctx.replayed = getattr(ctx, "replayed", None), None
    return replayed


class CompactChain(torch.autograd.Function):
    """``epilogue(block(prologue(*inputs)))`` that keeps only packed spectra for backward.

    ``apply(impl, n_inputs, *inputs, *params)``: ``impl`` is the block's chain implementation
    (:class:`specnet_zoo.layers.spectral_chain.SpectralChain`), ``params`` are its conv weights and
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
        # The stashed replay is handed over, not kept here: backward frees its spectrum after the last use.
        grads = ctx.impl.backward_packed(inputs, saved[ctx.param_slice], _unflatten_packs(ctx, saved), grad_out,
                                         ctx.needs_input_grad[2:], _take_replayed(ctx))
        return (None, None, *grads)
