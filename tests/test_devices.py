"""The spectral layers on the accelerator's code path: on CUDA when a GPU is present, and on the CPU.

Off the CPU, every c2r transform first makes the self-conjugate columns of its spectrum exactly
Hermitian (cuFFT does not drop their non-Hermitian part, pocketfft does). ``cpu+repair`` runs that
code path on the CPU, so every CI run checks it; ``cuda`` runs the same tests on a GPU when one is
present (issue 10: gradients stay exact on CUDA too). References: ``F.conv2d``, plain autograd
(``storage="dense"``), finite differences, the direct-DFT spectral pooling.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

import specnet_zoo
from specnet_zoo.layers import SpectralBlock, SpectralConv2d, _fft, spectral_chain, spectral_conv_chain, spectral_pool2d
from specnet_zoo.layers.compact import NormPool

from reference import reference_pool

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
DEVICES = ["cpu+repair", pytest.param("cuda", marks=CUDA)]


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch) -> torch.device:
    """The device to run on; ``cpu+repair`` patches in the non-CPU Hermitian repair and counts its calls."""
    repairs = {"grid": 0}
    original = spectral_chain.hermitian_repair_grid

    def counted(grid, width):
        repairs["grid"] += 1
        return original(grid, width)

    monkeypatch.setattr(spectral_chain, "hermitian_repair_grid", counted)
    if request.param == "cpu+repair":
        for module in (_fft, spectral_chain):
            monkeypatch.setattr(module, "needs_hermitian_repair", lambda device: True)
    yield torch.device("cpu" if request.param == "cpu+repair" else "cuda")
    assert repairs["grid"] > 0, "the test never reached the Hermitian repair of the non-CPU code path"


def _weighted_sum(y: torch.Tensor) -> torch.Tensor:
    return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape).sin()).sum()


@pytest.mark.parametrize("kernel_size", [1, 3, 4, 5])
@pytest.mark.parametrize("size", [(16, 16), (15, 13), (12, 17)])
def test_conv_equals_conv2d_same(device, kernel_size, size):
    conv = SpectralConv2d(3, 4, kernel_size).double().to(device)
    x = torch.randn(2, 3, *size, dtype=torch.float64, device=device)
    expected = F.conv2d(x, conv.weight, conv.bias, padding="same")
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("size", [(9, 10), (7, 5)])
@pytest.mark.parametrize("storage", ["compact", "float16", "int8"])
@pytest.mark.parametrize("sparsity", [{}, {"threshold": 0.4}, {"density": 0.3}])
def test_packed_gradients_equal_autograd(device, size, storage, sparsity):
    """Packed backward vs plain autograd: exact for "compact", within the storage's rounding otherwise
    (average pooling: a max pool replayed from lossy values may route a near-tie to another pixel)."""
    block = SpectralBlock(3, [5, 4], 3, **sparsity).double().to(device)
    norm = nn.BatchNorm2d(4).double().to(device)
    params = list(block.parameters()) + list(norm.parameters())
    x = torch.randn(3, 3, *size, dtype=torch.float64, device=device)

    def grads(mode):
        for conv in block.convs:
            conv.storage = mode
        inp = x.clone().requires_grad_()
        y = spectral_conv_chain(inp, list(block.convs), epilogue=NormPool(norm, nn.AvgPool2d(2)))
        if mode != "dense":
            assert y.grad_fn.name() == "CompactChainBackward"
        found = torch.autograd.grad(_weighted_sum(y), [inp, *params])
        return y.detach(), found

    (y_ref, g_ref), (y, g) = grads("dense"), grads(storage)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)  # forward keeps full precision in every storage
    tolerance = {"compact": 1e-8, "float16": 0.005, "int8": 0.1}[storage]
    for got, expected in zip(g, g_ref):
        scale = expected.abs().max().clamp_min(1e-12)
        assert (got - expected).abs().max() / scale <= tolerance


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("size", [(6, 5), (5, 6)])
def test_gradcheck_packed_chain(device, dense, size):
    """Finite differences of the packed chain (threshold and split tanh; a mask flip is not hit at eps 1e-6)."""
    convs = [SpectralConv2d(2 + 2 * i * dense, 2, 3, threshold=0.3, activation="split_tanh").double().to(device)
             for i in range(2)]
    x = torch.randn(2, 2, *size, dtype=torch.float64, device=device, requires_grad=True)
    assert spectral_conv_chain(x, convs, dense=dense).grad_fn.name() == "CompactChainBackward"
    assert gradcheck(lambda t: spectral_conv_chain(t, convs, dense=dense), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,shape", [("speclenet", (2, 1, 28, 28)), ("specdensenet", (2, 3, 32, 32))])
def test_model_packed_gradients_equal_autograd(device, name, shape):
    """A whole SpecNet model at a density target: packed (compact) gradients equal plain autograd's."""
    x = torch.randn(*shape, dtype=torch.float64, device=device)

    def grads(storage):
        torch.manual_seed(0)
        model = specnet_zoo.create_model(name, density=0.25, storage=storage).double().to(device).train()
        y = model(x)
        _weighted_sum(y).backward()
        return y.detach(), {n: p.grad for n, p in model.named_parameters()}

    (y_ref, g_ref), (y, g) = grads("dense"), grads("compact")
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    for key, expected in g_ref.items():
        assert (g[key] - expected).abs().max() / expected.abs().max().clamp_min(1e-300) < 1e-6, key


@CUDA
@pytest.mark.parametrize("method", ["fft", "matmul"])
@pytest.mark.parametrize("size_in,size_out", [((7, 7), (4, 4)), ((8, 8), (3, 3)), ((32, 24), (16, 11))])
def test_spectral_pool_matches_direct_dft_on_cuda(size_in, size_out, method):
    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    y = spectral_pool2d(x.cuda(), size_out, method=method)
    torch.testing.assert_close(y.cpu(), reference_pool(x, size_out), rtol=0, atol=1e-12)
