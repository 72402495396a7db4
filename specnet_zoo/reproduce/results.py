"""``specnet-zoo reproduce all``: every accuracy reproduction, then ``results.md`` and its figures.

Runs SpecNet's accuracy-vs-sparsity sweep (:mod:`.specnet_accuracy`), Rippel's spectral-parametrization
speedup (:mod:`.spectral_param`) and spectral pooling for classification (:mod:`.spectral_pooling`) at
one budget ("quick": minutes on a CPU, the pipeline only; "cpu": what two cores train in about two
hours; "full": an accelerator), each run resumable under ``runs_dir``. Writes into ``out``:
``results.md``, ``figures/*.png``, ``results_*.csv`` (one row per run) and ``hardware.json``.
"""
from __future__ import annotations

import csv
import json
import statistics
import time
from datetime import date
from pathlib import Path

from . import specnet_accuracy, spectral_param, spectral_pooling
from .harness import hardware

__all__ = ["BUDGET_NAMES", "run_all", "write_report"]

BUDGET_NAMES = ("quick", "cpu", "full")
DATA_CAVEATS = (
    "CIFAR-10 here is the JPEG-compressed copy in `../shared/data/cifar10-jpg` (the papers used the lossless "
    "originals), so absolute accuracies are not comparable to published ones to the last point; every comparison "
    "below trains both sides on the same images. SVHN (SpecNet Fig. 3 f, its DenseNet headline) and ImageNet are "
    "not available here, so those claims are not reproduced."
)


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """mean (min-max over seeds), in percent by default."""
    mean = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f})"


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------------- SpecNet

def specnet_section(summary: dict, figures: Path) -> list[str]:
    lines = ["## 1. SpecNet: accuracy vs sparsity, joined with memory (Guan et al. 2019, Fig. 3 d-f)", "",
             "Paper: every SpecNet network saves at least 50% of training memory \"with negligible loss of accuracy\" "
             "over beta 0.5-1.5 (Fig. 3), and SpecAlexNet/SpecVGG/SpecDenseNet stay above 95% relative accuracy for "
             "beta < 1.0. Here each SpecNet setting and its spatial twin train on the same images, budget, optimizer "
             "and schedule, per seed. Memory is measured after training on a real test batch of 64 (saved activations "
             "of one training step and the step's peak, `measure_memory`), as ratios to the trained twin of the same "
             "seed; density is the mean kept fraction of the spectral convolutions in that step. Relative error is "
             "SpecNet's test error / the twin's (the paper's Fig. 3 d-f axis). Train time / twin is the ratio of the runs' "
             "summed step times (indicative: the runs were not interleaved; `scripts/bench_models.py` measures step "
             "ratios properly).", ""]
    for entry in summary.values():
        pair, rows, chosen, within = entry["pair"], entry["rows"], entry["chosen"], entry["within"]
        spec = pair.spec(pair.twin, "twin", pair.seeds[0])
        images = spec.train_size or "all"
        lines += [f"### {pair.spectral} vs {pair.twin} on {pair.dataset.upper()}", "",
                  f"Budget: {pair.epochs:g} epoch{'' if pair.epochs == 1 else 's'} of {images} training images ({spec.steps} steps of batch "
                  f"{spec.batch_size}), {spec.optimizer} lr {spec.lr:g} {spec.schedule}, label smoothing "
                  f"{spec.label_smoothing:g}, test on {spec.test_size or 'all'} test images; seeds "
                  f"{', '.join(map(str, pair.seeds))}.", "",
                  "| setting | test accuracy % (seeds' range) | vs twin (points) | relative error | kept density | "
                  "saved activations / twin | step peak / twin | train time / twin |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        twin = rows[0]
        for row in rows:
            delta = (row.accuracy - twin.accuracy) * 100
            rel_err = (1 - row.accuracy) / max(1e-9, 1 - twin.accuracy)
            label = f"**{row.label}**" if row is chosen else row.label
            lines.append(f"| {label if row is not twin else pair.twin + ' (twin)'} | {_pm(row.accuracies)} | "
                         f"{'' if row is twin else f'{delta:+.1f}'} | {'' if row is twin else f'{rel_err:.2f}'} | "
                         f"{_fmt(row.density, '.3f')} | {_fmt(row.saved_ratio if row is not twin else 1.0)} | "
                         f"{_fmt(row.peak_ratio if row is not twin else 1.0)} | "
                         f"{_fmt(row.time_ratio if row is not twin else 1.0, '.1f')} |")
        verdict = (f"Sparsest setting within 1 point of the twin: **{chosen.label}** ({_pm(chosen.accuracies)}% vs "
                   f"{_pm(twin.accuracies)}%), saved activations {_fmt(chosen.saved_ratio)}x and step peak "
                   f"{_fmt(chosen.peak_ratio)}x the twin's." if within else
                   f"No thresholded setting came within 1 point of the twin at this budget; the most accurate, "
                   f"**{chosen.label}**, is {(twin.accuracy - chosen.accuracy) * 100:.1f} points behind (saved "
                   f"activations {_fmt(chosen.saved_ratio)}x, step peak {_fmt(chosen.peak_ratio)}x).")
        lines += ["", verdict, ""]
        factors = sorted({f for _, f in entry["curve"]})
        if len(factors) > 1:
            lines += [f"Accuracy vs training budget ({chosen.label} and the twin; x1 = the budget above):", "",
                      "| budget | epochs | " + f"{pair.twin} % | {pair.spectral} ({chosen.label}) % | gap (points) |",
                      "|---:|---:|---:|---:|---:|"]
            for factor in factors:
                a, b = entry["curve"][("twin", factor)], entry["curve"][(chosen.label, factor)]
                gap = (statistics.mean(a) - statistics.mean(b)) * 100
                lines.append(f"| x{factor:g} | {pair.epochs * factor:g} | {_pm(a)} | {_pm(b)} | {gap:.1f} |")
            lines.append("")
        lines += _zoo_lines(pair)
        figure = figures / f"specnet_accuracy_{pair.spectral}.png"
        _specnet_figure(entry, figure)
        lines += [f"![{pair.spectral} accuracy and memory](figures/{figure.name})", ""]
    return lines


def _zoo_lines(pair) -> list[str]:
    """The pretrained zoo's runs of the same pair (longer budget, their own recipes), where both tags exist."""
    from ..pretrained import pretrained_info

    twin, spectral = pretrained_info(f"{pair.twin}.{pair.dataset}"), pretrained_info(f"{pair.spectral}.{pair.dataset}")
    if not (twin and spectral):
        return []
    a, b = twin["metrics"]["test/acc"], spectral["metrics"]["test/acc"]
    setting = ", ".join(f"{k} {v}" for k, v in spectral["model_args"].items()) or "no threshold"
    return [f"The pretrained zoo answers the same question at a longer budget: `{pair.twin}.{pair.dataset}` "
            f"{a:.2%} and `{pair.spectral}.{pair.dataset}` ({setting}) {b:.2%} on the full test set after "
            f"{twin['epochs']} and {spectral['epochs']} epochs of their recipes ({spectral['recipe']}), a gap of "
            f"{(a - b) * 100:.2f} points.", ""]


def _specnet_figure(entry: dict, path: Path) -> None:
    plt = _plt()
    pair, rows = entry["pair"], entry["rows"]
    twin = rows[0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    betas = [(float(r.label.split()[1]), r) for r in rows if r.label.startswith("beta")]
    if betas:
        x = [b for b, _ in betas]
        axes[0].errorbar(x, [(1 - r.accuracy) * 100 for _, r in betas],
                         yerr=[[(max(r.accuracies) - r.accuracy) * 100 for _, r in betas],
                               [(r.accuracy - min(r.accuracies)) * 100 for _, r in betas]], fmt="o-", label=pair.spectral)
        mem = axes[0].twinx()
        mem.plot(x, [r.saved_ratio for _, r in betas], "s--", color="tab:green", label="saved activations / twin")
        mem.plot(x, [r.peak_ratio for _, r in betas], "^:", color="tab:red", label="step peak / twin")
        mem.set_ylabel("memory / twin")
        mem.legend(fontsize=7, loc="lower right", framealpha=0.9)
    axes[0].axhline((1 - twin.accuracy) * 100, color="gray", ls="--", label=f"{pair.twin} (twin)")
    axes[0].set(xlabel="threshold beta (eq. 7 scale)", ylabel="test error %", title="(a) error and memory vs beta")
    axes[0].legend(fontsize=7, loc="upper left", framealpha=0.9)
    for r in rows[1:]:
        if r.density is not None:
            axes[1].plot(r.density, (1 - r.accuracy) * 100, "o")
            axes[1].annotate(r.label, (r.density, (1 - r.accuracy) * 100), fontsize=7)
    axes[1].axhline((1 - twin.accuracy) * 100, color="gray", ls="--", label=f"{pair.twin} (twin)")
    axes[1].set(xlabel="kept spectral density (trained model)", ylabel="test error %", title="(b) error vs density")
    axes[1].legend(fontsize=7)
    factors = sorted({f for _, f in entry["curve"]})
    for label, style in (("twin", "o--"), (entry["chosen"].label, "s-")):
        axes[2].plot([pair.epochs * f for f in factors],
                     [statistics.mean(entry["curve"][(label, f)]) * 100 for f in factors], style,
                     label=pair.twin if label == "twin" else f"{pair.spectral} ({label})")
    axes[2].set(xlabel="epochs", ylabel="test accuracy %", title="(c) accuracy vs budget")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{pair.spectral} vs {pair.twin} ({pair.dataset}), mean of seeds {', '.join(map(str, pair.seeds))}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- Rippel

def spectral_param_section(rows: list, budget, figures: Path) -> list[str]:
    lines = ["## 2. Spectral parametrization speeds up Adam (Rippel et al. 2015, Sec. 4, Fig. 5)", "",
             "Paper: 2.2-2.4x fewer epochs to the spatial run's asymptotic error for 3x3 filters, 4.8-5.1x for 5x5 "
             "(Fig. 5 b); the public TensorFlow replication reported 1.3-5.4x. Here: spatial and spectral "
             "parametrization start from the same function (same seed; the tests check the outputs agree), same "
             f"data order and augmentation, Adam lr {budget.lr:g} constant, {budget.steps} steps of batch "
             f"{budget.batch_size} on a fixed {budget.train_size}-image CIFAR-10 subset, seeds "
             f"{', '.join(map(str, budget.seeds))}. Speedup = steps of the budget / the first step at which the "
             f"spectral run's training loss ({budget.smoothing}-step moving average) reaches the spatial run's final "
             "one; below 1 when it never does (then the spatial run's lead, inverted).", "",
             "| network | filters | paper speedup | speedup, mean (seeds) | spectral matched at step | "
             "final train loss spatial / spectral | test accuracy % spatial / spectral |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        matched = ", ".join("-" if s is None else str(s) for s in r.matched_steps)
        losses = (f"{statistics.mean(c[-1] for c in r.spatial_curves):.3f} / "
                  f"{statistics.mean(c[-1] for c in r.spectral_curves):.3f}")
        lines.append(f"| {r.network} | {r.kernel_size}x{r.kernel_size} | "
                     f"{spectral_param.PAPER_SPEEDUP.get((r.network, r.kernel_size), '-')} | {r.mean_factor:.2f} "
                     f"({', '.join(f'{f:.2f}' for f in r.factors)}) | {matched} | {losses} | "
                     f"{_pm(r.spatial_accuracy)} / {_pm(r.spectral_accuracy)} |")
    figure = figures / "spectral_param_curves.png"
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4), squeeze=False)
    for ax, r in zip(axes[0], rows):
        for curves, color, label in ((r.spatial_curves, "tab:blue", "spatial"), (r.spectral_curves, "tab:orange",
                                                                                 "spectral")):
            for i, curve in enumerate(curves):
                ax.plot(range(1, len(curve) + 1), curve, color=color, alpha=0.8, lw=1,
                        label=label if i == 0 else None)
        ax.set(title=f"{r.network} {r.kernel_size}x{r.kernel_size}: speedup {r.mean_factor:.2f}", xlabel="step",
               ylabel=f"training loss ({budget.smoothing}-step mean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    return lines + ["", f"![training curves](figures/{figure.name})", ""]


def spectral_pooling_section(rows: list, budget, figures: Path) -> list[str]:
    lines = ["## 3. Spectral pooling for classification (Rippel et al. 2015, Sec. 5.1)", "",
             f"Paper (Table 4 a): eq. 5's network with spectral pooling and frequency dropout reaches "
             f"{spectral_pooling.PAPER_ERROR['CIFAR-10']:.2%} test error on CIFAR-10 after hyper-parameter search "
             "and 150 epochs. Here the three variants share parameters (same count), seeds, data, Adam "
             f"(lr {budget.lr:g}, one-cycle) and budget: {budget.steps} steps of batch {budget.batch_size} on "
             f"{budget.train_size} CIFAR-10 training images, tested on {budget.test_size}.", "",
             "| variant | parameters | test accuracy % (seeds' range) | final train loss | train time s |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.label} | {r.parameters:,} | {_pm(r.accuracies)} | "
                     f"{statistics.mean(r.final_train_losses):.3f} | {r.train_time_s:.0f} |")
    figure = figures / "spectral_pooling.png"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r.accuracies), [a * 100 for a in r.accuracies], color="k", s=12)
        ax.bar(i, r.accuracy * 100, alpha=0.6)
    ax.set_xticks(range(len(rows)), [r.label.replace(" (", "\n(").replace(", ", ",\n") for r in rows], fontsize=7)
    ax.set(ylabel="test accuracy %", title="specpool_cifar: pooling variants (bars: mean, dots: seeds)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    return lines + ["", f"![pooling variants](figures/{figure.name})", ""]


# ---------------------------------------------------------------------------------------------------- summary

def summary_table(budget: str, summary: dict, param_rows: list, pool_rows: list) -> str:
    """One line per claim: the paper's number, what was measured here and whether it held (README)."""
    lines = [f"Measured by `specnet-zoo reproduce all --budget {budget}` (details, budgets and figures: "
             "[docs/results.md](docs/results.md)):", "",
             "| claim | paper | measured here | held? |", "|---|---|---|---|"]
    for entry in summary.values():
        pair, chosen, within, twin = entry["pair"], entry["chosen"], entry["within"], entry["rows"][0]
        saves = chosen.saved_ratio is not None and chosen.saved_ratio <= 0.5
        gap = (twin.accuracy - chosen.accuracy) * 100
        measured = (f"{chosen.label}: {_pm(chosen.accuracies)}% vs {_pm(twin.accuracies)}% ({abs(gap):.1f} points "
                    f"{'behind' if gap >= 0 else 'ahead'}), saved activations {_fmt(chosen.saved_ratio)}x, step peak "
                    f"{_fmt(chosen.peak_ratio)}x")
        held = "yes" if within and saves else ("accuracy yes, memory no" if within else
                                                 ("memory yes, accuracy no" if saves else "no"))
        if saves and chosen.peak_ratio is not None and chosen.peak_ratio > 1:
            held += " (saved activations; the step peak is higher)"
        lines.append(f"| {pair.spectral} on {pair.dataset}: >= 50% less memory, negligible accuracy loss (Fig. 3) | "
                     f">= 50% saved within beta 0.5-1.5 | {measured} | {held} |")
    for r in param_rows:
        paper = spectral_param.PAPER_SPEEDUP.get((r.network, r.kernel_size))
        held = "yes" if paper and r.mean_factor >= 0.9 * paper else ("partly" if r.mean_factor > 1.2 else "no")
        lines.append(f"| spectral parametrization speeds up Adam: {r.network} {r.kernel_size}x{r.kernel_size} (Fig. 5) | "
                     f"{paper}x | {r.mean_factor:.2f}x (seeds {min(r.factors):.2f}-{max(r.factors):.2f}) | {held} |")
    if pool_rows:
        by = {r.label: r for r in pool_rows}
        fd, no_fd = by["spectral pooling + frequency dropout"], by["spectral pooling, no frequency dropout"]
        mp = by["max pooling (same sizes)"]
        lines.append(f"| spectral pooling + frequency dropout beats max pooling (Sec. 5.1) | 8.2% error, best of its "
                     f"time | {_pm(fd.accuracies)}% vs max pooling {_pm(mp.accuracies)}% | "
                     f"{'yes' if fd.accuracy > mp.accuracy else 'no'} at this budget |")
        lines.append(f"| frequency dropout helps spectral pooling (Sec. 3.2) | (regularizer) | {_pm(fd.accuracies)}% "
                     f"vs {_pm(no_fd.accuracies)}% without | {'yes' if fd.accuracy > no_fd.accuracy else 'no'} at "
                     "this budget |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- report

def _run_rows(runs_dir: Path, prefix: str) -> list[dict]:
    rows = []
    for path in sorted((runs_dir / "runs" / prefix).glob("*/result.json")):
        result = json.loads(path.read_text())
        spec = result.pop("spec")
        hw = result.pop("hardware")
        rows.append({"run": spec["name"], "model": spec["model"], "model_kwargs": json.dumps(spec["model_kwargs"]),
                     "seed": spec["seed"], **result, "device": hw["device"], "torch": hw["torch"]})
    return rows


def write_csvs(runs_dir: Path, out: Path) -> list[str]:
    written = []
    for prefix in ("specnet-accuracy", "spectral-param", "spectral-pooling"):
        rows = _run_rows(runs_dir, prefix)
        if rows:
            path = out / f"results_{prefix.replace('-', '_')}.csv"
            fields = list(dict.fromkeys(k for row in rows for k in row))
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            written.append(path.name)
    return written


def write_report(out: Path, budget: str, summary: dict, param_rows: list, param_budget, pool_rows: list,
                 pool_budget, runs_dir: Path, elapsed_s: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    hw = hardware()
    (out / "hardware.json").write_text(json.dumps(hw, indent=1) + "\n")
    total_train = sum(json.loads(p.read_text())["train_time_s"] for p in (runs_dir / "runs").glob("*/*/result.json"))
    lines = ["# Reproductions: the papers' accuracy claims on real data", "",
             f"Generated by `specnet-zoo reproduce all --budget {budget}` ({date.today().isoformat()}); do not edit: "
             "rerun it (finished runs are reused, unfinished ones resume). Hardware: "
             f"{hw['device']}, torch {hw['torch']}, {hw['precision']}. Training time of all runs: "
             f"{total_train / 60:.0f} min; this invocation {elapsed_s / 60:.0f} min.", ""]
    if budget != "full":
        lines += [f"**Budget `{budget}`.** "
                  + ("A pipeline check, not a measurement: tiny subsets and a few steps. " if budget == "quick" else
                     "Sized for two CPU cores: full MNIST, fixed class-balanced CIFAR-10 subsets and a few epochs, so "
                     "CIFAR accuracies sit far below converged ones; the comparisons are within a budget. ")
                  + "`--budget full` (an accelerator) trains SpecNet's CIFAR-10 networks (specvgg16 included) on all "
                  "of CIFAR-10 for 30 epochs, and Rippel's networks for 4,000 steps with 3x3 and 5x5 filters.", ""]
    lines += ["**Data.** " + DATA_CAVEATS, ""]
    lines += specnet_section(summary, figures)
    lines += spectral_param_section(param_rows, param_budget, figures)
    lines += spectral_pooling_section(pool_rows, pool_budget, figures)
    csvs = write_csvs(runs_dir, out)
    lines += ["## Files", "", f"One row per run (test accuracy, losses, time, memory, hardware): {', '.join(csvs)}. "
              "Per-step training logs (`metrics.csv`) and each run's `result.json` stay under the runs folder "
              f"(`--runs`, here `{runs_dir}`).", ""]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    (out / "results_summary.md").write_text(summary_table(budget, summary, param_rows, pool_rows))
    return path


def _checkout_tables(out: Path, budget: str, device: str, memory: bool, speed: bool, log=print) -> None:
    """The README's measured tables, by the same tooling: the SpecNet memory sweep into ``out``, and when ``out``
    is the checkout's ``docs/``, the benchmark scripts and ``scripts/update_readme.py``."""
    from ..paths import checkout_dir
    from . import specnet_memory

    if memory:
        if budget == "quick":  # the pipeline on one small pair
            specnet_memory.run(out, batch_size=16, pairs=specnet_memory.PAIRS[:1], table=False, betas=(0.7, 1.5),
                               densities=(0.2, 1.0))
        else:
            specnet_memory.run(out)
    docs = checkout_dir() / "docs"
    if not (out.resolve() == docs.resolve() and (checkout_dir() / "scripts" / "update_readme.py").is_file()):
        return
    import subprocess
    import sys

    scripts = checkout_dir() / "scripts"
    commands = []
    if speed:
        kind = "cuda" if device.startswith("cuda") else "cpu"
        commands += [[sys.executable, str(scripts / "bench_models.py"), "--device", device, "--markdown",
                      str(docs / f"bench_models_{kind}.md")]]
        if kind == "cpu":
            commands += [[sys.executable, str(scripts / "bench_layers.py"), "--device", device, "--markdown",
                          str(docs / "bench_layers_cpu.md")]]
    commands.append([sys.executable, str(scripts / "update_readme.py")])
    for command in commands:
        log("running " + " ".join(Path(c).name if i < 2 else c for i, c in enumerate(command)))
        subprocess.run(command, check=True, cwd=checkout_dir())


def run_all(budget: str, out: str | Path, runs_dir: str | Path, device: str = "cpu", data_root=None,
            memory: bool = True, speed: bool = True, log=print) -> Path:
    """Every reproduction at ``budget`` (resuming finished and partial runs), then the report in ``out``;
    ``memory``: also the SpecNet memory sweep (``specnet_memory.md``); ``speed``: the benchmark scripts when
    ``out`` is the checkout's docs folder (which also rewrites the README's tables)."""
    if budget not in BUDGET_NAMES:
        raise ValueError(f"budget must be one of {BUDGET_NAMES}, got {budget!r}")
    start = time.perf_counter()
    runs_dir, out = Path(runs_dir), Path(out)
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "hardware.json").write_text(json.dumps(hardware(), indent=1) + "\n")
    summary = specnet_accuracy.run(specnet_accuracy.BUDGETS[budget], runs_dir, device, data_root, log=log)
    param_budget = spectral_param.BUDGETS[budget]
    param_rows = spectral_param.run(param_budget, runs_dir, device, data_root, log=log)
    pool_budget = spectral_pooling.BUDGETS[budget]
    pool_rows = spectral_pooling.run(pool_budget, runs_dir, device, data_root, log=log)
    path = write_report(out, budget, summary, param_rows, param_budget, pool_rows, pool_budget, runs_dir,
                        time.perf_counter() - start)
    log(f"wrote {path}")
    _checkout_tables(out, budget, device, memory, speed, log=log)
    return path
