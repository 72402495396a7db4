import pytest
import timm
import torch
from torch import nn
from torch.autograd import gradcheck

from specnet_zoo.layers import (
    SpectralConv2d,
    SpectralKernel,
    SpectralParamConv2d,
    despectralize,
    is_spectrally_parametrized,
    spectral_kernel_basis,
    spectralize,
)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5, 7, (2, 3), (3, 4), (5, 2)])
def test_basis_is_orthonormal_with_k_squared_degrees_of_freedom(kernel_size):
    basis = spectral_kernel_basis(kernel_size)
    n = basis.shape[0]
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    assert basis.shape == (kh * kw, kh * kw) == (n, n)
    torch.testing.assert_close(basis @ basis.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [3, 4, 5])
def test_coefficients_are_the_hermitian_half_dft(k):
    """Each coefficient is the real or imaginary part of one independent DFT bin (sqrt 2 for paired bins)."""
    weight = torch.randn(k, k, dtype=torch.float64)
    coefficients = SpectralKernel(k).double().right_inverse(weight[None, None])[0, 0]
    spectrum = torch.fft.rfft2(weight, norm="ortho")
    from specnet_zoo.layers.spectral_param import _independent_bins

    for value, (ky, kx, part) in zip(coefficients, _independent_bins(k, k)):
        component = spectrum[ky, kx].real if part == 0 else spectrum[ky, kx].imag
        self_conjugate = (kx == 0 or (k % 2 == 0 and kx == k // 2)) and (-ky) % k == ky
        scale = 1.0 if self_conjugate else 2**0.5
        assert float(value).__abs__() == pytest.approx(abs(float(component)) * scale, abs=1e-12)


def test_layer_has_k_squared_parameters_and_same_function_as_conv2d():
    layer = SpectralParamConv2d(6, 8, 3, padding=1)
    (original,) = [p for n, p in layer.named_parameters() if n.endswith("original")]
    assert original.shape == (8, 6, 9)
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in nn.Conv2d(6, 8, 3).parameters())
    spatial = nn.Conv2d(6, 8, 3, padding=1)
    with torch.no_grad():
        spatial.weight.copy_(layer.weight)
        spatial.bias.copy_(layer.bias)
    x = torch.randn(2, 6, 10, 10)
    torch.testing.assert_close(layer(x), spatial(x))


def test_gradcheck_through_parametrization():
    layer = SpectralParamConv2d(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    (original,) = [p for n, p in layer.named_parameters() if n.endswith("original")]

    def run(coeffs):
        return torch.func.functional_call(layer, {"parametrizations.weight.original": coeffs}, (x,))

    assert gradcheck(run, (original.detach().clone().requires_grad_(),))


def test_sgd_step_is_identical_and_adam_step_differs():
    """Orthonormal re-coordinates: SGD is unchanged, Adam (per-coordinate scaling) is not (Rippel Sec. 4)."""
    torch.manual_seed(0)
    spatial = nn.Conv2d(3, 4, 5, padding=2).double()
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    for optimizer_cls, same in ((torch.optim.SGD, True), (torch.optim.Adam, False)):
        a = nn.Conv2d(3, 4, 5, padding=2).double()
        a.load_state_dict(spatial.state_dict())
        b = spectralize(nn.Sequential(nn.Conv2d(3, 4, 5, padding=2).double()))
        despectralize(b)
        b[0].load_state_dict(spatial.state_dict())
        spectralize(b)
        for model in (a, b):
            opt = optimizer_cls(model.parameters(), lr=0.1)
            for _ in range(3):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
        diff = float((a.weight - b[0].weight).detach().abs().max())
        assert (diff < 1e-10) if same else (diff > 1e-3), (optimizer_cls.__name__, float(diff))


def test_spectralize_timm_resnet18_and_export_back():
    spatial = timm.create_model("resnet18", num_classes=10).eval()
    model = timm.create_model("resnet18", num_classes=10).eval()
    model.load_state_dict(spatial.state_dict())
    x = torch.randn(2, 3, 64, 64)
    expected = spatial(x)
    spectralize(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(is_spectrally_parametrized(m) for m in convs)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(spatial)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    despectralize(model)
    fresh = timm.create_model("resnet18", num_classes=10).eval()
    fresh.load_state_dict(model.state_dict())  # strict: same keys and shapes as the spatial model
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=1e-5)


def test_spectralize_skips_specnet_layers_and_is_idempotent():
    model = nn.Sequential(SpectralConv2d(3, 4, 3), nn.Conv2d(4, 4, 3, padding=1))
    spectralize(spectralize(model))
    assert not is_spectrally_parametrized(model[0])
    assert is_spectrally_parametrized(model[1]) and len(model[1].parametrizations.weight) == 1


def test_right_inverse_rejects_wrong_kernel():
    with pytest.raises(ValueError, match="kernel of size"):
        SpectralKernel(3).right_inverse(torch.randn(2, 2, 5, 5))
