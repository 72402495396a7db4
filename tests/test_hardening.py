"""Regression tests for defects found by using the package as a new user would (each failed before its fix)."""
import copy
import io
import multiprocessing
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import specnet_zoo
from specnet_zoo import cli
from specnet_zoo.data import CIFAR10DataModule
from specnet_zoo.data.sources import extract_image_folder
from specnet_zoo.layers import SpectralBlock, SpectralConv2d, SpectralPool2d
from specnet_zoo.layers.packing import _bit_weights
from specnet_zoo.layers.spectral_product import tap_phases
from specnet_zoo.layers.spectral_resize import _resize_matrix_cached
from specnet_zoo.models import specnet_model_names
from specnet_zoo.training import ImageClassifier, MemoryMonitor
from specnet_zoo.training.module import DivergenceError

ROOT = Path(__file__).resolve().parents[1]
NAMES = specnet_model_names()
PARAMETRIZED = {"specparam_generic", "specparam_deep", "specparam_specpool_cifar"}


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=str(tmp_path))
    return L.Trainer(**{**defaults, **kwargs})


def _mnist_like(n: int = 32, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator))
    return DataLoader(data, batch_size=8)


# 1. A diverged run must fail, never report success or keep a non-finite "best" checkpoint.

def test_nonfinite_training_loss_raises_with_step_loss_and_advice(tmp_path):
    module = ImageClassifier("lenet5", in_chans=1, lr=1e30, momentum=0.0, scheduler="none")
    with pytest.raises(DivergenceError, match=r"loss (nan|inf) at global step \d+ .*lower --model.lr.*gradient clipping"):
        _trainer(tmp_path, max_steps=20, limit_val_batches=0).fit(module, _mnist_like())


class _NanWhenEvaluating(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out if self.training else out * float("nan")


def test_nonfinite_validation_loss_raises_before_any_checkpoint_is_saved(tmp_path):
    module = ImageClassifier("lenet5", in_chans=1, scheduler="none")
    module.model = _NanWhenEvaluating(module.model)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", save_last=True)
    trainer = _trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0, callbacks=[checkpoints])
    with pytest.raises(DivergenceError, match="validation loss is not finite"):
        trainer.fit(module, _mnist_like(), _mnist_like(seed=1))
    assert not list((tmp_path / "ckpt").glob("*.ckpt")) if (tmp_path / "ckpt").exists() else True
    assert checkpoints.best_model_path == ""


@pytest.mark.shared_data
def test_diverged_cli_run_exits_nonzero_without_lightning_args_warning(tmp_path, shared_data):
    root = tmp_path / "run"
    args = ["fit", "--config", str(ROOT / "recipes/mnist_lenet5.yaml"), "--data.init_args.data_dir",
            str(shared_data / "mnist"), "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.max_steps", "30", "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "10",
            "--model.lr", "1e30", "--trainer.accelerator", "cpu"]
    done = subprocess.run([sys.executable, "-m", "specnet_zoo.cli", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "specnet-zoo: error: training diverged: loss" in done.stderr and "Traceback" not in done.stderr
    assert "LightningCLI's args parameter" not in done.stderr  # one source of arguments from the shell
    assert not list((root / "checkpoints").glob("best-*.ckpt"))


# 2. Archive extraction: once per node, atomic, keyed by the source path.

def _write_archives(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    archives = []
    for split in ("train", "test"):
        path = folder / f"{split}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for label in ("cat", "dog"):
                for i in range(20):
                    buffer = io.BytesIO()
                    Image.new("RGB", (32, 32), (i * 10, 0, 0)).save(buffer, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{label}/{i}.png")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    tar.addfile(info, buffer)
        archives.append(path)
    return archives


def _extract(args) -> str:
    archives, target = args
    return str(extract_image_folder(archives, target))


def test_concurrent_extraction_publishes_one_complete_folder(tmp_path):
    archives = _write_archives(tmp_path / "src")
    target = tmp_path / "cache" / "cifar"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_extract, [(archives, target)] * 8)
    assert set(results) == {str(target)}
    assert (target / ".extracted").exists()
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.png")) == sorted(
        f"{s}/{c}/{i}.png" for s in ("train", "test") for c in ("cat", "dog") for i in range(20))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cifar"]  # no partial or stale copies left


def test_an_interrupted_extraction_is_replaced(tmp_path):
    archives = _write_archives(tmp_path / "src")
    target = tmp_path / "cache" / "cifar"
    (target / "train").mkdir(parents=True)  # a crashed older run: files, no marker
    extract_image_folder(archives, target)
    assert (target / ".extracted").exists() and len(list(target.rglob("*.png"))) == 80


def test_cache_is_keyed_by_the_resolved_source_path(tmp_path):
    first = CIFAR10DataModule(str(tmp_path / "a" / "cifar10"), cache_dir=str(tmp_path / "cache"))
    second = CIFAR10DataModule(str(tmp_path / "b" / "cifar10"), cache_dir=str(tmp_path / "cache"))
    same = CIFAR10DataModule(str(tmp_path / "a" / ".." / "a" / "cifar10"), cache_dir=str(tmp_path / "cache"))
    assert first.extraction_dir() != second.extraction_dir()
    assert first.extraction_dir() == same.extraction_dir()


@pytest.mark.shared_data
def test_two_process_ddp_fit_on_cifar10_jpeg_archives_from_an_empty_cache(tmp_path, shared_data):
    cache = tmp_path / "cache"
    args = ["fit", "--config", str(ROOT / "recipes/cifar10_alexnet_cifar.yaml"),
            "--data.init_args.data_dir", str(shared_data / "cifar10-jpg"), "--data.init_args.cache_dir", str(cache),
            "--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--test_after_fit", "false"]
    done = subprocess.run([sys.executable, "-m", "specnet_zoo.cli", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    published = [p for p in cache.iterdir()]
    assert len(published) == 1 and (published[0] / ".extracted").exists(), published
    assert sum(1 for _ in (published[0] / "test").rglob("*.jpg")) == 10000
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


# 3. Constants cached under inference mode must not poison later training.

@pytest.mark.parametrize("name,kwargs", [("specvgg16", dict(storage="dense")), ("specpool_cifar", {}),
                                         ("speclenet", dict(density=0.3, storage="int8"))])
def test_inference_mode_forward_then_training(name, kwargs):
    for cache in (tap_phases, _resize_matrix_cached, _bit_weights):
        cache.cache_clear()  # as in a fresh process: the first use happens under inference mode
    model = specnet_zoo.create_model(name, **kwargs)
    c, h, w = model.pretrained_cfg["input_size"]
    with torch.inference_mode():
        model.eval()(torch.randn(2, c, h, w))
    model.train()(torch.randn(2, c, h, w)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_spectral_pool_alone_after_inference_mode():
    _resize_matrix_cached.cache_clear()
    pool = SpectralPool2d(output_size=5)
    with torch.inference_mode():
        pool(torch.randn(1, 2, 9, 9))
    x = torch.randn(1, 2, 9, 9, requires_grad=True)
    pool(x).sum().backward()
    assert x.grad is not None


# 4. Every model can be saved whole, deep-copied and (through its module) sent to spawned processes.

@pytest.mark.parametrize("name", NAMES)
def test_models_deepcopy_and_save_whole(name, tmp_path):
    model = specnet_zoo.create_model(name).eval()
    c, h, w = model.pretrained_cfg["input_size"]
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(copy.deepcopy(model)(x), expected)
        state = model.state_dict()
        fresh = specnet_zoo.create_model(name).eval()
        fresh.load_state_dict(state)
        torch.testing.assert_close(fresh(x), expected)
        if name in PARAMETRIZED:  # torch refuses to pickle nn.utils.parametrize modules (documented)
            with pytest.raises(RuntimeError, match="parametrized modules"):
                torch.save(model, tmp_path / "model.pt")
            return
        torch.save(model, tmp_path / "model.pt")
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)  # our own file, written above
        torch.testing.assert_close(loaded(x), expected)


@pytest.mark.shared_data
def test_ddp_spawn_trains_a_specnet_model(tmp_path, shared_data):
    args = ["fit", "--config", str(ROOT / "recipes/mnist_speclenet.yaml"), "--data.init_args.data_dir",
            str(shared_data / "mnist"), "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar",
            "false", "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn",
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--test_after_fit", "false",
            "--data.init_args.num_workers", "0"]
    done = subprocess.run([sys.executable, "-m", "specnet_zoo.cli", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


# 6. Inputs accepted silently before.

@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -0.5])
def test_nonfinite_or_negative_threshold_is_rejected(threshold):
    with pytest.raises(ValueError, match="threshold must be finite and >= 0"):
        SpectralConv2d(2, 3, 3, threshold=threshold)
    with pytest.raises(ValueError, match="threshold must be finite and >= 0"):
        specnet_zoo.create_model("specvgg16", threshold=threshold)


def test_non_numeric_sparsity_is_a_type_error():
    with pytest.raises(TypeError, match="threshold must be a real number"):
        SpectralBlock(2, [3], threshold="0.5")
    with pytest.raises(TypeError, match="density must be a number"):
        SpectralBlock(2, [3], density="0.2")


def test_empty_batch_through_layers():
    x = torch.randn(0, 2, 9, 8, requires_grad=True)
    for layer in (SpectralConv2d(2, 3, 3, density=0.5), SpectralBlock(2, [3, 4], threshold=0.1, storage="int8"),
                  SpectralPool2d(output_size=4)):
        out = layer(x)
        assert out.shape[0] == 0 and out.shape[1] in (2, 3, 4)
        out.sum().backward()


# 7. Schedules, callbacks and the command line.

@pytest.mark.parametrize("limit,expected", [(dict(max_steps=7), (7, "step")), (dict(max_epochs=3), (3, "epoch"))])
def test_cosine_schedule_spans_the_run(tmp_path, limit, expected):
    module = ImageClassifier("lenet5", in_chans=1, scheduler="cosine", lr=0.01)
    trainer = _trainer(tmp_path, limit_val_batches=0, limit_train_batches=2, **limit)
    trainer.fit(module, _mnist_like())
    config = trainer.lr_scheduler_configs[0]
    assert (config.scheduler.T_max, config.interval) == expected


class _LearningRates(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_warmup_schedules_rise_to_lr_then_anneal_over_the_run(tmp_path, scheduler):
    module = ImageClassifier("lenet5", in_chans=1, scheduler=scheduler, lr=0.01, warmup=0.25, optimizer="adamw")
    record = _LearningRates()
    trainer = _trainer(tmp_path, limit_val_batches=0, max_epochs=4, callbacks=[record], enable_checkpointing=False)
    trainer.fit(module, _mnist_like())  # 4 batches x 4 epochs = 16 steps, 4 of them warm-up
    lrs = record.lrs
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert len(lrs) == 16 and peak in (3, 4) and abs(lrs[peak] - 0.01) < 1e-3, lrs
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1])) and all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:])), lrs
    assert lrs[-1] < 0.1 * lrs[peak]
    with pytest.raises(ValueError, match="warmup is a fraction"):
        ImageClassifier("lenet5", scheduler=scheduler, warmup=1.5)


class _FailingForward(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        self.model(x)  # runs under the monitor's hooks, then fails before backward
        raise RuntimeError("boom in forward")


def test_memory_monitor_removes_its_hooks_when_a_step_raises(tmp_path):
    module = ImageClassifier("speclenet", in_chans=1, scheduler="none")
    module.model = _FailingForward(module.model)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[MemoryMonitor()])
    with pytest.raises(RuntimeError, match="boom in forward"):
        trainer.fit(module, _mnist_like())
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def test_profile_reports_out_of_memory_with_its_cause(monkeypatch, capsys):
    import specnet_zoo.profiling as profiling

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(profiling, "measure_memory", out_of_memory)
    assert cli.main(["profile", "--model", "lenet5", "--data", "random", "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "Tried to allocate 2.00 GiB" in err and "--batch-size" in err


def test_profile_does_not_swallow_internal_errors(monkeypatch):
    import specnet_zoo.profiling as profiling

    def broken(*args, **kwargs):
        raise RuntimeError("an internal kernel failure")

    monkeypatch.setattr(profiling, "measure_memory", broken)
    with pytest.raises(RuntimeError, match="an internal kernel failure"):
        cli.main(["profile", "--model", "lenet5", "--data", "random", "--batch-size", "2"])
    assert cli.main(["profile", "--model", "lenet55", "--data", "random"]) == 1  # bad names stay one line
