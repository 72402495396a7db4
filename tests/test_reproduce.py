"""The accuracy reproductions: harness (resume, caching, data), speedup and selection rules, and the quick
``reproduce all`` end to end on real data."""
import csv
import json
from dataclasses import replace

import pytest
import torch

from specnet_zoo import create_model
from specnet_zoo.cli import main
from specnet_zoo.reproduce import harness, specnet_accuracy, spectral_param, spectral_pooling
from specnet_zoo.reproduce.harness import RunSpec, dataset_tensors, train
from specnet_zoo.reproduce.specnet_accuracy import Pair, SettingResult, choose

SMALL = dict(dataset="mnist", train_size=320, test_size=200, batch_size=32, optimizer="adamw", lr=3e-3)


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.shared_data
def test_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(shared_data, tmp_path, monkeypatch):
    spec = RunSpec(name="resume/lenet5", model="lenet5", steps=14, seed=3, **SMALL)
    whole = train(spec, tmp_path / "whole", data_root=shared_data, checkpoint_every=4, log=lambda *_: None)

    calls = {"n": 0}
    real = harness.F.cross_entropy

    def dies_at_step_10(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(harness.F, "cross_entropy", dies_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "killed", data_root=shared_data, checkpoint_every=4, log=lambda *_: None)
    run_dir = tmp_path / "killed" / "runs" / spec.name
    assert (run_dir / "state.pt").is_file() and not (run_dir / "result.json").exists()
    monkeypatch.setattr(harness.F, "cross_entropy", real)
    messages = []
    resumed = train(spec, tmp_path / "killed", data_root=shared_data, checkpoint_every=4, log=messages.append)
    assert any("resumed at step 8/14" in m for m in messages)
    assert _losses(run_dir) == pytest.approx(_losses(tmp_path / "whole" / "runs" / spec.name), rel=1e-5)
    assert resumed["test_accuracy"] == pytest.approx(whole["test_accuracy"])
    assert resumed["steps"] == 14 and not (run_dir / "state.pt").exists()


@pytest.mark.shared_data
def test_finished_runs_are_reused_and_a_changed_spec_retrains(shared_data, tmp_path):
    spec = RunSpec(name="cache/lenet5", model="lenet5", steps=3, **SMALL)
    first = train(spec, tmp_path, data_root=shared_data, log=lambda *_: None)
    messages = []
    assert train(spec, tmp_path, data_root=shared_data, log=messages.append) == first and messages == []
    changed = train(replace(spec, steps=4), tmp_path, data_root=shared_data, log=messages.append)
    assert changed["steps"] == 4 and messages
    row = json.loads((tmp_path / "runs" / spec.name / "result.json").read_text())
    assert row["hardware"]["torch"] == torch.__version__ and row["spec"]["steps"] == 4


@pytest.mark.shared_data
def test_subsets_are_class_balanced_real_images(shared_data):
    images, labels = dataset_tensors("cifar10", "test", 200, shared_data)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.bincount().tolist() == [20] * 10
    assert images.float().std() > 30  # real pictures, not blank
    with pytest.raises(ValueError, match="multiple of 10"):
        dataset_tensors("mnist", "train", 25, shared_data)


def test_run_spec_rejects_bad_settings():
    with pytest.raises(ValueError, match="dataset must be one of"):
        RunSpec(name="x", model="lenet5", dataset="svhn", steps=1)
    with pytest.raises(ValueError, match="optimizer must be"):
        RunSpec(name="x", model="lenet5", dataset="mnist", steps=1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="steps and batch_size must be >= 1"):
        RunSpec(name="x", model="lenet5", dataset="mnist", steps=0)
    with pytest.raises(ValueError, match="unknown model 'lenet6'"):
        RunSpec(name="x", model="lenet6", dataset="mnist", steps=1)


def test_reproduce_all_rejects_a_bad_device(tmp_path, capsys):
    argv = ["reproduce", "all", "--quick", "--out", str(tmp_path), "--runs", str(tmp_path)]
    assert main(argv + ["--device", "gpu0"]) == 1
    assert "--device must be a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(argv + ["--device", "cuda"]) == 1
        assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("network", spectral_param.NETWORKS)
def test_spatial_and_spectral_parametrizations_start_as_the_same_function(network):
    budget = spectral_param.BUDGETS["quick"]
    x = torch.randn(2, 3, 32, 32)
    outputs = []
    for spectral in (False, True):
        spec = budget.spec(network, 3, spectral, seed=5)
        torch.manual_seed(spec.seed)
        model = create_model(spec.model, **spec.model_kwargs).eval()
        outputs.append(model(x))
        assert any("parametrizations" in name for name, _ in model.named_parameters()) == spectral
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-4)


def test_speedup_counts_steps_to_the_spatial_runs_final_loss():
    spatial = [2.0 - 0.01 * i for i in range(100)]  # ends at 1.01
    spectral = [2.0 - 0.04 * i for i in range(100)]  # reaches 1.01 after 26 steps (1.96 - 0.04 * 24 = 1.0)
    factor, matched = spectral_param.speedup(spatial, spectral)
    assert matched == 26 and factor == pytest.approx(100 / 26)


def test_speedup_below_one_when_the_spectral_run_lags():
    spatial = [2.0 - 0.02 * i for i in range(50)]  # final 1.02
    spectral = [2.0 - 0.01 * i for i in range(50)]  # final 1.51, reached by the spatial run at step 26
    factor, matched = spectral_param.speedup(spatial, spectral)
    assert matched is None and factor == pytest.approx(26 / 50)


def _row(label, accuracies, density, saved=None):
    pair = Pair("speclenet", "lenet5", "mnist", ("beta 1.0",), epochs=1)
    return SettingResult(pair, label, accuracies, density if saved is None else saved, 0.5, density, 1.0, 1.0)


def test_choose_takes_the_sparsest_setting_within_one_point_of_the_twin():
    twin = _row("twin", [0.90, 0.90], None)
    rows = [twin, _row("no threshold", [0.95, 0.95], 1.0), _row("beta 0.5", [0.898, 0.896], 0.6),
            _row("beta 1.5", [0.893, 0.889], 0.3), _row("density 0.1, int8", [0.80, 0.80], 0.1)]
    chosen, within = choose(rows)
    assert within and chosen.label == "beta 1.5"  # 0.891 >= 0.89; density 0.1 is 10 points off
    rows[3] = _row("beta 1.5", [0.87, 0.87], 0.3)
    chosen, within = choose(rows)
    assert within and chosen.label == "beta 0.5"
    chosen, within = choose([twin, _row("beta 1.0", [0.5, 0.5], 0.2), _row("beta 0.5", [0.6, 0.6], 0.5)])
    assert not within and chosen.label == "beta 0.5"  # none close: the most accurate
    compact, int8 = _row("density 0.2", [0.9, 0.9], 0.2, saved=0.37), _row("density 0.2, int8", [0.895] * 2, 0.2, 0.18)
    assert choose([twin, compact, int8])[0] is int8  # same density: the smaller footprint


def test_max_pooling_twin_has_the_same_parameters_and_map_sizes():
    spectral = create_model("specpool_cifar")
    twin = create_model("specpool_cifar", **spectral_pooling.VARIANTS["max pooling (same sizes)"])
    assert sum(p.numel() for p in spectral.parameters()) == sum(p.numel() for p in twin.parameters())
    def map_sizes(model):
        x, sizes = torch.randn(2, 3, 32, 32), []
        for stage in model.stages:
            x = stage(x)
            sizes.append(tuple(x.shape[1:]))
        return sizes

    assert map_sizes(spectral) == map_sizes(twin) and map_sizes(twin)[-2] == (288, 10, 10)
    with pytest.raises(ValueError, match="pool must be 'spectral' or 'max'"):
        create_model("specpool_cifar", pool="avg")
    with pytest.raises(ValueError, match="applies to arch 'specpool' only"):
        create_model("rippel_generic", pool="max")


def test_every_setting_of_every_budget_names_a_known_setting_and_unique_runs():
    for budget, pairs in specnet_accuracy.BUDGETS.items():
        names = set()
        for pair in pairs:
            for seed in pair.seeds:
                for label in pair.settings:
                    assert label in specnet_accuracy.SETTINGS, (budget, label)
                    names.add(pair.spec(pair.spectral, label, seed).name)
                names.add(pair.spec(pair.twin, "twin", seed).name)
        assert len(names) == sum(len(p.seeds) * (len(p.settings) + 1) for p in pairs)


@pytest.mark.shared_data
def test_reproduce_all_quick_writes_every_table_and_resumes(shared_data, tmp_path, capsys):
    out, runs = tmp_path / "docs", tmp_path / "runs"
    argv = ["reproduce", "all", "--quick", "--out", str(out), "--runs", str(runs), "--data", str(shared_data),
            "--no-memory", "--no-speed"]
    assert main(argv) == 0
    text = (out / "results.md").read_text()
    for heading in ("## 1. SpecNet", "### speclenet vs lenet5 on MNIST", "### specalexnet vs alexnet_cifar",
                    "## 2. Spectral parametrization", "## 3. Spectral pooling", "Accuracy vs training budget"):
        assert heading in text
    assert "nan" not in text.lower().replace("nan ", "")
    for figure in ("specnet_accuracy_speclenet.png", "specnet_accuracy_specalexnet.png", "spectral_param_curves.png",
                   "spectral_pooling.png"):
        assert (out / "figures" / figure).stat().st_size > 10_000
    pairs = specnet_accuracy.BUDGETS["quick"]
    expected = sum(len(p.seeds) * (len(p.settings) + 1) + len(p.budget_factors) * 2 * len(p.budget_seeds)
                   for p in pairs)
    with open(out / "results_specnet_accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == expected
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 and int(r["saved_bytes"]) > 0 for r in rows)
    param = spectral_param.BUDGETS["quick"]
    with open(out / "results_spectral_param.csv") as f:
        assert len(list(csv.DictReader(f))) == len(param.networks) * 2 * len(param.seeds)
    with open(out / "results_spectral_pooling.csv") as f:
        assert len(list(csv.DictReader(f))) == len(spectral_pooling.VARIANTS) * len(spectral_pooling.BUDGETS["quick"].seeds)
    assert json.loads((out / "hardware.json").read_text())["torch"] == torch.__version__
    capsys.readouterr()
    assert main(argv) == 0  # everything finished: nothing trains again
    assert "step" not in capsys.readouterr().out.replace("steps", "")


def test_default_recipes_use_the_documented_memory_setting():
    import yaml

    from specnet_zoo.constants import MEMORY_SETTINGS
    from specnet_zoo.paths import checkout_dir

    checked = 0
    for model, setting in MEMORY_SETTINGS.items():
        assert setting in specnet_accuracy.SETTINGS.values(), (model, setting)
        recipe = checkout_dir() / "recipes" / f"cifar10_{model}.yaml"
        if recipe.is_file():
            assert yaml.safe_load(recipe.read_text())["model"]["model_kwargs"] == setting, recipe
            checked += 1
    assert checked >= 1
