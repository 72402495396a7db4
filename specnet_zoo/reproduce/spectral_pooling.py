"""Rippel et al. 2015 Sec. 5.1: spectral pooling (with and without frequency dropout) vs max pooling.

Eq. 5's network (``specpool_cifar``, gamma 0.85, M = 6) with the paper's frequency-dropout schedule
(alpha 0.30, beta 0.15), the same network without frequency dropout (alpha = beta = 1: every
resolution kept), and its max-pooling twin (``pool="max"``: adaptive max pooling to the same map sizes,
so the same parameters and the same convolution cost), trained with the same data, seeds, optimizer
(Adam, as Fig. 5; the paper tuned SGD with momentum per model for Table 4) and budget; test accuracy.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .harness import AdamBudget, RunSpec, train

VARIANTS = {
    "spectral pooling + frequency dropout": {},
    "spectral pooling, no frequency dropout": {"alpha": 1.0, "beta": 1.0},
    "max pooling (same sizes)": {"pool": "max"},
}
PAPER_ERROR = {"CIFAR-10": 0.0817, "CIFAR-100": 0.3218}  # Table 4(a): spectral pooling + frequency dropout


class Budget(AdamBudget):
    def spec(self, label: str, seed: int) -> RunSpec:
        slug = {"spectral pooling + frequency dropout": "specpool-fd", "spectral pooling, no frequency dropout":
                "specpool-no-fd", "max pooling (same sizes)": "maxpool"}[label]
        return self.run_spec(f"spectral-pooling/{slug}-s{seed}", "specpool_cifar", seed, dict(VARIANTS[label]),
                             "onecycle")


BUDGETS = {
    "quick": Budget(steps=6, train_size=320, test_size=200, batch_size=16, seeds=(0, 1)),
    "cpu": Budget(steps=200, train_size=4000, test_size=2000, batch_size=32),
    "full": Budget(steps=23400, train_size=50000, test_size=10000, batch_size=64),  # 30 epochs
}


@dataclass
class VariantResult:
    label: str
    accuracies: list[float]
    final_train_losses: list[float]
    train_time_s: float
    parameters: int

    @property
    def accuracy(self) -> float:
        return statistics.mean(self.accuracies)


def run(budget: Budget, root: str | Path, device: str = "cpu", data_root=None, log=print) -> list[VariantResult]:
    rows = []
    for label in VARIANTS:
        runs = [train(budget.spec(label, seed), root, device, data_root, log=log) for seed in budget.seeds]
        rows.append(VariantResult(label, [r["test_accuracy"] for r in runs], [r["final_train_loss"] for r in runs],
                                  statistics.mean(r["train_time_s"] for r in runs), runs[0]["parameters"]))
    return rows
