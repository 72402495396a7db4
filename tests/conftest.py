import os
from pathlib import Path

import pytest
import torch

from specnet_zoo.paths import shared_data_dir
from specnet_zoo.reproduce.info_preservation import load_photos


def _require(path: Path) -> Path:
    if path.exists():
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the real data {path} is missing; CI must run every data test")
    pytest.skip(f"real data not found at {path} (set SPECNET_ZOO_SHARED_DATA or put ../shared/data beside the repo)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(shared_data_dir())


@pytest.fixture(scope="session")
def photos(shared_data) -> list[torch.Tensor]:
    """The 15 photographs as float64 (C, H, W) tensors in [0, 1]."""
    images = load_photos(_require(shared_data / "photos"))
    assert len(images) == 15
    return images


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
