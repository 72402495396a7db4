"""VGG-16 with batch norm for 32x32 input and SpecVGG16 (SpecNet, Guan et al. 2019, appendix Table 5).

VGG-16's 13 3x3 convolutions in five stages (64, 128, 256, 512, 512 channels), 2x2 max pooling after
each, then a 512 -> 512 -> classes head (the CIFAR variant; SpecNet's table gives no more, so the
rest follows VGG-16). The spatial twin has BatchNorm + ReLU after every convolution. In SpecVGG16
each stage is one SpecNet block: all its convolutions stay spectral (product, threshold, split tanh),
one IFFT, then BatchNorm and max pooling. Convolution and head parameters are identical; SpecVGG16
has one BatchNorm per stage instead of one per convolution (5 instead of 13), so 5,504 fewer
parameters. At 32x32 the last stage sees 2x2 maps with 3x3 kernels, which the spectral blocks allow.

SpecNet's Table 5 itself shows a smaller network under the name VGG-16: three stages ending at 4x4
(spatial 64, 64 | 128, 128 | 256, 256, 256 with BN; spectral blocks of 2, 2 and 2 convolutions), then
FC(512) on the 256 x 4 x 4 features. It is registered as ``vgg_t5_cifar`` / ``specvgg_t5``, exactly as
printed (the spectral twin has one 256-channel convolution fewer; docs/fidelity.md).
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

__all__ = ["VggCifar"]

_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# SpecNet Table 5 as printed: (spatial stages, spectral stages, head pool size)
_TABLE5 = (((64, 64), (128, 128), (256, 256, 256)), ((64, 64), (128, 128), (256, 256)), 4)


class VggCifar(StagedClassifier):
    """VGG-16-BN for small images (or SpecNet Table 5's network, ``table5=True``); ``spectral=True`` gives SpecVGG.

    Args:
        num_classes, in_chans: classifier outputs (0: features only) and input channels.
        spectral: one SpecNet block per stage instead of Conv2d + BN + ReLU per convolution.
        threshold, activation: SpecNet beta and spectral activation (spectral only).
        density, storage: per-sample kept fraction instead of beta (one value, or one per spectral conv);
            what backward keeps: "compact", "float16", "int8" or "dense" (spectral only).
        global_pool: 'avg' (the head's pooling) or '' with num_classes=0 for unpooled features.
        drop_rate: dropout after the hidden fully connected layer.
        table5: SpecNet Table 5's three-stage network instead of VGG-16.

    Shape: (N, 3, H, W) -> (N, num_classes), H, W >= 32; stages reduce by 2, 4, 8, 16, 32 (Table 5: 2, 4, 8).
    """

    def __init__(self, num_classes=10, in_chans=3, spectral=False, threshold=0.0, activation="split_tanh", drop_rate=0.0,
                 density=None, storage="compact", global_pool="avg", table5=False):
        super().__init__()
        check_spectral_kwargs(type(self).__name__, spectral, threshold, activation, density, storage)
        spatial_widths, spectral_widths, pool_size = _TABLE5 if table5 else (_STAGES, _STAGES, 1)
        stages, chans = [], in_chans
        for widths in spectral_widths if spectral else spatial_widths:
            pool = nn.MaxPool2d(2)
            if spectral:
                stages.append(SpectralStage(chans, widths, 3, threshold, activation, norm=True, pool=pool,
                                            allow_small_input=True,
                                            density=layer_density(density), storage=storage))
            else:
                stages.append(ConvStage(chans, widths, 3, norm=True, pool=pool))
            chans = widths[-1]
        self.stages = nn.Sequential(*stages)
        head = ClassifierHead(chans, num_classes, pool_size=pool_size, hidden=(512,), drop_rate=drop_rate,
                              global_pool=global_pool)
        self._finish(head, reductions=(2, 4, 8, 16, 32)[: len(stages)], in_chans=in_chans, num_classes=num_classes)
        per_layer_density(self, density)


def _create_vgg(variant, pretrained=False, **kwargs):
    return build(VggCifar, variant, pretrained, num_stages=3 if kwargs.get("table5") else len(_STAGES), **kwargs)


default_cfgs = generate_default_cfgs(with_weights({
    "vgg16_cifar.cifar10": cfg(),
    "specvgg16.cifar10": cfg(),
    "vgg_t5_cifar.cifar10": cfg(pool_size=(4, 4)),
    "specvgg_t5.cifar10": cfg(pool_size=(4, 4)),
}))


@register_model
def vgg16_cifar(pretrained=False, **kwargs) -> VggCifar:
    """VGG-16 with BatchNorm and a 512 FC head for 32x32 input, the spatial twin of SpecVGG16."""
    return _create_vgg("vgg16_cifar", pretrained, **kwargs)


@register_model
def specvgg16(pretrained=False, **kwargs) -> VggCifar:
    """SpecVGG16: VGG-16 with one SpecNet block per stage (SpecNet Table 5)."""
    return _create_vgg("specvgg16", pretrained, spectral=True, **kwargs)



@register_model
def vgg_t5_cifar(pretrained=False, **kwargs) -> VggCifar:
    """SpecNet Table 5's "VGG-16" as printed: 2+2+3 3x3 convs with BN to 4x4, FC 512."""
    return _create_vgg("vgg_t5_cifar", pretrained, table5=True, **kwargs)


@register_model
def specvgg_t5(pretrained=False, **kwargs) -> VggCifar:
    """SpecNet Table 5's SpecVGG as printed: spectral blocks of 2, 2 and 2 convs, FC 512."""
    return _create_vgg("specvgg_t5", pretrained, spectral=True, table5=True, **kwargs)


# timm model-suite checks that cannot apply (scripts/timm_conformance.py deselects exactly these).
exclude_from_timm_tests(["specvgg16", "specvgg_t5"], ["test_model_forward_torchscript", "test_model_forward_fx_torchscript"], SPECNET_NO_TORCHSCRIPT)
