"""Small dataset files written in the datasets' exact on-disk formats (for loaders and recipes)."""
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_svhn(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """torchvision's SVHN layout: {train,test}_32x32.mat with X (32, 32, 3, N) uint8 and y (N, 1) in 1..10."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # digit 0 is stored as 10
        savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
    return root


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """torchvision's cifar-100-python/{train,test,meta}: pickled dicts with bytes keys, data (N, 3072) uint8."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": [i % 100 for i in range(n)],
                 b"coarse_labels": [i % 20 for i in range(n)], b"filenames": [f"{i}.png".encode() for i in range(n)],
                 b"batch_label": split.encode()}
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f, protocol=2)
    return root


def write_imagenet(root: Path, wnids=("n01440764", "n01443537", "n01484850"), per_class: int = 3, size: int = 48) -> Path:
    """torchvision's ImageNet layout: meta.bin (wnid -> class names, val wnids) + train/<wnid>/ and val/<wnid>/ JPEGs."""
    rng = np.random.default_rng(0)
    wnid_to_classes = {w: (f"class {i}",) for i, w in enumerate(wnids)}
    root.mkdir(parents=True, exist_ok=True)
    torch.save((wnid_to_classes, [w for w in wnids for _ in range(per_class)]), root / "meta.bin")
    for split in ("train", "val"):
        for w in wnids:
            folder = root / split / w
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{w}_{j}.JPEG", quality=90)
    return root


def write_digit_folder(mnist_dir: Path, root: Path, digits=(5, 6, 7, 8, 9), per_class: int = 320) -> Path:
    """An image folder (``train/<name>/*.png``) of real MNIST test digits: a small grayscale fine-tuning task."""
    from PIL import Image

    from specnet_zoo.data.sources import read_mnist

    images, labels = read_mnist(mnist_dir, "test")
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for digit in digits:
        folder = root / "train" / names[digit]
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate((labels == digit).nonzero().flatten()[:per_class].tolist()):
            Image.fromarray(images[index].squeeze(0).numpy()).save(folder / f"{i:04d}.png")
    return root
