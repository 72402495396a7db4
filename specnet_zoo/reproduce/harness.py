"""A small, resumable training harness for the reproductions (many short runs, one process).

Each run is a :class:`RunSpec`: a model from the registry, a fixed class-balanced subset of a real
dataset, an optimizer and a step budget. :func:`train` writes into ``<root>/runs/<run name>/``:

* ``metrics.csv``: step, epoch, training loss, learning rate, elapsed seconds (one row per step);
* ``state.pt``: model, optimizer, scheduler and RNG state every ``checkpoint_every`` steps, so a killed
  run resumes where it stopped (read back with ``weights_only=True``);
* ``result.json``: test accuracy/loss, final training loss, time, hardware, and with
  ``measure_memory`` the trained model's saved-activation bytes, step peak and spectral densities on a
  real batch. A run with a ``result.json`` is never trained again: rerunning a reproduction resumes it.

Lightning is not used here on purpose: hundreds of runs of a few hundred steps each are dominated by
trainer start-up, and the speedup measurement (Rippel Fig. 5) needs the loss of every step.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import platform
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torchmetrics.classification import MulticlassAccuracy

from .._factory import create_model
from ..constants import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD
from ..data.sources import DataNotFoundError, read_mnist
from ..paths import shared_data_dir

__all__ = ["AdamBudget", "RunSpec", "dataset_tensors", "hardware", "load_result", "train"]

DATASETS = {"mnist": (MNIST_MEAN, MNIST_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``name`` must be unique within a reproduction's output folder.

    Args:
        model, model_kwargs: ``create_model(model, **model_kwargs)``; built after seeding with ``seed``.
        dataset: "mnist" or "cifar10" (read from the shared data folder).
        train_size, test_size: the first ``size / 10`` images of every class (0: the whole split).
        steps, batch_size: the budget; batches are drawn from a fresh permutation every epoch.
        optimizer: "sgd" (Nesterov, momentum 0.9), "adam" or "adamw"; ``lr``, ``weight_decay``.
        schedule: "onecycle" (warm-up 15%, cosine down) or "constant".
        label_smoothing, clip: cross-entropy smoothing and the gradient-norm clip (0: none).
        augment: CIFAR: random crop (padding 4) and horizontal flip; MNIST: random shifts of up to 2 px.
        measure_memory: after training, measure one training step's memory on a real batch of 64.
    """

    name: str
    model: str
    dataset: str
    steps: int
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)
    train_size: int = 0
    test_size: int = 0
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    clip: float = 0.0
    augment: bool = True
    measure_memory: bool = False

    def __post_init__(self) -> None:
        if not timm.is_model(self.model):
            raise ValueError(f"unknown model {self.model!r}; `specnet-zoo models` lists the registered ones")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("onecycle", "constant"):
            raise ValueError(f"schedule must be 'onecycle' or 'constant', got {self.schedule!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")


@dataclass(frozen=True)
class AdamBudget:
    """Short constant-size Adam runs on a fixed CIFAR-10 subset with augmentation (Rippel's experiments):
    the budget fields the spectral-parametrization and spectral-pooling reproductions share."""

    steps: int
    train_size: int
    test_size: int
    batch_size: int
    seeds: tuple[int, ...] = (0, 1, 2)
    lr: float = 3e-4

    def run_spec(self, name: str, model: str, seed: int, model_kwargs: dict, schedule: str) -> RunSpec:
        return RunSpec(name=name, model=model, dataset="cifar10", steps=self.steps, seed=seed,
                       model_kwargs=model_kwargs, train_size=self.train_size, test_size=self.test_size,
                       batch_size=self.batch_size, optimizer="adam", lr=self.lr, weight_decay=0.0,
                       schedule=schedule, augment=True)


def hardware() -> dict:
    """What the runs execute on (written into every result and the reproduction's folder)."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return dict(device=device, cpu_count=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                precision="float32")


# ---------------------------------------------------------------------------------------------------- data

def _cache_dir() -> Path:
    return Path(os.environ.get("SPECNET_ZOO_CACHE", Path.home() / ".cache" / "specnet_zoo")) / "tensors"


def _read_cifar10_jpeg(archive: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, classes = [], [], {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not (member.isfile() and len(parts) == 3):
                continue
            label = classes.setdefault(parts[1], len(classes))
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    if len(classes) != 10:
        raise DataNotFoundError(f"{archive} holds {len(classes)} class folders, expected 10")
    # Labels follow the sorted class names, as torchvision's ImageFolder does.
    relabel = {index: sorted(classes).index(name) for name, index in classes.items()}
    labels = torch.tensor([relabel[label] for label in labels])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), labels


def dataset_tensors(dataset: str, split: str, size: int = 0, root: str | Path | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uint8 (N, C, H, W) images and int64 labels of a real split: the first ``size / 10`` of every class in
    file order (``size`` 0: all). CIFAR-10 is decoded from the JPEG archives once and cached as safetensors
    under ``$SPECNET_ZOO_CACHE`` (default ``~/.cache/specnet_zoo``); a process reads each split once."""
    if dataset not in DATASETS or split not in ("train", "test"):
        raise ValueError(f"dataset must be one of {sorted(DATASETS)} and split 'train' or 'test', got {dataset!r}, "
                         f"{split!r}")
    root = Path(root) if root is not None else shared_data_dir()
    images, labels = _whole_split(dataset, split, root.resolve())
    if size:
        num_classes = int(labels.max()) + 1
        if size % num_classes or size > len(labels):
            raise ValueError(f"size must be a multiple of {num_classes} (class-balanced) and at most {len(labels)}, "
                             f"got {size}")
        per_class = size // num_classes
        picked = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(num_classes)]).sort().values
        if len(picked) != size:
            raise ValueError(f"{dataset} {split} has fewer than {per_class} images of some class")
        images, labels = images[picked], labels[picked]
    return images, labels


@functools.lru_cache(maxsize=4)
def _whole_split(dataset: str, split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if dataset == "mnist":
        images, labels = read_mnist(root / "mnist", split)
        images = images if images.dim() == 4 else images.unsqueeze(1)
    else:
        archive = root / "cifar10-jpg" / f"cifar10_{split}_jpg.tar.gz"
        if not archive.is_file():
            raise DataNotFoundError(f"no CIFAR-10 JPEG {split} archive at {archive}")
        stat = archive.stat()  # the cache is keyed by the archive: another copy or a changed file decodes again
        key = hashlib.sha256(f"{archive}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        cache = _cache_dir() / f"cifar10-jpg-{split}-{key}.safetensors"
        if cache.is_file():
            tensors = load_file(cache)
            images, labels = tensors["images"], tensors["labels"]
        else:
            images, labels = _read_cifar10_jpeg(archive)
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.tmp")
            save_file({"images": images, "labels": labels}, partial)
            partial.replace(cache)
    return images, labels.long()


def _normalize(images: torch.Tensor, dataset: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in DATASETS[dataset])
    return (images.float() / 255 - mean) / std


def _augment(images: torch.Tensor, dataset: str, generator: torch.Generator) -> torch.Tensor:
    """Random translation (CIFAR: crop with padding 4 and a horizontal flip; MNIST: shifts of up to 2 px)."""
    n, _, h, w = images.shape
    pad = 4 if dataset == "cifar10" else 2
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, images.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, images.shape[1], h, w)
    out = out.gather(3, cols)
    if dataset == "cifar10":
        flip = torch.rand(n, generator=generator) < 0.5
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
    return out


# ---------------------------------------------------------------------------------------------------- runs

def _optimizer(spec: RunSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.9, nesterov=True, weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def _schedule(spec: RunSpec, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if spec.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=spec.steps, pct_start=0.15,
                                               anneal_strategy="cos", cycle_momentum=False)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def load_result(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset: str,
             device: torch.device, batch_size: int = 500) -> tuple[float, float]:
    """Top-1 accuracy (torchmetrics) and mean cross-entropy of ``model`` on uint8 ``images``."""
    model.eval()
    accuracy = MulticlassAccuracy(num_classes=model.num_classes, average="micro").to(device)
    total_loss = 0.0
    for start in range(0, len(images), batch_size):
        x = _normalize(images[start:start + batch_size], dataset).to(device)
        y = labels[start:start + batch_size].to(device)
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        accuracy.update(logits, y)
    model.train()
    return float(accuracy.compute()), total_loss / len(images)


def _memory(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset: str,
            device: torch.device) -> dict:
    """Saved-activation bytes, step peak and spectral densities of one training step on a real batch of 64."""
    from ..profiling import measure_memory

    x = _normalize(images[:64], dataset).to(device)
    report = measure_memory(model.train(), x, labels[:64].to(device), peak=True)
    densities = list(report.densities.values())
    return dict(saved_bytes=report.saved_bytes, peak_bytes=report.peak_bytes, memory_batch=len(x),
                mean_density=sum(densities) / len(densities) if densities else None,
                min_density=min(densities) if densities else None)


def train(spec: RunSpec, root: str | Path, device: str | torch.device = "cpu", data_root: str | Path | None = None,
          checkpoint_every: int = 100, log=print) -> dict:
    """Train ``spec`` (or resume it, or return its stored result) under ``root/runs/<spec.name>/``."""
    run_dir = Path(root) / "runs" / spec.name
    done = load_result(run_dir)
    if done is not None and done.get("spec") == asdict(spec):
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(asdict(spec), indent=1) + "\n")
    device = torch.device(device)
    train_x, train_y = dataset_tensors(spec.dataset, "train", spec.train_size, data_root)
    test_x, test_y = dataset_tensors(spec.dataset, "test", spec.test_size, data_root)

    torch.manual_seed(spec.seed)
    model = create_model(spec.model, **spec.model_kwargs).to(device).train()
    optimizer = _optimizer(spec, model)
    scheduler = _schedule(spec, optimizer)
    step, elapsed = 0, 0.0
    state_path, metrics_path = run_dir / "state.pt", run_dir / "metrics.csv"
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state["spec"] == json.dumps(asdict(spec), sort_keys=True):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            if state["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            step, elapsed = state["step"], state["elapsed"]
            log(f"[{spec.name}] resumed at step {step}/{spec.steps}")
        else:
            step = 0
    rows = []
    if step and metrics_path.is_file():
        with open(metrics_path) as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with open(metrics_path, "w", newline="") as f:  # rewritten: rows after the checkpoint are dropped
        writer = csv.DictWriter(f, fieldnames=["step", "epoch", "loss", "lr", "elapsed_s"])
        writer.writeheader()
        writer.writerows(rows)

    steps_per_epoch = max(1, len(train_x) // spec.batch_size)
    order: torch.Tensor | None = None
    last_print = time.perf_counter()
    with open(metrics_path, "a", newline="") as f:
        writer = csv.writer(f)
        while step < spec.steps:
            epoch, position = divmod(step, steps_per_epoch)
            if position == 0 or order is None:  # data order and augmentation are functions of (seed, epoch, step)
                order = torch.randperm(len(train_x), generator=_generator(spec.seed, epoch))
            index = order[position * spec.batch_size:(position + 1) * spec.batch_size]
            images = train_x[index]
            if spec.augment:
                images = _augment(images, spec.dataset, _generator(spec.seed, epoch, step))
            x, y = _normalize(images, spec.dataset).to(device), train_y[index].to(device)
            start = time.perf_counter()
            loss = F.cross_entropy(model(x), y, label_smoothing=spec.label_smoothing)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"[{spec.name}] training loss became {loss_value} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            elapsed += time.perf_counter() - start
            writer.writerow([step, f"{step / steps_per_epoch:.4f}", f"{loss_value:.6f}", f"{lr:.6g}", f"{elapsed:.3f}"])
            if step % checkpoint_every == 0 and step < spec.steps:
                f.flush()
                _save_state(state_path, spec, model, optimizer, scheduler, step, elapsed)
            if time.perf_counter() - last_print > 30 or step == spec.steps:
                eta = elapsed / step * (spec.steps - step)
                log(f"[{spec.name}] step {step}/{spec.steps} loss {loss_value:.4f} lr {lr:.3g} "
                    f"{elapsed:.0f} s, about {eta:.0f} s left")
                last_print = time.perf_counter()
    accuracy, test_loss = evaluate(model, test_x, test_y, spec.dataset, device)
    with open(metrics_path) as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    window = max(1, min(len(losses), steps_per_epoch, 50))
    result = dict(spec=asdict(spec), test_accuracy=accuracy, test_loss=test_loss,
                  final_train_loss=sum(losses[-window:]) / window, train_time_s=elapsed, steps=step,
                  epochs=step / steps_per_epoch, train_images=len(train_x), test_images=len(test_x),
                  parameters=sum(p.numel() for p in model.parameters()), hardware=hardware())
    if spec.measure_memory:
        result.update(_memory(model, test_x, test_y, spec.dataset, device))
    (run_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    state_path.unlink(missing_ok=True)
    log(f"[{spec.name}] test accuracy {accuracy:.4f} ({len(test_x)} images), {elapsed:.0f} s")
    return result


def _generator(*key: int) -> torch.Generator:
    """A generator seeded by ``key`` (seed, epoch[, step]): a resumed run draws exactly what it would have."""
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + k) % (2**63)
    return torch.Generator().manual_seed(seed)


def _save_state(path: Path, spec: RunSpec, model, optimizer, scheduler, step: int, elapsed: float) -> None:
    """Everything to continue bit-for-bit (the data order is a function of the step; see :func:`_generator`)."""
    state = dict(spec=json.dumps(asdict(spec), sort_keys=True), model=model.state_dict(),
                 optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=_rng_state(), step=step,
                 elapsed=elapsed)
    partial = path.with_suffix(".tmp")
    torch.save(state, partial)
    partial.replace(path)


def steps_for(epochs: float, train_size: int, batch_size: int) -> int:
    """Optimizer steps in ``epochs`` passes over ``train_size`` images (at least one)."""
    return max(1, math.floor(epochs * (train_size // batch_size)))
