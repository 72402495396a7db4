#!/usr/bin/env python
"""Speed of the spectral layers as ratios against spatial baselines measured in the same run.

    python scripts/bench_layers.py [--device cpu|cuda] [--rounds 5] [--quick]

Every case is timed forward + backward (``torch.autograd.grad`` with a fixed output gradient, so
no gradient accumulation is timed), interleaved round by round with its baselines; the table shows
median milliseconds and the ratio to the baseline. Absolute times drift on a shared machine; the
ratios are what to compare. Targets (issue 2) are printed with each section.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from specnet_zoo.layers import (
    SpectralConv2d,
    SpectralParamConv2d,
    spectral_pool2d,
    spectralize,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cases: dict[str, Callable[[], object]], device: torch.device, rounds: int, budget: float) -> dict[str, float]:
    """Median ms per call of each case; cases are interleaved in every round."""
    iterations = {}
    for name, fn in cases.items():
        fn(), fn()  # warm-up: caches, FFT plans, allocator
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        once = time.perf_counter() - start
        iterations[name] = max(1, int(budget / rounds / max(once, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(iterations[name]):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / iterations[name] * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def fwd_bwd(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], grad_out: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.autograd.grad(fn(*inputs), inputs, grad_out)


def naive_spectral_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """The common public recipe: full complex fft2, fftshift, centre crop, ifftshift, ifft2, real part."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="forward"), dim=(-2, -1))
    top = (x.shape[-2] - size + 1) // 2
    left = (x.shape[-1] - size + 1) // 2
    crop = spectrum[..., top : top + size, left : left + size]
    return torch.fft.ifft2(torch.fft.ifftshift(crop, dim=(-2, -1)), norm="forward").real


def bench_pooling(device, rounds, budget) -> list[str]:
    x = torch.randn(64, 64, 32, 32, device=device, requires_grad=True)
    weight = torch.randn(64, 64, 3, 3, device=device, requires_grad=True)
    g16 = torch.randn(64, 64, 16, 16, device=device)
    g32 = torch.randn(64, 64, 32, 32, device=device)
    cases = {
        "SpectralPool2d 32->16 (auto: matmul)": fwd_bwd(lambda t: spectral_pool2d(t, 16), [x], g16),
        "SpectralPool2d 32->16 (fft path)": fwd_bwd(lambda t: spectral_pool2d(t, 16, method="fft"), [x], g16),
        "naive fft2+fftshift+crop+ifft2": fwd_bwd(lambda t: naive_spectral_pool(t, 16), [x], g16),
        "avg_pool2d 2x2": fwd_bwd(lambda t: F.avg_pool2d(t, 2), [x], g16),
        "max_pool2d 2x2": fwd_bwd(lambda t: F.max_pool2d(t, 2), [x], g16),
        "conv2d 3x3 64->64": fwd_bwd(lambda t, w: F.conv2d(t, w, padding=1), [x, weight], g32),
    }
    ms = measure(cases, device, rounds, budget)
    spectral, fft_path = ms["SpectralPool2d 32->16 (auto: matmul)"], ms["SpectralPool2d 32->16 (fft path)"]
    lines = ["## SpectralPool2d, fwd+bwd, x = (64, 64, 32, 32)", "",
             f"| {'case':<38} | {'ms':>8} | {'SpectralPool2d / case':>21} |", f"|{'-' * 40}|{'-' * 10}|{'-' * 23}|"]
    lines += [f"| {name:<38} | {t:>8.2f} | {spectral / t:>21.3f} |" for name, t in ms.items()]
    naive, conv = ms["naive fft2+fftshift+crop+ifft2"], ms["conv2d 3x3 64->64"]
    lines += ["",
              f"target: >= 2x faster than naive: {naive / spectral:.1f}x (fft path {naive / fft_path:.1f}x) "
              f"-> {'MET' if naive / spectral >= 2 else 'MISSED'}",
              f"target: <= 0.15x the 3x3 conv: {spectral / conv:.3f}x (fft path {fft_path / conv:.3f}x) "
              f"-> {'MET' if spectral / conv <= 0.15 else 'MISSED'}", ""]
    return lines


def bench_conv(device, rounds, budget, kernels) -> list[str]:
    lines = ["## SpectralConv2d (threshold 0) vs F.conv2d, fwd+bwd (grads of x, weight, bias), batch 32, 32->32", "",
             f"| {'map':>5} | {'k':>3} | {'spectral ms':>11} | {'conv2d ms':>9} | {'spectral / conv2d':>17} | {'fwd-only ratio':>14} |",
             f"|{'-' * 7}|{'-' * 5}|{'-' * 13}|{'-' * 11}|{'-' * 19}|{'-' * 16}|"]
    summary = []
    for size in (32, 64):
        crossover = None
        for k in kernels:
            layer = SpectralConv2d(32, 32, k).to(device)
            x = torch.randn(32, 32, size, size, device=device, requires_grad=True)
            grad_out = torch.randn(32, 32, size, size, device=device)
            params = [x, layer.weight, layer.bias]
            # default arguments bind this iteration's layer, input and kernel size
            cases = {
                "spectral": fwd_bwd(lambda t, w, b, layer=layer: layer(t), params, grad_out),
                "conv": fwd_bwd(lambda t, w, b, k=k: F.conv2d(t, w, b, padding=k // 2), params, grad_out),
                "spectral fwd": lambda layer=layer, x=x: layer(x.detach()),
                "conv fwd": lambda layer=layer, x=x, k=k: F.conv2d(x.detach(), layer.weight.detach(),
                                                                   layer.bias.detach(), padding=k // 2),
            }
            ms = measure(cases, device, rounds, budget)
            ratio = ms["spectral"] / ms["conv"]
            if crossover is None and ratio < 1:
                crossover = k
            lines.append(f"| {size:>5} | {k:>3} | {ms['spectral']:>11.2f} | {ms['conv']:>9.2f} | {ratio:>17.3f} | "
                         f"{ms['spectral fwd'] / ms['conv fwd']:>14.3f} |")
            if size == 64 and k == 11:
                summary.append(f"target: SpectralConv2d faster than F.conv2d at k=11 on 64x64: ratio {ratio:.3f} "
                               f"-> {'MET' if ratio < 1 else 'MISSED'}")
        summary.append(f"crossover on {size}x{size}: spectral is faster from k = {crossover} (of {list(kernels)})")
    return lines + [""] + summary + [""]


def bench_param(device, rounds, budget) -> list[str]:
    def train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            optimizer.step()

        return step

    torch.manual_seed(0)
    spatial = nn.Conv2d(64, 64, 3, padding=1).to(device)
    spectral = SpectralParamConv2d(64, 64, 3, padding=1).to(device)
    x = torch.randn(64, 64, 32, 32, device=device)
    cases = {"nn.Conv2d 64->64 3x3": train_step(spatial, x), "SpectralParamConv2d": train_step(spectral, x)}
    try:
        import timm

        resnet = timm.create_model("resnet18", num_classes=10).to(device)
        resnet_spectral = spectralize(timm.create_model("resnet18", num_classes=10)).to(device)
        images = torch.randn(32, 3, 64, 64, device=device)
        cases["timm resnet18 (64x64, batch 32)"] = train_step(resnet, images)
        cases["spectralize(resnet18)"] = train_step(resnet_spectral, images)
    except ImportError:
        pass
    ms = measure(cases, device, rounds, budget)
    names = list(ms)
    lines = ["## Spectral parametrization: one Adam training step (fwd+bwd+step)", "",
             f"| {'case':<32} | {'ms':>8} | {'ratio to spatial':>16} |", f"|{'-' * 34}|{'-' * 10}|{'-' * 18}|"]
    for spatial_name, spectral_name in zip(names[::2], names[1::2]):
        lines.append(f"| {spatial_name:<32} | {ms[spatial_name]:>8.2f} | {1.0:>16.3f} |")
        lines.append(f"| {spectral_name:<32} | {ms[spectral_name]:>8.2f} | {ms[spectral_name] / ms[spatial_name]:>16.3f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (median reported)")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of timing per case")
    parser.add_argument("--quick", action="store_true", help="fewer kernel sizes and a smaller budget (smoke run)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file (docs/bench_layers_cpu.md "
                        "is copied into the README by scripts/update_readme.py)")
    args = parser.parse_args()
    device = torch.device(args.device)
    kernels = (3, 11) if args.quick else (3, 5, 7, 11, 15)
    budget = 0.3 if args.quick else args.budget
    title = (f"Layer benchmark: torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, "
             f"{args.rounds} rounds, median ms")
    print(f"# {title}\n")
    written = [title, ""]
    for section in (bench_pooling(device, args.rounds, budget),
                    bench_conv(device, args.rounds, budget, kernels),
                    bench_param(device, args.rounds, budget)):
        print("\n".join(section), flush=True)
        written += [f"{line[3:]}:" if line.startswith("## ") else line for line in section]
    if args.markdown:
        args.markdown.write_text("\n".join(written).rstrip() + "\n")


if __name__ == "__main__":
    main()
