"""SpecNet (Guan et al. 2019) Fig. 3(d-f): test error vs the threshold beta and vs density, joined with memory.

For every (SpecNet model, spatial twin, dataset) pair, the twin and the SpecNet model at each setting
(no threshold, beta 0.5-1.5 on the paper's unnormalised DFT scale, a per-sample density target) are
trained with the same data, budget, optimizer and schedule, for every seed. After training, each
model's saved-activation bytes and step peak are measured on a real batch of 64
(:func:`specnet_zoo.profiling.measure_memory`) and divided by the twin's (same seed), and its kept
spectral density is read from the same step. The sparsest setting whose mean accuracy is within
``tolerance`` (1 point) of the twin's is chosen; it and the twin are then trained at other budgets to
show whether the gap closes.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .harness import RunSpec, steps_for, train

SETTINGS = {
    "no threshold": {},
    "beta 0.5": {"threshold": 0.5},
    "beta 0.7": {"threshold": 0.7},
    "beta 1.0": {"threshold": 1.0},
    "beta 1.5": {"threshold": 1.5},
    "density 0.2": {"density": 0.2},
    "density 0.2, int8": {"density": 0.2, "storage": "int8"},
    "density 0.1, int8": {"density": 0.1, "storage": "int8"},
}


@dataclass(frozen=True)
class Pair:
    """One comparison: ``spectral`` at every setting against ``twin``, same budget."""

    spectral: str
    twin: str
    dataset: str
    settings: tuple[str, ...]
    epochs: float
    train_size: int = 0
    test_size: int = 0
    seeds: tuple[int, ...] = (0, 1)
    budget_factors: tuple[float, ...] = (0.5, 2.0)  # extra budgets (x epochs) for the chosen setting and the twin
    budget_seeds: tuple[int, ...] = (0, 1)
    train: dict = field(default_factory=dict)  # RunSpec optimizer fields

    def spec(self, model: str, label: str, seed: int, factor: float = 1.0) -> RunSpec:
        batch = self.train.get("batch_size", 64)
        size = self.train_size or {"mnist": 60000, "cifar10": 50000}[self.dataset]
        kwargs = {} if model == self.twin else SETTINGS[label]
        tag = "twin" if model == self.twin else label.replace(",", "").replace(" ", "-")
        suffix = "" if factor == 1.0 else f"-x{factor:g}"
        return RunSpec(name=f"specnet-accuracy/{self.dataset}-{model}-{tag}{suffix}-s{seed}", model=model,
                       dataset=self.dataset, steps=steps_for(self.epochs * factor, size, batch), seed=seed,
                       model_kwargs=dict(kwargs), train_size=self.train_size, test_size=self.test_size,
                       measure_memory=True, **self.train)


MNIST_TRAIN = dict(optimizer="adamw", lr=3e-3, weight_decay=1e-4, label_smoothing=0.05)
CIFAR_TRAIN = dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, label_smoothing=0.1, clip=2.0)
ALL = tuple(SETTINGS)
BUDGETS = {
    # minutes on a CPU, what the tests run: the pipeline end to end, not a measurement
    "quick": (
        Pair("speclenet", "lenet5", "mnist", ("beta 1.5", "density 0.2, int8"), epochs=1, train_size=320,
             test_size=500, budget_factors=(2.0,), budget_seeds=(0,), train=dict(MNIST_TRAIN, batch_size=32)),
        Pair("specalexnet", "alexnet_cifar", "cifar10", ("beta 1.0",), epochs=1, train_size=320, test_size=200,
             budget_factors=(), train=dict(CIFAR_TRAIN, batch_size=32)),
    ),
    # what two CPU cores train in about an hour: full MNIST, a fixed 3,000-image CIFAR-10 subset
    "cpu": (
        Pair("speclenet", "lenet5", "mnist", ALL[:-1], epochs=1, budget_factors=(0.25, 4.0), train=MNIST_TRAIN),
        Pair("specalexnet", "alexnet_cifar", "cifar10", ("no threshold", "beta 0.5", "beta 1.0", "beta 1.5",
             "density 0.2, int8"), epochs=4, train_size=3000, test_size=2000, budget_factors=(2.0,),
             budget_seeds=(0,), train=CIFAR_TRAIN),
        Pair("specdensenet", "densenet_cifar", "cifar10", ("no threshold", "beta 1.0", "density 0.2, int8"), epochs=3,
             train_size=2000, test_size=1000, budget_factors=(), train=CIFAR_TRAIN),
    ),
    # an accelerator: SpecNet's networks on all of CIFAR-10
    "full": (
        Pair("speclenet", "lenet5", "mnist", ALL, epochs=10, budget_factors=(0.25, 0.5, 2.0), train=MNIST_TRAIN),
        Pair("specalexnet", "alexnet_cifar", "cifar10", ALL, epochs=30, budget_factors=(0.33, 2.0), train=CIFAR_TRAIN),
        Pair("specdensenet", "densenet_cifar", "cifar10", ALL, epochs=30, budget_factors=(0.33, 2.0),
             train=CIFAR_TRAIN),
        Pair("specvgg16", "vgg16_cifar", "cifar10", ALL, epochs=30, budget_factors=(0.33, 2.0), train=CIFAR_TRAIN),
    ),
}


@dataclass
class SettingResult:
    pair: Pair
    label: str  # a SETTINGS key, or "twin"
    accuracies: list[float]
    saved_ratio: float | None
    peak_ratio: float | None
    density: float | None
    train_time_s: float
    time_ratio: float | None

    @property
    def accuracy(self) -> float:
        return statistics.mean(self.accuracies)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def summarize(pair: Pair, results: dict[tuple[str, int], dict]) -> list[SettingResult]:
    """Mean over seeds of each setting; memory and time ratios against the twin of the same seed."""
    rows = []
    for label in ("twin", *pair.settings):
        runs = [(seed, results[(label, seed)]) for seed in pair.seeds]
        twins = [results[("twin", seed)] for seed, _ in runs]

        def ratio(key, runs=runs, twins=twins):
            return _mean(r[key] / t[key] if r.get(key) and t.get(key) else None for (_, r), t in zip(runs, twins))

        rows.append(SettingResult(pair, label, [r["test_accuracy"] for _, r in runs], ratio("saved_bytes"),
                                  ratio("peak_bytes"), _mean(r.get("mean_density") for _, r in runs),
                                  statistics.mean(r["train_time_s"] for _, r in runs), ratio("train_time_s")))
    return rows


def choose(rows: list[SettingResult], tolerance: float = 0.01) -> tuple[SettingResult, bool]:
    """The sparsest thresholded setting within ``tolerance`` of the twin's accuracy (True), else the most
    accurate thresholded setting (False). Sparsest: the least saved-activation memory (then the lowest
    density), so at equal density int8 storage wins. 'no threshold' is the dense reference, never chosen."""
    twin = rows[0]
    sparse = [r for r in rows[1:] if r.label != "no threshold"] or rows[1:]
    close = [r for r in sparse if r.accuracy >= twin.accuracy - tolerance]
    if close:
        def footprint(r: SettingResult) -> tuple[float, float]:
            return (r.saved_ratio if r.saved_ratio is not None else 1.0, r.density if r.density is not None else 1.0)

        return min(close, key=footprint), True
    return max(sparse, key=lambda r: r.accuracy), False


def run(pairs, root: str | Path, device: str = "cpu", data_root=None, log=print) -> dict:
    """Train every run of ``pairs`` (resuming) and return the summary per pair, with the budget curves."""
    summary = {}
    for pair in pairs:
        results = {}
        for seed in pair.seeds:
            results[("twin", seed)] = train(pair.spec(pair.twin, "twin", seed), root, device, data_root, log=log)
            for label in pair.settings:
                results[(label, seed)] = train(pair.spec(pair.spectral, label, seed), root, device, data_root, log=log)
        rows = summarize(pair, results)
        chosen, within = choose(rows)
        curve = {}  # (label, factor) -> accuracies
        for factor in sorted({1.0, *pair.budget_factors}):
            for label, model in (("twin", pair.twin), (chosen.label, pair.spectral)):
                seeds = pair.seeds if factor == 1.0 else pair.budget_seeds
                curve[(label, factor)] = [
                    train(pair.spec(model, label, seed, factor), root, device, data_root, log=log)["test_accuracy"]
                    for seed in seeds]
        summary[pair.spectral] = dict(pair=pair, rows=rows, chosen=chosen, within=within, curve=curve)
    return summary

