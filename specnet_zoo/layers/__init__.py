"""Spectral layers in pure torch: one file per idea, shapes and equations in each docstring."""
from .frequency_dropout import FrequencyDropout, frequency_dropout_schedule
from .spectral_conv import (
    SpectralBlock,
    SpectralConv2d,
    block_fft_size,
    fast_fft_size,
    set_spectral_density,
    spectral_conv_chain,
    spectral_densities,
)
from .spectral_param import (
    SpectralKernel,
    SpectralParamConv2d,
    despectralize,
    is_spectrally_parametrized,
    spectral_kernel_basis,
    spectralize,
)
from .spectral_pool import SpectralPool2d, spectral_pool2d
from .spectral_resize import spectral_resize2d
from .split_tanh import SplitTanh, split_tanh

__all__ = [
    "FrequencyDropout",
    "SpectralBlock",
    "SpectralConv2d",
    "SpectralKernel",
    "SpectralParamConv2d",
    "SpectralPool2d",
    "SplitTanh",
    "despectralize",
    "block_fft_size",
    "fast_fft_size",
    "frequency_dropout_schedule",
    "is_spectrally_parametrized",
    "set_spectral_density",
    "spectral_conv_chain",
    "spectral_densities",
    "spectral_kernel_basis",
    "spectral_pool2d",
    "spectral_resize2d",
    "spectralize",
    "split_tanh",
]
