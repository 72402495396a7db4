import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from specnet_zoo.training.cli import cli_main

from data_fixtures import write_cifar100, write_imagenet, write_svhn

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("formats")
    return {"SVHNDataModule": write_svhn(base / "svhn"), "CIFAR100DataModule": write_cifar100(base / "cifar100"),
            "ImageNetDataModule": write_imagenet(base / "imagenet")}


def _recipe_args(recipe: Path, tmp_path: Path, shared_data: Path, fixture_data: dict) -> list[str]:
    config = yaml.safe_load(recipe.read_text())
    data_class = config["data"]["class_path"].rsplit(".", 1)[-1]
    args = ["fit", "--config", str(recipe), "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"]
    if data_class == "MNISTDataModule":
        args += ["--data.init_args.data_dir", str(shared_data / "mnist")]
    elif data_class == "CIFAR10DataModule":
        args += ["--data.init_args.data_dir", str(shared_data / "cifar10-jpg"),
                 "--data.init_args.cache_dir", str(tmp_path.parent / "cifar10-cache")]
    else:
        args += ["--data.init_args.data_dir", str(fixture_data[data_class]), "--data.init_args.val_split", "0.2"]
    trainer = config.get("trainer", {})
    if trainer.get("accelerator") == "gpu":  # CI has no GPU: same recipe, one CPU process
        args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                 "--trainer.num_nodes", "1"]
    if "mixed" in str(trainer.get("precision", "")):  # CPU autocast is bf16: exercises the FFT-in-fp32 path
        args += ["--trainer.precision", "bf16-mixed"]
    if (config["model"].get("model_kwargs") or {}).get("pretrained"):  # no Hub access in CI
        args += ["--model.model_kwargs", '{"pretrained": false}']
    return args


@pytest.mark.shared_data
@pytest.mark.parametrize("precision", ["recipe", "bf16-mixed"])
@pytest.mark.parametrize("recipe", RECIPES, ids=[str(r.relative_to(ROOT / "recipes")) for r in RECIPES])
def test_recipe_fast_dev_run(recipe, precision, tmp_path, shared_data, fixture_data):
    """Every recipe trains a step as written, and under Lightning's bf16-mixed (spectral parts in fp32)."""
    args = _recipe_args(recipe, tmp_path / "run", shared_data, fixture_data)
    if precision != "recipe":
        args += ["--trainer.precision", precision]
    cli = cli_main(args)
    metrics = cli.trainer.callback_metrics  # after test_after_fit, the test metrics
    assert cli.trainer.global_step == 1
    stage = "test" if yaml.safe_load(recipe.read_text()).get("test_after_fit") else "val"
    assert torch.isfinite(metrics[f"{stage}/loss"]) and 0 <= float(metrics[f"{stage}/acc"]) <= 1


def test_print_config_and_dotted_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "recipes/mnist_speclenet.yaml"), "--model.lr", "0.5", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model_name"] == "speclenet" and printed["model"]["lr"] == 0.5
    assert printed["checkpoint"]["save_last"] is True
    assert printed["data"]["class_path"] == "specnet_zoo.data.MNISTDataModule"


def _final_weights(root: Path) -> dict:
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["state_dict"]


def _fit(extra: list[str], root: Path, mnist: Path) -> list[str]:
    return ["fit", "--config", str(ROOT / "recipes/mnist_lenet5.yaml"), "--data.init_args.data_dir", str(mnist),
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--test_after_fit", "false", "--trainer.accelerator", "cpu", *extra]


@pytest.mark.shared_data
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, shared_data):
    common = ["--trainer.max_steps", "6", "--trainer.limit_val_batches", "0", "--checkpoint.monitor", "null"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = {"one": ["--data.init_args.batch_size", "32", "--trainer.devices", "1"],
            "ddp": ["--data.init_args.batch_size", "16", "--trainer.devices", "2", "--trainer.strategy", "ddp"]}
    for name, extra in runs.items():
        args = _fit(common + extra, tmp_path / name, shared_data / "mnist")
        done = subprocess.run([sys.executable, "-m", "specnet_zoo.cli", *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, ddp = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "ddp")
    assert one.keys() == ddp.keys()
    start = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert start == 6
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-5, atol=1e-6)


@pytest.mark.shared_data
def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path, shared_data):
    mnist = shared_data / "mnist"
    common = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "2",
              "--checkpoint.every_n_train_steps", "5", "--model.scheduler", "step", "--model.step_size", "1"]
    full = cli_main(_fit(common, tmp_path / "full", mnist))
    assert full.trainer.global_step == 40
    crash = ["--trainer.callbacks+=training_helpers.CrashAtStep", "--trainer.callbacks.step", "27"]
    with pytest.raises(RuntimeError, match="simulated crash at step 27"):
        cli_main(_fit(common + crash, tmp_path / "killed", mnist))
    saved = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 25 and saved["epoch"] == 1  # mid-epoch checkpoint of the killed run
    resumed = cli_main(_fit(common + ["--ckpt_path", "last"], tmp_path / "killed", mnist))
    assert resumed.trainer.global_step == 40
    expected, got = full.trainer.lightning_module.state_dict(), resumed.trainer.lightning_module.state_dict()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-7)
    full_opt = full.trainer.optimizers[0].state_dict()
    resumed_opt = resumed.trainer.optimizers[0].state_dict()
    assert full_opt["state"][0]["step"] == resumed_opt["state"][0]["step"] == 40
    assert full.trainer.lr_scheduler_configs[0].scheduler.last_epoch == resumed.trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2
