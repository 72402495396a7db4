import pytest
import torch
from torch.autograd import gradcheck

from specnet_zoo.layers import SplitTanh, split_tanh


def test_values():
    z = torch.tensor([0.5 - 2.0j, -1.0 + 0.0j, 3.0 + 0.25j], dtype=torch.complex128)
    expected = torch.complex(torch.tanh(z.real), torch.tanh(z.imag))
    torch.testing.assert_close(SplitTanh()(z), expected)
    assert split_tanh(z)[0].real == pytest.approx(0.46211715726000974)
    assert split_tanh(z)[0].imag == pytest.approx(-0.9640275800758169)


def test_keeps_hermitian_symmetry_and_real_inverse():
    x = torch.randn(2, 3, 10, 7, dtype=torch.float64)
    full = torch.fft.fft2(x)
    activated = split_tanh(full)
    # f(conj z) = conj f(z): the activated spectrum of a real map is still Hermitian -> real inverse.
    mirrored = torch.roll(activated.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))
    torch.testing.assert_close(mirrored, activated.conj())
    assert torch.fft.ifft2(activated).imag.abs().max() < 1e-12


def test_gradcheck_complex():
    z = torch.randn(3, 4, dtype=torch.complex128, requires_grad=True)
    assert gradcheck(split_tanh, (z,))


def test_rejects_real_input():
    with pytest.raises(TypeError, match="complex"):
        split_tanh(torch.randn(3))
