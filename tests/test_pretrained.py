"""Pretrained zoo: export, offline loading (bundled, local-dir, HF cache), tampering, cards, push, fine-tuning."""
import json
import shutil
import types
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

import specnet_zoo
from specnet_zoo import pretrained
from specnet_zoo.cli import main
from specnet_zoo.data import sample_batch
from specnet_zoo.export import evaluate_accuracy, export_checkpoint, load_checkpoint, model_from_checkpoint
from specnet_zoo.hub import push_export
from specnet_zoo.pretrained import MANIFEST, WEIGHTS_DIR, WeightsError, WeightsNotFoundError, sha256_file
from specnet_zoo.training.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shared_data) -> Path:
    """A real (short) SpecLeNet run through the CLI: checkpoint, CSV logs with test metrics, hardware.json."""
    root = tmp_path_factory.mktemp("run")
    cli_main(["fit", "--config", str(ROOT / "recipes/mnist_speclenet.yaml"), "--trainer.max_epochs", "1",
              # fractions: jsonargparse reads "1" as 1.0 (all batches) for these arguments
              "--trainer.limit_train_batches", "0.035", "--trainer.limit_val_batches", "0.1",
              "--trainer.limit_test_batches", "0.05", "--trainer.default_root_dir",
              str(root), "--trainer.enable_progress_bar", "false", "--data.init_args.data_dir", str(shared_data / "mnist")])
    return root


@pytest.fixture(scope="module")
def best_ckpt(trained_run) -> Path:
    return next((trained_run / "checkpoints").glob("best-*.ckpt"))


@pytest.fixture(scope="module")
def exported(best_ckpt, tmp_path_factory) -> Path:
    return export_checkpoint(best_ckpt, tmp_path_factory.mktemp("export") / "speclenet.mnist", command="pytest")


@pytest.fixture(scope="module")
def reference(best_ckpt, shared_data):
    """(trained model from the checkpoint, a real MNIST batch, its logits)."""
    model, _ = model_from_checkpoint(load_checkpoint(best_ckpt))
    images, _ = sample_batch("mnist", 16, root=shared_data)
    with torch.no_grad():
        return model, images, model(images)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _populate_hf_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """The Hugging Face cache layout hf_hub_download reads offline: refs/main -> snapshots/<commit>/<files>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "README.md"):
        shutil.copyfile(folder / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# -- export -------------------------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_export_writes_weights_config_and_card(exported, trained_run):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == "speclenet" and config["num_classes"] == 10
    assert config["model_args"] == {"threshold": 0.7, "num_classes": 10, "in_chans": 1}
    assert config["pretrained_cfg"]["tag"] == "mnist" and config["pretrained_cfg"]["hf_hub_id"] == "specnet-zoo/speclenet.mnist"
    record = config["specnet_zoo"]
    assert record["sha256"] == sha256_file(exported / "model.safetensors")
    assert record["bytes"] == (exported / "model.safetensors").stat().st_size
    assert 0 < record["metrics"]["test/acc"] <= 1 and record["hardware"]["torch"] == torch.__version__
    assert record["memory"]["twin"] == "lenet5" and record["memory"]["saved_ratio"] > 0


@pytest.mark.shared_data
def test_card_parses_back_with_metrics(exported):
    card = ModelCard.load(exported / "README.md")
    config = json.loads((exported / "config.json").read_text())
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["test/acc"] == round(config["specnet_zoo"]["metrics"]["test/acc"], 4)
    assert card.data.library_name == "timm" and card.data.license == "apache-2.0"
    for text in ("threshold: 0.7", "lenet5", "@article{guan2019specnet", "Limitations",
                 config["specnet_zoo"]["sha256"]):
        assert text in card.text


@pytest.mark.shared_data
def test_cli_export(best_ckpt, tmp_path, capsys):
    assert main(["export", str(best_ckpt), "--out", str(tmp_path / "out"), "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "exported speclenet.mnist" in out and sha256_file(tmp_path / "out" / "model.safetensors") in out


# -- loading: local-dir, the HF cache offline, bundled tags -----------------------------------------------------

@pytest.mark.shared_data
def test_local_dir_and_offline_hf_cache_give_identical_outputs(exported, reference, offline_cache, monkeypatch):
    _, images, expected = reference
    _populate_hf_cache(offline_cache, "specnet-zoo/speclenet.mnist", exported)
    sha = sha256_file(exported / "model.safetensors")
    # the registered tag's Hub copy (no bundled file) is checked against the manifest's sha256
    monkeypatch.setattr(pretrained, "_manifest", lambda: {"speclenet.mnist": {"sha256": sha, "model_args": {"threshold": 0.7}}})
    models = {
        "local-dir": timm.create_model(f"local-dir:{exported}", pretrained=True),
        "hf-hub": timm.create_model("hf-hub:specnet-zoo/speclenet.mnist", pretrained=True),
        "tag via Hub": specnet_zoo.create_model("speclenet.mnist", pretrained=True, pretrained_cfg_overlay=dict(
            file=None, hf_hub_id="specnet-zoo/speclenet.mnist")),
    }
    for source, model in models.items():
        assert model.pretrained_cfg.get("state_dict") is None, source
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(images), expected, rtol=0, atol=0, msg=source)
    assert models["local-dir"].pretrained_cfg["source"] == "local-dir"


def test_offline_miss_fails_with_what_to_do(offline_cache, monkeypatch):
    overlay = dict(file=None, hf_hub_id="specnet-zoo/not-cached")
    with pytest.raises(WeightsNotFoundError, match=r"HF_HUB_OFFLINE is set.*local-dir:PATH"):
        specnet_zoo.create_model("lenet5", pretrained=True, pretrained_cfg_overlay=overlay)
    # no HF_HUB_OFFLINE and no network: one connection attempt, not huggingface_hub's ~25 s of retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(pretrained, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(WeightsNotFoundError, match=r"the Hub is unreachable \(no network\).*local-dir:PATH"):
        specnet_zoo.create_model("lenet5", pretrained=True, pretrained_cfg_overlay=overlay)


def test_tag_without_weights_names_the_tags_that_have_them():
    with pytest.raises(WeightsNotFoundError, match="no pretrained weights for specdensenet.cifar10") as error:
        specnet_zoo.create_model("specdensenet.cifar10", pretrained=True)
    for tag in SHIPPED:
        assert tag in str(error.value)


def test_untrainable_tags_say_why():
    notes = timm.models.get_pretrained_cfg("specdensenet.svhn").notes
    assert "SVHN cannot be downloaded" in notes[0]


@pytest.mark.skipif(not SHIPPED, reason="no bundled weights in this checkout")
def test_bundled_weights_load_offline_and_match_their_manifest(offline_cache):
    assert sum(info["bytes"] for info in SHIPPED.values()) <= 40 * 2**20
    assert sorted(specnet_zoo.list_pretrained()) == sorted(SHIPPED)
    table = specnet_zoo.model_table()
    for tag, info in SHIPPED.items():
        path = WEIGHTS_DIR / info["file"]
        assert sha256_file(path) == info["sha256"] and path.stat().st_size == info["bytes"]
        model = specnet_zoo.create_model(tag, pretrained=True)
        assert model.pretrained_cfg["file"] == str(path)
        for key, value in info["model_args"].items():  # the tag's model arguments are applied
            assert getattr(model.stages[0].convs[0], key) == value
        assert f"| {tag.split('.')[0]} |" in table and tag.split(".")[1] in table


@pytest.mark.shared_data
@pytest.mark.parametrize("tag", sorted(SHIPPED))
def test_shipped_tag_reproduces_its_card(tag, shared_data):
    """The stored weights give the manifest's test accuracy on the full real test set, and the card says the same."""
    info = SHIPPED[tag]
    model = specnet_zoo.create_model(tag, pretrained=True)
    accuracy, images = evaluate_accuracy(model, tag.split(".")[1], data_dir=shared_data / "mnist")
    assert images == 10_000
    assert abs(accuracy - info["metrics"]["test/acc"]) <= 5e-4, (accuracy, info["metrics"])
    assert accuracy >= 0.99
    card = ModelCard.load(ROOT / info["card"])
    logged = {r.metric_name: r.metric_value for r in card.data.eval_results}["test/acc"]
    assert abs(logged - accuracy) <= 5e-4 and info["sha256"] in card.text


def test_shipped_tag_fine_tunes_after_inference_mode_evaluation():
    """Evaluate (under inference_mode, cached spectral constants included), then fine-tune a new head: one process."""
    tag = next(iter(sorted(SHIPPED)), None)
    if tag is None:
        pytest.skip("no bundled weights in this checkout")
    model = specnet_zoo.create_model(tag, pretrained=True).eval()
    x = torch.randn(4, *model.pretrained_cfg["input_size"])
    with torch.inference_mode():
        model(x)
    model.reset_classifier(3)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and model.get_classifier().weight.grad is not None


# -- refusing bad files -------------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_truncated_file_is_refused(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightsError, match=rf"{weights}: sha256 is .* the file was altered or only partly written"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    with pytest.raises(WeightsError, match=rf"{weights} is not a readable safetensors file \(truncated or corrupted"):
        specnet_zoo.create_model("speclenet", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))


@pytest.mark.shared_data
def test_same_size_alteration_is_refused(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one byte of the last tensor: still a valid file of the same size
    weights.write_bytes(bytes(data))
    assert weights.stat().st_size == (exported / "model.safetensors").stat().st_size
    load_file(str(weights))  # safetensors itself cannot tell
    with pytest.raises(WeightsError, match="sha256 is .*, expected"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


@pytest.mark.shared_data
def test_wrong_architecture_and_missing_keys_are_refused(exported, tmp_path):
    weights = exported / "model.safetensors"
    with pytest.raises(WeightsError, match=rf"{weights} holds weights of speclenet, not lenet5"):
        specnet_zoo.create_model("lenet5", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    anonymous = tmp_path / "anonymous.safetensors"
    save_file(load_file(str(weights)), str(anonymous))  # no architecture metadata: the keys and shapes decide
    with pytest.raises(WeightsError, match=r"anonymous.safetensors does not hold weights for this specalexnet: "
                                           r"\d+ missing keys .* shape mismatches"):
        specnet_zoo.create_model("specalexnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(anonymous)))
    partial = load_file(str(weights))
    del partial["head.fc.bias"]
    save_file(partial, str(tmp_path / "partial.safetensors"))  # no architecture metadata
    with pytest.raises(WeightsError, match=r"partial.safetensors does not hold weights for this speclenet: 1 missing keys "
                                           r"\(e.g. head.fc.bias\)"):
        specnet_zoo.create_model("speclenet", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / "partial.safetensors")))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (Path.touch, (self.marker,))


def test_pickles_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": _Exploit(marker)}, "hyper_parameters": {}}, tmp_path / "evil.ckpt")
    with pytest.raises(WeightsError, match=r"evil.ckpt is not a readable Lightning checkpoint \(read with weights_only=True\)"):
        load_checkpoint(tmp_path / "evil.ckpt")
    torch.save({"head.fc.bias": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match=r"evil.pth: weights load only from .safetensors"):
        specnet_zoo.create_model("lenet5", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "evil.pth")))
    assert not marker.exists()
    assert main(["export", str(tmp_path / "evil.ckpt"), "--out", str(tmp_path / "out")]) == 1
    assert not marker.exists()


# -- push -------------------------------------------------------------------------------------------------

class FakeApi:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return types.SimpleNamespace(oid="f" * 40, commit_url="https://huggingface.co/x/commit/fff")
        return record


@pytest.mark.shared_data
def test_push_sends_exactly_the_export(exported):
    api = FakeApi()
    message = push_export(exported, "me/speclenet-mnist", revision="v1", private=True, api=api)
    names = [c[0] for c in api.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1] == ("me/speclenet-mnist",) and api.calls[0][2] == dict(repo_type="model", private=True, exist_ok=True)
    assert api.calls[1][2]["branch"] == "v1"
    upload = api.calls[2][2]
    assert upload["folder_path"] == str(exported) and upload["revision"] == "v1" and upload["repo_id"] == "me/speclenet-mnist"
    assert upload["allow_patterns"] == ["README.md", "config.json", "model.safetensors"]
    assert "hf_revision " + "f" * 40 in message


@pytest.mark.shared_data
def test_push_dry_run_and_refusals(exported, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("dry run must not touch the network"))
    assert main(["push", str(exported), "--repo-id", "me/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload to https://huggingface.co/me/x" in out and "model.safetensors" in out
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["push", str(exported), "--repo-id", "me/x"]) == 1
    assert "no Hugging Face token: set HF_TOKEN" in capsys.readouterr().err
    folder = _copy(exported, tmp_path)
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError, match="the weights changed after export"):
        push_export(folder, "me/x", dry_run=True)
    (folder / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match="missing README.md"):
        push_export(folder, "me/x", dry_run=True)


@pytest.mark.shared_data
@pytest.mark.skipif("speclenet.mnist" not in SHIPPED, reason="speclenet.mnist weights are not bundled in this checkout")
def test_any_recipe_starts_from_weights_and_evaluates_then_fine_tunes_in_one_process(tmp_path, shared_data):
    base = ["--config", str(ROOT / "recipes/mnist_speclenet.yaml"), "--model.model_kwargs", '{"pretrained": true}',
            "--data.init_args.data_dir", str(shared_data / "mnist"), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0.1"]
    cli = cli_main(["validate", *base])
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.97  # the tag's weights, threshold 0.7 from its manifest
    assert cli.model.model.stages[0].convs[0].threshold == 0.7
    cli = cli_main(["fit", *base, "--trainer.fast_dev_run", "2"])
    metrics = cli.trainer.callback_metrics  # after test_after_fit: the test metrics of the fine-tuned model
    assert cli.trainer.global_step == 2 and torch.isfinite(metrics["test/loss"]) and float(metrics["test/acc"]) > 0.9


@pytest.mark.shared_data
@pytest.mark.skipif("speclenet.mnist" not in SHIPPED, reason="speclenet.mnist weights are not bundled in this checkout")
def test_tag_model_args_apply_only_to_the_tags_own_weights(exported):
    bundled = WEIGHTS_DIR / SHIPPED["speclenet.mnist"]["file"]
    assert specnet_zoo.create_model("speclenet.mnist", pretrained=True).stages[0].convs[0].threshold == 0.7
    assert specnet_zoo.create_model("speclenet.mnist", pretrained=True, threshold=0.5).stages[0].convs[0].threshold == 0.5
    own = specnet_zoo.create_model("speclenet", pretrained=True, pretrained_cfg_overlay=dict(file=str(bundled)))
    assert own.stages[0].convs[0].threshold == 0.7
    users = specnet_zoo.create_model("speclenet", pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(exported / "model.safetensors")))
    assert users.stages[0].convs[0].threshold == 0.0  # a user's file says nothing about how it was trained
