"""Property-based fuzzing of every public layer and model with random shapes, dtypes, values and hyperparameters.

Each call either returns an output of the documented shape (finite for finite input) or raises
``ValueError``/``TypeError`` whose message names what was wrong; never an error from inside torch.
``SPECNET_FUZZ_EXAMPLES`` sets the examples per test (default 100); runs are derandomized so CI is repeatable.
"""
import math
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specnet_zoo
from specnet_zoo.layers import (
    FrequencyDropout,
    SpectralBlock,
    SpectralConv2d,
    SpectralParamConv2d,
    SpectralPool2d,
    SplitTanh,
    spectral_pool2d,
    spectral_resize2d,
)
from specnet_zoo.layers.spectral_pool import pooled_size
from specnet_zoo.models import specnet_model_names

EXAMPLES = int(os.environ.get("SPECNET_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Mostly valid draws (so most examples reach the computation), with every kind of bad value mixed in.
DTYPES = [torch.float32] * 6 + [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.complex64, torch.bool]
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Words a clear error uses to say which argument or input property was wrong.
INPUT_WORDS = ("input", "tensor", "dtype", "channels", "size", "kernel", "map", "spectrum", "pixels", "shape")
ODD_NUMBERS = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, 2.0])
THRESHOLDS = st.one_of(st.sampled_from([0.0, 0.0, 0.0, 1e-3, 0.1, 0.5, 1.0]), ODD_NUMBERS)
DENSITIES = st.one_of(st.sampled_from([None, None, None, 1e-3, 0.1, 0.5, 1.0]), ODD_NUMBERS)


@st.composite
def images(draw, channels=None, min_size=1, max_size=12):
    """(tensor, finite) with random batch (0..3), channels, spatial size, dtype and non-finite entries."""
    n = draw(st.integers(0, 3))
    c = channels if channels is not None else draw(st.integers(1, 4))
    h, w = draw(st.integers(min_size, max_size)), draw(st.integers(min_size, max_size))
    dtype = draw(st.sampled_from(DTYPES))
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    special = draw(st.sampled_from(["none"] * 5 + ["nan", "inf", "huge"]))
    if special != "none" and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = {"nan": math.nan, "inf": math.inf, "huge": 1e30}[special]
    if dtype.is_complex:
        x = torch.complex(x, x)
    else:
        x = (x * 3).to(dtype)
    finite = special in ("none", "huge") and bool(torch.isfinite(x.to(torch.complex128) if dtype.is_complex else x.double()).all())
    return x, finite and special != "huge"


def _call(build, run, names: tuple[str, ...]):
    """Build and run; None when a clear ValueError/TypeError was raised, else the output."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = build()
    except (ValueError, TypeError) as error:
        assert any(name in str(error) for name in names), f"constructor error names no argument: {error}"
        return None
    try:
        return run(module)
    except (ValueError, TypeError) as error:
        assert any(word in str(error) for word in INPUT_WORDS + names), f"error names nothing: {error}"
        return None


def _check(out, shape, finite: bool, dtype=None):
    assert tuple(out.shape) == tuple(shape)
    if dtype is not None:
        assert out.dtype == dtype
    if finite:
        assert torch.isfinite(out).all()


def _forward(module, x, train: bool):
    module.train(train)
    if train and x.is_floating_point():
        x = x.detach().requires_grad_()
        out = module(x)
        if out.requires_grad:
            out.float().sum().backward()
        return out.detach()
    with torch.no_grad():
        return module(x)


@FUZZ
@given(data=images(max_size=14), size=st.one_of(st.integers(-1, 15), st.tuples(st.integers(0, 15), st.integers(1, 15))),
       scale=st.one_of(st.none(), st.floats(0.05, 1.0), st.floats(-0.5, 1.5)),
       dropout=st.one_of(st.none(), st.floats(0.05, 1.0), st.floats(-0.2, 1.2)),
       method=st.sampled_from(["auto", "auto", "fft", "matmul", "bogus"]), train=st.booleans(), use_size=st.booleans())
def test_spectral_pool_fuzz(data, size, scale, dropout, method, train, use_size):
    x, finite = data
    kwargs = dict(output_size=size) if use_size or scale is None else dict(scale_factor=scale)
    out = _call(lambda: SpectralPool2d(**kwargs, frequency_dropout=dropout, method=method), lambda m: _forward(m, x, train),
                ("output_size", "scale_factor", "min_fraction", "method", "frequency_dropout"))
    if out is not None:
        h, w = x.shape[-2:]
        if "output_size" in kwargs:
            expected = (size, size) if isinstance(size, int) else size
        else:
            expected = (pooled_size(h, scale), pooled_size(w, scale))
        _check(out, (x.shape[0], x.shape[1], *expected), finite, x.dtype)


@FUZZ
@given(data=images(), size=st.tuples(st.integers(1, 20), st.integers(-1, 20)),
       fn=st.sampled_from([spectral_pool2d, spectral_resize2d]), method=st.sampled_from(["auto", "fft", "matmul"]))
def test_spectral_resize_functions_fuzz(data, size, fn, method):
    x, finite = data
    out = _call(lambda: None, lambda _: fn(x, size, method=method), ("output_size", "size", "method"))
    if out is not None:
        _check(out, (*x.shape[:2], *size), finite, x.dtype)


@FUZZ
@given(data=images(), min_fraction=st.one_of(st.floats(0.01, 1.0), st.floats(-0.5, 1.5), ODD_NUMBERS), per_sample=st.booleans(), train=st.booleans())
def test_frequency_dropout_fuzz(data, min_fraction, per_sample, train):
    x, finite = data
    out = _call(lambda: FrequencyDropout(min_fraction, per_sample=per_sample), lambda m: _forward(m, x, train),
                ("min_fraction",))
    if out is not None:
        _check(out, x.shape, finite, x.dtype)


@FUZZ
@given(data=images(), complex_input=st.booleans())
def test_split_tanh_fuzz(data, complex_input):
    x, finite = data
    if complex_input and not x.is_complex():
        x = torch.complex(x.float(), x.float()) if x.is_floating_point() else x
    out = _call(SplitTanh, lambda m: m(x), ("split_tanh",))
    if out is not None:
        assert x.is_complex()
        _check(out, x.shape, finite, x.dtype)
        assert out.real.abs().max() <= 1 if out.numel() and finite else True


BAD_KNOBS = [None] * 6 + ["dtype", "values", "out_channels", "kernel_size", "threshold", "density", "storage", "activation",
                         "size"]


@FUZZ
@given(draw=st.data(), block=st.booleans(), train=st.booleans())
def test_spectral_conv_fuzz(draw, block, train):
    bad = draw.draw(st.sampled_from(BAD_KNOBS), label="bad knob")

    def pick(knob, good, wrong):
        return draw.draw(wrong if bad == knob else good, label=knob)

    n, in_chs = draw.draw(st.integers(0, 3), label="batch"), draw.draw(st.integers(1, 4), label="in_channels")
    kernel = pick("kernel_size", st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 3), st.integers(1, 3))),
                  st.sampled_from([0, -1, (0, 2), 2.5]))
    side = max(kernel) if isinstance(kernel, tuple) else kernel
    min_side = side if isinstance(side, int) and side > 0 else 1
    h = pick("size", st.integers(min_side + 2, 12), st.integers(1, max(1, min_side - 1)))
    w = draw.draw(st.integers(min_side + 2, 12), label="width")
    dtype = pick("dtype", st.sampled_from([torch.float32, torch.float32, torch.float64, torch.float16, torch.bfloat16]),
                 st.sampled_from([torch.int64, torch.complex64, torch.bool]))
    x = torch.randn(n, in_chs, h, w) * 3
    if bad == "values" and x.numel():
        x.view(-1)[draw.draw(st.integers(0, x.numel() - 1))] = draw.draw(st.sampled_from([math.nan, math.inf]))
    x = torch.complex(x, x) if dtype.is_complex else x.to(dtype)
    finite = bad != "values"
    out_chs = pick("out_channels", st.integers(1, 4), st.sampled_from([0, -2]))
    sparsity = draw.draw(st.sampled_from(["threshold", "density", "none"]), label="sparsity")
    threshold = pick("threshold", st.sampled_from([0.1, 0.5, 1.0, 1e-3]) if sparsity == "threshold" else st.just(0.0),
                     ODD_NUMBERS)
    density = pick("density", st.sampled_from([1e-3, 0.1, 0.5, 1.0]) if sparsity == "density" else st.none(),
                   st.one_of(ODD_NUMBERS, st.just(0.0)))
    storage = pick("storage", st.sampled_from(["compact", "float16", "int8", "dense"]), st.just("sparse"))
    activation = pick("activation", st.sampled_from(["split_tanh", None]), st.just("relu"))
    dilation = 1 if block or isinstance(kernel, tuple) else draw.draw(st.integers(1, 2), label="dilation")
    names = ("in_channels", "out_channels", "channels", "kernel_size", "dilation", "threshold", "density", "storage",
             "activation")
    if block:
        first = kernel[0] if isinstance(kernel, tuple) else kernel

        def build():
            return SpectralBlock(in_chs, [out_chs, 2], first, threshold, activation, density=density, storage=storage)
        final = 2
    else:
        def build():
            return SpectralConv2d(in_chs, out_chs, kernel, dilation=dilation, threshold=threshold, density=density,
                                  storage=storage, activation=activation)
        final = out_chs
    out = _call(build, lambda m: _forward(m, x, train), names)
    if bad is None:
        assert out is not None, "a valid configuration must run"
    if out is not None:
        _check(out, (n, final, h, w), finite, x.dtype)


@FUZZ
@given(data=images(), out_chs=st.integers(1, 3), kernel=st.integers(1, 4), train=st.booleans())
def test_spectral_param_conv_fuzz(data, out_chs, kernel, train):
    x, finite = data
    out = _call(lambda: SpectralParamConv2d(x.shape[1], out_chs, kernel, padding="same"), lambda m: _forward(m, x, train),
                ("in_channels", "out_channels", "kernel_size"))
    if out is not None:
        _check(out, (x.shape[0], out_chs, *x.shape[-2:]), finite, x.dtype)


MODEL_NAMES = specnet_model_names()


MODEL_BAD_KNOBS = [None] * 6 + ["dtype", "values", "channels", "size", "num_classes", "threshold", "density", "storage",
                               "spectral_kwargs_on_spatial_twin"]
SPECNET_MODELS = ("speclenet", "specalexnet", "specvgg16", "specdensenet")


@FUZZ
@given(draw=st.data(), name=st.sampled_from(MODEL_NAMES), batch=st.integers(0, 2), train=st.booleans())
@pytest.mark.filterwarnings("ignore")
def test_model_fuzz(draw, name, batch, train):
    bad = draw.draw(st.sampled_from(MODEL_BAD_KNOBS), label="bad knob")

    def pick(knob, good, wrong):
        return draw.draw(wrong if bad == knob else good, label=knob)

    kwargs = {"num_classes": pick("num_classes", st.integers(0, 12), st.sampled_from([-1, -5]))}
    if name in SPECNET_MODELS:
        sparsity = draw.draw(st.sampled_from(["threshold", "density", "none"]), label="sparsity")
        if sparsity == "threshold" or bad == "threshold":
            kwargs["threshold"] = pick("threshold", st.sampled_from([0.01, 0.1, 0.5]), ODD_NUMBERS)
        if sparsity == "density" or bad == "density":
            kwargs["density"] = pick("density", st.sampled_from([0.05, 0.2, 1.0]), ODD_NUMBERS)
        kwargs["storage"] = pick("storage", st.sampled_from(["compact", "float16", "int8", "dense"]), st.just("bogus"))
    elif bad == "spectral_kwargs_on_spatial_twin":
        kwargs["threshold"] = 0.5
    dtype = pick("dtype", st.just(torch.float32), st.sampled_from([torch.float64, torch.float16, torch.int64, torch.complex64]))
    names = tuple(kwargs) + ("num_classes", "threshold", "density", "storage", "spectral twin")

    def build():
        return specnet_zoo.create_model(name, **kwargs)

    def run(model):
        c, h, w = model.pretrained_cfg["input_size"]
        c += pick("channels", st.just(0), st.sampled_from([-1, 1, 2])) if c > 1 else pick("channels", st.just(0), st.just(1))
        side = pick("size", st.sampled_from([0, 0, 4, 8]), st.sampled_from([-25, -31]))
        x = torch.randn(batch, c, max(1, h + side), max(1, w + side))
        if bad == "values" and x.numel():
            x.view(-1)[0] = math.nan
        return _forward(model, torch.complex(x, x) if dtype.is_complex else x.to(dtype), train)

    out = _call(build, run, names)
    if bad is None:
        assert out is not None, "a valid configuration must run"
    if out is not None:
        classes = kwargs["num_classes"]
        assert out.shape[0] == batch and (out.shape[1] == classes if classes > 0 else out.dim() == 2)
        if bad != "values":
            assert torch.isfinite(out).all()
