"""Pretrained weights: the tag manifest, pretrained cfgs, and checked, offline-first loading.

Every ``model.tag`` has a timm pretrained cfg (``generate_default_cfgs``). Tags with weights are listed in
``specnet_zoo/weights/manifest.json`` (written by ``scripts/train_zoo.py``): sha256 and size of the
safetensors file, the model arguments it was trained with, measured test metrics, recipe, command,
hardware. Bundled files lie next to the manifest and load with no network; the others come from the
Hugging Face Hub (``hf_hub_download``: honours ``HF_HUB_OFFLINE`` and the cache) at a pinned revision.

Whatever the source (bundled file, ``file=`` override, ``hf-hub:``, ``local-dir:``), weights are read
only from safetensors, checked against the expected sha256 when one is known, and checked key by key
against the model before loading; every failure names the file and what is wrong.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["WEIGHTS_DIR", "WeightsError", "WeightsNotFoundError", "pretrained_info", "read_weights",
           "sha256_file", "with_weights"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"
HUB_ORG = "specnet-zoo"
WEIGHTS_FILE = "model.safetensors"
PAPER_IDS = {"rippel": "arxiv:1506.03767", "specnet": "arxiv:1905.10915"}
# Datasets nothing here can train on, and why (their tags stay listed without weights).
UNAVAILABLE_DATA = {
    "svhn": "SVHN cannot be downloaded on the development machine (no network)",
    "imagenet": "ImageNet cannot be downloaded on the development machine (no network)",
}


class WeightsError(RuntimeError):
    """A weight file is unusable: corrupted, altered, truncated, or for another architecture."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights for a tag, or a file that cannot be had (offline and not cached)."""


@functools.lru_cache(maxsize=None)
def _manifest(path: Path = MANIFEST) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else {}


def pretrained_info(name_tag: str) -> dict[str, Any] | None:
    """Manifest entry of ``model.tag`` (sha256, metrics, model_args, recipe, command, hardware), or None."""
    return _manifest().get(name_tag)


def _paper_ids(model: str) -> tuple[str, ...]:
    rippel = model.startswith(("rippel", "specpool", "specparam"))
    return (PAPER_IDS["rippel"],) if rippel else (PAPER_IDS["specnet"],)


def with_weights(cfgs: dict[str, dict]) -> dict[str, dict]:
    """Add each tag's weight source (bundled file, Hub id at a pinned revision) or why it has none.

    Used as ``generate_default_cfgs(with_weights({...}))`` in every model file.
    """
    out = {}
    for name_tag, base in cfgs.items():
        model, tag = name_tag.split(".", 1)
        cfg = dict(base, paper_ids=_paper_ids(model))
        info = pretrained_info(name_tag)
        if info:
            revision = info.get("hf_revision")
            cfg["hf_hub_id"] = info.get("hf_hub_id", f"{HUB_ORG}/{name_tag}") + (f"@{revision}" if revision else "")
            if info.get("file"):
                cfg["file"] = str(WEIGHTS_DIR / info["file"])
            acc = info.get("metrics", {}).get("test/acc")
            cfg["notes"] = (f"test accuracy {acc:.4f} on {info.get('test_set', 'the test set')}" if acc is not None
                            else "test metrics in the model card",)
        else:
            dataset = tag.split("_", 1)[0]
            why = UNAVAILABLE_DATA.get(dataset) or (
                "not trained yet: training to the zoo's bar (>= 85% on CIFAR-10) needs an accelerator, and none "
                f"was available; it would be published as {HUB_ORG}/{name_tag}")
            cfg["notes"] = (f"no weights: {why}",)
        out[name_tag] = cfg
    return out


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection: huggingface_hub retries a dead network for ~25 s."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """A Hub file, from the Hugging Face cache when it is there (no network), else downloaded.

    Honours ``HF_HUB_OFFLINE`` as set now; without a network a miss fails within seconds, saying what to do.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"{repo_id}/{filename}" + (f" at revision {revision}" if revision else "")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as error:
        miss = error
    if _offline():
        reason = "HF_HUB_OFFLINE is set"
    elif not _hub_reachable():
        reason = "the Hub is unreachable (no network)"
    else:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, etag_timeout=5))
        except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, OSError) as error:
            miss, reason = error, f"the Hub did not give it ({type(error).__name__}: {error})"
    raise WeightsNotFoundError(
        f"cannot get {where}: it is not in the Hugging Face cache ({HF_HUB_CACHE}) and {reason}. Connect and retry, "
        "or copy an export folder here and load it with timm.create_model('local-dir:PATH', pretrained=True)"
    ) from miss


def _source(cfg: dict) -> tuple[Path, str | None]:
    """(weight file, expected sha256 or None) for a resolved pretrained cfg."""
    tag_key = f"{cfg.get('architecture')}.{cfg.get('tag')}" if cfg.get("tag") else cfg.get("architecture")
    info = pretrained_info(tag_key or "") or {}
    source = cfg.get("source")
    if source == "local-dir":
        folder = Path(cfg["file"])
        if not folder.is_dir():
            raise WeightsNotFoundError(f"local-dir: {folder} is not a folder")
        return folder / WEIGHTS_FILE, _exported_sha256(folder / "config.json")
    if source == "hf-hub" or (not cfg.get("file") and cfg.get("hf_hub_id")):
        repo_id, _, revision = cfg["hf_hub_id"].partition("@")
        path = hub_file(repo_id, cfg.get("hf_hub_filename") or WEIGHTS_FILE, revision or None)
        expected = info.get("sha256") if source != "hf-hub" else None
        if expected is None:
            try:
                expected = _exported_sha256(hub_file(repo_id, "config.json", revision or None))
            except WeightsNotFoundError:
                expected = None
        return path, expected
    path = Path(cfg["file"])
    bundled = info.get("file") and path.resolve() == WEIGHTS_DIR / info["file"]
    return path, info.get("sha256") if bundled else None


def _exported_sha256(config: Path) -> str | None:
    """The weight file's sha256 recorded by ``specnet-zoo export`` in config.json, if any."""
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("specnet_zoo", {}).get("sha256")


def read_weights(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, after checking its sha256 (when expected); clear errors name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weight file {path} does not exist")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: weights load only from .safetensors files (pickled formats can run code); "
                           "convert a Lightning checkpoint with `specnet-zoo export CKPT --out DIR`")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise WeightsError(f"{path}: sha256 is {actual}, expected {expected_sha256} ({path.stat().st_size} bytes): "
                               "the file was altered or only partly written; delete it and fetch it again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file (truncated or corrupted?): {error}") from error


def check_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, origin: str,
                     skip: tuple[str, ...] = ()) -> None:
    """Raise :class:`WeightsError` unless ``state_dict`` has exactly the model's keys and shapes (``skip``
    prefixes excepted: a classifier being replaced)."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(skip)}
    given = {k: v.shape for k, v in state_dict.items() if not k.startswith(skip)}
    missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
    shapes = [f"{k} {tuple(given[k])} vs {tuple(expected[k])}" for k in expected.keys() & given.keys()
              if given[k] != expected[k]]
    if missing or unexpected or shapes:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        parts = [f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(shapes)} shape mismatches (file vs model: {'; '.join(sorted(shapes)[:3])})" if shapes else ""]
        raise WeightsError(f"{origin} does not hold weights for this {arch}: "
                           + ", ".join(p for p in parts if p) + "; was it exported from another architecture or "
                           "with other model arguments?")


def tag_model_args(cfg: dict, name_tag: str) -> dict[str, Any]:
    """The model arguments a tag's weights were trained with, when ``cfg`` loads the tag's own weights (its bundled
    file or its Hub copy), else {} (a user's file says nothing about how it was trained)."""
    info = pretrained_info(name_tag)
    if not info or cfg.get("source") in ("hf-hub", "local-dir"):
        return {}
    bundled = info.get("file") and cfg.get("file") and Path(cfg["file"]).resolve() == WEIGHTS_DIR / info["file"]
    hub_id = info.get("hf_hub_id", f"{HUB_ORG}/{name_tag}")
    hub_copy = not cfg.get("file") and (cfg.get("hf_hub_id") or "").partition("@")[0] == hub_id
    return dict(info.get("model_args", {})) if bundled or hub_copy else {}


def load_pretrained_state(cfg: dict, architecture: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, the file it came from) for a resolved pretrained cfg, sha256-checked when possible.

    A file whose safetensors metadata names another architecture (``specnet-zoo export`` records it) is
    refused: a spatial twin's weights fit its SpecNet model key for key but compute another function.
    """
    from safetensors import safe_open

    path, expected = _source(cfg)
    state_dict = read_weights(path, expected)
    with safe_open(str(path), framework="pt") as f:
        recorded = (f.metadata() or {}).get("architecture")
    if recorded and recorded != architecture:
        raise WeightsError(f"{path} holds weights of {recorded}, not {architecture}: create {recorded} to use them")
    return state_dict, str(path)


def tags_with_weights(model: str) -> list[str]:
    return sorted(k for k in _manifest() if k.split(".", 1)[0] == model)


def missing_weights_message(name_tag: str) -> str:
    model = name_tag.split(".", 1)[0]
    have = tags_with_weights(model)
    elsewhere = sorted(_manifest())
    hint = (f"tags of {model} with weights: {', '.join(have)}" if have else
            f"{model} has no tag with weights yet; tags with weights: {', '.join(elsewhere) or 'none'}")
    return (f"no pretrained weights for {name_tag}; {hint}. Load your own with "
            "pretrained_cfg_overlay=dict(file='model.safetensors') or timm.create_model('local-dir:PATH')")
