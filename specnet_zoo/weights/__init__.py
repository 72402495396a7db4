"""Bundled pretrained weights (``<model>.<tag>.safetensors``) and ``manifest.json``; see :mod:`specnet_zoo.pretrained`."""
