"""``create_model`` / ``list_models`` / ``list_pretrained``: timm's, with specnet-zoo's models registered."""
from __future__ import annotations

import difflib
import fnmatch

import timm
from torch import nn

from .constants import SPECNET_PAIRS
from .models import specnet_model_names

__all__ = ["UnknownModelError", "create_model", "list_models", "list_pretrained", "model_table", "spatial_twin"]

# SpecNet networks and the spatial network each is measured against (same convolutions and head).
SPATIAL_TWINS = {spectral: spatial for spectral, spatial, _ in SPECNET_PAIRS}


class UnknownModelError(ValueError, RuntimeError):
    """No architecture of that name (a RuntimeError too, as timm raises for unknown names)."""


def create_model(model_name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model`` for any timm or specnet-zoo name; unknown names list close matches."""
    name = model_name.split(":", 1)[-1].split(".", 1)[0]
    if ":" not in model_name and not timm.is_model(name):
        candidates = list(dict.fromkeys(specnet_model_names() + timm.list_models()))  # ours are in timm's list too
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"Unknown model ({model_name}){hint} specnet_zoo.list_models() lists specnet-zoo's models")
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)


def spatial_twin(model_name: str) -> str | None:
    """The spatial network a SpecNet model is compared with (``specvgg16`` -> ``vgg16_cifar``), or None."""
    return SPATIAL_TWINS.get(model_name.split(".", 1)[0])


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:
    """specnet-zoo's architecture names (fnmatch ``filter``), or only those with weights."""
    names = [n for n in specnet_model_names() if not filter or fnmatch.fnmatch(n, filter)]
    if pretrained:
        with_weights = {n.split(".")[0] for n in timm.list_pretrained()}
        names = [n for n in names if n in with_weights]
    return sorted(names)


def list_pretrained(filter: str = "") -> list[str]:
    """``name.tag`` of every specnet-zoo weight set that can be downloaded."""
    ours = set(specnet_model_names())
    return [n for n in timm.list_pretrained(filter or "") if n.split(".")[0] in ours]


def model_rows() -> list[dict]:
    """One row per architecture: name, parameters, default input size, cfg tags, tags with weights."""
    from timm.models import get_pretrained_cfg

    rows = []
    downloadable = set(list_pretrained())
    for name in specnet_model_names():
        model = timm.create_model(name)
        cfg = get_pretrained_cfg(name)
        tags = sorted({t.split(".", 1)[1] for t in timm.list_models(name, include_tags=True) if "." in t})
        rows.append(dict(
            name=name,
            params=sum(p.numel() for p in model.parameters()),
            input_size="x".join(str(s) for s in cfg.input_size),
            tags=", ".join(tags) or "-",
            weights=", ".join(t for t in tags if f"{name}.{t}" in downloadable) or "none yet",
        ))
    return rows


def model_table(markdown: bool = True) -> str:
    """The model table of ``specnet-zoo models`` and README.md (generated, never typed by hand)."""
    rows = model_rows()
    header = ["model", "parameters", "input (C x H x W)", "cfg tags", "pretrained weights"]
    cells = [[r["name"], f"{r['params']:,}", r["input_size"], r["tags"], r["weights"]] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'>' if i == 1 else '<'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in cells])


def pretrained_table(recipe_for=None) -> str:
    """Markdown table of every ``model.tag``: its weights (test accuracy, file, training, hardware, command) or why
    it has none (generated from the pretrained cfgs and the weight manifest). ``recipe_for(tag)``, when given,
    returns the recipe that would train a tag without weights (or None)."""
    from timm.models import get_pretrained_cfg

    from .pretrained import pretrained_info

    lines = ["| tag | weights | test accuracy | file | training | command |", "|---|---|---|---|---|---|"]
    for name in specnet_model_names():
        for name_tag in timm.list_models(name, include_tags=True):
            if "." not in name_tag:
                continue
            info = pretrained_info(name_tag)
            if info is None:
                note = (get_pretrained_cfg(name_tag).notes or ("no weights",))[0].removeprefix("no weights: ")
                recipe = recipe_for(name_tag) if recipe_for else None
                command = f"`python scripts/train_zoo.py {name_tag}` ({recipe})" if recipe else "no recipe yet"
                lines.append(f"| {name_tag} | none: {note} | | | | {command} |")
                continue
            hardware = (info.get("hardware") or {}).get("device", "unrecorded hardware")
            training = f"{info['epochs']} epochs, {info['train_time_s'] / 60:.0f} min on {hardware}" if info.get("epochs") else "-"
            lines.append(f"| {name_tag} | bundled ([card]({info['card']})) | {info['metrics']['test/acc']:.4f} on "
                         f"{info['test_set']} | {info['bytes'] / 2**20:.2f} MB, sha256 `{info['sha256'][:12]}…` | "
                         f"{training} | `{info['command']}` |")
    return "\n".join(lines)
