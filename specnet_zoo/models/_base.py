"""Pieces every specnet-zoo model shares: stages, the classifier head, the timm model interface.

A model is ``stages`` (an ``nn.Sequential``; each stage's output is one ``feature_info`` entry) followed
by ``head`` (pool -> flatten -> optional MLP "pre-logits" -> ``fc``). Spectral and spatial twins
differ only in how their stages are built, so their heads, parameter names and interfaces match.
"""
# No ``from __future__ import annotations``: FX writes the forward annotations into traced code, and
# TorchScript then needs real types, not strings.
from typing import Any, Sequence

import timm.models
import torch
from timm.models import (
    checkpoint_seq,
    register_notrace_function,
    register_notrace_module,
)
from torch import nn

from ..constants import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD
from ..layers import (
    FrequencyDropout,
    SpectralBlock,
    SpectralConv2d,
    SpectralPool2d,
    spectral_conv_chain,
)
from ..layers.compact import NormPool, can_replay

__all__ = ["ClassifierHead", "ConvStage", "SpectralStage", "StagedClassifier", "check_image_input", "check_input_dtype",
           "exclude_from_timm_tests", "pool_output_size", "register_model", "specnet_model_names", "timm_test_exclusions"]

_MODEL_NAMES: list[str] = []
_TIMM_TEST_EXCLUSIONS: dict[str, dict[str, str]] = {}

# FX tracing (timm's feature extraction, torchvision's create_feature_extractor) keeps these as leaves: their
# forward runs Python logic on shapes and a custom autograd Function, neither of which symbolic tracing follows.
for _leaf in (SpectralConv2d, SpectralBlock, SpectralPool2d, FrequencyDropout):
    register_notrace_module(_leaf)


def register_model(fn):
    """timm's ``register_model`` that also records the name as a specnet-zoo model."""
    fn = timm.models.register_model(fn)
    if fn.__name__ not in _MODEL_NAMES:
        _MODEL_NAMES.append(fn.__name__)
    return fn


def specnet_model_names() -> list[str]:
    """Every architecture registered by specnet-zoo, in registration order."""
    return list(_MODEL_NAMES)


def exclude_from_timm_tests(models: Sequence[str], tests: Sequence[str], reason: str) -> None:
    """Record that checks of timm's model test suite cannot apply to ``models``, and why.

    Declared next to the models they concern; ``scripts/timm_conformance.py`` deselects exactly these
    (model, test) cases when it runs timm's suite (``../shared/conformance/timm``).
    """
    for model in models:
        for test in tests:
            _TIMM_TEST_EXCLUSIONS.setdefault(model, {})[test] = reason


def timm_test_exclusions() -> dict[str, dict[str, str]]:
    """{model: {timm test function: reason}} for every declared exclusion."""
    return {model: dict(tests) for model, tests in _TIMM_TEST_EXCLUSIONS.items()}


# Why SpecNet blocks cannot be compiled by TorchScript (declared for each SpecNet model).
SPECNET_NO_TORCHSCRIPT = (
    "SpecNet blocks run a custom torch.autograd.Function (CompactChain, which decides what backward keeps) driven "
    "by a Python SpectralChain object; TorchScript compiles neither (and torch 2.14 deprecates torch.jit.script "
    "in favour of torch.compile / torch.export)"
)


def cfg(**kwargs) -> dict:
    """A pretrained cfg for 32x32 CIFAR-style models; override per model.

    ``pool_size`` is the spatial size of ``forward_features`` at ``input_size`` (timm's convention).
    """
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (1, 1),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "stages.0.convs.0",
        "classifier": "head.fc",
        "license": "apache-2.0",
        **kwargs,
    }


MNIST_CFG = dict(num_classes=10, input_size=(1, 28, 28), mean=MNIST_MEAN, std=MNIST_STD)


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


def spectral_settings(model: str, spectral: bool, threshold: float, activation, density, storage: str) -> dict:
    """Checked SpecNet keyword arguments for every spectral convolution of ``model`` (a per-layer density
    sequence is applied afterwards by :func:`per_layer_density`)."""
    check_spectral_kwargs(model, spectral, threshold, activation, density, storage)
    return dict(threshold=threshold, density=layer_density(density), activation=activation, storage=storage)


def pool_output_size(pool: nn.Module, n: int) -> int:
    """Spatial size after ``pool`` (identity, max or average pooling) for an input of size ``n``."""
    if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = (v if isinstance(v, int) else v[0] for v in (pool.kernel_size, pool.stride, pool.padding))
        return (n + 2 * p - k) // s + 1
    if isinstance(pool, nn.Identity):
        return n
    raise TypeError(f"no output-size rule for pooling module {type(pool).__name__}")


@register_notrace_function  # FX: shape checks branch on concrete sizes, so the tracer records one call instead
def check_image_input(x: torch.Tensor, in_chans: int, min_size: int, name: str) -> torch.Tensor:
    """Return ``x`` after checking it is a (N, in_chans, H, W) map with H, W >= ``min_size`` (else ``ValueError``)."""
    if x.dim() != 4:
        raise ValueError(f"{name} expects (N, C, H, W) input, got a {x.dim()}-D tensor of shape {list(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{name} expects {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)})")
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f"{name} needs inputs of at least {min_size}x{min_size} pixels, got {x.shape[2]}x{x.shape[3]}")
    return x


@register_notrace_function
def check_input_dtype(x: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """Return ``x`` unless its dtype differs from the model's ``dtype`` outside autocast (``TypeError``).

    torch would otherwise fail deep inside the first convolution ("Input type ... and bias type ...").
    """
    if torch.jit.is_scripting():
        autocast = torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
    else:
        autocast = torch.is_autocast_enabled(x.device.type)
    if x.dtype != dtype and not (x.is_floating_point() and autocast):
        raise TypeError(f"{name} expects {dtype} input (the dtype of its parameters), got {x.dtype}; "
                        "cast the input or the model, or run under torch.autocast")
    return x


class ConvStage(nn.Module):
    """Spatial stage: [Conv2d -> (BatchNorm) -> ReLU] per width, then ``pool``.

    ``kernel_size``: one size for every convolution or one per convolution. ``padding``: 'same' or 'valid'
    (each convolution shrinks the map by k - 1, as in SpecNet's LeNet).
    Shape: (N, C_in, H, W) -> (N, widths[-1], pool(H'), pool(W')), H' = H or H - len(widths) (k - 1).
    """

    def __init__(
        self,
        in_chs: int,
        widths: Sequence[int],
        kernel_size: int | Sequence[int] = 3,
        norm: bool = False,
        pool: nn.Module | None = None,
        padding: str = "same",
    ) -> None:
        super().__init__()
        chans = [in_chs, *widths]
        kernels = [kernel_size] * len(widths) if isinstance(kernel_size, int) else list(kernel_size)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, k, padding=padding) for a, b, k in zip(chans[:-1], chans[1:], kernels))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) if norm else nn.Identity() for c in widths)
        self.act = nn.ReLU(inplace=True)
        self.pool = pool if pool is not None else nn.Identity()
        self.shrink = sum(k - 1 for k in kernels) if padding == "valid" else 0
        self.min_size = 1 + self.shrink

    def out_size(self, n: int) -> int:
        return pool_output_size(self.pool, n - self.shrink)

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
        allow_small_input: bool = False,
        density: float | None = None,
        storage: str = "compact",
        padding: str = "same",
    ) -> None:
        super().__init__()
        block = SpectralBlock(in_chs, list(widths), kernel_size, threshold, activation,
                              allow_small_input=allow_small_input, density=density, storage=storage, padding=padding)
        self.convs = block.convs
        self.norm = nn.BatchNorm2d(widths[-1]) if norm else nn.Identity()
        self.pool = pool if pool is not None else nn.Identity()
        self.shrink = len(widths) * (kernel_size - 1) if padding == "valid" else 0
        self.min_size = max(1 if allow_small_input else kernel_size, 1 + self.shrink)

    def out_size(self, n: int) -> int:
        return pool_output_size(self.pool, n - self.shrink)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm and pooling are replayed in backward from the block's packed spectra, so neither the
        # block output nor the normalised map is kept.
        if can_replay(self.norm, self.pool):
            return spectral_conv_chain(x, list(self.convs), epilogue=NormPool(self.norm, self.pool))
        return self.pool(self.norm(spectral_conv_chain(x, list(self.convs))))


register_notrace_module(SpectralStage)

_GLOBAL_POOLS = ("avg", "")


class ClassifierHead(nn.Module):
    """Adaptive average pool to ``pool_size`` -> flatten -> [Linear -> ReLU -> Dropout]* -> (Dropout) -> ``fc``.

    ``pool_size`` equals the last map size at the default input, so the pool is the identity there and
    lets other input sizes reach the same fully connected layers. ``global_pool=""`` (with
    ``num_classes=0``) returns the unpooled (N, C, H, W) features, as timm heads do.

    ``num_features`` is the input channel count, ``hidden_size`` the width of the pre-logits features.
    """

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        pool_size: int = 1,
        hidden: Sequence[int] = (),
        drop_rate: float = 0.0,
        global_pool: str = "avg",
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
        self.num_features = in_chs
        self.hidden_size = width
        self.use_pool = True
        self.fc: nn.Module = nn.Identity()
        self.reset(num_classes, global_pool)

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in _GLOBAL_POOLS:
                raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
            self.use_pool = global_pool == "avg"
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if not self.use_pool and num_classes > 0:
            raise ValueError("global_pool='' returns unpooled features and needs num_classes=0, "
                             f"got num_classes={num_classes}")
        self.fc = nn.Linear(self.hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.use_pool:
            return x
        x = self.pre_logits(self.flatten(self.pool(x)))
        return x if pre_logits else self.fc(self.drop(x))


class StagedClassifier(nn.Module):
    """timm model interface over ``stages`` + ``head``.

    Subclasses build ``self.stages`` (each stage with ``min_size`` and ``out_size(n)``) and call
    :meth:`_finish` with the head. Provides ``num_features`` (channels of ``forward_features``),
    ``head_hidden_size`` (width of the pre-logits features), ``feature_info``, ``forward_features``,
    ``forward_head(x, pre_logits=False)``, ``get_classifier``, ``reset_classifier``,
    ``set_grad_checkpointing``, ``group_matcher`` and a clear error for inputs the architecture cannot take.
    """

    def _finish(self, head: ClassifierHead, reductions: Sequence[float], in_chans: int, num_classes: int) -> None:
        self.head = head
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = head.num_features
        self.head_hidden_size = head.hidden_size
        self.grad_checkpointing = False
        self.feature_info: list[dict[str, Any]] = [
            dict(num_chs=_stage_channels(stage), reduction=r, module=f"stages.{i}")
            for i, (stage, r) in enumerate(zip(self.stages, reductions))
        ]
        self.min_input_size = self._min_input_size()
        self.model_name = type(self).__name__

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

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay: stage 0 is the stem, then one group per stage."""
        return dict(stem=r"^stages\.0\.", blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.", None)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in backward instead of keeping its activations (timm's ``checkpoint_seq``)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New ``num_classes`` (0 removes the classifier); ``global_pool`` 'avg' or '' (unpooled features)."""
        self.head.reset(num_classes, global_pool)
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans, self.min_input_size, self.model_name)
        if not torch.jit.is_scripting():
            x = check_input_dtype(x, next(self.parameters()).dtype, self.model_name)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
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

    Pretrained weights are read by :mod:`specnet_zoo.pretrained` (safetensors only, sha256-checked, keys and
    shapes checked against the model with errors that name the file) and handed to timm's loader, which
    adapts the classifier to ``num_classes`` and the stem to ``in_chans``. A tag's recorded model arguments
    (e.g. ``threshold``) are defaults. Unlike timm, ``pretrained=True`` without weights is an error, not a
    warning followed by random weights.
    """
    filter_fn = None
    if pretrained:
        from timm.models import resolve_pretrained_cfg

        from ..pretrained import (
            WeightsNotFoundError,
            check_state_dict,
            load_pretrained_state,
            missing_weights_message,
            tag_model_args,
        )

        resolved = resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")
        )
        name_tag = f"{variant}.{resolved.tag}" if resolved.tag else variant
        if not resolved.has_weights and resolved.state_dict is None:
            raise WeightsNotFoundError(missing_weights_message(name_tag))
        if resolved.state_dict is None:
            cfg = resolved.to_dict()
            for key, value in tag_model_args(cfg, name_tag).items():
                kwargs.setdefault(key, value)
            state_dict, origin = load_pretrained_state(cfg, variant)
            skip = []
            if kwargs.get("num_classes", resolved.num_classes) != resolved.num_classes and resolved.classifier:
                skip.append(resolved.classifier + ".")
            if kwargs.get("in_chans", resolved.input_size[0]) != resolved.input_size[0] and resolved.first_conv:
                skip.append(resolved.first_conv + ".weight")

            def filter_fn(weights, model):
                check_state_dict(weights, model, origin, skip=tuple(skip))
                return weights

            overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, state_dict=state_dict, source=None)
            kwargs["pretrained_cfg_overlay"] = overlay
    model = timm.models.build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(num_stages))),
        pretrained_filter_fn=filter_fn,
        **kwargs,
    )
    if filter_fn is not None:  # keep the cfg describing the source, not holding the tensors
        model.pretrained_cfg.pop("state_dict", None)
        model.pretrained_cfg.update(source=cfg.get("source"), file=cfg.get("file"))
    return model
