"""specnet-zoo: spectral-domain CNNs (Rippel et al. 2015; Guan et al. 2019, SpecNet).

Importing the package registers every architecture in timm's registry, so both
``specnet_zoo.create_model("specdensenet")`` and ``timm.create_model("specvgg16")`` work.
"""
from . import layers, models
from ._factory import UnknownModelError, create_model, list_models, list_pretrained, model_table, spatial_twin

__version__ = "0.1.0"

__all__ = ["UnknownModelError", "create_model", "layers", "list_models", "list_pretrained", "model_table", "models",
           "spatial_twin", "__version__"]
