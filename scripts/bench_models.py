#!/usr/bin/env python
"""Parameters and forward+backward time per batch for every model next to its twin.

    python scripts/bench_models.py [--batch-size 64] [--device cpu|cuda] [--rounds 3]

Twins are timed interleaved in the same rounds (median ms); the ratio column is spectral / spatial.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import specnet_zoo
from specnet_zoo.constants import SPECNET_PAIRS

# SpecNet pairs, then Rippel's spatial vs spectral filter parametrization.
PAIRS = [(spatial, spectral) for spectral, spatial, _ in SPECNET_PAIRS] + [
    ("rippel_generic", "specparam_generic"), ("rippel_deep", "specparam_deep"),
    ("specpool_cifar", "specparam_specpool_cifar")]


def step_fn(name: str, batch: int, device: torch.device):
    model = specnet_zoo.create_model(name).to(device).train()
    c, h, w = model.pretrained_cfg["input_size"]
    x = torch.randn(batch, c, h, w, device=device)
    target = torch.randint(0, model.num_classes, (batch,), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), target).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="model names to include (pairs containing them)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# fwd+bwd per batch of {args.batch_size}, torch {torch.__version__}, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds\n")
    print("| spatial | params | ms | spectral / spectral-param | params | ms | time ratio |")
    print("|---|---|---|---|---|---|---|")
    for spatial, spectral in PAIRS:
        if args.only and spatial not in args.only and spectral not in args.only:
            continue
        entries = {name: step_fn(name, args.batch_size, device) for name in (spatial, spectral)}
        samples = {name: [] for name in entries}
        for _, step in entries.values():
            step()  # warm-up
        for _ in range(args.rounds):
            for name, (_, step) in entries.items():
                start = time.perf_counter()
                step()
                samples[name].append((time.perf_counter() - start) * 1e3)
        ms = {name: statistics.median(v) for name, v in samples.items()}
        params = {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in entries.items()}
        print(f"| {spatial} | {params[spatial]:,} | {ms[spatial]:.0f} | {spectral} | {params[spectral]:,} | "
              f"{ms[spectral]:.0f} | {ms[spectral] / ms[spatial]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
