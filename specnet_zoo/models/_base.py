"""Pieces every specnet-zoo model shares: stages, the classifier head, the timm model interface.

A model is ``stages`` (an ``nn.Sequential``; each stage's output is one ``feature_info`` entry) followed
by ``head`` (pool -> flatten -> optional MLP "pre-logits" -> ``fc``). Spectral and spatial twins
differ only in how their stages are built, so their heads, parameter names and interfaces match.
"""
from __future__ import annotations

from typing import Callable, Sequence

import timm.models
import torch
from torch import nn

from ..layers import SpectralBlock, spectral_conv_chain
from ..layers.compact import NormPool, can_replay

__all__ = ["ClassifierHead", "ConvStage", "SpectralStage", "StagedClassifier", "register_model", "specnet_model_names"]

_MODEL_NAMES: list[str] = []

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def register_model(fn: Callable) -> Callable:
    """timm's ``register_model`` that also records the name as a specnet-zoo model."""
    fn = timm.models.register_model(fn)
    if fn.__name__ not in _MODEL_NAMES:
        _MODEL_NAMES.append(fn.__name__)
    return fn


def specnet_model_names() -> list[str]:
    """Every architecture registered by specnet-zoo, in registration order."""
    return list(_MODEL_NAMES)


def cfg(**kwargs) -> dict:
    """A pretrained cfg for 32x32 CIFAR-style models; override per model."""
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "stages.0.convs.0",
        "classifier": "head.fc",
        "license": "apache-2.0",
        **kwargs,
    }


def layer_density(density):
    """The density each layer is built with: a single value as is; a per-layer sequence is set afterwards."""
    return density if density is None or isinstance(density, (int, float)) else None


def per_layer_density(model: nn.Module, density) -> None:
    """Apply a per-layer density sequence (one value per spectral convolution, in module order)."""
    if not (density is None or isinstance(density, (int, float))):
        from ..layers import set_spectral_density

        set_spectral_density(model, density)


def check_spectral_kwargs(
    model: str, spectral: bool, threshold: float, activation, density=None, storage: str = "compact"
) -> None:
    """SpecNet's threshold/density/activation/storage mean nothing to a spatial twin: reject, never ignore."""
    if not spectral and (threshold != 0.0 or activation != "split_tanh" or density is not None or storage != "compact"):
        raise ValueError(
            f"{model}: threshold, density, activation and storage configure SpecNet blocks and apply to the spectral "
            f"twin only (got threshold={threshold!r}, density={density!r}, activation={activation!r}, storage={storage!r})"
        )


class ConvStage(nn.Module):
    """Spatial stage: [Conv2d('same') -> (BatchNorm) -> ReLU] per width, then ``pool``.

    Shape: (N, C_in, H, W) -> (N, widths[-1], pool(H), pool(W)).
    """

    def __init__(
        self,
        in_chs: int,
        widths: Sequence[int],
        kernel_size: int = 3,
        norm: bool = False,
        pool: nn.Module | None = None,
        pool_out: Callable[[int], int] = lambda n: n,
    ) -> None:
        super().__init__()
        chans = [in_chs, *widths]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size, padding="same") for a, b in zip(chans[:-1], chans[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) if norm else nn.Identity() for c in widths)
        self.act = nn.ReLU(inplace=True)
        self.pool = pool if pool is not None else nn.Identity()
        self.min_size = 1
        self.out_size = pool_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = self.act(norm(conv(x)))
        return self.pool(x)


class SpectralStage(nn.Module):
    """SpecNet stage: one :class:`SpectralBlock` (FFT once, all convs spectral, IFFT), (BatchNorm), ``pool``.

    ``threshold`` or ``density`` set each convolution's sparsity, ``storage`` what backward keeps.

    Parameter names ``convs.{i}.weight/bias`` match :class:`ConvStage`'s, so twins share checkpoints'
    convolution weights.
    """

    def __init__(
        self,
        in_chs: int,
        widths: Sequence[int],
        kernel_size: int = 3,
        threshold: float = 0.0,
        activation: str | nn.Module | None = "split_tanh",
        norm: bool = False,
        pool: nn.Module | None = None,
        pool_out: Callable[[int], int] = lambda n: n,
        allow_small_input: bool = False,
        density: float | None = None,
        storage: str = "compact",
    ) -> None:
        super().__init__()
        block = SpectralBlock(in_chs, list(widths), kernel_size, threshold, activation,
                              allow_small_input=allow_small_input, density=density, storage=storage)
        self.convs = block.convs
        self.norm = nn.BatchNorm2d(widths[-1]) if norm else nn.Identity()
        self.pool = pool if pool is not None else nn.Identity()
        self.min_size = 1 if allow_small_input else kernel_size
        self.out_size = pool_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm and pooling are replayed in backward from the block's packed spectra, so neither the
        # block output nor the normalised map is kept.
        if can_replay(self.norm, self.pool):
            return spectral_conv_chain(x, list(self.convs), epilogue=NormPool(self.norm, self.pool))
        return self.pool(self.norm(spectral_conv_chain(x, list(self.convs))))


class ClassifierHead(nn.Module):
    """Adaptive average pool to ``pool_size`` -> flatten -> [Linear -> ReLU -> Dropout]* -> (Dropout) -> ``fc``.

    ``pool_size`` equals the last map size at the default input, so the pool is the identity there and
    lets other input sizes reach the same fully connected layers.
    """

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        pool_size: int = 1,
        hidden: Sequence[int] = (),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.flatten = nn.Flatten(1)
        layers: list[nn.Module] = []
        width = in_chs * pool_size * pool_size
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
            width = size
        self.pre_logits = nn.Sequential(*layers)
        self.drop = nn.Dropout(drop_rate) if not hidden and drop_rate > 0 else nn.Identity()
        self.num_features = width
        self.fc = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.flatten(self.pool(x)))
        return x if pre_logits else self.fc(self.drop(x))


class StagedClassifier(nn.Module):
    """timm model interface over ``stages`` + ``head``.

    Subclasses build ``self.stages`` (each stage with ``min_size`` and ``out_size(n)``) and call
    :meth:`_finish` with the head. Provides ``num_features``, ``feature_info``, ``forward_features``,
    ``forward_head(x, pre_logits=False)``, ``get_classifier``, ``reset_classifier`` and a clear error
    for inputs smaller than the architecture allows.
    """

    stages: nn.Sequential
    head: ClassifierHead

    def _finish(self, head: ClassifierHead, reductions: Sequence[int], in_chans: int, num_classes: int) -> None:
        self.head = head
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = head.num_features
        self.head_hidden_size = head.num_features
        self.feature_info = [
            dict(num_chs=_stage_channels(stage), reduction=r, module=f"stages.{i}")
            for i, (stage, r) in enumerate(zip(self.stages, reductions))
        ]
        self.min_input_size = self._min_input_size()

    def _min_input_size(self) -> int:
        for n in range(1, 4097):
            size = n
            for stage in self.stages:
                if size < stage.min_size:
                    break
                size = stage.out_size(size)
                if size < 1:
                    break
            else:
                return n
        raise RuntimeError(f"{type(self).__name__} accepts no input up to 4096 pixels")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} expects {self.in_chans} input channels, got {x.shape[1]}")
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"{type(self).__name__} needs inputs of at least {self.min_input_size}x{self.min_input_size} "
                f"pixels, got {x.shape[-2]}x{x.shape[-1]}"
            )

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"only average pooling heads are supported, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _stage_channels(stage: nn.Module) -> int:
    channels = getattr(stage, "out_chs", None)
    if channels is not None:
        return channels
    return stage.convs[-1].out_channels


def build(model_cls, variant: str, pretrained: bool, num_stages: int, **kwargs):
    """``timm.models.build_model_with_cfg`` with ``features_only`` returning every stage by default.

    Unlike timm, ``pretrained=True`` without any weight source is an error, not a warning followed
    by random weights.
    """
    if pretrained:
        from timm.models import resolve_pretrained_cfg

        resolved = resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")
        )
        if not resolved.has_weights:
            tag = f"{variant}.{resolved.tag}" if resolved.tag else variant
            raise RuntimeError(
                f"no pretrained weights are published for {tag} yet; train them with a recipe, or pass "
                "pretrained_cfg_overlay=dict(file='model.safetensors') to load local weights"
            )
    return timm.models.build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(num_stages))),
        **kwargs,
    )
