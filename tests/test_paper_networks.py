"""The networks registered under the papers' names are the papers' networks, layer by layer.

SpecNet (Guan et al. 2019): Table 3 (LeNet), Table 4 (AlexNet), Table 1 (DenseNet), Table 5 (as printed);
Rippel et al. 2015: eq. 6 and eq. 7 (Springenberg's Model C reading). Output sizes per stage, the FFT size
of every spectral block and the parameter counts are checked against the tables.
"""
import pytest
import timm
import torch
import torch.nn.functional as F

import specnet_zoo
from specnet_zoo.layers import SpectralConv2d, spectral_conv_chain
from specnet_zoo.layers.spectral_chain import SpectralChain


def _params(name: str, **kwargs) -> int:
    return sum(p.numel() for p in specnet_zoo.create_model(name, **kwargs).parameters())


def _conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def _fc(n_in, n_out):
    return n_in * n_out + n_out


def _stage_shapes(name: str) -> list[tuple[int, ...]]:
    model = timm.create_model(name, features_only=True).eval()
    c, h, w = model.pretrained_cfg["input_size"]
    with torch.no_grad():
        return [tuple(out.shape[1:]) for out in model(torch.randn(1, c, h, w))]


def _block_fft_sizes(name: str) -> list[tuple[int, int]]:
    """The padded FFT size of every spectral block, at the model's default input size."""
    model = specnet_zoo.create_model(name).eval()
    c, h, w = model.pretrained_cfg["input_size"]
    sizes, x = [], torch.randn(1, c, h, w)
    with torch.no_grad():
        for stage in model.stages:
            convs = [m for m in stage.convs if isinstance(m, SpectralConv2d)] if hasattr(stage, "convs") else []
            if convs:
                dense = type(stage).__name__ == "DenseBlockStage"
                sizes.append(SpectralChain(convs, tuple(x.shape[-2:]), None, None, dense).fft_size)
            x = stage(x)
    return sizes


def test_lenet_is_table_3():
    expected = (_conv(1, 6, 5) + _conv(6, 16, 5) + _fc(16 * 4 * 4, 120) + _fc(120, 80) + _fc(80, 10))
    assert expected == 43_902  # the count for Table 3
    assert _params("lenet5") == _params("speclenet") == expected
    assert _stage_shapes("lenet5") == _stage_shapes("speclenet") == [(6, 12, 12), (16, 4, 4)]  # 28 -> 24 -> 12 -> 8 -> 4
    assert _block_fft_sizes("speclenet") == [(32, 32), (16, 16)]  # M + N_k - 1 (Table 3 prints 32 and 15)


def test_alexnet_is_table_4():
    convs = _conv(3, 24, 3) + _conv(24, 96, 3) + _conv(96, 192, 3) + _conv(192, 192, 3) + _conv(192, 96, 3)
    head = _fc(96 * 4 * 4, 1024) + _fc(1024, 1024) + _fc(1024, 10)
    bn_spatial, bn_spectral = 2 * (192 + 192 + 96), 2 * 96  # BN per conv vs one BN after the spectral block
    assert _params("alexnet_cifar") == convs + head + bn_spatial == 3_320_234
    assert _params("specalexnet") == convs + head + bn_spectral
    assert _stage_shapes("alexnet_cifar") == _stage_shapes("specalexnet") == [(24, 16, 16), (96, 8, 8), (96, 4, 4)]
    assert _block_fft_sizes("specalexnet") == [(34, 35), (18, 18), (14, 14)]  # 35 keeps 18 stored columns


def test_densenet_is_table_1():
    block = sum(_conv(64 + 64 * i, 64, 3, bias=False) for i in range(6))
    spatial = _conv(3, 64, 3) + 2 * 64 + block + 6 * 2 * 64 + _fc(448, 10)  # stem BN, BN per layer
    spectral = _conv(3, 64, 3) + block + 6 * 64 + _fc(448, 10)  # conv biases, no BN inside the spectral blocks
    assert _params("densenet_cifar") == spatial and _params("specdensenet") == spectral
    assert _stage_shapes("densenet_cifar") == _stage_shapes("specdensenet") == [(64, 16, 16), (448, 16, 16)]
    # the stem block as Table 1 (34 x 34), the whole dense block in ONE FFT: 16 + 6 x 2 = 28 keeps it linear
    assert _block_fft_sizes("specdensenet") == [(34, 35), (28, 28)]


def test_table_5_network_as_printed():
    spatial_convs = (_conv(3, 64, 3) + _conv(64, 64, 3) + _conv(64, 128, 3) + _conv(128, 128, 3) + _conv(128, 256, 3)
                     + 2 * _conv(256, 256, 3))
    head = _fc(256 * 4 * 4, 512) + _fc(512, 10)
    assert _params("vgg_t5_cifar") == spatial_convs + 2 * (2 * 64 + 2 * 128 + 3 * 256) + head
    spectral_convs = spatial_convs - _conv(256, 256, 3)  # Table 5: two FConv2D in the third block
    assert _params("specvgg_t5") == spectral_convs + 2 * (64 + 128 + 256) + head
    assert _stage_shapes("vgg_t5_cifar") == _stage_shapes("specvgg_t5") == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]
    assert _block_fft_sizes("specvgg_t5") == [(36, 36), (20, 20), (12, 12)]


def test_vgg16_keeps_its_name():
    assert _stage_shapes("vgg16_cifar")[-1] == (512, 1, 1) and len(_stage_shapes("specvgg16")) == 5


def test_spectral_dense_block_is_densenet_connectivity_without_intermediate_crops():
    """Linear (no activation, no threshold): layer l convolves the concatenation of the input and all earlier maps.

    Reference: spatial 'same' convolutions on a canvas padded by the total growth (1 pixel per layer and side),
    so nothing is cropped between layers, as in one FFT of the zero-padded input; each bias is a constant over
    the whole plane (SpecNet adds it to the DC bin). Edge effects of the finite canvas stay in the padding.
    """
    torch.manual_seed(0)
    convs = [SpectralConv2d(2 + 3 * i, 3, 3, activation=None).double() for i in range(3)]
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64)
    out = spectral_conv_chain(x, convs, dense=True)
    pad = len(convs)
    features = [F.pad(x, (pad, pad, pad, pad))]
    for conv in convs:
        features.append(F.conv2d(torch.cat(features, 1), conv.weight, padding=1) + conv.bias[None, :, None, None])
    expected = torch.cat(features, 1)[..., pad:-pad, pad:-pad]
    assert out.shape == (2, 2 + 9, 7, 6)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["rippel_deep", "specparam_deep"])
def test_rippel_deep_is_eq_7_model_c_reading(name):
    """C96, C96, MP, C192, C192, MP, C192-3x3, C192-1x1, classes-1x1, GA (one C192 after the second pool)."""
    model = specnet_zoo.create_model(name)
    widths = [[conv.out_channels for conv in stage.convs] for stage in model.stages]
    kernels = [[conv.kernel_size[0] for conv in stage.convs] for stage in model.stages]
    assert widths == [[96, 96], [192, 192], [192, 192]] and kernels == [[3, 3], [3, 3], [3, 1]]
    assert _stage_shapes(name) == [(96, 16, 16), (192, 8, 8), (192, 8, 8)]


@pytest.mark.parametrize("name", ["rippel_generic", "rippel_deep", "specparam_generic", "specparam_deep"])
def test_rippel_5x5_variants(name):
    model = specnet_zoo.create_model(name, kernel_size=5)
    spatial = [m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert spatial and all(k == (5, 5) for k in spatial)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("threshold,activation", [(0.0, None), (0.5, "split_tanh")])
def test_dense_block_compact_backward_equals_autograd_and_gradchecks(threshold, activation):
    """SpecDenseNet's one-FFT block: packed-spectra backward vs plain autograd (storage="dense"), float64."""
    from torch.autograd import gradcheck

    from specnet_zoo.layers.compact import NormPool

    torch.manual_seed(0)

    def make(storage):
        return [SpectralConv2d(3 + 2 * i, 2, 3, threshold=threshold, activation=activation, storage=storage).double()
                for i in range(3)]

    dense, compact = make("dense"), make("compact")
    for a, b in zip(dense, compact):
        b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    norm = torch.nn.BatchNorm2d(9).double()
    outs = [spectral_conv_chain(x, convs, epilogue=NormPool(norm, torch.nn.MaxPool2d(2)), dense=True)
            for convs in (dense, compact)]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12)
    grad = torch.randn_like(outs[0])
    wrt = [[x, *(p for c in convs for p in c.parameters()), *norm.parameters()] for convs in (dense, compact)]
    expected, got = (torch.autograd.grad(o, w, grad) for o, w in zip(outs, wrt))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    small = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: spectral_conv_chain(t, compact, dense=True), (small,))
