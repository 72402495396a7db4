"""Rippel et al. 2015 Sec. 4 / Fig. 5: spectral parametrization of filters speeds up Adam.

Each network (eq. 5's ``specpool_cifar``, eq. 6's ``rippel_generic``, eq. 7's ``rippel_deep``) is trained
twice per seed from the same initial function: once with spatial filters and once with every filter
parametrized by its DFT coefficients (``spectral_param=True``; built after the same seed, so the two
start as the same function, checked by the tests). Same data order, augmentation, Adam and budget.

The speedup factor of a seed is ``S / s*``: ``S`` the steps of the budget, ``s*`` the first step at
which the spectral run's smoothed training loss reaches the spatial run's final smoothed loss
(Rippel's red diamonds, on the training loss). When the spectral run never gets there the factor is
``S / s*`` with ``s*`` the first step at which the *spatial* run reaches the spectral run's final loss,
inverted (a slow-down below 1).
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

from .harness import AdamBudget, RunSpec, train

NETWORKS = ("rippel_generic", "rippel_deep", "specpool_cifar")
PAPER_SPEEDUP = {("rippel_deep", 3): 2.2, ("rippel_deep", 5): 4.8, ("rippel_generic", 3): 2.2,
                 ("rippel_generic", 5): 5.1, ("specpool_cifar", 3): 2.4, ("specpool_cifar", 5): 4.8}


@dataclass(frozen=True, kw_only=True)
class Budget(AdamBudget):
    networks: tuple[str, ...]
    kernel_sizes: tuple[int, ...]
    smoothing: int = 25  # moving-average window of the training loss (steps)

    def spec(self, network: str, kernel_size: int, spectral: bool, seed: int) -> RunSpec:
        kind = "spectral" if spectral else "spatial"
        return self.run_spec(f"spectral-param/{network}-{kernel_size}x{kernel_size}-{kind}-s{seed}", network, seed,
                             dict(kernel_size=kernel_size, spectral_param=spectral), "constant")


BUDGETS = {
    "quick": Budget(networks=NETWORKS, kernel_sizes=(3,), steps=8, train_size=320, test_size=200, batch_size=16,
                    seeds=(0, 1), smoothing=3),
    "cpu": Budget(networks=NETWORKS, kernel_sizes=(3,), steps=150, train_size=2560, test_size=1000, batch_size=32),
    "full": Budget(networks=NETWORKS, kernel_sizes=(3, 5), steps=4000, train_size=10000, test_size=10000,
                   batch_size=64),
}


def smoothed_losses(metrics_csv: Path, window: int) -> list[float]:
    """Trailing moving average of the per-step training loss (index i: after step i + 1)."""
    with open(metrics_csv) as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    out, total = [], 0.0
    for i, loss in enumerate(losses):
        total += loss - (losses[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def speedup(spatial: list[float], spectral: list[float]) -> tuple[float, int | None]:
    """(factor, step at which the spectral run matched the spatial run's final loss, or None)."""
    steps = len(spatial)
    target = spatial[-1]
    for i, loss in enumerate(spectral):
        if loss <= target:
            return steps / (i + 1), i + 1
    target = spectral[-1]  # never matched: how much sooner the spatial run reached the spectral run's final loss
    first = next(i for i, loss in enumerate(spatial) if loss <= target)
    return (first + 1) / steps, None


@dataclass
class Comparison:
    network: str
    kernel_size: int
    factors: list[float]
    matched_steps: list[int | None]
    spatial_curves: list[list[float]]
    spectral_curves: list[list[float]]
    spatial_accuracy: list[float]
    spectral_accuracy: list[float]

    @property
    def mean_factor(self) -> float:
        return statistics.mean(self.factors)


def run(budget: Budget, root: str | Path, device: str = "cpu", data_root=None, log=print) -> list[Comparison]:
    rows = []
    for network in budget.networks:
        for k in budget.kernel_sizes:
            spatial_runs, spectral_runs = [], []
            for seed in budget.seeds:
                spatial_runs.append(train(budget.spec(network, k, False, seed), root, device, data_root, log=log))
                spectral_runs.append(train(budget.spec(network, k, True, seed), root, device, data_root, log=log))
            curves = {}
            for kind, spectral in (("spatial", False), ("spectral", True)):
                curves[kind] = [smoothed_losses(Path(root) / "runs" / budget.spec(network, k, spectral, s).name /
                                                "metrics.csv", budget.smoothing) for s in budget.seeds]
            measured = [speedup(a, b) for a, b in zip(curves["spatial"], curves["spectral"])]
            rows.append(Comparison(network, k, [f for f, _ in measured], [s for _, s in measured], curves["spatial"],
                                   curves["spectral"], [r["test_accuracy"] for r in spatial_runs],
                                   [r["test_accuracy"] for r in spectral_runs]))
    return rows
