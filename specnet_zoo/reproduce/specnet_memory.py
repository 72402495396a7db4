"""SpecNet (Guan et al. 2019) Fig. 3(a-c) analogue: training memory of SpecNet vs its spatial twin.

For every SpecNet/spatial pair, on a real batch of its dataset (MNIST for LeNet, CIFAR-10 otherwise),
the saved-activation bytes of one training step (:func:`specnet_zoo.profiling.measure_memory`) of the
SpecNet model divided by those of the spatial twin:

* vs the paper's absolute threshold beta (0.5 .. 1.5), with the smallest per-layer density, which shows
  a fixed beta thinning the spectra layer after layer;
* vs a per-sample density target, for the lossless ("compact") and low-precision storages.

A second table puts the SpecNet settings next to the generic alternatives on the spatial network,
measured by the same harness at batch 128: ``torch.utils.checkpoint`` per stage and
``torch.autograd.graph.save_on_cpu``, with the peak of a step and the step time (ratios within the
same run). Weights are freshly initialised (seeded): densities at a given beta depend on the weights,
so trained networks sit elsewhere on the beta axis; the density axis does not move.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .._factory import create_model
from ..constants import PAPER_PAIRS
from ..data import sample_batch
from ..profiling import MB, MemoryReport, measure_memory

PAIRS = PAPER_PAIRS
BETAS = (0.5, 0.7, 1.0, 1.25, 1.5)  # Fig. 3 sweeps 0.5-1.5 (eq. 7 scale); Fig. 4 uses 0.7
DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
STORAGES = ("compact", "float16", "int8")
TABLE_PAIRS = tuple((spectral, spatial) for spectral, spatial, _ in PAIRS if spectral in ("specvgg16", "specdensenet"))
TABLE_SETTINGS = (
    ("dense autograd, no threshold", dict(storage="dense")),
    ("compact, no threshold", dict()),
    ("compact, beta 0.7 (SpecNet Fig. 4)", dict(threshold=0.7)),
    ("int8, beta 0.7", dict(threshold=0.7, storage="int8")),
    ("compact, density 0.2", dict(density=0.2)),
    ("compact, density 0.1", dict(density=0.1)),
    ("float16, density 0.2", dict(density=0.2, storage="float16")),
    ("int8, density 0.2", dict(density=0.2, storage="int8")),
)


@dataclass
class SweepRow:
    model: str
    twin: str
    data: str
    batch_size: int
    axis: str  # "beta" or "density"
    value: float
    storage: str
    saved_mb: float
    twin_saved_mb: float
    ratio: float
    mean_density: float
    min_density: float
    layer_densities: str  # every spectral convolution's measured density, in order, ";"-separated


@dataclass
class TableRow:
    network: str
    method: str
    saved_mb: float
    saved_ratio: float
    offloaded_mb: float
    peak_mb: float | None
    peak_ratio: float | None
    step_s: float | None
    step_ratio: float | None


def _seeded(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **kwargs).train()


def sweep(pairs=PAIRS, betas=BETAS, densities=DENSITIES, storages=STORAGES, batch_size: int = 64,
          data_root: str | Path | None = None) -> list[SweepRow]:
    """Relative saved-activation memory vs beta and vs density for each (SpecNet, spatial, data) pair."""
    rows = []
    for spectral, spatial, data in pairs:
        x, y = sample_batch(data, batch_size, data_root)
        base = measure_memory(_seeded(spatial), x, y, peak=False, name=spatial).saved_bytes
        settings = [("beta", b, "compact", dict(threshold=b)) for b in betas]
        settings += [("density", d, s, dict(density=d, storage=s)) for s in storages for d in densities]
        for axis, value, storage, kwargs in settings:
            report = measure_memory(_seeded(spectral, **kwargs), x, y, peak=False, name=spectral)
            dens = list(report.densities.values())
            rows.append(SweepRow(spectral, spatial, data, batch_size, axis, value, storage, report.saved_bytes / MB,
                                 base / MB, report.saved_bytes / base, sum(dens) / len(dens), min(dens),
                                 ";".join(f"{d:.6f}" for d in dens)))
            print(f"{spectral:>13} {axis:>7} {value:<5} {storage:<8} saved {report.saved_bytes / MB:8.2f} MB "
                  f"ratio {report.saved_bytes / base:.3f}  density mean {rows[-1].mean_density:.3f} "
                  f"min {rows[-1].min_density:.4f}", flush=True)
    return rows


def _row(network: str, method: str, report: MemoryReport, base: MemoryReport) -> TableRow:
    def ratio(a, b):
        return None if a is None or b in (None, 0) else a / b

    return TableRow(
        network, method, report.saved_bytes / MB, report.saved_bytes / base.saved_bytes, report.offloaded_bytes / MB,
        None if report.peak_bytes is None else report.peak_bytes / MB, ratio(report.peak_bytes, base.peak_bytes),
        report.step_time_s, ratio(report.step_time_s, base.step_time_s),
    )


def comparison(pairs=TABLE_PAIRS, settings=TABLE_SETTINGS, batch_size: int = 128, timing_steps: int = 2,
               data_root: str | Path | None = None) -> list[TableRow]:
    """SpecNet settings vs checkpointing and CPU offload of the spatial twin, one harness, one run."""
    x, y = sample_batch("cifar10", batch_size, data_root)
    rows = []
    for spectral, spatial in pairs:
        measure = dict(peak=True, timing_steps=timing_steps)
        base = measure_memory(_seeded(spatial), x, y, name=spatial, **measure)
        rows.append(_row(spatial, "spatial baseline", base, base))
        for strategy, label in (("checkpoint", "torch.utils.checkpoint per stage"),
                                ("offload", "save_on_cpu offload")):
            report = measure_memory(_seeded(spatial), x, y, strategy=strategy, name=spatial, **measure)
            rows.append(_row(spatial, label, report, base))
        for label, kwargs in settings:
            report = measure_memory(_seeded(spectral, **kwargs), x, y, name=spectral, **measure)
            rows.append(_row(spectral, label, report, base))
        for row in rows[-(3 + len(settings)):]:
            print(_format_table_row(row), flush=True)
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _format_table_row(row: TableRow) -> str:
    return (f"| {row.network} | {row.method} | {row.saved_mb:.1f} | {row.saved_ratio:.3f} | {row.offloaded_mb:.1f} | "
            f"{_fmt(row.peak_mb, '.1f')} | {_fmt(row.peak_ratio, '.2f')} | {_fmt(row.step_s, '.2f')} | "
            f"{_fmt(row.step_ratio, '.2f')} |")


def format_table(rows: list[TableRow]) -> str:
    head = ("| network | method | saved MB | saved ratio | offloaded MB | step peak MB | peak ratio | step s | "
            "step ratio |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    return "\n".join([head, *map(_format_table_row, rows)])


def format_sweep(rows: list[SweepRow]) -> str:
    """Markdown: saved-activation ratio vs beta (one row per pair), then vs density (per pair and storage)."""
    lines = []
    for axis in ("beta", "density"):
        picked = [r for r in rows if r.axis == axis]
        if not picked:
            continue
        values = list(dict.fromkeys(r.value for r in picked))
        keys = list(dict.fromkeys((r.model, r.twin, r.storage) for r in picked))
        lines += ["", "| model / twin | storage | " + " | ".join(f"{axis} {v}" for v in values) + " |",
                  "|---|---|" + "---:|" * len(values)]
        for model, twin, storage in keys:
            ratio = {r.value: r.ratio for r in picked if (r.model, r.twin, r.storage) == (model, twin, storage)}
            cells = " | ".join(f"{ratio[v]:.3f}" if v in ratio else "-" for v in values)
            lines.append(f"| {model} / {twin} | {storage} | {cells} |")
    return "\n".join(lines).strip()


def write_csv(rows, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def write_plot(rows: list[SweepRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    models = list(dict.fromkeys(r.model for r in rows))
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for model in models:
        beta = [r for r in rows if r.model == model and r.axis == "beta"]
        if beta:
            axes[0].plot([r.value for r in beta], [r.ratio for r in beta], "o-", color=colors[model], label=model)
        for storage, style in (("compact", "o-"), ("float16", "s--"), ("int8", "^:")):
            dens = [r for r in rows if r.model == model and r.axis == "density" and r.storage == storage]
            if dens:
                axes[1].plot([r.value for r in dens], [r.ratio for r in dens], style, color=colors[model],
                             label=f"{model} ({storage})")
    # (c): per-layer density of the deepest network, fixed beta vs a density target
    deepest = max(models, key=lambda m: len(next(r for r in rows if r.model == m).layer_densities.split(";")))
    floor = 1e-5
    cmap = plt.get_cmap("viridis")
    betas = [r for r in rows if r.model == deepest and r.axis == "beta"]
    for i, r in enumerate(betas):
        layers = [max(float(d), floor) for d in r.layer_densities.split(";")]
        axes[2].semilogy(range(1, len(layers) + 1), layers, "o-", ms=3, color=cmap(i / max(1, len(betas) - 1)),
                         label=f"beta {r.value}")
    target = [r for r in rows if r.model == deepest and r.axis == "density" and r.storage == "compact"
              and abs(r.value - 0.2) < 1e-9]
    for r in target:
        layers = [float(d) for d in r.layer_densities.split(";")]
        axes[2].semilogy(range(1, len(layers) + 1), layers, "k--", label="density 0.2")
    axes[0].axhline(0.37, color="gray", lw=0.8, ls="--", label="SpecNet paper: 0.37")
    axes[0].set(xlabel="threshold beta", ylabel="saved activations / spatial twin", title="(a) relative memory vs beta")
    axes[1].axhline(0.25, color="gray", lw=0.8, ls="--", label="target 0.25")
    axes[1].set(xlabel="kept density (per sample)", ylabel="saved activations / spatial twin",
                title="(b) relative memory vs density")
    axes[2].set(xlabel=f"{deepest} spectral layer", ylabel=f"measured density (0 drawn at {floor:g})",
                title="(c) a fixed beta kills deep layers")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=6, ncol=2)
    axes[2].legend(fontsize=7)
    batch = rows[0].batch_size
    fig.suptitle(f"SpecNet training memory (saved activations, batch {batch}, real MNIST / CIFAR-10 batches)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(out_dir: str | Path, batch_size: int = 64, table_batch_size: int = 128, pairs=PAIRS, table: bool = True,
        betas=BETAS, densities=DENSITIES, timing_steps: int = 2) -> tuple[list[SweepRow], list[TableRow]]:
    """Sweep, comparison table, CSVs and the PNG into ``out_dir``; prints both tables in Markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sweep(pairs, betas, densities, batch_size=batch_size)
    write_csv(rows, out_dir / "specnet_memory_sweep.csv")
    write_plot(rows, out_dir / "specnet_memory.png")
    print(format_sweep(rows))
    table_rows: list[TableRow] = []
    if table:
        table_rows = comparison(batch_size=table_batch_size, timing_steps=timing_steps)
        write_csv(table_rows, out_dir / "specnet_memory_comparison.csv")
        print(format_table(table_rows))
    markdown = [f"Saved activations / spatial twin, batch {batch_size}, real MNIST / CIFAR-10 test batches, fresh "
                "seeded weights (`specnet-zoo reproduce specnet-memory`):", "", format_sweep(rows)]
    if table_rows:
        markdown += ["", f"Batch {table_batch_size} of CIFAR-10, SGD with momentum, ratios against the spatial twin in "
                     "the same run:", "", format_table(table_rows)]
    (out_dir / "specnet_memory.md").write_text("\n".join(markdown) + "\n")
    print(f"wrote {out_dir}/specnet_memory_sweep.csv, specnet_memory.png, specnet_memory.md"
          + (", specnet_memory_comparison.csv" if table else ""))
    return rows, table_rows
