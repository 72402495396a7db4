"""timm-style model tests for every registered specnet-zoo architecture."""
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import specnet_zoo
from specnet_zoo.constants import SPECNET_PAIRS
from specnet_zoo.layers import despectralize
from specnet_zoo.models import specnet_model_names

NAMES = specnet_model_names()
SPECNET = [spectral for spectral, _, _ in SPECNET_PAIRS]
# Twins with identical parameters; the others differ only in BatchNorm/bias placement (tests/test_paper_networks.py).
SPECNET_EQUAL = [("lenet5", "speclenet"), ("densenet40_cifar", "specdensenet40")]
SPECPARAM_TWINS = [("rippel_generic", "specparam_generic"), ("rippel_deep", "specparam_deep"),
                   ("specpool_cifar", "specparam_specpool_cifar")]
TWINS_EQUAL = SPECNET_EQUAL + SPECPARAM_TWINS


def _input(model, batch=2, size=None):
    c, h, w = model.pretrained_cfg["input_size"]
    return torch.randn(batch, c, size or h, size or w)


def test_every_architecture_is_registered():
    expected = {"lenet5", "speclenet", "alexnet_cifar", "specalexnet", "vgg16_cifar", "specvgg16", "vgg_t5_cifar",
                "specvgg_t5", "densenet_cifar", "specdensenet", "densenet40_cifar", "specdensenet40", "specpool_cifar",
                "rippel_generic", "rippel_deep", "specparam_generic", "specparam_deep", "specparam_specpool_cifar"}
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
        assert features.shape[1] == model.num_features  # timm: channels of forward_features
        assert pre.shape == (2, model.head_hidden_size)  # timm: width of the pre-logits features
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
        # reduction is the stride; SpecNet's LeNet's 'valid' 5x5 convolutions also lose 4 pixels per stage
        assert x.shape[-1] / red - 4 <= out.shape[-1] <= x.shape[-1] / red + 1e-3


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


@pytest.mark.parametrize("spatial,spectral", SPECNET_EQUAL)
def test_specnet_twins_share_state_dicts(spatial, spectral):
    a, b = specnet_zoo.create_model(spatial), specnet_zoo.create_model(spectral)
    b.load_state_dict(a.state_dict())
    a.load_state_dict(b.state_dict())


@pytest.mark.parametrize("spatial,specparam", SPECPARAM_TWINS)
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


@pytest.mark.parametrize("name,minimum", [("specvgg16", 32), ("vgg16_cifar", 32), ("speclenet", 16), ("lenet5", 16),
                                          ("specdensenet", 6), ("specdensenet40", 12), ("specalexnet", 12)])
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
    with pytest.raises(RuntimeError, match="no pretrained weights for specalexnet.cifar10"):
        specnet_zoo.create_model("specalexnet", pretrained=True)
    assert set(specnet_zoo.list_models(pretrained=True)) == {n.split(".")[0] for n in specnet_zoo.list_pretrained()}
    assert "specalexnet" not in specnet_zoo.list_models(pretrained=True)
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
    # the memory tables are the reproduction's own output (docs/specnet_memory.md), never typed
    check = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "update_readme.py"),
                            "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_unknown_name_suggestions_are_not_repeated():
    with pytest.raises(specnet_zoo.UnknownModelError) as info:
        specnet_zoo.create_model("specvgg1")
    suggestions = str(info.value).split("did you mean ")[1].split("?")[0].split(", ")
    assert "specvgg16" in suggestions and len(suggestions) == len(set(suggestions))


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    model = specnet_zoo.create_model(name).train()
    x = _input(model)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)  # frequency dropout draws the same resolutions in both runs
        out = model(x)
        out.square().mean().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = grads
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_group_matcher_covers_every_parameter(name):
    from timm.models import group_parameters

    model = specnet_zoo.create_model(name)
    groups = group_parameters(model, model.group_matcher())
    names = [n for group in groups.values() for n in group]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert any(n.startswith("stages.0.") for n in groups[0])  # the stem group comes first


@pytest.mark.parametrize("name", ["specparam_generic", "specparam_deep", "specparam_specpool_cifar"])
def test_timm_cfg_checks_of_parametrized_models(name):
    """timm's test_model_default_cfgs without its first_conv key check, which cannot hold for these models."""
    model = specnet_zoo.create_model(name).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert tuple(features.shape[-2:]) == cfg["pool_size"] and features.shape[1] == model.num_features
        assert pre.shape[1] == model.head_hidden_size
        model.reset_classifier(0)
        assert model(x).shape == pre.shape
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape
        unpooled = specnet_zoo.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape
    assert cfg["classifier"] + ".weight" in model.state_dict() or model.num_classes == 0
    first = dict(model.named_modules())[cfg["first_conv"]]
    assert isinstance(first, torch.nn.Conv2d) and first.in_channels == cfg["input_size"][0]


def test_global_pool_is_checked():
    with pytest.raises(ValueError, match="global_pool must be 'avg' or ''"):
        specnet_zoo.create_model("lenet5", global_pool="max")
    with pytest.raises(ValueError, match="needs num_classes=0"):
        specnet_zoo.create_model("lenet5", global_pool="")


def test_timm_test_exclusions_name_real_models_and_tests():
    suite = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "timm" / "test_models.py"
    exclusions = specnet_zoo.models.timm_test_exclusions()
    assert set(exclusions) <= set(NAMES)
    tests = {test for by_test in exclusions.values() for test in by_test}
    assert tests <= {"test_model_forward_features", "test_model_default_cfgs", "test_model_forward_torchscript",
                     "test_model_forward_fx_torchscript"}
    assert all(len(reason) > 40 for by_test in exclusions.values() for reason in by_test.values())
    if suite.exists():
        text = suite.read_text()
        assert all(f"def {test}(" in text for test in tests)
    # Spatial twins script: only the SpecNet/Rippel spectral models are excluded from TorchScript.
    scripted = {m for m, by_test in exclusions.items() if "test_model_forward_torchscript" in by_test}
    assert not scripted & {"lenet5", "alexnet_cifar", "vgg16_cifar", "rippel_generic", "rippel_deep"}


@pytest.mark.parametrize("name", ["lenet5", "alexnet_cifar", "vgg16_cifar", "rippel_deep"])
def test_spatial_models_script_and_match_eager(name):
    with timm.set_scriptable(True):
        model = specnet_zoo.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _input(model)
    torch.testing.assert_close(scripted(x), model(x))
    with pytest.raises(torch.jit.Error, match="input channels"):
        scripted(torch.randn(1, model.in_chans + 1, 32, 32))


@pytest.mark.parametrize("name", NAMES)
def test_fx_feature_extraction_traces_every_model(name):
    from timm.models import create_feature_extractor, get_graph_node_names

    model = specnet_zoo.create_model(name).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    extractor = create_feature_extractor(model, return_nodes={eval_nodes[-1]: "out"})
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)["out"], model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_dtype_is_a_type_error(name):
    model = specnet_zoo.create_model(name)
    x = _input(model)
    for dtype in (torch.float16, torch.float64, torch.int64):
        with pytest.raises(TypeError, match=f"expects torch.float32 input .* got {dtype}"):
            model(x.to(dtype))


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_an_empty_output(name):
    model = specnet_zoo.create_model(name).train()
    c, h, w = model.pretrained_cfg["input_size"]
    out = model(torch.randn(0, c, h, w))
    assert out.shape == (0, model.num_classes)
    out.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
