import math

import pytest
import torch
from torch.autograd import gradcheck

from specnet_zoo.layers import FrequencyDropout, frequency_dropout_schedule


def test_schedule_is_rippel_eq5():
    assert frequency_dropout_schedule(0.30, 0.15, 3) == pytest.approx([0.25, 0.20, 0.15])
    assert frequency_dropout_schedule(0.5, 0.5, 4) == pytest.approx([0.5] * 4)
    with pytest.raises(ValueError, match="depth"):
        frequency_dropout_schedule(0.3, 0.15, 0)
    with pytest.raises(ValueError, match="alpha"):
        frequency_dropout_schedule(0.0, 0.15, 3)


def test_eval_is_identity_and_full_resolution_is_identity():
    x = torch.randn(2, 3, 10, 9)
    layer = FrequencyDropout(0.3).eval()
    assert layer(x) is x
    full = FrequencyDropout(1.0).train()
    torch.testing.assert_close(full(x), x, rtol=0, atol=1e-5)


def test_resolution_range_covers_ceil_c_h_to_h():
    layer = FrequencyDropout(0.3, seed=0)
    r_h, r_w = zip(*(layer.sample_resolution((20, 10), 1) for _ in range(2000)))
    r_h, r_w = torch.cat(r_h), torch.cat(r_w)
    assert int(r_h.min()) == math.ceil(0.3 * 20) and int(r_h.max()) == 20
    assert int(r_w.min()) >= math.ceil(0.3 * 10) and int(r_w.max()) == 10
    # Uniform over the 15 integers 6..20: every value appears, none dominates.
    counts = torch.bincount(r_h, minlength=21)[6:]
    assert counts.min() > 80 and counts.max() < 200


def test_output_keeps_a_centered_square_of_frequencies():
    layer = FrequencyDropout(0.25, seed=1).train()
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    spectrum_in = torch.fft.fft2(x)[0, 0]
    spectrum_out = torch.fft.fft2(layer(x))[0, 0]
    freq = torch.fft.fftfreq(16, 1 / 16).abs()
    kept = spectrum_out.abs() > 1e-9
    radius = int(torch.maximum(freq[:, None], freq[None, :])[kept].max())
    band = (freq[:, None] <= radius) & (freq[None, :] <= radius)
    torch.testing.assert_close(kept, band)  # exactly the square |k_y|, |k_x| <= radius survives ...
    torch.testing.assert_close(spectrum_out[band], spectrum_in[band])  # ... unchanged
    assert 2 <= radius <= 8


def test_band_limited_input_passes_unchanged():
    x = torch.randn(3, 2, 24, 24, dtype=torch.float64)
    spectrum = torch.fft.rfft2(x)
    spectrum[..., 4:-3, :] = 0  # keep |k_y| <= 3
    spectrum[..., 4:] = 0  # keep k_x <= 3
    low = torch.fft.irfft2(spectrum, s=(24, 24))
    layer = FrequencyDropout(0.3, seed=0).train()  # R >= ceil(0.3 * 24) = 8 keeps |k| <= 4
    for _ in range(5):
        torch.testing.assert_close(layer(low), low)


def test_seeded_layers_are_reproducible_and_per_sample_differs():
    x = torch.randn(8, 1, 16, 16)
    a, b = FrequencyDropout(0.2, seed=7).train(), FrequencyDropout(0.2, seed=7).train()
    for _ in range(3):
        torch.testing.assert_close(a(x), b(x))
    per_sample = FrequencyDropout(0.2, per_sample=True, seed=0).train()
    r_h, _ = per_sample.sample_resolution((16, 16), 64)
    assert r_h.shape == (64,) and len(set(r_h.tolist())) > 3
    y = per_sample(x.expand(8, 1, 16, 16))
    assert not all(torch.allclose(y[0], y[i]) for i in range(1, 8))


def test_gradcheck():
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: FrequencyDropout(0.3, seed=5).train()(t), (x,))


def test_errors():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        FrequencyDropout(0.0)
    with pytest.raises(ValueError, match="4-D"):
        FrequencyDropout(0.5)(torch.randn(3, 8, 8))
