"""Lightning training: :class:`ImageClassifier` and the ``specnet-zoo`` LightningCLI."""
from .module import ImageClassifier

__all__ = ["ImageClassifier"]
