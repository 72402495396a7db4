"""timm-style model tests for every registered specnet-zoo architecture."""
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import specnet_zoo
from specnet_zoo.layers import despectralize
from specnet_zoo.models import specnet_model_names

NAMES = specnet_model_names()
SPECNET = ["speclenet", "specalexnet", "specvgg16", "specdensenet"]
TWINS_EQUAL = [("lenet5", "speclenet"), ("alexnet_cifar", "specalexnet"), ("densenet_cifar", "specdensenet"),
               ("rippel_generic", "specparam_generic"), ("rippel_deep", "specparam_deep"),
               ("specpool_cifar", "specparam_specpool_cifar")]


def _input(model, batch=2, size=None):
    c, h, w = model.pretrained_cfg["input_size"]
    return torch.randn(batch, c, size or h, size or w)


def test_every_architecture_is_registered():
    expected = {"lenet5", "speclenet", "alexnet_cifar", "specalexnet", "vgg16_cifar", "specvgg16", "densenet_cifar",
                "specdensenet", "specpool_cifar", "rippel_generic", "rippel_deep", "specparam_generic", "specparam_deep",
                "specparam_specpool_cifar"}
    assert set(NAMES) == expected
    assert set(specnet_zoo.list_models()) == expected
    assert set(timm.list_models("spec*")) >= {n for n in expected if n.startswith("spec")}


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = specnet_zoo.create_model(name).train()
    x = _input(model)
    out = model(x)
    assert out.shape == (2, model.num_classes) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_head_interface(name):
    model = specnet_zoo.create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert pre.shape == (2, model.num_features)
        assert isinstance(model.get_classifier(), torch.nn.Linear)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.num_classes == 5


@pytest.mark.parametrize("name", NAMES)
def test_features_only_matches_feature_info(name):
    model = timm.create_model(name, features_only=True).eval()
    x = _input(model)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(model.feature_info.channels())
    for out, chs, red in zip(outs, model.feature_info.channels(), model.feature_info.reduction()):
        assert out.shape[1] == chs
        assert out.shape[-1] == pytest.approx(x.shape[-1] / red, abs=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_timm_and_specnet_zoo_build_the_same_architecture(name):
    a, b = timm.create_model(name), specnet_zoo.create_model(name)
    assert type(a) is type(b)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert a.pretrained_cfg["architecture"] == name


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_and_in_chans_kwargs(name):
    model = specnet_zoo.create_model(name, num_classes=7, in_chans=2).eval()
    c, h, w = model.pretrained_cfg["input_size"]
    with torch.no_grad():
        assert model(torch.randn(1, 2, h, w)).shape == (1, 7)
    with pytest.raises(ValueError, match="expects 2 input channels, got 3"):
        model(torch.randn(1, 3, h, w))


@pytest.mark.parametrize("spatial,spectral", TWINS_EQUAL)
def test_twins_have_equal_parameter_counts(spatial, spectral):
    count = lambda name: sum(p.numel() for p in specnet_zoo.create_model(name).parameters())  # noqa: E731
    assert count(spatial) == count(spectral)


def test_specvgg16_has_one_batchnorm_per_stage():
    count = lambda name: sum(p.numel() for p in specnet_zoo.create_model(name).parameters())  # noqa: E731
    bn_per_conv = 2 * (2 * 64 + 2 * 128 + 3 * 256 + 3 * 512 + 3 * 512)
    bn_per_stage = 2 * (64 + 128 + 256 + 512 + 512)
    assert count("vgg16_cifar") - count("specvgg16") == bn_per_conv - bn_per_stage == 5504


@pytest.mark.parametrize("spatial,spectral", TWINS_EQUAL[:3])
def test_specnet_twins_share_state_dicts(spatial, spectral):
    a, b = specnet_zoo.create_model(spatial), specnet_zoo.create_model(spectral)
    b.load_state_dict(a.state_dict())
    a.load_state_dict(b.state_dict())


@pytest.mark.parametrize("spatial,specparam", TWINS_EQUAL[3:])
def test_specparam_models_export_to_their_spatial_twin(spatial, specparam):
    model = specnet_zoo.create_model(specparam).eval()
    x = _input(model)
    with torch.no_grad():
        expected = model(x)
    twin = specnet_zoo.create_model(spatial).eval()
    twin.load_state_dict(despectralize(model).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(twin(x), expected, rtol=1e-5, atol=1e-5)


def test_specnet_kwargs():
    model = specnet_zoo.create_model("speclenet", threshold=0.4, activation="identity")
    convs = [m for m in model.modules() if type(m).__name__ == "SpectralConv2d"]
    assert convs and all(c.threshold == 0.4 and c.activation is None for c in convs)
    with pytest.raises(ValueError, match="spectral twin only"):
        specnet_zoo.create_model("lenet5", threshold=0.4)
    with pytest.raises(ValueError, match="spectral twin only"):
        specnet_zoo.create_model("vgg16_cifar", activation="identity")


@pytest.mark.parametrize("name", ["vgg16_cifar", "specvgg16", "densenet_cifar", "specdensenet", "alexnet_cifar",
                                  "specalexnet", "specpool_cifar", "rippel_deep"])
def test_other_input_sizes(name):
    model = specnet_zoo.create_model(name).eval()
    with torch.no_grad():
        assert model(_input(model, 1, 64)).shape == (1, 10)


@pytest.mark.parametrize("name", ["vgg16_cifar", "densenet_cifar"])
def test_imagenet_size_input(name):
    model = specnet_zoo.create_model(name, num_classes=1000).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("name,minimum", [("specvgg16", 32), ("vgg16_cifar", 32), ("speclenet", 10), ("lenet5", 4),
                                          ("specdensenet", 12), ("specalexnet", 12)])
def test_too_small_input_names_the_minimum(name, minimum):
    model = specnet_zoo.create_model(name)
    assert model.min_input_size == minimum
    c = model.in_chans
    with pytest.raises(ValueError, match=f"at least {minimum}x{minimum} pixels, got {minimum - 1}x{minimum - 1}"):
        model(torch.randn(1, c, minimum - 1, minimum - 1))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, c, minimum, minimum))  # the minimum itself works


def test_unknown_name_lists_close_matches():
    with pytest.raises(RuntimeError, match=r"Unknown model \(specvg16\); did you mean specvgg16"):
        specnet_zoo.create_model("specvg16")
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("specvg16")


def test_pretrained_without_weights_is_an_error_and_local_safetensors_load(tmp_path):
    with pytest.raises(RuntimeError, match="no pretrained weights are published for speclenet.mnist"):
        specnet_zoo.create_model("speclenet", pretrained=True)
    assert specnet_zoo.list_pretrained() == [] and specnet_zoo.list_models(pretrained=True) == []
    source = specnet_zoo.create_model("speclenet").eval()
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = specnet_zoo.create_model("speclenet", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_models_command_and_readme_table_are_generated():
    out = subprocess.run([sys.executable, "-m", "specnet_zoo.cli", "models"], capture_output=True, text=True, check=True).stdout
    for name in NAMES:
        assert name in out
    assert "14,990,922" in out  # vgg16_cifar's parameter count
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert specnet_zoo.model_table(markdown=True) in readme, "README table is stale: python scripts/update_readme.py"
