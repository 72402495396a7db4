"""Operator calls per training step: the launch and Python overhead a GPU cannot hide (issue 10).

Counted with a TorchDispatchMode on the CPU, so the numbers are exact and device-independent. Every
spectral convolution is one kernel-spectrum GEMM and one batched GEMM forward, two batched GEMMs and two
small GEMMs backward, whatever the batch size (no frequency chunks).
"""
import pytest
import torch

import specnet_zoo
from specnet_zoo.constants import PAPER_PAIRS
from specnet_zoo.layers import SpectralConv2d
from specnet_zoo.profiling import count_ops

MEMORY_SETTING = {"density": 0.2, "storage": "int8"}
# Measured ceilings at the memory setting (the target is 3x; density, int8 packing and the
# bitmask add ~30 small ops per convolution: see docs/performance.md). A regression fails here.
MEMORY_SETTING_CEILING = {"speclenet": 3.0, "specalexnet": 3.7, "specvgg16": 4.3, "specdensenet": 3.0}


def step_calls(name: str, batch: int, **kwargs):
    torch.manual_seed(0)
    model = specnet_zoo.create_model(name, **kwargs).train()
    x = torch.randn(batch, *model.pretrained_cfg["input_size"])
    target = torch.randint(0, model.num_classes, (batch,))

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), target).backward()

    step()  # constant caches (tap phases, bit weights) fill on the first step
    return count_ops(step)


@pytest.mark.parametrize("spectral,spatial", [(s, t) for s, t, _ in PAPER_PAIRS])
def test_step_operator_calls_against_the_twin_and_independent_of_batch(spectral, spatial):
    twin = sum(step_calls(spatial, 3).values())
    for kwargs, ceiling in (({}, 3.0), (MEMORY_SETTING, MEMORY_SETTING_CEILING[spectral])):
        small, large = step_calls(spectral, 2, **kwargs), step_calls(spectral, 5, **kwargs)
        assert small == large, f"{spectral} {kwargs}: the operator calls depend on the batch size"
        assert sum(small.values()) <= ceiling * twin, (spectral, kwargs, sum(small.values()), twin)


def test_each_convolution_is_one_batched_gemm_forward_and_two_backward():
    model = specnet_zoo.create_model("specvgg16")
    convs = sum(isinstance(m, SpectralConv2d) for m in model.modules())
    calls = step_calls("specvgg16", 2)
    assert calls["aten.bmm"] == 3 * convs - 1  # the first convolution needs no input gradient
    # kernel spectra forward and backward (not for the first convolution's input gradient), weight
    # gradients, and the head's linear layers
    assert calls["aten.mm"] == 3 * convs - 1 + 4
    assert calls["aten._fft_r2c"] + calls["aten._fft_c2r"] <= 6 * 5  # a handful of FFTs per block, not per conv
