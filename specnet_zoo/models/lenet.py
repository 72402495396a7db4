"""LeNet and SpecLeNet exactly as SpecNet (Guan et al. 2019) appendix Table 3, for 28x28 MNIST.

Table 3: 'valid' 5x5 convolutions, 28 -> conv(6) 24 -> pool 12 -> conv(16) 8 -> pool 4, then FC(120)
-> FC(80) -> classes: 43,902 parameters. SpecLeNet runs each convolution as a SpecNet block (FFT of
the input zero-padded to M + N_k - 1 = 32, product, threshold, split tanh, IFFT, crop to the valid
24 x 24) followed by 2x2 max pooling; the spatial twin uses ReLU. Both have the same parameters.
Reading: Table 3 prints 15 x 15 for the second block's FFT; 12 + 5 - 1 = 16 is what its own rule
(and a linear product) gives, so the second block uses 16 x 16 (docs/fidelity.md).
"""
from __future__ import annotations

from timm.models import generate_default_cfgs
from torch import nn

from ..pretrained import with_weights
from ._base import (
    MNIST_CFG,
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

__all__ = ["LeNet"]

_WIDTHS = (6, 16)


class LeNet(StagedClassifier):
    """SpecNet Table 3's LeNet ('valid' 5x5 convolutions, FC 120/80); ``spectral=True`` gives SpecLeNet.

    Args:
        num_classes: classifier outputs (0 for features only).
        in_chans: input channels (1 for MNIST).
        spectral: SpecNet blocks instead of Conv2d + ReLU.
        threshold: SpecNet beta (spectral only).
        activation: spectral activation (spectral only), 'split_tanh' by default.
        density: kept fraction of each spectrum instead of a fixed threshold, one value or one per spectral
            conv (spectral only).
        storage: what backward keeps: "compact", "float16", "int8" or "dense" (spectral only).
        drop_rate: dropout after each hidden fully connected layer.
        global_pool: 'avg' (the head's pooling) or '' with num_classes=0 for unpooled features.

    Shape: (N, in_chans, H, W) -> (N, num_classes), H, W >= 16; stage outputs (N, 6, (H - 4) / 2, ...) and
    (N, 16, ((H - 4) / 2 - 4) / 2, ...): 12 x 12 and 4 x 4 at 28 x 28.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        spectral: bool = False,
        threshold: float = 0.0,
        activation: str | nn.Module | None = "split_tanh",
        drop_rate: float = 0.0,
        density: float | None = None,
        storage: str = "compact",
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        check_spectral_kwargs(type(self).__name__, spectral, threshold, activation, density, storage)
        stages, chans = [], in_chans
        for width in _WIDTHS:
            pool = nn.MaxPool2d(2)
            if spectral:
                stages.append(SpectralStage(chans, [width], 5, threshold, activation, pool=pool, padding="valid",
                                            density=layer_density(density), storage=storage))
            else:
                stages.append(ConvStage(chans, [width], 5, pool=pool, padding="valid"))
            chans = width
        self.stages = nn.Sequential(*stages)
        head = ClassifierHead(chans, num_classes, pool_size=4, hidden=(120, 80), drop_rate=drop_rate,
                              global_pool=global_pool)
        self._finish(head, reductions=(2, 4), in_chans=in_chans, num_classes=num_classes)
        per_layer_density(self, density)


def _create_lenet(variant: str, pretrained: bool = False, **kwargs) -> LeNet:
    return build(LeNet, variant, pretrained, num_stages=len(_WIDTHS), **kwargs)


default_cfgs = generate_default_cfgs(with_weights({
    "lenet5.mnist": cfg(**MNIST_CFG, pool_size=(4, 4)),
    "speclenet.mnist": cfg(**MNIST_CFG, pool_size=(4, 4)),
}))


@register_model
def lenet5(pretrained: bool = False, **kwargs) -> LeNet:
    """SpecNet Table 3's LeNet ('valid' 5x5 convs, ReLU, FC 120/80), the spatial twin of SpecLeNet."""
    return _create_lenet("lenet5", pretrained, **kwargs)


@register_model
def speclenet(pretrained: bool = False, **kwargs) -> LeNet:
    """SpecLeNet: SpecNet Table 3, one spectral block per 'valid' 5x5 convolution."""
    return _create_lenet("speclenet", pretrained, spectral=True, **kwargs)


# timm model-suite checks that cannot apply (scripts/timm_conformance.py deselects exactly these).
exclude_from_timm_tests(["lenet5", "speclenet"], ["test_model_forward_features"],
                        "LeNet-5 has two convolution stages, so two feature levels; timm's test asserts at least three")
exclude_from_timm_tests(["speclenet"], ["test_model_forward_torchscript", "test_model_forward_fx_torchscript"], SPECNET_NO_TORCHSCRIPT)
