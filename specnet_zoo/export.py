"""``specnet-zoo export CKPT --out DIR``: a Lightning checkpoint -> a timm/Hub-ready folder.

The folder holds ``model.safetensors``, a timm-style ``config.json`` (architecture, num_classes, model
arguments, pretrained_cfg; what ``timm.create_model("local-dir:DIR")`` and ``hf-hub:`` read) and
``README.md``, a model card rendered by huggingface_hub's ``ModelCard`` from ``model_cards/template.md``
with the run's logged test metrics, parameters, training memory against the spatial twin, the exact
recipe and command, hardware, data provenance, citation and limitations.

The checkpoint is read with ``torch.load(weights_only=True)``: nothing in it is unpickled as code.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from ._factory import SPATIAL_TWINS
from .paths import checkout_dir
from .pretrained import HUB_ORG, WEIGHTS_FILE, WeightsError, sha256_file

__all__ = ["CARD_TEMPLATE", "export_checkpoint", "model_from_checkpoint", "render_card", "run_summary"]

CARD_TEMPLATE = checkout_dir() / "model_cards" / "template.md"
DATASETS = {  # DataModule class -> (tag, Hub dataset id, display name, provenance)
    "MNISTDataModule": ("mnist", "ylecun/mnist", "MNIST", "the original MNIST idx files (60,000 training, 10,000 "
                        "test digits); 5,000 training digits held out for validation"),
    "CIFAR10DataModule": ("cifar10", "uoft-cs/cifar10", "CIFAR-10", "a JPEG-compressed copy of CIFAR-10 (50,000 "
                          "training, 10,000 test images; 5,000 training images held out for validation). JPEG "
                          "artefacts make its test accuracy not exactly comparable with results on the lossless "
                          "original"),
    "CIFAR100DataModule": ("cifar100", "uoft-cs/cifar100", "CIFAR-100", "CIFAR-100 (python batches)"),
    "SVHNDataModule": ("svhn", "ufldl-stanford/svhn", "SVHN", "SVHN cropped digits (train_32x32/test_32x32)"),
    "ImageFolderDataModule": ("imagefolder", None, "image folder", "a user image folder"),
}
CITATIONS = {
    "arxiv:1905.10915": "@article{guan2019specnet,\n  title={SpecNet: Spectral Domain Convolutional Neural Network},\n"
                        "  author={Guan, Bochen and Zhang, Jinnian and Sethares, William A. and Kijowski, Richard "
                        "and Liu, Fang},\n  journal={arXiv preprint arXiv:1905.10915},\n  year={2019}\n}",
    "arxiv:1506.03767": "@inproceedings{rippel2015spectral,\n  title={Spectral Representations for Convolutional "
                        "Neural Networks},\n  author={Rippel, Oren and Snoek, Jasper and Adams, Ryan P.},\n"
                        "  booktitle={Advances in Neural Information Processing Systems},\n  year={2015}\n}",
}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True``; clear errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, ...: all mean "not a checkpoint we can read"
        raise WeightsError(f"{path} is not a readable Lightning checkpoint (read with weights_only=True): "
                           f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error
    for key in ("state_dict", "hyper_parameters"):
        if key not in checkpoint:
            raise WeightsError(f"{path} has no '{key}': not a checkpoint of specnet-zoo's ImageClassifier")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(the trained model in eval mode with plain ``nn.Conv2d`` filters, the arguments that rebuild it)."""
    from .layers import despectralize
    from .training.module import ImageClassifier

    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    module = ImageClassifier(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    model = module.model.eval()
    if hparams.get("spectral_param"):
        despectralize(model)  # the same function with spatial filters: loads into the plain architecture
    model_args = dict(hparams.get("model_kwargs") or {}, num_classes=hparams["num_classes"])
    if hparams.get("in_chans") is not None:
        model_args["in_chans"] = hparams["in_chans"]
    model_args.pop("pretrained", None)
    return model, model_args


def run_summary(checkpoint_path: str | Path) -> dict[str, Any]:
    """What the run beside a checkpoint logged: test metrics, epoch times, hardware and the CLI config.

    Looks in ``<root>/logs/version_*/`` for a checkpoint in ``<root>/checkpoints/`` (the CLI's layout); the
    newest version that logged test metrics wins.
    """
    root = Path(checkpoint_path).resolve().parent.parent
    summary: dict[str, Any] = {"metrics": {}, "train_time_s": None, "epochs": None, "hardware": None, "config": None}
    versions = sorted((root / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))
    epoch_times: dict[int, float] = {}
    for version in versions:
        metrics_csv = version / "metrics.csv"
        if not metrics_csv.is_file():
            continue
        with open(metrics_csv) as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if row.get("time/train_epoch_s"):
                epoch_times[int(row["epoch"])] = float(row["time/train_epoch_s"])
        tested = [r for r in rows if r.get("test/acc")]
        if tested:
            summary["metrics"] = {k: float(v) for k, v in tested[-1].items() if k.startswith("test/") and v}
            if (version / "config.yaml").is_file():
                summary["config"] = (version / "config.yaml").read_text()
            if (version / "hardware.json").is_file():
                summary["hardware"] = json.loads((version / "hardware.json").read_text())
    if epoch_times:
        summary["train_time_s"], summary["epochs"] = sum(epoch_times.values()), len(epoch_times)
    if summary["config"] is None and versions and (versions[-1] / "config.yaml").is_file():
        summary["config"] = (versions[-1] / "config.yaml").read_text()
    return summary


def measure_training_memory(model_name: str, model_args: dict, batch_size: int, dataset: str) -> dict[str, Any] | None:
    """Saved-activation and parameter bytes of one training step against the spatial twin (same batch)."""
    from ._factory import create_model, spatial_twin
    from .data import sample_batch
    from .profiling import measure_memory

    twin_name = spatial_twin(model_name)
    if twin_name is None:
        return None
    model = create_model(model_name, **model_args)
    try:
        inputs, targets = sample_batch(dataset, batch_size)
        source = f"a real {dataset} test batch of {batch_size}"
    except (ValueError, FileNotFoundError):
        in_chans, *size = model.pretrained_cfg["input_size"]
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(batch_size, model_args.get("in_chans", in_chans), *size, generator=generator)
        targets = torch.randint(0, max(model_args["num_classes"], 1), (batch_size,), generator=generator)
        source = f"a random normal batch of {batch_size}"
    twin_args = {k: v for k, v in model_args.items() if k in ("num_classes", "in_chans")}
    mine = measure_memory(model.train(), inputs, targets, peak=False)
    theirs = measure_memory(create_model(twin_name, **twin_args).train(), inputs, targets, peak=False)
    return dict(twin=twin_name, batch=source, saved_mb=mine.saved_bytes / 2**20, twin_saved_mb=theirs.saved_bytes / 2**20,
                saved_ratio=mine.saved_bytes / max(theirs.saved_bytes, 1), params_mb=mine.param_bytes / 2**20,
                twin_params_mb=theirs.param_bytes / 2**20)


def _one_line_doc(model_name: str, model: torch.nn.Module) -> str:
    """The registered entrypoint's one-line docstring (timm style), else the class docstring's first line."""
    from timm.models import is_model, model_entrypoint

    doc = model_entrypoint(model_name).__doc__ if is_model(model_name) else None
    return (doc or type(model).__doc__ or model_name).strip().splitlines()[0]


def _dataset(checkpoint: dict[str, Any]) -> tuple[str, str | None, str, str]:
    class_path = (checkpoint.get("datamodule_hyper_parameters") or {}).get("_class_path", "")
    return DATASETS.get(class_path.rsplit(".", 1)[-1], ("custom", None, "custom data", "custom data"))


def render_card(context: dict[str, Any], template: str | Path = CARD_TEMPLATE):
    """The model card (``huggingface_hub.ModelCard``) of an export, from the Jinja template in model_cards/."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    template = Path(template)
    if not template.is_file():
        raise FileNotFoundError(f"model card template {template} does not exist (it ships in the repository's "
                                "model_cards/ folder; pass --card-template)")
    results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                          dataset_type=context["dataset_id"] or context["dataset_tag"], dataset_name=context["dataset_name"],
                          dataset_split="test", metric_type=metric.split("/", 1)[1].replace("acc", "accuracy"),
                          metric_name=metric, metric_value=round(value, 4))
               for metric, value in context["metrics"].items() if metric.startswith("test/acc")]
    card_data = ModelCardData(
        model_name=context["name_tag"], license=context["license"], library_name="timm",
        tags=["image-classification", "timm", "specnet-zoo", "spectral-cnn"],
        datasets=[context["dataset_id"]] if context["dataset_id"] else None,
        metrics=["accuracy"], pipeline_tag="image-classification",
        eval_results=results or None,
    )
    return ModelCard.from_template(card_data, template_path=str(template), **context)


def export_checkpoint(checkpoint_path: str | Path, out: str | Path, *, tag: str | None = None, memory: bool = True,
                      card_template: str | Path = CARD_TEMPLATE, command: str | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for a trained checkpoint into ``out``."""
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    checkpoint = load_checkpoint(checkpoint_path)
    model, model_args = model_from_checkpoint(checkpoint)
    model_name = checkpoint["hyper_parameters"]["model_name"]
    dataset_tag, dataset_id, dataset_name, provenance = _dataset(checkpoint)
    tag = tag or dataset_tag
    name_tag = f"{model_name}.{tag}"
    base = get_pretrained_cfg(name_tag) or get_pretrained_cfg(model_name)
    pretrained_cfg = base.to_dict(remove_source=True) if base is not None else {}
    pretrained_cfg.update(architecture=model_name, tag=tag, num_classes=model_args["num_classes"],
                          hf_hub_id=f"{HUB_ORG}/{name_tag}")
    pretrained_cfg.pop("notes", None)  # the registry's "no weights yet" note does not describe this export
    if "in_chans" in model_args and "input_size" in pretrained_cfg:
        pretrained_cfg["input_size"] = (model_args["in_chans"], *pretrained_cfg["input_size"][1:])

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights),
              metadata={"format": "pt", "architecture": model_name})
    summary = run_summary(checkpoint_path)
    data_hp = checkpoint.get("datamodule_hyper_parameters") or {}
    mem = (measure_training_memory(model_name, model_args, int(data_hp.get("batch_size", 64)), dataset_tag)
           if memory and dataset_tag in ("mnist", "cifar10") else None)
    record = dict(sha256=sha256_file(weights), bytes=weights.stat().st_size, checkpoint=Path(checkpoint_path).name,
                  epoch=checkpoint.get("epoch"), global_step=checkpoint.get("global_step"), metrics=summary["metrics"],
                  train_time_s=summary["train_time_s"], epochs=summary["epochs"], hardware=summary["hardware"],
                  memory=mem, command=command)
    config = dict(architecture=model_name, num_classes=model_args["num_classes"], num_features=model.num_features,
                  model_args=model_args, pretrained_cfg=pretrained_cfg, specnet_zoo=record)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    paper_ids = pretrained_cfg.get("paper_ids") or ()
    context = dict(
        name_tag=name_tag, model_name=model_name, tag=tag, license=pretrained_cfg.get("license", "apache-2.0"),
        dataset_tag=dataset_tag, dataset_id=dataset_id, dataset_name=dataset_name, provenance=provenance,
        metrics=summary["metrics"], params=sum(p.numel() for p in model.parameters()), model_args=model_args,
        config_yaml=(summary["config"] or "").strip(), command=command, record=record, memory=mem,
        hub_id=f"{HUB_ORG}/{name_tag}", description=_one_line_doc(model_name, model),
        citations=[CITATIONS[p] for p in paper_ids if p in CITATIONS], input_size=pretrained_cfg.get("input_size"),
        mean=pretrained_cfg.get("mean"), std=pretrained_cfg.get("std"),
        spectral_of=next((s for s, t in SPATIAL_TWINS.items() if t == model_name), None),
    )
    render_card(context, card_template).save(out / "README.md")
    return out


def evaluate_accuracy(model: torch.nn.Module, dataset: str, data_dir: str | Path | None = None, limit: int | None = None,
                  batch_size: int = 500) -> tuple[float, int]:
    """(top-1 accuracy, images) of ``model`` on the real test set of ``dataset`` ('mnist' or 'cifar10'), or on its
    first ``limit`` images; data from ``data_dir`` (default: the shared data folder)."""
    from .data import CIFAR10DataModule, MNISTDataModule
    from .paths import shared_data_dir

    modules = {"mnist": (MNISTDataModule, "mnist"), "cifar10": (CIFAR10DataModule, "cifar10-jpg")}
    if dataset not in modules:
        raise ValueError(f"evaluate_accuracy knows {', '.join(modules)}, got {dataset!r}")
    cls, folder = modules[dataset]
    data = cls(data_dir=str(data_dir or shared_data_dir() / folder), batch_size=batch_size, val_split=0)
    data.setup("test")
    test_set = data.test_set
    if limit is not None:
        test_set = torch.utils.data.Subset(test_set, range(min(limit, len(test_set))))
    loader = torch.utils.data.DataLoader(test_set, batch_size=batch_size)
    device = next(model.parameters()).device
    correct = seen = 0
    model.eval()
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images.to(device)).argmax(-1).cpu() == labels).sum().item()
            seen += len(labels)
    return correct / seen, seen
