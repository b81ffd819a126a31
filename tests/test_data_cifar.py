"""CIFAR-100 / CIFAR-100-LT loaders on fake archives in the official pickle format, and batch resize."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_datasets import balanced_labels, pack_targz, write_cifar100_python
from torchvision.transforms.v2 import functional as TF

from kd_ray.config import DatasetConfig
from kd_ray.data import cifar
from kd_ray.data.base import DATASETS
from kd_ray.data.device_resize import resize_batch
from kd_ray.data.long_tail import long_tail_indices
from kd_ray.errors import ConfigError, DataError


def _cfg(name: str = "cifar100", **kw: object) -> DatasetConfig:
    kw.setdefault("verify_checksums", False)
    return DatasetConfig(name=name, **kw)


def _rows(folder: Path, split: str) -> tuple[np.ndarray, list[int]]:
    """The split as Krizhevsky's own snippet reads it (encoding="bytes"), independent of the loader."""
    with (folder / split).open("rb") as f:
        entry = pickle.load(f, encoding="bytes")
    return entry[b"data"], entry[b"fine_labels"]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar_small")
    write_cifar100_python(root, balanced_labels(5, seed=1), balanced_labels(2, seed=2))
    return root


@pytest.fixture(scope="session")
def full_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size training split (50000 images, 500 per class), written once per session."""
    root = tmp_path_factory.mktemp("cifar_full")
    write_cifar100_python(root, balanced_labels(500, seed=3), balanced_labels(10, seed=4))
    return root


def test_cifar100_reads_the_python_archive(small_root: Path) -> None:
    ds = DATASETS.get("cifar100")(_cfg(root=str(small_root)))
    folder = small_root / "cifar-100-python"
    for source, split in ((ds.train, "train"), (ds.val, "test")):
        rows, labels = _rows(folder, split)
        assert source.images.dtype == torch.uint8 and source.images.shape == (len(rows), 3, 32, 32)
        assert np.array_equal(source.images.reshape(len(rows), -1).numpy(), rows)
        assert source.labels.tolist() == labels
        image, label = source[7]
        assert int(image[0, 0, 0]) == label == labels[7]
    assert (ds.num_classes, ds.channels, ds.native_size, ds.family) == (100, 3, 32, "cifar")
    assert ds.mean == cifar.MEAN and ds.std == cifar.STD


def test_torchvision_reader_gives_the_same_tensors(small_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake files cannot match the official MD5s; pretend they do to compare the two readers.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    checked = DATASETS.get("cifar100")(_cfg(root=str(small_root), verify_checksums=True))
    direct = DATASETS.get("cifar100")(_cfg(root=str(small_root)))
    for a, b in ((checked.train, direct.train), (checked.val, direct.val)):
        assert torch.equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


def test_fake_files_fail_the_digest_check_with_a_pointer_to_the_switch(small_root: Path) -> None:
    with pytest.raises(DataError) as err:
        DATASETS.get("cifar100")(_cfg(root=str(small_root), verify_checksums=True))
    msg = str(err.value)
    assert "MD5 digest check" in msg and "verify_checksums: false" in msg and "\n" not in msg


def test_root_may_be_the_archive_directory_itself(small_root: Path) -> None:
    ds = DATASETS.get("cifar100")(_cfg(root=str(small_root / "cifar-100-python")))
    assert len(ds.train) == 500 and len(ds.val) == 200


def test_a_tar_gz_archive_in_root_is_extracted(small_root: Path, tmp_path: Path) -> None:
    pack_targz(small_root / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    ds = DATASETS.get("cifar100")(_cfg(root=str(tmp_path)))
    assert (tmp_path / "cifar-100-python" / "meta").is_file()
    assert torch.equal(ds.train.images, DATASETS.get("cifar100")(_cfg(root=str(small_root))).train.images)


def _break(folder: Path, how: str) -> Path:
    """Damage a fresh copy of the archive in one way; returns the file the error must name."""
    if how == "missing_train":
        (folder / "train").unlink()
        return folder / "train"
    if how == "missing_meta":
        (folder / "meta").unlink()
        return folder / "meta"
    if how == "garbage":
        (folder / "train").write_bytes(b"\x80\x02this is not a pickle")
        return folder / "train"
    if how == "truncated":
        data = (folder / "train").read_bytes()
        (folder / "train").write_bytes(data[: len(data) // 2])
        return folder / "train"
    with (folder / "train").open("rb") as f:
        entry = pickle.load(f, encoding="latin1")
    if how == "wrong_shape":
        entry["data"] = entry["data"].reshape(-1, 1024)
    elif how == "label_count":
        entry["fine_labels"] = entry["fine_labels"][:-1]
    elif how == "no_labels":
        del entry["fine_labels"]
    (folder / "train").write_bytes(pickle.dumps(entry))
    return folder / "train"


@pytest.mark.parametrize(
    "how",
    ["missing_train", "missing_meta", "garbage", "truncated", "wrong_shape", "label_count", "no_labels"],
)
def test_a_broken_archive_is_one_clear_data_error(tmp_path: Path, how: str) -> None:
    folder = write_cifar100_python(tmp_path, balanced_labels(1), balanced_labels(1))
    bad = _break(folder, how)
    with pytest.raises(DataError) as err:
        DATASETS.get("cifar100")(_cfg(root=str(tmp_path)))
    msg = str(err.value)
    assert str(bad) in msg and msg.startswith("dataset.root: ") and "\n" not in msg


@pytest.mark.parametrize("verify", [True, False])
def test_missing_root_or_directory_names_the_path(tmp_path: Path, verify: bool) -> None:
    with pytest.raises(DataError, match="not found; expected the extracted CIFAR-100 python archive"):
        DATASETS.get("cifar100")(_cfg(root=str(tmp_path / "nowhere"), verify_checksums=verify))
    with pytest.raises(DataError, match=r"cifar-100-python/(meta|train|test) not found"):
        DATASETS.get("cifar100")(_cfg(root=str(tmp_path), verify_checksums=verify))


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({}, "dataset.root"),
        ({"imbalance": 10.0}, "dataset.imbalance"),
        ({"download": True}, "dataset.download"),
    ],
)
def test_config_mistakes_name_the_field(small_root: Path, kw: dict[str, object], field: str) -> None:
    kw = {"root": str(small_root), **kw} if kw else {}
    with pytest.raises(ConfigError, match=field):
        DATASETS.get("cifar100")(_cfg(**kw))


def test_cifar100_lt_on_a_small_archive_is_deterministic(small_root: Path) -> None:
    build = DATASETS.get("cifar100_lt")
    a, b = (
        build(_cfg("cifar100_lt", root=str(small_root), imbalance=5.0)),
        build(_cfg("cifar100_lt", root=str(small_root), imbalance=5.0)),
    )
    assert torch.equal(a.train.images, b.train.images) and np.array_equal(a.train.labels, b.train.labels)
    counts = np.bincount(a.train.labels, minlength=100)
    assert counts[0] == 5 and counts[99] == 1
    assert len(a.val) == 200 and a.family == "cifar"
    with pytest.raises(ConfigError, match="imbalance"):
        build(_cfg("cifar100_lt", root=str(small_root)))  # default 100 leaves the tail empty at 5/class


def test_full_size_archive_gives_the_published_cifar100_lt_sizes(full_root: Path) -> None:
    """docs/experiments.md#datasets: imbalance 100 keeps 10847 images, 500 in class 0 and 5 in
    class 99 (50 and 10 are long_tail_counts facts, tested with it; each extra build here rereads
    150 MB)."""
    folder = full_root / "cifar-100-python"
    rows, labels = _rows(folder, "train")
    full = DATASETS.get("cifar100")(_cfg(root=str(full_root)))
    assert len(full.train) == 50000 and len(full.val) == 1000

    lt = DATASETS.get("cifar100_lt")(_cfg("cifar100_lt", root=str(full_root)))  # default imbalance 100
    counts = np.bincount(lt.train.labels, minlength=100)
    assert len(lt.train) == 10847 and counts[0] == 500 and counts[99] == 5
    keep = long_tail_indices(np.asarray(labels), 100, num_classes=100, seed=0)
    assert np.array_equal(lt.train.images.reshape(len(keep), -1).numpy(), rows[keep])
    assert np.array_equal(lt.train.labels, np.asarray(labels)[keep])
    assert np.array_equal(lt.train.images[:, 0, 0, 0].numpy(), lt.train.labels)  # labels match images
    assert torch.equal(lt.val.images, full.val.images)  # validation is the full test split


# Batch resize on the device (the paper's 32 → 224 upsampling, done once per batch).


@pytest.mark.parametrize("size", [224, 48, 16])
def test_resize_batch_equals_resizing_each_image(size: int) -> None:
    x = torch.rand(4, 3, 32, 32)
    expected = torch.stack([TF.resize(img, [size, size], antialias=True) for img in x])
    y = resize_batch(x, size)
    assert y.shape == (4, 3, size, size) and y.dtype == x.dtype
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_resize_batch_integer_and_low_precision_inputs() -> None:
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    y = resize_batch(x, 64)
    assert y.dtype == torch.uint8
    ref = resize_batch(x.float(), 64)
    assert (y.float() - ref).abs().max() <= 0.5
    assert resize_batch(torch.rand(2, 3, 32, 32, dtype=torch.bfloat16), 64).dtype == torch.bfloat16
    assert resize_batch(torch.rand(1, 3, 20, 30), (10, 60)).shape == (1, 3, 10, 60)


def test_flip_at_native_size_commutes_with_the_batch_resize() -> None:
    # Why augmenting at 32 then resizing is equivalent to resizing then augmenting, for flips.
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(resize_batch(x.flip(-1), 224), resize_batch(x, 224).flip(-1))


def test_resize_batch_same_size_and_bad_input() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert resize_batch(x, 32) is x
    with pytest.raises(ValueError, match="N×C×H×W"):
        resize_batch(x[0], 64)
    with pytest.raises(ValueError, match="positive"):
        resize_batch(x, 0)
