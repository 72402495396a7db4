"""Where specnet-zoo looks for local data: ``$SPECNET_ZOO_SHARED_DATA`` or ``<checkout>/../shared/data``."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SPECNET_ZOO_SHARED_DATA"


def shared_data_dir() -> Path:
    """The shared real-data folder (may not exist in a user's clone; callers check)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"
