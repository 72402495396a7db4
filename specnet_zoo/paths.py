"""Where specnet-zoo looks for local data: ``$SPECNET_ZOO_SHARED_DATA`` or ``<checkout>/../shared/data``."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SPECNET_ZOO_SHARED_DATA"


def shared_data_dir() -> Path:
    """The shared real-data folder (may not exist in a user's clone; callers check)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return checkout_dir().parent / "shared" / "data"


def checkout_dir() -> Path:
    """The repository checkout this package runs from (recipes/, model_cards/ live there)."""
    return Path(__file__).resolve().parents[1]


def recipe_for_tag(tag: str) -> Path | None:
    """The recipe that trains pretrained tag ``model.dataset``: ``recipes/zoo/<tag>.yaml``, else the default
    ``recipes/<dataset>_<model>.yaml``; None when neither exists."""
    model, _, dataset = tag.partition(".")
    recipes = checkout_dir() / "recipes"
    for recipe in (recipes / "zoo" / f"{tag}.yaml", recipes / f"{dataset}_{model}.yaml"):
        if recipe.is_file():
            return recipe
    return None
