import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from specnet_zoo.layers import SpectralBlock, SpectralConv2d, block_fft_size, fast_fft_size, spectral_conv_chain
from specnet_zoo.layers._fft import hermitian_repair
from specnet_zoo.layers.spectral_chain import hermitian_repair_grid
from specnet_zoo.layers.spectral_product import (
    kernel_spectrum,
    kernel_spectrum_backward,
    mix_channels,
    mix_channels_input_grad,
    mix_channels_kernel_grad,
)

from reference import reference_conv_same


def _twin(conv: SpectralConv2d) -> nn.Conv2d:
    ref = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding="same",
                    dilation=conv.dilation, bias=conv.bias is not None)
    ref.load_state_dict(conv.state_dict())
    return ref


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9, 11])
@pytest.mark.parametrize("size", [(16, 16), (15, 13), (12, 17)])
def test_one_conv_equals_conv2d_same_float32(k, size):
    conv = SpectralConv2d(4, 6, k)
    x = torch.randn(3, 4, *size)
    torch.testing.assert_close(conv(x), _twin(conv)(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("kernel_size,dilation", [(2, 1), (4, 1), ((3, 5), 1), ((2, 3), 1), (3, 2), ((3, 2), (2, 3))])
def test_even_nonsquare_and_dilated_kernels(kernel_size, dilation):
    conv = SpectralConv2d(3, 5, kernel_size, dilation=dilation, bias=False).double()
    x = torch.randn(2, 3, 11, 14, dtype=torch.float64)
    expected = _twin(conv).double()(x)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-11)


def test_matches_explicit_sum_reference_float64():
    conv = SpectralConv2d(3, 4, 5).double()
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    torch.testing.assert_close(conv(x), reference_conv_same(x, conv.weight, conv.bias), rtol=0, atol=1e-11)


@pytest.mark.shared_data
def test_real_photos_equal_conv2d(photos):
    rgb = [p for p in photos if p.shape[0] == 3]
    x = torch.stack([p[:, :65, :64] for p in rgb[:4]]).float()
    conv = SpectralConv2d(3, 8, 7)
    torch.testing.assert_close(conv(x), _twin(conv)(x), rtol=0, atol=1e-4)
    block = SpectralBlock(3, [8], kernel_size=11, activation=None)
    torch.testing.assert_close(block(x), _twin(block.convs[0])(x), rtol=0, atol=1e-4)


def test_block_is_linear_chain_of_full_convolutions():
    """Threshold 0, no activation: the block is a linear (not circular) convolution chain, cropped once."""
    block = SpectralBlock(2, [3, 4], kernel_size=3, activation=None).double()
    c1, c2 = block.convs
    x = torch.randn(2, 2, 8, 7, dtype=torch.float64)
    full1 = F.conv2d(x, c1.weight, padding=2)  # full correlation, no bias
    full2 = F.conv2d(full1, c2.weight, padding=2)
    # Biases are constants on the whole plane: b1 passes through conv 2 as b1 * sum(w2).
    bias = c2.weight.sum((-2, -1)) @ c1.bias + c2.bias
    expected = full2[..., 2 : 2 + 8, 2 : 2 + 7] + bias[None, :, None, None]
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-11)


def test_threshold_zeroes_small_entries_and_keeps_hermitian_symmetry():
    beta = 5.0  # on the paper's unnormalised scale: |Y_ortho| * sqrt(P Q) < beta is zeroed
    conv = SpectralConv2d(3, 4, 3, threshold=beta, activation="split_tanh").double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    size = (14, 14)
    spectrum = torch.fft.rfft2(x, s=size, norm="ortho").permute(2, 3, 1, 0)  # frequency-major (P, Q', C, N)
    out = conv.spectral_forward(spectrum, size)
    linear = SpectralConv2d(3, 4, 3).double()
    linear.load_state_dict(conv.state_dict())
    pre = linear.spectral_forward(spectrum, size)
    zeroed = pre.abs() * 14 < beta
    assert 0.05 < zeroed.double().mean() < 0.95
    assert (out[zeroed] == 0).all()
    torch.testing.assert_close(out[~zeroed], torch.complex(torch.tanh(pre.real), torch.tanh(pre.imag))[~zeroed])
    # Hermitian: the self-conjugate columns need no repair, so the inverse is a real map.
    natural = out.permute(3, 2, 0, 1)
    torch.testing.assert_close(hermitian_repair(natural, size[1]), natural, rtol=0, atol=1e-12)


@pytest.mark.parametrize("width", [9, 10])
def test_hermitian_repair_does_what_cpu_irfft_does(width):
    """The repair applied before CUDA's c2r reproduces CPU's c2r on a non-Hermitian half spectrum."""
    spectrum = torch.randn(2, 3, 7, width // 2 + 1, dtype=torch.complex128)  # arbitrary, not Hermitian
    repaired = hermitian_repair(spectrum, width)
    torch.testing.assert_close(torch.fft.irfft2(repaired, s=(7, width)), torch.fft.irfft2(spectrum, s=(7, width)))
    torch.testing.assert_close(hermitian_repair(repaired, width), repaired)
    # The frequency-major (P, Q', C, N) repair of a block's spectra does the same.
    grid = hermitian_repair_grid(spectrum.permute(2, 3, 1, 0), width)
    torch.testing.assert_close(grid.permute(3, 2, 0, 1), repaired, rtol=0, atol=0)
    # And it is Hermitian for real: the full complex inverse of the completed spectrum is real.
    full = torch.fft.fft2(torch.fft.irfft2(repaired, s=(7, width)))
    torch.testing.assert_close(full[..., : width // 2 + 1], repaired)


def test_huge_threshold_gives_zero_and_threshold_changes_output():
    x = torch.randn(2, 3, 10, 10)
    conv = SpectralConv2d(3, 4, 3, threshold=1e6)
    assert conv(x).abs().max() == 0
    a = SpectralConv2d(3, 4, 3, threshold=0.0)
    b = SpectralConv2d(3, 4, 3, threshold=0.3)
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize("threshold,activation", [(0.0, None), (0.4, "split_tanh")])
def test_gradcheck_block(threshold, activation):
    block = SpectralBlock(2, [3, 2], kernel_size=3, threshold=threshold, activation=activation).double()
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(block, (x,))
    params = [p for p in block.parameters()]
    assert gradcheck(lambda w1, b1: torch.func.functional_call(block, {"convs.0.weight": w1, "convs.0.bias": b1}, (x,)),
                     (params[0].detach().requires_grad_(), params[1].detach().requires_grad_()))


def test_state_dict_moves_between_twins():
    spatial = nn.Conv2d(5, 7, 3, padding=1)
    spectral = SpectralConv2d(5, 7, 3)
    spectral.load_state_dict(spatial.state_dict())
    spatial.load_state_dict(spectral.state_dict())
    assert spectral.weight.shape == spatial.weight.shape and spectral.bias.shape == spatial.bias.shape
    # Same init distribution as nn.Conv2d (kaiming uniform a=sqrt(5): bound 1/sqrt(fan_in)).
    bound = 1 / (5 * 9) ** 0.5
    big = SpectralConv2d(5, 64, 3)
    assert big.weight.abs().max() <= bound and big.weight.abs().max() > 0.9 * bound


def test_channels_last_autocast_and_half():
    conv = SpectralConv2d(4, 4, 5)
    x = torch.randn(2, 4, 12, 12)
    ref = conv(x)
    y = conv(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    half = conv(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref, rtol=0.05, atol=0.05)


def test_fast_fft_size():
    assert [fast_fft_size(n) for n in (1, 11, 13, 17, 37, 74, 97)] == [1, 12, 14, 18, 40, 75, 98]


def test_errors_are_specific():
    with pytest.raises(ValueError, match="stride 1"):
        SpectralConv2d(3, 4, 3, stride=2)
    with pytest.raises(ValueError, match="groups=1"):
        SpectralConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="'same' or 'valid'"):
        SpectralConv2d(3, 4, 3, padding=2)
    assert SpectralConv2d(3, 4, 3, padding=1).padding == "same"  # the integer equivalent of 'same' is accepted
    assert SpectralConv2d(3, 4, 3, padding=0).valid  # and 0 means 'valid'
    with pytest.raises(ValueError, match="share one padding"):
        spectral_conv_chain(torch.randn(1, 3, 8, 8), [SpectralConv2d(3, 4, 3), SpectralConv2d(4, 4, 3, padding="valid")])
    with pytest.raises(ValueError, match="leaves nothing"):
        SpectralBlock(3, [4, 4], 5, padding="valid")(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="threshold must be finite and >= 0"):
        SpectralConv2d(3, 4, 3, threshold=-0.1)
    with pytest.raises(ValueError, match="threshold must be finite and >= 0"):
        SpectralBlock(3, [4], threshold=-1.0)
    with pytest.raises(ValueError, match="unknown spectral activation"):
        SpectralBlock(3, [4], activation="relu")
    conv = SpectralConv2d(3, 4, 5)
    with pytest.raises(ValueError, match="expects 3 input channels, got 2"):
        conv(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="4-D"):
        conv(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="smaller than the 5x5 kernel"):
        conv(torch.randn(1, 3, 4, 8))
    assert SpectralConv2d(3, 4, 5, allow_small_input=True)(torch.randn(1, 3, 4, 8)).shape == (1, 4, 4, 8)
    with pytest.raises(TypeError, match="real floating-point"):
        conv(torch.randn(1, 3, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="frequency-major"):
        conv.spectral_forward(torch.randn(8, 5, 3, 1), (8, 8))
    with pytest.raises(ValueError, match=r"frequency-major \(8, 5, 3, N\)"):
        conv.spectral_forward(torch.randn(1, 3, 8, 5, dtype=torch.complex64), (8, 8))
    with pytest.raises(ValueError, match="at least one"):
        SpectralBlock(3, [])


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (4, 1), ((3, 5), 1), (3, 2), ((2, 3), (3, 1))])
def test_kernel_spectrum_is_the_centred_kernel_fft(kernel_size, dilation):
    conv = SpectralConv2d(3, 2, kernel_size, dilation=dilation).double()
    size = (13, 10)
    kernel = kernel_spectrum(conv.weight, conv.dilation, size, torch.complex128).reshape(13, 6, 2, 3)  # (P, Q', o, i)
    # Reference: dilate, flip, zero-pad to the FFT size, move the 'same' centre to the origin, FFT.
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    dilated = torch.zeros(2, 3, dh * (kh - 1) + 1, dw * (kw - 1) + 1, dtype=torch.float64)
    dilated[..., ::dh, ::dw] = conv.weight.detach()
    padded = F.pad(dilated.flip(-2, -1), (0, size[1] - dilated.shape[-1], 0, size[0] - dilated.shape[-2]))
    centred = torch.roll(padded, shifts=(-(dilated.shape[-2] - 1 - conv.centre[0]), -(dilated.shape[-1] - 1 - conv.centre[1])),
                         dims=(-2, -1))
    spectrum = torch.fft.rfft2(centred).permute(2, 3, 0, 1)  # (P, Q', o, i)
    torch.testing.assert_close(kernel, spectrum)
    conj = kernel_spectrum(conv.weight, conv.dilation, size, torch.complex128, conjugate=True)
    torch.testing.assert_close(conj.reshape(13, 6, 2, 3), spectrum.conj())


def test_spectral_product_backward_equals_autograd_float64():
    """The hand-written adjoints of the kernel spectrum and the channel mix, against autograd."""
    weight = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    spectrum = torch.randn(7 * 5, 3, 6, dtype=torch.complex128, requires_grad=True)
    kernel = kernel_spectrum(weight, (1, 2), (7, 9), torch.complex128)
    out = mix_channels(spectrum, kernel)
    grad = torch.randn_like(out)
    expected = torch.autograd.grad(out, (spectrum, weight), grad)
    with torch.no_grad():  # the adjoints take and return conjugated gradients
        conj_grad_in = mix_channels_input_grad(kernel, grad.conj().resolve_conj())
        conj_grad_kernel = mix_channels_kernel_grad(spectrum, grad.conj().resolve_conj())
        grad_weight = kernel_spectrum_backward(conj_grad_kernel, weight, (1, 2), (7, 9))
    torch.testing.assert_close(conj_grad_in.conj(), expected[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_weight, expected[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel_size,size", [(5, (12, 12)), (3, (9, 8)), ((3, 5), (10, 11)), (4, (8, 9))])
def test_valid_block_equals_chained_valid_correlation(kernel_size, size):
    """'valid' (SpecNet's LeNet): one FFT, two linear products, crop to H - sum(k - 1)."""
    block = SpectralBlock(2, [3, 2], kernel_size=kernel_size, activation=None, padding="valid").double()
    x = torch.randn(2, 2, *size, dtype=torch.float64)
    c1, c2 = block.convs
    expected = F.conv2d(F.conv2d(x, c1.weight, c1.bias), c2.weight, c2.bias)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-11)
    xg = x[:1].clone().requires_grad_()
    assert gradcheck(block, (xg,))


def test_block_fft_size_is_the_linear_size_growing_only_where_storage_does_not():
    assert block_fft_size(34, 34) == (34, 35)  # 35 = 5 * 7 keeps 35 // 2 + 1 == 18 columns
    assert block_fft_size(18, 18) == (18, 18)  # already 2,3,5,7-smooth
    assert block_fft_size(10, 10) == (10, 10)
    assert block_fft_size(17, 22) == (17, 22)  # 23 is prime: no faster size with 12 columns
    block = SpectralBlock(3, [4], 3)
    block(torch.randn(1, 3, 32, 32))
    from specnet_zoo.layers.spectral_chain import SpectralChain

    assert SpectralChain(list(block.convs), (32, 32), None, None).fft_size == (34, 35)  # SpecNet: M + N_k - 1


def test_threshold_is_beta_on_the_unnormalised_dft_scale():
    """SpecNet eq. 4 on eq. 7's unnormalised spectrum: |Y| < beta zeroes, whatever the internal norm."""
    conv = SpectralConv2d(2, 3, 3, threshold=0.7).double()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    conv(x)
    spectrum = torch.fft.rfft2(x, s=(10, 10)).permute(2, 3, 1, 0)  # unnormalised, as eq. 7
    plain = SpectralConv2d(2, 3, 3).double()
    plain.load_state_dict(conv.state_dict())
    unnormalised = plain.spectral_forward(spectrum / 10, (10, 10)) * 10  # ortho -> unnormalised scale
    expected = (unnormalised.abs() >= 0.7).double().mean()
    torch.testing.assert_close(conv.measured_density.double(), expected)


@pytest.mark.parametrize("threshold,padding", [(0.0, "same"), (0.5, "same"), (0.0, "valid")])
def test_torch_compile_matches_eager(threshold, padding):
    """Under torch.compile the chain runs eagerly (``torch.compiler.disable``); the compiled module must still
    give eager's outputs and gradients (Inductor once miscompiled the 'valid' crop, a view with an offset)."""
    torch.manual_seed(0)
    block = SpectralBlock(3, [8, 8], threshold=threshold, padding=padding)
    x = torch.randn(4, 3, 12, 12)
    side = 12 if padding == "same" else 8
    weights = torch.linspace(-1, 1, 4 * 8 * side * side).view(4, 8, side, side)

    def run(fn):
        xg = x.clone().requires_grad_()
        y = fn(xg)
        grads = torch.autograd.grad((y * weights).sum(), [xg, *block.parameters()])
        return y.detach(), grads

    (y_eager, g_eager), (y_compiled, g_compiled) = run(block), run(torch.compile(block))
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
