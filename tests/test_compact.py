"""Compact saved activations: packing, gradient equality with plain autograd, density targets."""
import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import specnet_zoo
from specnet_zoo.layers import SpectralBlock, SpectralConv2d, spectral_conv_chain
from specnet_zoo.layers.compact import ConcatNorm, NormPool
from specnet_zoo.layers.packing import PackedSpectrum, pack_bits, unpack_bits
from specnet_zoo.layers.spectral_conv import spectral_densities


def _weights(y: torch.Tensor) -> torch.Tensor:
    """Fixed, non-uniform loss weights so every output entry matters differently."""
    return torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape).sin()


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000])
def test_bits_round_trip(numel):
    mask = torch.rand(numel) > 0.5
    bits = pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == -(-numel // 8)
    assert torch.equal(unpack_bits(bits, (numel,)), mask)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("masked", [True, False])
def test_packing_round_trip_is_exact(dtype, masked):
    spectrum = torch.randn(5, 4, 3, 6, dtype=dtype)
    mask = spectrum.abs() > 1.0 if masked else None
    if masked:
        spectrum = spectrum * mask
    packed = PackedSpectrum.pack(spectrum, mask, "compact")
    restored, restored_mask = packed.unpack()
    assert torch.equal(restored, spectrum)
    assert (restored_mask is None) == (not masked)
    if masked:
        assert torch.equal(restored_mask, mask)
        kept = int(mask.sum())
        real_bytes = 4 if dtype == torch.complex64 else 8
        assert packed.nbytes == kept * 2 * real_bytes + -(-mask.numel() // 8)
    # Masked values are a copy; an unmasked compact spectrum is kept as it is (the chain never modifies it).
    assert (packed.values.data_ptr() == spectrum.data_ptr()) == (not masked)


def test_unmasked_compact_pack_does_not_pin_a_larger_buffer():
    """A DenseNet block's conv outputs are views of one spectra buffer; keeping a view would keep it all."""
    buffer = torch.randn(6, 10, 4, dtype=torch.complex64)
    view = buffer.narrow(1, 4, 3)
    packed = PackedSpectrum.pack(view, None, "compact")
    assert packed.values.untyped_storage().nbytes() == view.numel() * view.element_size() == packed.nbytes
    assert torch.equal(packed.unpack()[0], view)
    with pytest.raises(ValueError, match=r"shape \(6, 3, 4\), got torch.complex64 \(6, 4, 4\)"):
        packed.unpack_into(torch.zeros(6, 4, 4, dtype=torch.complex64))


@pytest.mark.parametrize("storage,bound", [("float16", 2**-11), ("int8", 1 / 254)])
def test_low_precision_packing_error_is_bounded(storage, bound):
    spectrum = torch.complex(torch.rand(6, 5, 4, 8) * 2 - 1, torch.rand(6, 5, 4, 8) * 2 - 1)  # split-tanh range
    mask = spectrum.abs() > 0.3
    spectrum = spectrum * mask
    restored, _ = PackedSpectrum.pack(spectrum, mask, storage).unpack()
    error = (restored - spectrum).abs().max().item()
    assert 0 < error <= bound * 2**0.5 + 1e-7
    assert torch.equal(restored == 0, spectrum == 0)


def _grads(module_fn, x, storage, params):
    for p in params:
        p.grad = None
    x = x.detach().requires_grad_()
    y = module_fn(x, storage)
    (y * _weights(y)).sum().backward()
    return y.detach(), x.grad, [p.grad.clone() for p in params]


def _assert_same(a, b, tol=1e-10):
    ya, gxa, gpa = a
    yb, gxb, gpb = b
    torch.testing.assert_close(ya, yb, rtol=0, atol=tol)
    torch.testing.assert_close(gxa, gxb, rtol=1e-8, atol=tol)
    for ga, gb in zip(gpa, gpb):
        torch.testing.assert_close(ga, gb, rtol=1e-8, atol=tol)


@pytest.mark.parametrize("size", [(9, 10), (12, 12), (7, 5)])
@pytest.mark.parametrize("sparsity", [{}, {"threshold": 0.4}, {"density": 0.3}])
@pytest.mark.parametrize("activation", ["split_tanh", None])
def test_compact_gradients_equal_dense_float64(size, sparsity, activation):
    block = SpectralBlock(3, [5, 4], 3, activation=activation, **sparsity).double()
    norm, pool = nn.BatchNorm2d(4).double(), nn.MaxPool2d(2)
    params = list(block.parameters()) + list(norm.parameters())

    def run(x, storage):
        for conv in block.convs:
            conv.storage = storage
        return spectral_conv_chain(x, list(block.convs), epilogue=NormPool(norm, pool))

    x = torch.randn(3, 3, *size, dtype=torch.float64)
    compact = _grads(run, x, "compact", params)
    assert run(x.requires_grad_(), "compact").grad_fn.name() == "CompactChainBackward"
    _assert_same(_grads(run, x, "dense", params), compact)


def test_compact_prologue_gradients_equal_dense_float64():
    """DenseNet layer: the concatenation and BatchNorm are replayed, features from spectral convs too."""
    stem = SpectralConv2d(3, 6, 3, activation="split_tanh", density=0.5).double()
    layer = SpectralConv2d(9, 4, 3, activation="split_tanh", density=0.4).double()
    norm = nn.BatchNorm2d(9).double()
    params = list(stem.parameters()) + list(layer.parameters()) + list(norm.parameters())

    def run(x, storage):
        stem.storage = layer.storage = storage
        features = [stem(x), x]
        new = spectral_conv_chain(features, [layer], prologue=ConcatNorm(norm))
        return torch.cat(features + [new], 1)

    x = torch.randn(2, 3, 11, 8, dtype=torch.float64)
    _assert_same(_grads(run, x, "dense", params), _grads(run, x, "compact", params))


class _Stage(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = SpectralBlock(2, [3, 2], 3)
        self.norm = nn.BatchNorm2d(2)

    def forward(self, x):
        return spectral_conv_chain(x, list(self.block.convs), epilogue=NormPool(self.norm, nn.MaxPool2d(2)))


@pytest.mark.parametrize("size", [(7, 6), (6, 5)])
def test_compact_gradcheck_float64(size):
    """Finite differences w.r.t. the input and every parameter (no mask: a mask flip is not differentiable)."""
    stage = _Stage().double()
    names = [n for n, _ in stage.named_parameters()]

    def fn(x, *params):
        return torch.func.functional_call(stage, dict(zip(names, params)), (x,))

    x = torch.randn(2, 2, *size, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in stage.parameters()]
    assert fn(x, *params).grad_fn.name() == "CompactChainBackward"
    assert gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,shape", [("speclenet", (2, 1, 28, 28)), ("specalexnet", (2, 3, 32, 32)),
                                        ("specvgg16", (2, 3, 32, 32)), ("specdensenet", (2, 3, 32, 32))])
def test_models_compact_gradients_equal_dense_float64(name, shape):
    x = torch.randn(*shape, dtype=torch.float64)

    def grads(storage):
        torch.manual_seed(0)
        model = specnet_zoo.create_model(name, density=0.25, storage=storage).double().train()
        y = model(x)
        (y * _weights(y)).sum().backward()
        return y.detach(), {n: p.grad for n, p in model.named_parameters()}

    y_dense, dense = grads("dense")
    y_compact, compact = grads("compact")
    torch.testing.assert_close(y_compact, y_dense, rtol=0, atol=1e-12)
    for key in dense:
        scale = dense[key].abs().max().clamp_min(1e-300)
        assert (compact[key] - dense[key]).abs().max() / scale < 1e-6, key


@pytest.mark.shared_data
@pytest.mark.parametrize("storage,max_rel", [("float16", 0.01), ("int8", 0.1)])
def test_low_precision_gradient_error_on_real_batch(storage, max_rel, shared_data):
    from specnet_zoo.data import sample_batch

    x, y = sample_batch("cifar10", 16, shared_data)

    def grads(storage):
        torch.manual_seed(0)
        model = specnet_zoo.create_model("specalexnet", density=0.2, storage=storage).train()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    exact, lossy = grads("compact"), grads(storage)
    relative = ((lossy - exact).norm() / exact.norm()).item()
    assert 0 < relative < max_rel


def test_stage_outputs_are_replayed_not_stored():
    model = specnet_zoo.create_model("specvgg16", density=0.3).train()
    x = torch.randn(2, 3, 32, 32)
    out = model.stages[:2](x)
    node = out.grad_fn
    assert node.name() == "CompactChainBackward"
    assert node.sources[0] is not None and node.sources[0].name() == "CompactChainBackward"
    n_params = node.param_slice.stop - node.param_slice.start
    assert len(node.saved_tensors) == n_params + 2 * 2  # params + (values, bits) per conv; no input map


def test_no_grad_and_eval_do_not_use_the_compact_function():
    model = specnet_zoo.create_model("speclenet").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).grad_fn is None
    x = torch.randn(2, 1, 28, 28)
    for p in model.parameters():
        p.requires_grad_(False)
    assert model(x).grad_fn is None


def test_density_target_is_met_per_layer_and_keeps_a_deep_network_alive():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = specnet_zoo.create_model("specvgg16", density=0.1).train()
    model(x)
    densities = spectral_densities(model)
    assert len(densities) == 13
    for name, value in densities.items():
        assert 0.1 <= value < 0.11, (name, value)
    fixed = specnet_zoo.create_model("specvgg16", threshold=1.0).train()
    fixed(x)
    collapsed = list(spectral_densities(fixed).values())
    assert collapsed[0] > 10 * collapsed[-1]  # a fixed beta thins out layer by layer


def test_sparsity_and_storage_errors():
    with pytest.raises(ValueError, match="either threshold .* or density"):
        SpectralConv2d(2, 2, 3, threshold=0.5, density=0.5)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        SpectralConv2d(2, 2, 3, density=1.5)
    with pytest.raises(ValueError, match="storage must be one of"):
        SpectralBlock(2, [2], storage="bf16")
    block = SpectralBlock(2, [2, 2])
    block.convs[1].storage = "int8"
    with pytest.raises(ValueError, match="share one storage"):
        block(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="spectral twin only"):
        specnet_zoo.create_model("vgg16_cifar", density=0.2)


@pytest.mark.parametrize("wrapper", ["checkpoint", "save_on_cpu"])
def test_compact_chain_works_under_checkpoint_and_offload(wrapper):
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(2, 1, 28, 28)

    def grads(wrap):
        torch.manual_seed(0)
        model = specnet_zoo.create_model("speclenet", density=0.3).double().train()
        xd = x.double()
        if not wrap:
            y = model(xd)
        elif wrapper == "checkpoint":
            y = model.forward_head(checkpoint(model.stages, xd, use_reentrant=False))
        else:
            with torch.autograd.graph.save_on_cpu():
                y = model(xd)
        (y * _weights(y)).sum().backward()
        return [p.grad for p in model.parameters()]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_per_layer_density_sequence():
    densities = [0.5, 0.4, 0.3, 0.3, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05]
    model = specnet_zoo.create_model("specvgg16", density=densities).train()
    model(torch.randn(2, 3, 32, 32))
    measured = list(spectral_densities(model).values())
    for target, got in zip(densities, measured):
        assert target <= got < target + 0.02
    with pytest.raises(ValueError, match="13 spectral convolutions; got 2 densities"):
        specnet_zoo.create_model("specvgg16", density=[0.1, 0.2])


@pytest.mark.parametrize("name", ["specvgg16", "specdensenet"])
def test_sync_batchnorm_is_not_replayed_and_gives_the_same_gradients(name):
    """DDP recipes convert BatchNorm to SyncBatchNorm, which needs other processes: it is run, not replayed."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def grads(sync):
        torch.manual_seed(0)
        model = specnet_zoo.create_model(name, density=0.3).double().train()
        if sync:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # no process group: behaves as BatchNorm
        y = model(x)
        (y * _weights(y)).sum().backward()
        return [p.grad for p in model.parameters()]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_chain_input_errors_are_specific():
    conv = SpectralConv2d(3, 4, 3)
    with pytest.raises(ValueError, match="one input map without a prologue, got 2"):
        spectral_conv_chain([torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)], [conv])
    prologue = ConcatNorm(nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match=r"share batch and spatial size"):
        spectral_conv_chain([torch.randn(1, 1, 8, 8), torch.randn(1, 2, 8, 9)], [conv], prologue=prologue)
    with pytest.raises(ValueError, match="5 channels together, its BatchNorm expects 3"):
        spectral_conv_chain([torch.randn(1, 2, 8, 8), torch.randn(1, 3, 8, 8)], [conv], prologue=prologue)
    with pytest.raises(TypeError, match="real floating-point"):
        conv(torch.ones(1, 3, 8, 8, dtype=torch.long))
