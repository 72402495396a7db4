import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from specnet_zoo.layers import FrequencyDropout, SpectralPool2d, spectral_pool2d, spectral_resize2d

from reference import reference_pool

SIZES = [((7, 7), (3, 3)), ((7, 7), (4, 4)), ((8, 8), (3, 3)), ((8, 8), (4, 4)), ((31, 31), (16, 16)),
         ((32, 32), (27, 27)), ((32, 24), (16, 11)), ((9, 6), (1, 1)), ((6, 9), (2, 5)), ((5, 8), (5, 8))]


METHODS = ["fft", "matmul"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size_in,size_out", SIZES)
def test_matches_direct_dft_reference(size_in, size_out, method):
    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    y = spectral_pool2d(x, size_out, method=method)
    torch.testing.assert_close(y, reference_pool(x, size_out), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size_in,size_out", SIZES)
def test_float32_matches_reference(size_in, size_out, method):
    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    y = spectral_pool2d(x.float(), size_out, method=method)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), reference_pool(x, size_out), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size_in,size_out", [((16, 16), (7, 7)), ((16, 12), (8, 6)), ((15, 10), (6, 4))])
def test_band_limited_map_is_sampled_exactly(size_in, size_out, method):
    """Resampling semantics: a trigonometric polynomial inside the kept band is sampled on the output grid."""
    (height, width), (h, w) = size_in, size_out
    gen = torch.Generator().manual_seed(1)

    def signal(ys, xs):
        total = torch.zeros(ys.shape, dtype=torch.float64)
        for _ in range(12):
            fy = int(torch.randint(-(h // 2), h // 2 + 1, (1,), generator=gen))
            fx = int(torch.randint(-(w // 2), w // 2 + 1, (1,), generator=gen))
            amp, phase = torch.rand(2, generator=gen, dtype=torch.float64)
            total += amp * torch.cos(2 * math.pi * (fy * ys / height + fx * xs / width) + 2 * math.pi * phase)
        return total

    state = gen.get_state()
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    x = signal(ys, xs)
    gen.set_state(state)
    oy, ox = torch.meshgrid(torch.arange(h, dtype=torch.float64) * height / h, torch.arange(w, dtype=torch.float64) * width / w, indexing="ij")
    expected = signal(oy.double(), ox.double())
    torch.testing.assert_close(spectral_pool2d(x[None, None], (h, w), method=method)[0, 0], expected, rtol=0, atol=1e-10)


def test_constant_map_stays_constant_and_identity():
    x = torch.full((2, 3, 9, 8), 2.5, dtype=torch.float64)
    for size in [(1, 1), (4, 4), (5, 3), (9, 8)]:
        torch.testing.assert_close(spectral_pool2d(x, size), torch.full((2, 3, *size), 2.5, dtype=torch.float64))
    z = torch.randn(2, 3, 10, 7, dtype=torch.float64)
    torch.testing.assert_close(spectral_pool2d(z, (10, 7)), z, rtol=0, atol=1e-12)
    torch.testing.assert_close(spectral_pool2d(z, (1, 1)), z.mean((-2, -1), keepdim=True), rtol=0, atol=1e-12)


def test_linear():
    a, b = torch.randn(2, 2, 3, 12, 11, dtype=torch.float64)
    lhs = spectral_pool2d(2.0 * a - 3.0 * b, (6, 5))
    torch.testing.assert_close(lhs, 2.0 * spectral_pool2d(a, (6, 5)) - 3.0 * spectral_pool2d(b, (6, 5)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size_in,size_out", [((7, 7), (4, 4)), ((8, 8), (4, 3)), ((8, 6), (5, 4)), ((6, 7), (6, 7))])
def test_gradcheck_and_adjoint(size_in, size_out, method):
    x = torch.randn(2, 2, *size_in, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: spectral_pool2d(t, size_out, method=method), (x,))
    assert gradgradcheck(lambda t: spectral_pool2d(t, size_out, method=method), (x,))
    assert gradcheck(lambda t: spectral_resize2d(t, (size_in[0] + 3, size_in[1] + 2), method=method), (x,))
    # Dot-product test: <P x, y> == <x, P^T y> with P^T from autograd.
    y = torch.randn(2, 2, *size_out, dtype=torch.float64)
    (adjoint,) = torch.autograd.grad(spectral_pool2d(x, size_out, method=method), x, y)
    torch.testing.assert_close((spectral_pool2d(x, size_out, method=method) * y).sum(), (x * adjoint).sum())


def test_fft_and_matmul_paths_agree_and_auto_switches():
    x = torch.randn(2, 3, 40, 33)
    torch.testing.assert_close(spectral_pool2d(x, (17, 20), method="fft"), spectral_pool2d(x, (17, 20), method="matmul"))
    with pytest.raises(ValueError, match="method must be one of"):
        spectral_pool2d(x, 4, method="dft")

@pytest.mark.parametrize("per_sample", [False, True])
def test_frequency_dropout_same_on_both_paths(per_sample):
    x = torch.randn(6, 3, 20, 17, dtype=torch.float64)
    for size in [(20, 17), (11, 8)]:
        outs = [spectral_resize2d(x, size, FrequencyDropout(0.2, per_sample=per_sample, seed=9).train(), method=m)
                for m in METHODS]
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-12)
        assert not torch.allclose(outs[0], spectral_resize2d(x, size))


def test_down_then_up_is_a_projection_and_up_then_down_is_identity():
    x = torch.randn(1, 2, 12, 10, dtype=torch.float64)
    projected = spectral_resize2d(spectral_pool2d(x, (6, 4)), (12, 10))
    torch.testing.assert_close(spectral_resize2d(spectral_pool2d(projected, (6, 4)), (12, 10)), projected)
    # Orthogonal projection: the residual is orthogonal to the projected map.
    assert abs(float(((x - projected) * projected).sum())) < 1e-10
    small = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(spectral_pool2d(spectral_resize2d(small, (12, 10)), (6, 5)), small)


@pytest.mark.shared_data
def test_real_photos_match_reference(photos):
    for image in photos[:6]:
        crop = image[:, :63, :48]  # odd x even crop of each photo
        for size in [(31, 24), (32, 17), (1, 1), (62, 47)]:
            torch.testing.assert_close(spectral_pool2d(crop[None], size)[0], reference_pool(crop, size), rtol=0, atol=1e-11)


@pytest.mark.shared_data
def test_real_photo_full_size_keeps_mean_and_low_band(photos):
    image = photos[0][None]  # astronaut, 512 x 512 RGB
    pooled = spectral_pool2d(image, (255, 256))
    torch.testing.assert_close(pooled.mean((-2, -1)), image.mean((-2, -1)), rtol=0, atol=1e-12)
    # Pooling twice equals pooling once to the smaller size (the kept bands are nested, odd sizes).
    torch.testing.assert_close(spectral_pool2d(pooled, (101, 99)), spectral_pool2d(image, (101, 99)), rtol=0, atol=1e-10)


def test_module_sizes_and_scale_factor():
    x = torch.randn(2, 3, 20, 13)
    assert SpectralPool2d(output_size=5)(x).shape == (2, 3, 5, 5)
    assert SpectralPool2d(output_size=(7, 2))(x).shape == (2, 3, 7, 2)
    assert SpectralPool2d(scale_factor=0.85)(x).shape == (2, 3, 17, 11)  # floor(0.85*20)=17, floor(0.85*13)=11
    assert SpectralPool2d(scale_factor=0.01)(x).shape == (2, 3, 1, 1)


@pytest.mark.parametrize("method", METHODS)
def test_channels_last_and_dtypes(method):
    x = torch.randn(2, 8, 12, 12)
    ref = spectral_pool2d(x, (6, 5))
    y = spectral_pool2d(x.contiguous(memory_format=torch.channels_last), (6, 5), method=method)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref)
    for dtype in (torch.float16, torch.bfloat16):
        out = spectral_pool2d(x.to(dtype), (6, 5), method=method)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("method", METHODS)
def test_autocast_runs_fft_in_float32(method):
    pool = SpectralPool2d(output_size=(5, 6), method=method)
    x = torch.randn(2, 4, 11, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv_out = torch.nn.functional.conv2d(x, torch.randn(4, 4, 1, 1))  # bf16 under autocast
        y = pool(conv_out)
    assert conv_out.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), spectral_pool2d(conv_out.float(), (5, 6)), rtol=0.02, atol=0.02)


def test_frequency_dropout_inside_pooling():
    pool = SpectralPool2d(output_size=(8, 8), frequency_dropout=FrequencyDropout(0.25, seed=3))
    x = torch.randn(4, 2, 16, 16)
    pool.eval()
    torch.testing.assert_close(pool(x), spectral_pool2d(x, 8))
    pool.train()
    outs = [pool(x) for _ in range(8)]
    assert any(not torch.allclose(o, spectral_pool2d(x, 8)) for o in outs)
    # The training output is the pooled map with a centred square of frequencies kept.
    for out in outs:
        spectrum = torch.fft.rfft2(out.double())
        pooled = torch.fft.rfft2(spectral_pool2d(x, 8).double())
        kept = spectrum.abs() > 1e-4
        torch.testing.assert_close(spectrum[kept], pooled[kept], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck_with_frequency_dropout(per_sample, method):
    x = torch.randn(3, 2, 10, 9, dtype=torch.float64, requires_grad=True)

    def pool(t):  # a fresh seeded layer per call so every evaluation draws the same resolutions
        dropout = FrequencyDropout(0.2, per_sample=per_sample, seed=4).train()
        return spectral_pool2d(t, (8, 6), dropout, method=method)

    assert not torch.allclose(pool(x), spectral_pool2d(x, (8, 6)))
    assert gradcheck(pool, (x,))


def test_errors_are_specific():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="4-D"):
        spectral_pool2d(x[0], 4)
    with pytest.raises(ValueError, match=r"1 <= h <= H"):
        spectral_pool2d(x, (9, 4))
    with pytest.raises(ValueError, match=r">= 1"):
        spectral_pool2d(x, (0, 4))
    with pytest.raises(ValueError, match="exactly one"):
        SpectralPool2d()
    with pytest.raises(ValueError, match="exactly one"):
        SpectralPool2d(output_size=4, scale_factor=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SpectralPool2d(scale_factor=1.5)
    with pytest.raises(TypeError, match="real floating-point"):
        spectral_pool2d(x.to(torch.complex64), 4)
    with pytest.raises(TypeError, match="real floating-point"):
        spectral_pool2d(x.long(), 4)
    with pytest.raises(TypeError, match="pair of ints"):
        spectral_pool2d(x, (4, 4, 4))


def test_unitary_norm_preserves_energy_of_band_limited_maps_and_scales_constants():
    from specnet_zoo.layers import spectral_resize2d

    low = torch.randn(2, 3, 15, 15, dtype=torch.float64)
    x = spectral_resize2d(low, 32)  # band-limited to the 15 x 15 band (odd: no Nyquist bin to split)
    y = SpectralPool2d(output_size=15, norm="ortho")(x)
    torch.testing.assert_close(y.square().sum((-2, -1)), x.square().sum((-2, -1)))  # Parseval, unitary DFT
    torch.testing.assert_close(SpectralPool2d(output_size=15)(x) * (32 / 15), y)
    ones = torch.ones(1, 1, 32, 32)
    assert SpectralPool2d(16)(ones).mean() == 1.0 and SpectralPool2d(16, norm="ortho")(ones).mean() == 2.0
    with pytest.raises(ValueError, match="norm must be 'forward'"):
        SpectralPool2d(16, norm="backward")
