"""Rippel et al. 2015, Fig. 4(a): information kept by spectral pooling vs max pooling.

Each photograph x (all channels) is reduced to a fraction of its values and reconstructed at full
size; the error is ``||x - x_rec||_2 / ||x||_2``, averaged over the images.

* Spectral pooling to (h, w) keeps h*w / (H*W) of the values; reconstruction zero-pads the spectrum
  (``spectral_resize2d`` back to (H, W)), the least-squares inverse for the kept band.
* Max pooling with a stride-s, s x s window (ceil mode) keeps ceil(H/s) ceil(W/s) / (H*W) of the
  values; reconstruction repeats each maximum over its window (nearest-neighbour upsampling).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..layers import spectral_pool2d, spectral_resize2d
from ..layers.spectral_pool import pooled_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_SCALES = tuple(round(0.03 * (1 / 0.03) ** (i / 29), 4) for i in range(30))  # log-spaced 0.03 .. 1
DEFAULT_STRIDES = (2, 3, 4, 5, 6, 8)


def load_photos(folder: str | Path) -> list[torch.Tensor]:
    """Every image in ``folder`` (sorted by name) as a float64 (C, H, W) tensor in [0, 1]; C is 1 or 3."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} does not exist")
    images = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in ("L", "I;16", "I") else "RGB")
            data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            channels = 1 if image.mode == "L" else 3
            tensor = data.reshape(image.height, image.width, channels).permute(2, 0, 1)
            images.append(tensor.to(torch.float64) / 255.0)
    if not images:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
    return images


def _relative_error(x: torch.Tensor, x_rec: torch.Tensor) -> float:
    return float((x - x_rec).norm() / x.norm())


def spectral_pool_error(image: torch.Tensor, scale: float) -> tuple[float, float]:
    """(fraction of values kept, relative L2 error) for spectral pooling to floor(scale * size)."""
    height, width = image.shape[-2:]
    size = (pooled_size(height, scale), pooled_size(width, scale))
    x = image[None]
    x_rec = spectral_resize2d(spectral_pool2d(x, size), (height, width))
    return size[0] * size[1] / (height * width), _relative_error(x, x_rec)


def max_pool_error(image: torch.Tensor, stride: int) -> tuple[float, float]:
    """(fraction of values kept, relative L2 error) for s x s max pooling with stride s."""
    height, width = image.shape[-2:]
    x = image[None]
    pooled = F.max_pool2d(x, stride, stride, ceil_mode=True)
    x_rec = pooled.repeat_interleave(stride, -2).repeat_interleave(stride, -1)[..., :height, :width]
    return pooled.shape[-2] * pooled.shape[-1] / (height * width), _relative_error(x, x_rec)


@dataclass
class InfoPreservationResult:
    spectral: list[tuple[float, float, float]]  # (scale, mean fraction, mean error)
    max_pool: list[tuple[int, float, float]]  # (stride, mean fraction, mean error)

    def spectral_error_at(self, fraction: float) -> float:
        """Spectral-pooling error at a kept fraction, linear interpolation on the measured curve."""
        points = sorted((f, e) for _, f, e in self.spectral)
        for (f0, e0), (f1, e1) in zip(points, points[1:]):
            if f0 <= fraction <= f1:
                return e0 + (e1 - e0) * (fraction - f0) / (f1 - f0)
        raise ValueError(f"fraction {fraction} is outside the measured range {points[0][0]}..{points[-1][0]}")

    def spectral_fraction_for(self, error: float) -> float | None:
        """Kept fraction at which spectral pooling's error drops to ``error`` (interpolated).

        ``None`` when spectral pooling is already below ``error`` at the smallest measured fraction.
        """
        points = sorted((f, e) for _, f, e in self.spectral)
        if error >= points[0][1]:
            return None
        for (f0, e0), (f1, e1) in zip(points, points[1:]):
            if e0 >= error >= e1:
                return f0 + (f1 - f0) * (e0 - error) / (e0 - e1) if e0 != e1 else f0
        raise ValueError(f"error {error} is below the whole measured curve")


def measure(
    images: list[torch.Tensor],
    scales: tuple[float, ...] = DEFAULT_SCALES,
    strides: tuple[int, ...] = DEFAULT_STRIDES,
) -> InfoPreservationResult:
    spectral = []
    for scale in scales:
        rows = [spectral_pool_error(image, scale) for image in images]
        spectral.append((scale, sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows) / len(rows)))
    max_pool = []
    for stride in strides:
        rows = [max_pool_error(image, stride) for image in images]
        max_pool.append((stride, sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows) / len(rows)))
    return InfoPreservationResult(spectral, max_pool)


def format_table(result: InfoPreservationResult) -> str:
    lines = [
        "max pooling vs spectral pooling at the same fraction of values kept (mean over images)",
        f"{'stride':>6} {'kept':>7} {'max-pool err':>13} {'spectral err':>13} {'err ratio':>9} {'spectral kept for same err':>27}",
    ]
    smallest = min(f for _, f, _ in result.spectral)
    for stride, fraction, error in result.max_pool:
        spectral_error = result.spectral_error_at(fraction)
        same_error = result.spectral_fraction_for(error)
        same_text = f"{same_error:.4f}" if same_error is not None else f"<{smallest:.4f}"
        lines.append(
            f"{stride:>6} {fraction:>7.4f} {error:>13.4f} {spectral_error:>13.4f} "
            f"{spectral_error / error:>9.3f} {same_text:>27}"
        )
    lines.append("")
    lines.append("spectral pooling curve (scale gamma -> output floor(gamma*H) x floor(gamma*W))")
    lines.append(f"{'gamma':>6} {'kept':>7} {'error':>8}")
    lines += [f"{scale:>6.3f} {fraction:>7.4f} {error:>8.4f}" for scale, fraction, error in result.spectral]
    return "\n".join(lines)


def write_csv(result: InfoPreservationResult, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "setting", "fraction_kept", "mean_relative_l2_error"])
        for scale, fraction, error in result.spectral:
            writer.writerow(["spectral_pool", f"gamma={scale}", f"{fraction:.6f}", f"{error:.6f}"])
        for stride, fraction, error in result.max_pool:
            writer.writerow(["max_pool", f"stride={stride}", f"{fraction:.6f}", f"{error:.6f}"])


def write_plot(result: InfoPreservationResult, path: Path, n_images: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    fractions = [f for _, f, _ in result.spectral]
    ax.plot(fractions, [e for _, _, e in result.spectral], "-", color="tab:blue", lw=2, label="spectral pooling")
    ax.plot([f for _, f, _ in result.max_pool], [e for _, _, e in result.max_pool], "o", color="tab:red",
            label="max pooling (stride " + ", ".join(str(s) for s, _, _ in result.max_pool) + ")")
    best = min(e for _, _, e in result.max_pool)
    ax.axhline(best, color="tab:red", ls="--", lw=1, label=f"best max pooling ({best:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of values kept")
    ax.set_ylabel("mean relative L2 reconstruction error")
    ax.set_title(f"Information preservation, Rippel et al. 2015 Fig. 4a ({n_images} photos)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(photos_dir: str | Path, out_dir: str | Path) -> InfoPreservationResult:
    """Measure, write ``info_preservation.csv`` and ``info_preservation.png`` into ``out_dir``, print the table."""
    images = load_photos(photos_dir)
    result = measure(images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(result, out_dir / "info_preservation.csv")
    write_plot(result, out_dir / "info_preservation.png", len(images))
    print(f"{len(images)} photographs from {photos_dir}")
    print(format_table(result))
    print(f"wrote {out_dir / 'info_preservation.csv'} and {out_dir / 'info_preservation.png'}")
    return result
