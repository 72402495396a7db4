"""Memory accounting: de-duplication, exclusions, ctx-held tensors, a profiler cross-check, the CLI."""
import csv

import pytest
import torch
from torch import nn

import specnet_zoo
from specnet_zoo.cli import main
from specnet_zoo.profiling import (
    SavedTensorRecorder,
    _profiled_allocations,
    measure_memory,
    step_peak_breakdown,
    step_peak_bytes,
)


def profiler_forward_bytes(model, inputs) -> int:
    """Bytes a forward leaves allocated (kept for backward plus the output), from torch.profiler's allocation
    events alone: an independent check of SavedTensorRecorder's hooks."""
    result = []
    return sum(_profiled_allocations(lambda: result.append(model(inputs)), inputs.device))


class _Square(nn.Module):
    def forward(self, x):
        y = x * 2  # saves nothing (constant factor)
        return y * y  # saves y twice: one storage


class _ByHand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.kept = x * 3  # kept on ctx outside save_for_backward
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        return grad * 3 + 0 * ctx.kept


def test_storage_deduplication_and_exclusions():
    model = _Square()
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensorRecorder(model, exclude=[x]) as recorder:
        out = model(x) * x  # saves x (excluded: the input) and model's output
    assert recorder.saved_bytes == 2 * 4 * 8 * 4  # y once, the output once
    assert recorder.layers[""].saved_bytes == 4 * 8 * 4  # y, saved by the model
    assert recorder.layers["(outside)"].saved_bytes == 4 * 8 * 4  # the output, saved outside it
    out.sum().backward()


def test_parameters_are_excluded_and_views_share_storage():
    linear = nn.Linear(16, 16)
    x = torch.randn(8, 16, requires_grad=True)
    with SavedTensorRecorder(linear, exclude=list(linear.parameters()) + [x]) as recorder:
        hidden = linear(x)
        out = hidden[:, :8].sin() + hidden[:, 8:].sin()  # two views of one storage
    assert recorder.saved_bytes == 8 * 16 * 4
    out.sum().backward()


def test_tensors_kept_on_ctx_are_counted():
    x = torch.randn(5, 6, requires_grad=True)
    with SavedTensorRecorder(nn.Identity(), exclude=[x]) as recorder:
        out = _ByHand.apply(x)
    recorder.scan_graph([out])
    assert recorder.by_hand_bytes == recorder.saved_bytes == 5 * 6 * 4


@pytest.mark.parametrize("name,kwargs", [("lenet5", {}), ("speclenet", {"density": 0.3}),
                                         ("specalexnet", {"threshold": 0.5}), ("densenet40_cifar", {"depth": 10}),
                                         ("specdensenet", {"num_layers": 2})])
def test_accounting_agrees_with_torch_profiler(name, kwargs):
    model = specnet_zoo.create_model(name, **kwargs).train()
    shape = (16, 1, 28, 28) if "lenet" in name else (16, 3, 32, 32)
    x = torch.randn(shape)
    model(x)  # warm caches (tap phases, FFT plans) so the profiled forward allocates only what it keeps
    with SavedTensorRecorder(model, exclude=[*model.parameters(), *model.buffers(), x]) as recorder:
        out = model(x)
    recorder.scan_graph([out])
    del out
    profiled = profiler_forward_bytes(model, x) - 16 * 10 * 4  # minus the logits
    assert recorder.saved_bytes > 0
    assert abs(recorder.saved_bytes - profiled) <= 0.02 * profiled, (recorder.saved_bytes, profiled)


@pytest.mark.shared_data
def test_saved_bytes_fall_as_threshold_rises_on_real_cifar10(shared_data):
    from specnet_zoo.data import sample_batch

    x, y = sample_batch("cifar10", 16, shared_data)
    saved = []
    for beta in (0.0, 0.25, 0.5, 1.0, 1.5):
        torch.manual_seed(0)
        model = specnet_zoo.create_model("specvgg16", threshold=beta).train()
        saved.append(measure_memory(model, x, y, peak=False).saved_bytes)
    assert all(a > b for a, b in zip(saved, saved[1:])), saved
    dense = measure_memory(specnet_zoo.create_model("specvgg16", storage="dense").train(), x, y, peak=False)
    assert saved[0] < dense.saved_bytes  # lossless compaction already saves without any threshold


def test_measure_memory_restores_the_model_and_reports_state():
    model = specnet_zoo.create_model("specvgg16", density=0.2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = measure_memory(model, torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), optimizer="adam",
                            timing_steps=1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert report.param_bytes == report.grad_bytes == sum(p.numel() * 4 for p in model.parameters())
    assert report.optimizer_bytes == 2 * report.param_bytes  # Adam: two moments
    assert report.peak_bytes > report.saved_bytes > 0 and report.step_time_s > 0
    assert len(report.densities) == 13 and all(abs(d - 0.2) < 0.01 for d in report.densities.values())
    assert {layer.name for layer in report.grouped()} >= {f"stages.{i}" for i in range(5)}


def test_checkpoint_and_offload_strategies():
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    model = specnet_zoo.create_model("vgg16_cifar").train()
    plain = measure_memory(model, x, y, peak=False)
    checkpointed = measure_memory(model, x, y, strategy="checkpoint", peak=False)
    offloaded = measure_memory(model, x, y, strategy="offload", peak=False)
    # checkpointing keeps each stage's input (the first is the batch itself, excluded) and the head's saves
    stage_inputs = 4 * 4 * (64 * 16 * 16 + 128 * 8 * 8 + 256 * 4 * 4 + 512 * 2 * 2)
    head = sum(layer.saved_bytes for layer in plain.layers if layer.name.startswith("head"))
    assert checkpointed.saved_bytes == stage_inputs + head
    assert offloaded.saved_bytes == 0 and offloaded.offloaded_bytes == plain.saved_bytes


@pytest.mark.shared_data
def test_profile_command_prints_layers_and_ratios(capsys, shared_data):
    assert main(["profile", "--model", "speclenet", "--density", "0.3", "--batch-size", "8", "--timing-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "speclenet (density=0.3), batch 8 of mnist 1x28x28" in out
    for row in ("stages.0", "stages.1", "total saved", "saved activations MB", "step peak MB", "step time s"):
        assert row in out, row
    assert "lenet5 MB" in out
    ratio = float(next(line for line in out.splitlines() if line.startswith("saved activations")).split()[-1])
    assert 0 < ratio < 1
    # every spectral layer's kept fraction at the paper's betas (eq. 7 scale), on the same real batch
    assert "kept fraction by layer   beta 0.5   beta 0.7     beta 1   beta 1.5" in out
    mean = [float(v) for v in next(line for line in out.splitlines() if line.startswith("mean ")).split()[1:]]
    assert len(mean) == 4 and 1 >= mean[0] > mean[1] > mean[2] > mean[3] > 0


def test_profile_command_errors(capsys):
    with pytest.raises(SystemExit):
        main(["profile", "--model", "speclenet", "--density", "0.3", "--threshold", "0.5"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["profile", "--model", "speclenet", "--density", "2", "--data", "random", "--no-peak"]) == 1
    assert "density is the kept fraction" in capsys.readouterr().err


@pytest.mark.shared_data
def test_memory_monitor_logs_every_epoch(tmp_path, shared_data):
    from specnet_zoo.training.cli import cli_main

    args = ["fit", "--config", "recipes/mnist_speclenet.yaml", "--data.init_args.data_dir", str(shared_data / "mnist"),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
            "--test_after_fit", "false", "--model.model_kwargs", '{"density": 0.25}',
            "--trainer.callbacks+=specnet_zoo.training.MemoryMonitor"]
    cli_main(args)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("memory/saved_activations_mb")]
    assert [int(r["epoch"]) for r in logged] == [0, 1]
    for row in logged:
        assert float(row["memory/saved_activations_mb"]) > 0
        assert float(row["memory/grads_mb"]) == pytest.approx(float(row["memory/params_mb"]))
        assert float(row["memory/optimizer_mb"]) > 0
        assert 0.24 < float(row["density/model.stages.0.convs.0"]) < 0.26


@pytest.mark.shared_data
def test_reproduce_specnet_memory_writes_csv_and_plot(tmp_path, shared_data, capsys):
    assert main(["reproduce", "specnet-memory", "--models", "speclenet", "--no-table", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "specnet_memory_sweep.csv")))
    assert (tmp_path / "specnet_memory.png").stat().st_size > 10_000
    compact = [r for r in rows if r["axis"] == "density" and r["storage"] == "compact"]
    ratios = [float(r["ratio"]) for r in sorted(compact, key=lambda r: float(r["value"]))]
    assert len(ratios) == 6 and all(a < b for a, b in zip(ratios, ratios[1:]))
    for storage in ("float16", "int8"):  # lower precision keeps fewer bytes at every density
        lossy = {r["value"]: float(r["ratio"]) for r in rows if r["storage"] == storage}
        assert all(lossy[r["value"]] < float(r["ratio"]) for r in compact)
    betas = [r for r in rows if r["axis"] == "beta"]
    assert len(betas) == 5 and all(float(r["min_density"]) < 1 for r in betas)
    assert "| speclenet / lenet5 | compact |" in capsys.readouterr().out


def test_step_peak_breakdown_names_what_is_live_at_the_peak():
    def step():
        big = torch.ones(2**20)  # 4 MiB, allocated by aten::ones
        doubled = big.mul(2)  # 4 MiB more: the peak
        del doubled
        torch.ones(2**18)  # 1 MiB after the peak

    device = torch.device("cpu")
    peak, rows = step_peak_breakdown(step, device)
    assert 8 * 2**20 <= peak < 8 * 2**20 + 2**16
    assert step_peak_bytes(step, device)[0] == peak
    assert set(rows[:2]) == {("aten::ones (forward)", 4 * 2**20, 1), ("aten::mul (forward)", 4 * 2**20, 1)}
