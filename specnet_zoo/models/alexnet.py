"""AlexNet for CIFAR and SpecAlexNet (SpecNet, Guan et al. 2019, appendix Table 4), 32x32 input.

SpecNet's Table 4 is not reproduced offline here; this follows the usual 5-convolution CIFAR AlexNet:
conv5x5-64, pool, conv5x5-192, pool, conv3x3-384, conv3x3-256, conv3x3-256, pool, then FC 384 ->
FC 192 -> classes (the cuda-convnet CIFAR head). In SpecAlexNet each pooling stage is one SpecNet
block (the three 3x3 convolutions stay spectral together). Twins have identical parameters.
"""
from __future__ import annotations

from timm.models import generate_default_cfgs
from torch import nn

from ._base import (
    SPECNET_NO_TORCHSCRIPT,
    ClassifierHead,
    ConvStage,
    SpectralStage,
    StagedClassifier,
    build,
    cfg,
    check_spectral_kwargs,
    exclude_from_timm_tests,
    layer_density,
    per_layer_density,
    register_model,
)

__all__ = ["AlexNetCifar"]

_STAGES = (((64,), 5), ((192,), 5), ((384, 256, 256), 3))


class AlexNetCifar(StagedClassifier):
    """CIFAR AlexNet; ``spectral=True`` gives SpecAlexNet.

    Args:
        num_classes, in_chans: classifier outputs (0: features only) and input channels.
        spectral: SpecNet blocks instead of Conv2d + ReLU.
        threshold, activation: SpecNet beta and spectral activation (spectral only).
        density, storage: per-sample kept fraction instead of beta (one value, or one per spectral conv);
            what backward keeps: "compact", "float16", "int8" or "dense" (spectral only).
        global_pool: 'avg' (the head's pooling) or '' with num_classes=0 for unpooled features.
        drop_rate: dropout after each hidden fully connected layer.

    Shape: (N, 3, H, W) -> (N, num_classes); stages reduce by 2, 4, 8 (64/192/256 channels).
    """

    def __init__(self, num_classes=10, in_chans=3, spectral=False, threshold=0.0, activation="split_tanh", drop_rate=0.0,
                 density=None, storage="compact", global_pool="avg"):
        super().__init__()
        check_spectral_kwargs(type(self).__name__, spectral, threshold, activation, density, storage)
        stages, chans = [], in_chans
        for widths, kernel in _STAGES:
            pool = nn.MaxPool2d(2)
            if spectral:
                stages.append(SpectralStage(chans, widths, kernel, threshold, activation, pool=pool,
                                            density=layer_density(density), storage=storage))
            else:
                stages.append(ConvStage(chans, widths, kernel, pool=pool))
            chans = widths[-1]
        self.stages = nn.Sequential(*stages)
        head = ClassifierHead(chans, num_classes, pool_size=4, hidden=(384, 192), drop_rate=drop_rate,
                              global_pool=global_pool)
        self._finish(head, reductions=(2, 4, 8), in_chans=in_chans, num_classes=num_classes)
        per_layer_density(self, density)


def _create_alexnet(variant, pretrained=False, **kwargs):
    return build(AlexNetCifar, variant, pretrained, num_stages=len(_STAGES), **kwargs)


default_cfgs = generate_default_cfgs({
    "alexnet_cifar.cifar10": cfg(pool_size=(4, 4)),
    "specalexnet.cifar10": cfg(pool_size=(4, 4)),
})


@register_model
def alexnet_cifar(pretrained=False, **kwargs) -> AlexNetCifar:
    """CIFAR AlexNet (5 convs, FC 384/192), the spatial twin of SpecAlexNet."""
    return _create_alexnet("alexnet_cifar", pretrained, **kwargs)


@register_model
def specalexnet(pretrained=False, **kwargs) -> AlexNetCifar:
    """SpecAlexNet: CIFAR AlexNet with one SpecNet block per pooling stage (SpecNet Table 4)."""
    return _create_alexnet("specalexnet", pretrained, spectral=True, **kwargs)


# timm model-suite checks that cannot apply (scripts/timm_conformance.py deselects exactly these).
exclude_from_timm_tests(["specalexnet"], ["test_model_forward_torchscript", "test_model_forward_fx_torchscript"], SPECNET_NO_TORCHSCRIPT)
