#!/usr/bin/env python
"""One training step (forward, cross-entropy, backward) of every spectral model against its spatial twin.

    python scripts/bench_models.py [--batch-size 64] [--device cpu|cuda] [--rounds 3] [--markdown FILE]

For the SpecNet pairs it prints, as ratios spectral / spatial measured in the same run, at no threshold
and at the memory setting (density 0.2, int8 storage):

* aten operator calls per step (counted on the CPU; deterministic, and on a GPU nearly each is a
  kernel launch), with the issue-10 target <= 3x;
* step time (median of interleaved rounds; absolute times drift on a shared machine, ratios do not);
* on CUDA, the peak memory a step allocates above the model state (``torch.cuda.max_memory_allocated``);
* the step peak at the memory setting and what is live at that moment (profiler allocation timeline);
* the saved-activation ratio of ``measure_memory`` at the memory setting.

Rippel's spectrally parametrized networks are timed against their spatial twins. ``--markdown`` also
writes the tables to FILE (``docs/bench_models_<device>.md``, which ``scripts/update_readme.py`` puts in
the README).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import specnet_zoo
from specnet_zoo.constants import PAPER_PAIRS
from specnet_zoo.layers import SpectralConv2d, spectral_chain
from specnet_zoo.profiling import count_ops, measure_memory, step_peak_breakdown, step_peak_bytes

MEMORY_SETTING = {"density": 0.2, "storage": "int8"}
SETTINGS = {"no threshold": {}, "density 0.2, int8": MEMORY_SETTING}
RIPPEL_PAIRS = [("rippel_generic", "specparam_generic"), ("rippel_deep", "specparam_deep"),
                ("specpool_cifar", "specparam_specpool_cifar")]
# issue 10's targets, spectral / spatial
OPS_TARGET = 3.0
CPU_TIME_TARGET = {"speclenet": 2.0, "specalexnet": 1.5, "specvgg16": 1.5, "specdensenet": 1.2}
CUDA_TIME_TARGET = 2.0
CUDA_PEAK_TARGET = {"speclenet": 1.0, "specalexnet": 1.0, "specvgg16": 0.5, "specdensenet": 0.5}
SAVED_TARGET = {"specvgg16": 0.09}


def make_step(name: str, batch: int, device: torch.device, **kwargs):
    """(model, step): step() runs forward, cross-entropy and backward on a fixed random batch."""
    torch.manual_seed(0)
    model = specnet_zoo.create_model(name, **kwargs).to(device).train()
    c, h, w = model.pretrained_cfg["input_size"]
    x = torch.randn(batch, c, h, w, device=device)
    target = torch.randint(0, model.num_classes, (batch,), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), target).backward()

    return model, step


def step_ops(name: str, batch: int, **kwargs) -> int:
    """aten calls of one training step on the CPU (after a warm-up step fills the constant caches)."""
    _, step = make_step(name, batch, torch.device("cpu"), **kwargs)
    step()
    return sum(count_ops(step).values())


def median_ms(steps: dict[str, object], device: torch.device, rounds: int) -> dict[str, float]:
    """Median ms per step of each entry, interleaved round by round."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in steps.values():
        step(), step()  # warm-up: caches, FFT plans, allocator
    samples = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def peak_mb(name: str, batch: int, device: torch.device, **kwargs) -> float:
    _, step = make_step(name, batch, device, **kwargs)
    step()
    return step_peak_bytes(step, device)[0] / 2**20


def mark(value: float, target: float | None) -> str:
    return f"{value:.2f}" if target is None else f"{value:.2f} {'ok' if value <= target else f'(> {target:g})'}"


def specnet_rows(args, device: torch.device) -> list[str]:
    cuda = device.type == "cuda"
    head = (["model", "setting", "ops", "ops ratio", "ops added per conv", "ms", "time ratio"]
            + (["peak MB", "peak ratio"] if cuda else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spectral, spatial, _ in PAPER_PAIRS:
        if args.only and spectral not in args.only and spatial not in args.only:
            continue
        twin_ops = step_ops(spatial, args.batch_size)
        steps = {"twin": make_step(spatial, args.batch_size, device)[1]}
        steps.update({label: make_step(spectral, args.batch_size, device, **kw)[1] for label, kw in SETTINGS.items()})
        ms = median_ms(steps, device, args.rounds)
        twin_peak = peak_mb(spatial, args.batch_size, device) if cuda else None
        row = [spatial, "", f"{twin_ops}", "", "", f"{ms['twin']:.0f}", ""] + ([f"{twin_peak:.0f}", ""] if cuda else [])
        lines.append("| " + " | ".join(row) + " |")
        convs = sum(isinstance(m, SpectralConv2d) for m in specnet_zoo.create_model(spectral).modules())
        base_ops = None
        for label, kw in SETTINGS.items():
            ops = step_ops(spectral, args.batch_size, **kw)
            base_ops = ops if base_ops is None else base_ops  # the first setting is "no threshold"
            time_target = CUDA_TIME_TARGET if cuda else CPU_TIME_TARGET[spectral]
            added = f"{(ops - base_ops) / convs:.0f}" if kw else ""  # threshold, packing, mask: what fusion would remove
            row = [spectral, label, f"{ops}", mark(ops / twin_ops, OPS_TARGET), added, f"{ms[label]:.0f}",
                   mark(ms[label] / ms["twin"], time_target)]
            if cuda:
                peak = peak_mb(spectral, args.batch_size, device, **kw)
                target = CUDA_PEAK_TARGET[spectral] if kw else None
                row += [f"{peak:.0f}", mark(peak / twin_peak, target)]
            lines.append("| " + " | ".join(row) + " |")
        print("\n".join(lines[-3:]), flush=True)
    return lines


def saved_rows(args) -> list[str]:
    """Saved-activation ratio at the memory setting (measure_memory, batch 8, CPU: a deterministic count)."""
    lines = ["| model | saved activations / twin's, density 0.2 int8 |", "|---|---|"]
    for spectral, spatial, _ in PAPER_PAIRS:
        if args.only and spectral not in args.only and spatial not in args.only:
            continue
        models = {n: specnet_zoo.create_model(n, **kw) for n, kw in ((spatial, {}), (spectral, MEMORY_SETTING))}
        c, h, w = models[spatial].pretrained_cfg["input_size"]
        x, y = torch.randn(8, c, h, w), torch.randint(0, 10, (8,))
        saved = {n: measure_memory(m, x, y).saved_bytes for n, m in models.items()}
        lines.append(f"| {spectral} / {spatial} | {mark(saved[spectral] / saved[spatial], SAVED_TARGET.get(spectral))} |")
        print(lines[-1], flush=True)
    return lines


def peak_rows(args, device: torch.device) -> list[str]:
    """Peak memory of a training step at the memory setting vs the twin, and what is live at the peak."""
    lines = ["| model | step peak MB | twin's | ratio | largest live at the peak (allocating op, MB, tensors) |",
             "|---|---|---|---|---|"]
    for spectral, spatial, _ in PAPER_PAIRS:
        if args.only and spectral not in args.only and spatial not in args.only:
            continue
        peaks = {}
        for name, kw in ((spatial, {}), (spectral, MEMORY_SETTING)):
            _, step = make_step(name, args.batch_size, device, **kw)
            step()
            peaks[name] = step_peak_breakdown(step, device)
        (twin, _), (peak, rows) = peaks[spatial], peaks[spectral]
        live = "; ".join(f"{op} {size / 2**20:.0f} ({n})" for op, size, n in rows)
        target = CUDA_PEAK_TARGET[spectral] if device.type == "cuda" else None
        lines.append(f"| {spectral} | {peak / 2**20:.0f} | {twin / 2**20:.0f} | {mark(peak / twin, target)} | {live} |")
        print(lines[-1], flush=True)
    return lines


def gemm_flops(name: str, batch: int) -> float:
    """Real flops of one training step's convolution GEMMs (forward + input and weight gradients).

    Spatial: 2 H W k^2 C_in C_out N per pass. Spectral: 8 F C_in C_out N per pass for the complex
    per-frequency product (F = P (Q // 2 + 1) of the block's padded grid) plus 8 F k^2 C_in C_out for
    the kernel spectra (forward and backward) and the weight gradient's phase GEMM.
    """
    model = specnet_zoo.create_model(name).eval()
    c, h, w = model.pretrained_cfg["input_size"]
    flops = []
    hooks = [m.register_forward_hook(lambda m, i, o: flops.append(
        6 * o.shape[-2] * o.shape[-1] * m.weight[0].numel() * m.out_channels * batch))
        for m in model.modules() if type(m) is torch.nn.Conv2d]
    original = spectral_chain.SpectralChain.__init__

    def record(chain, convs, *rest, **kwargs):
        original(chain, convs, *rest, **kwargs)
        n_freq = chain.fft_size[0] * (chain.fft_size[1] // 2 + 1)
        for conv in convs:
            pairs, taps = conv.in_channels * conv.out_channels, conv.weight[0, 0].numel()
            flops.append(3 * 8 * n_freq * pairs * batch + 3 * 8 * n_freq * taps * pairs)

    spectral_chain.SpectralChain.__init__ = record
    try:
        with torch.no_grad():
            model(torch.randn(1, c, h, w))
    finally:
        spectral_chain.SpectralChain.__init__ = original
        for hook in hooks:
            hook.remove()
    return sum(flops)


def flop_rows(args) -> list[str]:
    lines = ["| pair | conv GEMM GFLOP per step, spatial | spectral | ratio |", "|---|---|---|---|"]
    for spectral, spatial, _ in PAPER_PAIRS:
        if args.only and spectral not in args.only and spatial not in args.only:
            continue
        a, b = gemm_flops(spatial, args.batch_size), gemm_flops(spectral, args.batch_size)
        lines.append(f"| {spectral} / {spatial} | {a / 1e9:.3g} | {b / 1e9:.3g} | {b / a:.2f} |")
    print("\n".join(lines), flush=True)
    return lines


def profile_rows(args, device: torch.device) -> list[str]:
    """Share of the step's self time per operator, spectral (both settings) next to its twin."""
    from torch.profiler import ProfilerActivity, profile

    lines = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for spectral, spatial, _ in PAPER_PAIRS:
        if spectral not in args.profile:
            continue
        for name, label, kw in ((spectral, "no threshold", {}), (spectral, "density 0.2 int8", MEMORY_SETTING),
                                (spatial, "", {})):
            _, step = make_step(name, args.batch_size, device, **kw)
            step(), step()
            with profile(activities=activities) as prof:
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
            attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            total = sum(getattr(e, attr) for e in events)
            top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:8]
            shares = ", ".join(f"{e.key[6:]} {100 * getattr(e, attr) / total:.0f}% ({e.count})" for e in top)
            lines.append(f"- {name}{f' ({label})' if label else ''}: {total / 1e3:.0f} ms of operator time: {shares}")
            print(lines[-1], flush=True)
    return lines


def compile_rows(args, device: torch.device) -> list[str]:
    """torch.compile(model): time to the first compiled step, agreement with eager, step time vs eager."""
    lines = ["| model | compile + first step s | max abs diff of grads | eager ms | compiled ms | ratio |",
             "|---|---|---|---|---|---|"]
    for name in args.compile:
        model, eager = make_step(name, args.batch_size, device)
        compiled_model = torch.compile(model)
        c, h, w = model.pretrained_cfg["input_size"]
        torch.manual_seed(1)
        x = torch.randn(args.batch_size, c, h, w, device=device)
        target = torch.randint(0, model.num_classes, (args.batch_size,), device=device)

        def compiled(model=model, compiled_model=compiled_model, x=x, target=target):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(compiled_model(x), target).backward()

        start = time.perf_counter()
        compiled()
        seconds = time.perf_counter() - start
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), target).backward()
        diff = max((a - p.grad).abs().max().item() for a, p in zip(grads, model.parameters()))
        ms = median_ms({"eager": eager, "compiled": compiled}, device, args.rounds)
        lines.append(f"| {name} | {seconds:.0f} | {diff:.1e} | {ms['eager']:.0f} | {ms['compiled']:.0f} | "
                     f"{ms['compiled'] / ms['eager']:.2f} |")
        print(lines[-1], flush=True)
    return lines


def rippel_rows(args, device: torch.device) -> list[str]:
    lines = ["| spatial | ms | spectrally parametrized | ms | time ratio |", "|---|---|---|---|---|"]
    for spatial, spectral in RIPPEL_PAIRS:
        if args.only and spatial not in args.only and spectral not in args.only:
            continue
        ms = median_ms({n: make_step(n, args.batch_size, device)[1] for n in (spatial, spectral)}, device, args.rounds)
        lines.append(f"| {spatial} | {ms[spatial]:.0f} | {spectral} | {ms[spectral]:.0f} | {ms[spectral] / ms[spatial]:.2f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CPU, 128 on CUDA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="model names to include (pairs containing them)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--compile", nargs="*", default=[], help="models to time under torch.compile")
    parser.add_argument("--profile", nargs="*", default=["specvgg16", "specalexnet", "speclenet", "specdensenet"],
                        help="spectral models whose step is profiled (share of time per operator)")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.batch_size = args.batch_size or (128 if device.type == "cuda" else 64)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    title = (f"One training step (forward + cross-entropy + backward, fp32), batch {args.batch_size}, {where}, "
             f"torch {torch.__version__}; median of {args.rounds} interleaved rounds. Ratios are spectral / "
             "spatial twin in the same run; 'ok' or '(> target)' compares them with issue 10's targets. "
             "Operator calls are counted on the CPU.")
    print(f"# {title}\n")
    sections = [title, "", *specnet_rows(args, device), ""]
    sections += ["Saved activations (`measure_memory`, batch 8):", "", *saved_rows(args), ""]
    sections += [f"Peak memory of one training step at density 0.2, int8, batch {args.batch_size} (allocations made "
                 "during the step, profiler timeline; issue 10's targets are for a GPU, where `cuda.max_memory_"
                 "allocated` is used):", "", *peak_rows(args, device), ""]
    sections += ["The arithmetic: real flops of the convolution GEMMs per step (a complex multiply-add is 8; "
                 "the padded spectral grid of a small map is several times the map):", "", *flop_rows(args), ""]
    if args.profile:
        sections += ["Where the time goes (`torch.profiler`, share of operator self time, calls in brackets):", "",
                     *profile_rows(args, device), ""]
    if args.compile:
        sections += ["`torch.compile(model)` (default mode), one training step:", "", *compile_rows(args, device), ""]
    sections += ["Rippel's spectral parametrization vs spatial filters:", "", *rippel_rows(args, device)]
    if args.markdown:
        args.markdown.write_text("\n".join(sections) + "\n")
        print(f"\nwrote {args.markdown}")


if __name__ == "__main__":
    main()
