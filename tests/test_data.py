import time

import numpy as np
import pytest
import torch
from PIL import Image

from specnet_zoo.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataNotFoundError,
    ImageFolderDataModule,
    ImageNetDataModule,
    MNISTDataModule,
    ResumableDataLoader,
    SVHNDataModule,
)
from specnet_zoo.data.sources import read_idx, read_mnist

from data_fixtures import write_cifar100, write_imagenet, write_svhn


@pytest.mark.shared_data
def test_mnist_idx_matches_lossless_foolbox_samples(shared_data):
    images, labels = read_mnist(shared_data / "mnist", "test")
    assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    assert read_mnist(shared_data / "mnist", "train")[0].shape == (60000, 1, 28, 28)
    samples = sorted((shared_data / "foolbox-samples").glob("mnist_*.png"))
    assert len(samples) == 20
    for path in samples:  # mnist_<index>_<label>.png: test image <index>, pixel for pixel
        _, index, label = path.stem.split("_")
        png = torch.from_numpy(np.array(Image.open(path).convert("L")))
        assert torch.equal(images[int(index), 0], png) and int(labels[int(index)]) == int(label)


@pytest.mark.shared_data
def test_mnist_datamodule_split_and_normalization(shared_data):
    dm = MNISTDataModule(str(shared_data / "mnist"), batch_size=32, val_split=5000, seed=3)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    assert dm.num_classes == 10 and dm.in_chans == 1
    again = MNISTDataModule(str(shared_data / "mnist"), val_split=5000, seed=3)
    again.setup("fit")
    assert dm.val_set.indices == again.val_set.indices  # seeded split
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -0.5 < float(x.mean()) < 0.5 and 0.7 < float(x.std()) < 1.3  # normalized per channel


@pytest.mark.shared_data
def test_cifar10_jpeg_archives_extract_once_and_load(shared_data, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "cifar10-cache"
    dm = CIFAR10DataModule(str(shared_data / "cifar10-jpg"), batch_size=16, val_split=5000, cache_dir=str(cache))
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (45000, 5000, 10000)
    assert dm.test_set.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    marker = next(cache.glob("*/.extracted"))
    stamp = marker.stat().st_mtime_ns
    one_file = next((marker.parent / "test" / "cat").iterdir())
    one_file.unlink()  # a re-extraction would bring it back
    CIFAR10DataModule(str(shared_data / "cifar10-jpg"), cache_dir=str(cache)).setup("fit")
    assert marker.stat().st_mtime_ns == stamp and not one_file.exists()


def test_svhn_mat_files(tmp_path):
    write_svhn(tmp_path)
    dm = SVHNDataModule(str(tmp_path), batch_size=8, val_split=0.25)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 20)
    image, label = dm.test_set[0]
    assert image.shape == (3, 32, 32) and int(label) == 1
    assert int(dm.test_set[9][1]) == 0  # stored as 10
    from scipy.io import loadmat

    raw = loadmat(str(tmp_path / "test_32x32.mat"))["X"][:, :, :, 3]  # (32, 32, 3) HWC
    expected = (torch.from_numpy(raw).permute(2, 0, 1).float() / 255 - torch.tensor(dm.mean)[:, None, None]) / torch.tensor(dm.std)[:, None, None]
    torch.testing.assert_close(dm.test_set[3][0], expected)


def test_cifar100_python_batches(tmp_path):
    write_cifar100(tmp_path)
    dm = CIFAR100DataModule(str(tmp_path), batch_size=8, val_split=50, augment=False)
    dm.setup("fit")
    assert dm.num_classes == 100 and (len(dm.train_set), len(dm.test_set)) == (150, 100)
    assert int(dm.test_set[42][1]) == 42


def test_imagenet_layout(tmp_path):
    write_imagenet(tmp_path)
    dm = ImageNetDataModule(str(tmp_path), batch_size=2, image_size=32)
    dm.setup("fit")
    assert dm.num_classes == 1000 and len(dm.train_set) == 9 and len(dm.val_set) == 9
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 32, 32)


def test_image_folder(tmp_path):
    write_imagenet(tmp_path / "folder")
    dm = ImageFolderDataModule(str(tmp_path / "folder"), batch_size=3, image_size=24)
    assert dm.num_classes == 3
    dm.setup("fit")
    assert len(dm.val_set) == 9 and next(iter(dm.train_dataloader()))[0].shape == (3, 3, 24, 24)


@pytest.mark.parametrize("make", [
    lambda d: MNISTDataModule(d), lambda d: CIFAR10DataModule(d), lambda d: CIFAR100DataModule(d),
    lambda d: SVHNDataModule(d), lambda d: ImageNetDataModule(d),
])
def test_missing_data_says_what_to_put_where(make, tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        make(str(tmp_path)).setup("fit")
    assert time.perf_counter() - start < 5


def test_missing_data_with_unreachable_network_fails_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match="could not download MNIST"):
        MNISTDataModule(str(tmp_path), download=True).setup("fit")
    assert time.perf_counter() - start < 60


def test_image_folder_without_train_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="train"):
        ImageFolderDataModule(str(tmp_path))


def test_corrupt_idx_file_is_reported(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "bad")


def test_resumable_loader_skips_consumed_batches():
    data = torch.utils.data.TensorDataset(torch.arange(23))
    loader = ResumableDataLoader(data, batch_size=4, seed=5)
    loader.sampler.set_epoch(1)
    iterator = iter(loader)
    seen = [next(iterator)[0] for _ in range(3)]
    state = loader.state_dict()
    rest = [b[0] for b in iterator]
    resumed = ResumableDataLoader(data, batch_size=4, seed=5)
    resumed.load_state_dict(state)
    assert state == {"epoch": 1, "batches": 3}
    assert [b[0].tolist() for b in resumed] == [b.tolist() for b in rest]
    assert sorted(torch.cat(seen + rest).tolist()) == list(range(23))


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / split).write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": [0]}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (__builtin__|builtins)\.print"):
        CIFAR100DataModule(str(tmp_path)).setup("fit")
