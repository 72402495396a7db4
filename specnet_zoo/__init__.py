"""specnet-zoo: spectral-domain CNNs (Rippel et al. 2015; Guan et al. 2019, SpecNet)."""
from . import layers

__version__ = "0.1.0"

__all__ = ["layers", "__version__"]
