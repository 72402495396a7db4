"""specnet-zoo architectures, registered in timm's registry on import (one module per family).

Import order is the order of ``specnet_model_names()`` and of the README model table.
"""
from . import lenet  # noqa: F401,I001  (imports register the models)
from . import alexnet  # noqa: F401
from . import vgg_cifar  # noqa: F401
from . import densenet_cifar  # noqa: F401
from . import rippel  # noqa: F401
from ._base import StagedClassifier, specnet_model_names, timm_test_exclusions
from .alexnet import AlexNetCifar
from .densenet_cifar import DenseNetCifar, DenseNetTable1
from .lenet import LeNet
from .rippel import RippelNet
from .vgg_cifar import VggCifar

__all__ = ["AlexNetCifar", "DenseNetCifar", "DenseNetTable1", "LeNet", "RippelNet", "StagedClassifier", "VggCifar", "specnet_model_names",
           "timm_test_exclusions"]
