"""One SpecNet block on one input (Guan et al. 2019, Alg. 1): FFT once, convolutions, inverse FFT once.

``epilogue(crop(irfft(conv_L(... conv_1(rfft(prologue(*inputs)))))))``: the spectra between the
convolutions are frequency-major complex (F, C, N) (:mod:`.spectral_product`), so the convolutions
chain without a copy. Two paths compute the same function:

* packed (training, ``storage != "dense"``): forward runs without autograd and keeps only packed
  spectra (:mod:`.packing`); :class:`~.compact.CompactChain` calls :meth:`SpectralChain.backward_packed`,
  which writes every adjoint by hand (per convolution: ``tanh_backward`` for split tanh, the mask for
  the threshold, two batched GEMMs for the input and kernel gradients, one GEMM back to the taps; one
  FFT per block end);
* dense (inference, ``storage="dense"``, custom activations): the same ops under ordinary autograd.

A spectrum is never modified after it is packed: an unmasked "compact" spectrum is kept as it is.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from ._fft import check_map, constant_cache, fft_dtype, fft_precision, needs_hermitian_repair, padded_rfft2
from .compact import CompactChain, Replay
from .packing import PackedSpectrum
from .spectral_product import (
    kernel_spectrum,
    kernel_spectrum_backward,
    mix_channels_input_grad,
    mix_channels_kernel_grad,
)
from .split_tanh import SplitTanh

if TYPE_CHECKING:
    from .spectral_conv import SpectralConv2d

__all__ = ["SpectralChain", "spectral_conv_chain"]

_FAST_RADICES = (2, 3, 5, 7)
REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


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


def block_fft_size(height: int, width: int) -> tuple[int, int]:
    """The padded FFT size (P, Q) of a block whose linear convolutions need ``height`` x ``width``.

    P is exactly ``height``: any larger P grows the stored (P, Q // 2 + 1) spectra. Q may grow by one to a
    2,3,5,7-smooth size when that keeps Q // 2 + 1 (e.g. 34 -> 35): the same stored size, a faster FFT.
    """
    q = width
    if q % 2 == 0 and fast_fft_size(q) != q and fast_fft_size(q + 1) == q + 1:
        q += 1
    return height, q


@constant_cache(maxsize=64)
def column_weights(width: int, factor: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(Q', 1, 1): ``factor`` on the rfft columns that stand for two bins (all but DC and an even Q's Nyquist), 1 else.

    ``factor`` 2 is the adjoint of ``irfft`` (c2r), 0.5 that of ``rfft`` (r2c).
    """
    weights = torch.full((width // 2 + 1, 1, 1), factor, dtype=dtype, device=device)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    return weights


def hermitian_repair_grid(grid: torch.Tensor, width: int) -> torch.Tensor:
    """Make a frequency-major (P, Q', ...) spectrum's self-conjugate columns exactly Hermitian (GPU c2r)."""
    cols = [0] if width % 2 else [0, width // 2]
    part = grid[:, cols]
    mirror = torch.roll(part.flip(0), shifts=1, dims=0)  # row k -> row (-k) mod P
    fixed = 0.5 * (part + mirror.conj())
    if len(cols) == 1:
        return torch.cat([fixed, grid[:, 1:]], dim=1)
    return torch.cat([fixed[:, :1], grid[:, 1:-1], fixed[:, 1:]], dim=1)


def frequency_major(spectrum: torch.Tensor) -> torch.Tensor:
    """View a contiguous (N, C, P, Q') rfft2 output as frequency-major (F, C, N), in one view op (not contiguous)."""
    if not spectrum.is_contiguous():  # e.g. the rfft2 of a channels_last map
        spectrum = spectrum.contiguous()
    n, c, p, q = spectrum.shape
    return spectrum.as_strided((p * q, c, n), (1, p * q, c * p * q))


def crop_to_map(grid: torch.Tensor, crop: tuple[int, int, int, int]) -> torch.Tensor:
    """View the window (top, left, h, w) of a real (P, Q, C, N) grid, an FFT output, as (N, C, h, w), in one op.

    The FFT chooses the output's memory layout (a c2r over dims (0, 1) returns it channel-major), so the
    view takes the grid's own strides; the window's offset is explicit because the grid starts its
    storage (fresh FFT outputs do), which keeps the view exact under ``torch.compile`` too.
    """
    if not torch.compiler.is_compiling() and grid.storage_offset() != 0:
        grid = grid.clone()
    s_p, s_q, s_c, s_n = grid.stride()
    top, left, height, width = crop
    return grid.as_strided((grid.shape[3], grid.shape[2], height, width), (s_n, s_c, s_p, s_q), top * s_p + left * s_q)


def _autocast_state(device_type: str) -> dict:
    """The autocast settings in force, to replay BatchNorm/pooling under the same ones in backward."""
    if device_type not in ("cpu", "cuda"):
        return {"device_type": device_type, "enabled": False}
    return {"device_type": device_type, "enabled": torch.is_autocast_enabled(device_type),
            "dtype": torch.get_autocast_dtype(device_type)}


class SpectralChain:
    """Geometry, forward and hand-written backward of one block call (see the module docstring)."""

    def __init__(self, convs: Sequence["SpectralConv2d"], size: tuple[int, int], prologue: Replay | None,
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
        self.size = (height, width)

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

    def input_spectrum(self, x: torch.Tensor, differentiable: bool = False, contiguous: bool = True) -> torch.Tensor:
        """Real (N, C, H, W) -> complex frequency-major (F, C, N), ortho, zero-padded to the block's FFT size.

        ``contiguous=False`` returns the FFT output's strided view (for a copy into a dense block's buffer).
        """
        x = x.to(fft_dtype(x))
        if differentiable:
            spectrum = padded_rfft2(x, self.fft_size, norm="ortho")
        else:
            spectrum = torch.fft.rfft2(x, s=self.fft_size, norm="ortho")
        spectrum = frequency_major(spectrum)
        return spectrum.contiguous() if contiguous else spectrum

    def to_map(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Frequency-major (F, C, N) spectrum -> real (N, C, h, w) map, cropped, in the input's dtype and layout."""
        p, q = self.fft_size
        grid = spectrum.view(p, q // 2 + 1, *spectrum.shape[1:])
        if needs_hermitian_repair(grid.device):
            grid = hermitian_repair_grid(grid, q)
        y = crop_to_map(torch.fft.irfft2(grid, s=self.fft_size, dim=(0, 1), norm="ortho"), self.crop)
        dtype, channels_last = self.x_like
        return y.to(dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format, copy=True)

    def to_map_adjoint(self, grad: torch.Tensor, real: torch.dtype, weighted: bool = True) -> torch.Tensor:
        """Conjugated gradient of :meth:`to_map`'s spectrum from that of its map: real (N, C, h, w) -> complex
        (F, C, N) (backward runs on conjugated gradients: :mod:`.spectral_product`).

        ``weighted=False`` leaves out the doubling of the two-bin columns (the caller folds it into phases).
        """
        p, q = self.fft_size
        top, left, height, width = self.crop
        grad = grad.to(real)
        if top or left:  # pad to the full grid at the crop's offset
            grad = F.pad(grad, (left, q - width - left, top, p - height - top))
        spectrum = frequency_major(torch.fft.rfft2(grad, s=self.fft_size, norm="ortho")).contiguous().conj_physical_()
        if weighted:
            spectrum = spectrum.view(p, q // 2 + 1, -1).mul_(column_weights(q, 2.0, real, grad.device)[..., 0])
        return spectrum.view(-1, grad.shape[1], grad.shape[0])

    def input_adjoint(self, conj_grad: torch.Tensor, size: tuple[int, int], weighted: bool = True) -> torch.Tensor:
        """Gradient of :meth:`input_spectrum`'s map from the conjugated gradient of its spectrum, which it
        consumes (overwrites): complex (F, C, N) -> real (N, C, H, W).

        ``weighted=False`` leaves out the halving of the two-bin columns (already folded into ``conj_grad``).
        """
        p, q = self.fft_size
        grid = conj_grad.view(p, q // 2 + 1, *conj_grad.shape[1:])
        if weighted:
            grid = grid * column_weights(q, 0.5, REAL[conj_grad.dtype], conj_grad.device)
        grid = grid.conj_physical_()
        if needs_hermitian_repair(grid.device):
            grid = hermitian_repair_grid(grid, q)
        grad_x = torch.fft.irfft2(grid, s=self.fft_size, dim=(0, 1), norm="ortho")
        return crop_to_map(grad_x, (0, 0, *size)).contiguous()

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

    def conv_input(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The next convolution's input: the last spectrum, or (dense) all of them along channels."""
        return torch.cat(list(features), dim=1) if self.dense and len(features) > 1 else features[-1]

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
            features = [self.input_spectrum(x, differentiable=True)]
            for conv in self.convs:
                features.append(conv.spectral_step(self.conv_input(features), self.fft_size, inplace=False)[0])
            y = self.to_map(torch.cat(features, dim=1) if self.dense else features[-1])
        return self.epilogue.run(y) if self.epilogue is not None else y

    # packed path
    def forward_packed(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[PackedSpectrum]]:
        self.autocast = _autocast_state(inputs[0].device.type)
        x = self.prologue.run(*inputs) if self.prologue is not None else inputs[0]
        self.check_input(x)
        packs = []
        with fft_precision(x):
            spectrum = self.input_spectrum(x, contiguous=not self.dense)
            if self.dense:  # every spectrum goes into one buffer; conv l reads a view of its first channels
                buffer, width = self.dense_buffer(spectrum), spectrum.shape[1]
            for conv in self.convs:
                if self.dense:  # conv l writes its output after its input channels: no copy
                    inp, out = buffer.narrow(1, 0, width), buffer.narrow(1, width, conv.out_channels)
                    width += conv.out_channels
                else:
                    inp, out = spectrum, None
                spectrum, mask = conv.spectral_step(inp, self.fft_size, inplace=True, out=out)
                packs.append(PackedSpectrum.pack(spectrum, mask, self.storage))
                conv.record_density(spectrum.numel(), None if mask is None else packs[-1].kept)
            y = self.to_map(buffer if self.dense else spectrum)
        return (self.epilogue.run(y) if self.epilogue is not None else y), packs

    def dense_buffer(self, first: torch.Tensor, zeroed: bool = False) -> torch.Tensor:
        """A dense block's (F, C + sum(C_l), N) spectra buffer, holding ``first`` (X_0) in its first channels
        (the rest zeroed when ``zeroed``)."""
        total = first.shape[1] + sum(c.out_channels for c in self.convs)
        shape = (first.shape[0], total, first.shape[2])
        buffer = first.new_zeros(shape) if zeroed else first.new_empty(shape)
        buffer.narrow(1, 0, first.shape[1]).copy_(first)
        return buffer

    def replay_output(self, params: Sequence[torch.Tensor], last: PackedSpectrum, needs: Sequence[bool]):
        """The chain's output recomputed from its last packed spectrum, for a consumer's backward.

        Returns (output, replayed): with an epilogue, ``replayed`` = (map, epilogue output, epilogue
        parameters, last spectrum, its mask) is what this chain's own backward, which runs next, uses
        instead of unpacking and replaying it again; None without an epilogue (a consumer of such a
        chain may be one of many, as in a DenseNet block, and must not keep it alive).
        """
        spectrum, mask = last.unpack()
        with fft_precision(spectrum):
            y = self.to_map(spectrum)
        if self.epilogue is None:
            return y, None
        replayed = self._replay_epilogue(y, params, needs)
        return replayed[1].detach(), (*replayed, spectrum, mask)

    def _replay_epilogue(self, y: torch.Tensor, params: Sequence[torch.Tensor], needs: Sequence[bool]):
        """(y as a leaf, epilogue(y) with a graph, the epilogue parameters as used in it)."""
        n_epi = len(self.epilogue.params)
        y = y.requires_grad_()
        epi_params, epi_needs = params[len(params) - n_epi :], needs[len(needs) - n_epi :]
        with torch.enable_grad(), torch.autocast(**self.autocast):
            leaves = [p.detach() if p.requires_grad and not nd else p for p, nd in zip(epi_params, epi_needs)]
            return y, self.epilogue.replay(leaves, y), leaves

    def backward_packed(self, inputs, params, packs, grad_out, needs, replayed=None):
        n_in, n_conv = len(inputs), sum(1 + (c.bias is not None) for c in self.convs)
        n_pro = len(self.prologue.params) if self.prologue is not None else 0
        grads: list[torch.Tensor | None] = [None] * (n_in + len(params))
        need_x = any(needs[:n_in]) or any(needs[n_in + n_conv : n_in + n_conv + n_pro])

        # Replay the prologue, with a graph when x needs a gradient.
        in_leaves, pro_leaves = list(inputs), []
        if self.prologue is None:
            x = x_value = inputs[0]
        else:
            with torch.enable_grad(), torch.autocast(**self.autocast):
                in_leaves = [t.detach().requires_grad_(nd) for t, nd in zip(inputs, needs[:n_in])]
                pro_leaves = [p.detach().requires_grad_(nd)
                              for p, nd in zip(params[n_conv : n_conv + n_pro], needs[n_in + n_conv :])]
                x = self.prologue.replay(pro_leaves, *in_leaves)
            x_value = x.detach()
        with fft_precision(x_value):
            if self.dense:  # the block output is every spectrum, the input's included; each unpacked in place
                zeroed = any(pack.bits is not None for pack in packs)  # masked_scatter_ writes the kept entries only
                last, last_mask = self.dense_buffer(self.input_spectrum(x_value, contiguous=False), zeroed), None
                width = last.shape[1] - sum(c.out_channels for c in self.convs)
                outputs, masks = [], []  # conv l's output X_{l+1}: a view of the buffer, and its keep mask
                for conv, pack in zip(self.convs, packs):
                    outputs.append(last.narrow(1, width, conv.out_channels))
                    masks.append(pack.unpack_into(outputs[-1]))
                    width += conv.out_channels
            elif replayed is not None:
                last, last_mask = replayed[3:]
            else:
                last, last_mask = packs[-1].unpack()
        real = REAL[last.dtype]
        grad_y = grad_out
        if self.epilogue is not None:  # differentiate epilogue(to_map(last)), replayed unless a consumer did
            if replayed is None:
                with fft_precision(x_value):
                    y = self.to_map(last)
                replayed = self._replay_epilogue(y, params, needs)
            y, out, epi_leaves = replayed[:3]
            replayed = None
            wrt = [y] + [p for p in epi_leaves if p.requires_grad]
            with torch.enable_grad():
                found = list(torch.autograd.grad(out, wrt, grad_out))
            grad_y = found.pop(0)
            first_epi = len(grads) - len(epi_leaves)
            for i, p in enumerate(epi_leaves):
                if p.requires_grad:
                    grads[first_epi + i] = found.pop(0)
            del out, y, wrt
        with fft_precision(x_value):
            # A plain chain folds the adjoints' column weights into the first and last convolutions' phases.
            grad = self.to_map_adjoint(grad_y, real, weighted=self.dense)
            if self.dense:
                grad = self._dense_convs_backward(last, outputs, masks, params, grad, grads, needs, n_in, n_conv,
                                                  need_x)
            else:
                held = [last, last_mask]  # handed over: the chain frees each spectrum after its last use
                del last, last_mask
                grad = self._chain_backward(x_value, held, packs, params, grad, grads, needs, n_in, n_conv, need_x)
        return self._input_backward(grad, grads, x, x_value, in_leaves, pro_leaves, n_in, n_conv, need_x)

    def _chain_backward(self, x_value, held, packs, params, grad, grads, needs, n_in, n_conv, need_x):
        """Convolutions last to first. ``held`` is the list [X_L, its mask], the only reference to them: each
        spectrum is dropped as soon as it was used, so convolution l's output X_{l+1} (for the activation
        and mask derivatives) is freed before its input X_l is unpacked (for the kernel gradient)."""
        slot = n_in + n_conv
        for index in range(len(self.convs) - 1, -1, -1):
            conv = self.convs[index]
            slot -= 1 + (conv.bias is not None)
            grad, grad_real = self._output_grad(conv, held[0], held[1], grad)
            held.clear()
            held.extend(packs[index - 1].unpack() if index > 0 else (self.input_spectrum(x_value), None))
            out_scale = 2.0 if index == len(self.convs) - 1 else 1.0  # to_map's adjoint doubles two-bin columns
            in_scale = 0.5 if index == 0 else 1.0  # input_spectrum's adjoint halves them
            grad = self._conv_grads(index, held[0], grad, grad_real, params, grads, needs, slot, n_in,
                                    index > 0 or need_x, out_scale, in_scale)
        held.clear()
        return grad

    @staticmethod
    def _output_grad(conv, out_spec, out_mask, grad):
        """Through the activation and the threshold, in place: ``grad`` (the conjugated gradient of the
        activation output ``out_spec``) becomes that of the convolution's product. Returns it and its real view.

        Split tanh's derivative (1 - tanh^2, from the stored output) acts on real and imaginary parts alike
        and the mask is real, so both apply to conj(G) as to G.
        """
        grad_real = torch.view_as_real(grad)
        if conv.activation is not None:
            torch.ops.aten.tanh_backward.grad_input(grad_real, torch.view_as_real(out_spec), grad_input=grad_real)
        if out_mask is not None:  # the threshold passes gradients where it kept the entry
            grad.mul_(out_mask)
        return grad, grad_real

    def _conv_grads(self, index, in_spec, grad, grad_real, params, grads, needs, slot, n_in, need_in,
                    out_scale=1.0, in_scale=1.0, accumulate=None):
        """Gradients of convolution ``index``: weight and bias into ``grads``; returns the input spectrum's
        (added in place to ``accumulate`` when given).

        ``grad`` is the conjugated gradient of the convolution's product (:meth:`_output_grad`; ``grad_real``
        its real view), still to be
        multiplied by ``out_scale`` on its two-bin columns; the returned (conjugated) gradient is multiplied
        by ``in_scale`` there. Both factors ride on the cached tap phases, not on a spectrum. The bias
        gradient reads the real part, which conjugation keeps.
        """
        conv = self.convs[index]
        weight = params[slot - n_in]
        grad_in = None
        if need_in:  # the kernel spectrum (large for wide layers on small maps) is freed before its gradient exists
            kernel = kernel_spectrum(weight, conv.dilation, self.fft_size, grad.dtype, False, out_scale * in_scale)
            grad_in = mix_channels_input_grad(kernel, grad, accumulate)
            del kernel
        if needs[slot]:
            grad_kernel = mix_channels_kernel_grad(in_spec, grad)
            grads[slot] = kernel_spectrum_backward(grad_kernel, weight, conv.dilation, self.fft_size, out_scale)
            del grad_kernel
        if conv.bias is not None and needs[slot + 1]:  # the DC column has weight 1 in every adjoint
            p, q = self.fft_size
            s_c, s_n = grad_real.stride()[1:3]  # Re of the DC row, (C_out, N), as one view op
            dc_real = grad_real.as_strided(grad_real.shape[1:3], (s_c, s_n), grad_real.storage_offset())
            grads[slot + 1] = dc_real.sum(1).mul_(math.sqrt(p * q)).to(params[slot + 1 - n_in].dtype)
        return grad_in

    def _dense_convs_backward(self, features, outputs, masks, params, grad_out, grads, needs, n_in, n_conv, need_x):
        """Dense block: conv l reads X_0 .. X_{l-1}, the first channels of ``features`` (F, C + sum(C_l), N);
        ``outputs[l]`` is its output (a view of ``features``), ``masks[l]`` its keep mask (None: nothing zeroed).

        ``grad_out`` (same shape, overwritten) is the gradient of all of them; conv l's input gradient is
        added to its first channels, and the first C are returned: the gradient of the input spectrum X_0.
        """
        width = features.shape[1]
        slot = n_in + n_conv
        for index in range(len(self.convs) - 1, -1, -1):
            conv = self.convs[index]
            slot -= 1 + (conv.bias is not None)
            width -= conv.out_channels
            grad, grad_real = self._output_grad(conv, outputs[index], masks[index],
                                                grad_out.narrow(1, width, conv.out_channels))
            self._conv_grads(index, features.narrow(1, 0, width), grad, grad_real, params, grads, needs, slot, n_in,
                             index > 0 or need_x, accumulate=grad_out.narrow(1, 0, width))
        return grad_out.narrow(1, 0, width)

    def _input_backward(self, grad, grads, x, x_value, in_leaves, pro_leaves, n_in, n_conv, need_x):
        """From the input spectrum's gradient to the block inputs' (through the prologue when there is one)."""
        if not need_x:
            return grads
        with fft_precision(x_value):
            grad_x = self.input_adjoint(grad, tuple(x_value.shape[-2:]), weighted=self.dense).to(x_value.dtype)
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


# Dynamo cannot trace the packed path (a hand-written backward that replays the epilogue with
# torch.autograd.grad), and tracing the rest recompiled per block (guards on the conv modules): under
# torch.compile the chain runs eagerly and the compiler takes the code around it.
@torch.compiler.disable
def spectral_conv_chain(
    x: torch.Tensor | Sequence[torch.Tensor],
    convs: Sequence["SpectralConv2d"],
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

    Returns the real (N, C_out, H, W) map (``epilogue`` of it) in the input's dtype; the FFT and the
    spectral product run in float32 (float64 for float64 input) with autocast disabled. When gradients
    are needed and the convolutions' ``storage`` is not "dense", only packed spectra are kept for backward.
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
