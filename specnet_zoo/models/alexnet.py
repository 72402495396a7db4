"""AlexNet and SpecAlexNet exactly as SpecNet (Guan et al. 2019) appendix Table 4, 32x32 input.

Table 4: 3x3 convolutions 24 -> pool -> 96 -> pool -> 192, 192, 96 (each with BN) -> pool, all 'same',
then FC(1024) -> FC(1024) -> classes on the 96 x 4 x 4 features: 3,320,234 parameters. SpecAlexNet
has three SpecNet blocks (34 x 34, 18 x 18 and, for the last three convolutions together, one block
on the 8 x 8 maps), each followed by 2x2 max pooling.

Reading (docs/fidelity.md): Table 4 gives the spectral block no BN between its FConv2D layers (a
spectrum cannot be batch-normalised like a map), so SpecAlexNet has one BatchNorm after the last
block's IFFT, where the spatial twin has one per convolution (768 parameters fewer). The last block's
FFT is 8 + 3 x 2 = 14, the size that keeps its three products linear (Table 4 prints 10).
"""
from __future__ import annotations

from timm.models import generate_default_cfgs
from torch import nn

from ..pretrained import with_weights
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

# (widths, batch norm) per pooling stage; every kernel is 3x3.
_STAGES = (((24,), False), ((96,), False), ((192, 192, 96), True))


class AlexNetCifar(StagedClassifier):
    """SpecNet Table 4's AlexNet; ``spectral=True`` gives SpecAlexNet.

    Args:
        num_classes, in_chans: classifier outputs (0: features only) and input channels.
        spectral: SpecNet blocks instead of Conv2d + ReLU.
        threshold, activation: SpecNet beta and spectral activation (spectral only).
        density, storage: per-sample kept fraction instead of beta (one value, or one per spectral conv);
            what backward keeps: "compact", "float16", "int8" or "dense" (spectral only).
        global_pool: 'avg' (the head's pooling) or '' with num_classes=0 for unpooled features.
        drop_rate: dropout after each hidden fully connected layer.

    Shape: (N, 3, H, W) -> (N, num_classes); stages reduce by 2, 4, 8 (24/96/96 channels).
    """

    def __init__(self, num_classes=10, in_chans=3, spectral=False, threshold=0.0, activation="split_tanh", drop_rate=0.0,
                 density=None, storage="compact", global_pool="avg"):
        super().__init__()
        check_spectral_kwargs(type(self).__name__, spectral, threshold, activation, density, storage)
        stages, chans = [], in_chans
        for widths, norm in _STAGES:
            pool = nn.MaxPool2d(2)
            if spectral:
                stages.append(SpectralStage(chans, widths, 3, threshold, activation, norm=norm, pool=pool,
                                            density=layer_density(density), storage=storage))
            else:
                stages.append(ConvStage(chans, widths, 3, norm=norm, pool=pool))
            chans = widths[-1]
        self.stages = nn.Sequential(*stages)
        head = ClassifierHead(chans, num_classes, pool_size=4, hidden=(1024, 1024), drop_rate=drop_rate,
                              global_pool=global_pool)
        self._finish(head, reductions=(2, 4, 8), in_chans=in_chans, num_classes=num_classes)
        per_layer_density(self, density)


def _create_alexnet(variant, pretrained=False, **kwargs):
    return build(AlexNetCifar, variant, pretrained, num_stages=len(_STAGES), **kwargs)


default_cfgs = generate_default_cfgs(with_weights({
    "alexnet_cifar.cifar10": cfg(pool_size=(4, 4)),
    "specalexnet.cifar10": cfg(pool_size=(4, 4)),
}))


@register_model
def alexnet_cifar(pretrained=False, **kwargs) -> AlexNetCifar:
    """SpecNet Table 4's AlexNet (3x3 convs 24/96/192/192/96, BN on the last three, FC 1024/1024)."""
    return _create_alexnet("alexnet_cifar", pretrained, **kwargs)


@register_model
def specalexnet(pretrained=False, **kwargs) -> AlexNetCifar:
    """SpecAlexNet: SpecNet Table 4, the last three convolutions in one spectral block."""
    return _create_alexnet("specalexnet", pretrained, spectral=True, **kwargs)


# timm model-suite checks that cannot apply (scripts/timm_conformance.py deselects exactly these).
exclude_from_timm_tests(["specalexnet"], ["test_model_forward_torchscript", "test_model_forward_fx_torchscript"], SPECNET_NO_TORCHSCRIPT)
