"""Readers for the on-disk formats of the supported datasets (offline first, real downloads second).

Every reader returns an in-memory dataset of uint8 images or an ``ImageFolder``. CIFAR's python
batches are pickles by format; they are read with an unpickler that admits only numpy arrays.
Missing data gives a :class:`DataNotFoundError` naming the files and where they go.
"""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import socket
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DataNotFoundError",
    "TensorImageDataset",
    "download_with_timeout",
    "extract_image_folder",
    "read_cifar_batches",
    "read_idx",
    "read_mnist",
    "read_svhn_mat",
]


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on disk (and could not be downloaded)."""


class TensorImageDataset(Dataset):
    """(N, C, H, W) uint8 images and int64 labels held in memory; ``transform`` maps a uint8 image tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


def read_idx(path: Path) -> torch.Tensor:
    """Read an idx file (optionally gzipped): MNIST's format, big-endian dims after a 4-byte magic."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims)) + 4 + 4 * ndim
    if len(data) != expected:
        raise ValueError(f"{path} is truncated or corrupt: {len(data)} bytes, header says {expected}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy())


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(root: Path, name: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def read_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` ('train'/'test') from the idx files in ``root`` (or torchvision's ``root/MNIST/raw``)."""
    paths = [_find(root, name) for name in MNIST_FILES[split]]
    if None in paths:
        wanted = ", ".join(f"{n}[.gz]" for n in MNIST_FILES["train"] + MNIST_FILES["test"])
        raise DataNotFoundError(f"MNIST not found in {root}: put {wanted} there (or in {root}/MNIST/raw)")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    return images[:, None], labels


class _CifarUnpickler(pickle.Unpickler):
    """Unpickle CIFAR batches only: plain containers and numpy arrays, no other callable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def read_cifar_batches(folder: Path, split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's CIFAR python batches (``cifar-10-batches-py`` / ``cifar-100-python``)."""
    if num_classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key = b"labels"
    else:
        files, label_key = [split], b"fine_labels"
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            entry = _CifarUnpickler(f, encoding="bytes").load()
        images.append(torch.from_numpy(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)))
        labels.append(torch.as_tensor(entry[label_key]))
    return torch.cat(images), torch.cat(labels)


def read_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN's ``*_32x32.mat``: X (32, 32, 3, N) uint8, y (N, 1) with digit 0 stored as 10."""
    from scipy.io import loadmat

    mat = loadmat(str(path))
    images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))
    labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1)) % 10
    return images, labels


def extract_image_folder(archives: list[Path], cache_dir: Path) -> Path:
    """Extract ``train/<class>/...`` and ``test/<class>/...`` tar.gz archives once into ``cache_dir``.

    Safe under concurrency (DDP ranks, two runs sharing a cache): every caller extracts into its own
    unique temporary folder beside ``cache_dir`` and publishes it with one atomic ``os.replace``; a
    caller that finds the folder already published discards its copy. A ``cache_dir`` left without
    its ``.extracted`` marker (an interrupted run of an older version) is replaced.
    """
    marker = cache_dir / ".extracted"
    if marker.exists():
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.", suffix=".partial", dir=cache_dir.parent))
    try:
        for archive in archives:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
                for member in members:
                    if member.name.startswith("/") or ".." in Path(member.name).parts:
                        raise ValueError(f"{archive} contains an unsafe path {member.name!r}")
                tar.extractall(work, members=members)
        (work / ".extracted").touch()
        _publish(work, cache_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cache_dir


def _publish(work: Path, target: Path) -> None:
    """``os.replace(work, target)`` unless another process published ``target`` first."""
    for _ in range(3):
        try:
            os.replace(work, target)  # atomic; allowed onto a missing or empty folder
            return
        except OSError:
            if (target / ".extracted").exists():
                return  # another process won the race: its copy is complete, ours is discarded
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".stale", dir=target.parent))
            try:
                os.replace(target, stale)  # an incomplete folder without marker: move it aside and retry
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
    raise OSError(f"could not publish the extracted data to {target}; remove that folder and retry")


def download_with_timeout(fn: Callable[[], object], what: str, hint: str, timeout: float = 10.0):
    """Run a torchvision download with a socket timeout; an unreachable network fails in seconds."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        return fn()
    except (OSError, RuntimeError) as error:  # URLError, timeouts, refused connections, md5 failures
        raise DataNotFoundError(f"could not download {what} ({error}); {hint}") from error
    finally:
        socket.setdefaulttimeout(previous)
