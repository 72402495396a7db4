"""Lightning training: :class:`ImageClassifier` and the ``specnet-zoo`` LightningCLI."""
from .callbacks import EpochTimer, MemoryMonitor
from .module import ImageClassifier

__all__ = ["EpochTimer", "ImageClassifier", "MemoryMonitor"]
