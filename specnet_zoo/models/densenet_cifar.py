"""DenseNet-40 for CIFAR and SpecDenseNet (SpecNet, Guan et al. 2019, Table 1), 32x32 input.

DenseNet-40 (Huang et al. 2017): a 3x3 stem with 16 channels, three dense blocks of 12 layers with
growth rate 12, transitions (BN, ReLU, 1x1 conv keeping the channels, 2x2 average pooling), then
BN, ReLU, global average pooling and a linear classifier. SpecNet's Table 1 is not reproduced offline
here; this is the standard DenseNet-40 its experiments name.

In SpecDenseNet every 3x3 convolution (stem and dense layers) is a one-convolution SpecNet block:
FFT, product, threshold, split tanh, IFFT; a dense layer is BN -> spectral conv (the spectral
activation replaces the spatial twin's ReLU). 1x1 transition convolutions mix channels only, which
is the same in both domains, so they stay spatial. Both twins have identical parameters.
"""
from __future__ import annotations

import torch
from timm.models import generate_default_cfgs, register_notrace_module
from torch import nn

from ..layers import SpectralConv2d, spectral_conv_chain
from ..layers.compact import ConcatNorm
from ._base import (
    SPECNET_NO_TORCHSCRIPT,
    ClassifierHead,
    StagedClassifier,
    build,
    cfg,
    check_spectral_kwargs,
    exclude_from_timm_tests,
    layer_density,
    per_layer_density,
    pool_output_size,
    register_model,
)

__all__ = ["DenseNetCifar"]


def _conv3x3(in_chs, out_chs, spectral, sparsity, bias=False) -> nn.Module:
    if spectral:
        return SpectralConv2d(in_chs, out_chs, 3, bias=bias, **sparsity)
    return nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=bias)


class DenseLayer(nn.Module):
    """Spatial: BN -> ReLU -> conv3x3; spectral: BN -> SpecNet conv3x3, on cat(features).

    Takes the list of the block's features so far and returns only the new ``growth`` channels. The
    spectral layer replays the concatenation and BatchNorm in backward (from the features' packed
    spectra when they come from spectral convolutions), so no concatenated copy is kept per layer.
    """

    def __init__(self, in_chs, growth, spectral, sparsity):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs)
        self.act = nn.Identity() if spectral else nn.ReLU(inplace=True)
        self.conv = _conv3x3(in_chs, growth, spectral, sparsity)
        self.spectral = spectral

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.spectral and type(self.norm) is nn.BatchNorm2d:
            return spectral_conv_chain(features, [self.conv], prologue=ConcatNorm(self.norm))
        if self.spectral:  # e.g. SyncBatchNorm under DDP: not replayable locally, so keep its output
            return self.conv(self.norm(torch.cat(features, dim=1)))
        return self.conv(self.act(self.norm(torch.cat(features, dim=1))))


register_notrace_module(DenseLayer)  # FX keeps it whole: the spectral layer runs a custom autograd Function


class Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv -> 2x2 average pooling."""

    def __init__(self, in_chs, out_chs):
        super().__init__(nn.BatchNorm2d(in_chs), nn.ReLU(inplace=True), nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.AvgPool2d(2))


class DenseStage(nn.Module):
    """(stem) -> dense block -> transition or final BN + ReLU; ``out_chs`` channels out."""

    def __init__(self, in_chs, num_layers, growth, spectral, sparsity, stem_chs=0, last=False):
        super().__init__()
        self.stem = _conv3x3(in_chs, stem_chs, spectral, sparsity) if stem_chs else nn.Identity()
        chans = stem_chs or in_chs
        layers = []
        for _ in range(num_layers):
            layers.append(DenseLayer(chans, growth, spectral, sparsity))
            chans += growth
        self.layers = nn.ModuleList(layers)
        self.exit = nn.Sequential(nn.BatchNorm2d(chans), nn.ReLU(inplace=True)) if last else Transition(chans, chans)
        self.out_chs = chans
        self.min_size = 3 if spectral else 1

    def out_size(self, n: int) -> int:
        return pool_output_size(self.exit[-1], n) if isinstance(self.exit, Transition) else n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        return self.exit(torch.cat(features, dim=1))


class DenseNetCifar(StagedClassifier):
    """DenseNet for CIFAR; ``spectral=True`` gives SpecDenseNet.

    Args:
        num_classes, in_chans: classifier outputs (0: features only) and input channels.
        depth: 3 * layers_per_block + 4 (40 -> 12 layers per block).
        growth_rate: channels added by each dense layer.
        stem_chs: channels of the first 3x3 convolution.
        spectral, threshold, activation: SpecNet blocks, beta and spectral activation.
        density, storage: per-sample kept fraction instead of beta (one value, or one per spectral conv);
            what backward keeps: "compact", "float16", "int8" or "dense" (spectral only).
        drop_rate: dropout before the classifier.
        global_pool: 'avg' (global average pooling) or '' with num_classes=0 for unpooled features.

    Shape: (N, 3, H, W) -> (N, num_classes); stages: (N, 160, H/2), (N, 304, H/4), (N, 448, H/4).
    """

    def __init__(self, num_classes=10, in_chans=3, depth=40, growth_rate=12, stem_chs=16, spectral=False,
                 threshold=0.0, activation="split_tanh", drop_rate=0.0, density=None, storage="compact",
                 global_pool="avg"):
        super().__init__()
        check_spectral_kwargs(type(self).__name__, spectral, threshold, activation, density, storage)
        sparsity = dict(threshold=threshold, density=layer_density(density), activation=activation, storage=storage)
        if (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3 * layers_per_block + 4, got {depth}")
        per_block = (depth - 4) // 3
        stages, chans = [], in_chans
        for i in range(3):
            stage = DenseStage(chans, per_block, growth_rate, spectral, sparsity,
                               stem_chs=stem_chs if i == 0 else 0, last=i == 2)
            stages.append(stage)
            chans = stage.out_chs
        self.stages = nn.Sequential(*stages)
        head = ClassifierHead(chans, num_classes, pool_size=1, drop_rate=drop_rate, global_pool=global_pool)
        self._finish(head, reductions=(2, 4, 4), in_chans=in_chans, num_classes=num_classes)
        per_layer_density(self, density)


def _create_densenet(variant, pretrained=False, **kwargs):
    return build(DenseNetCifar, variant, pretrained, num_stages=3, **kwargs)


default_cfgs = generate_default_cfgs({
    "densenet_cifar.cifar10": cfg(first_conv="stages.0.stem", pool_size=(8, 8)),
    "specdensenet.cifar10": cfg(first_conv="stages.0.stem", pool_size=(8, 8)),
})


@register_model
def densenet_cifar(pretrained=False, **kwargs) -> DenseNetCifar:
    """DenseNet-40 (growth 12) for 32x32 input, the spatial twin of SpecDenseNet."""
    return _create_densenet("densenet_cifar", pretrained, **kwargs)


@register_model
def specdensenet(pretrained=False, **kwargs) -> DenseNetCifar:
    """SpecDenseNet: DenseNet-40 with SpecNet 3x3 convolutions (SpecNet Table 1)."""
    return _create_densenet("specdensenet", pretrained, spectral=True, **kwargs)


# timm model-suite checks that cannot apply (scripts/timm_conformance.py deselects exactly these).
exclude_from_timm_tests(["specdensenet"], ["test_model_forward_torchscript", "test_model_forward_fx_torchscript"], SPECNET_NO_TORCHSCRIPT)
