"""ImageNet (ImageFolder) and ImageNet-LT (split files) loaders on tiny JPEGs in the real layouts."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_datasets import label_red, write_image_folder, write_jpeg, write_split_file
from torchvision.transforms import v2

from kd_ray.config import DatasetConfig
from kd_ray.data import imagenet
from kd_ray.data.base import DATASETS
from kd_ray.data.streams import build_loaders
from kd_ray.errors import ConfigError, DataError

WNIDS = ["n03000134", "n01440764", "n02102040"]  # deliberately unsorted on disk


def _cfg(name: str, root: Path, **kw: object) -> DatasetConfig:
    return DatasetConfig(name=name, root=str(root), **kw)


def _assert_label_in_image(image: torch.Tensor, label: int) -> None:
    assert abs(image[0].float().mean().item() - label_red(label)) < 4


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    write_image_folder(tmp_path / "train", WNIDS, 3, seed=0)
    write_image_folder(tmp_path / "val", WNIDS, 2, seed=10)
    return tmp_path


def test_imagenet_reads_the_image_folder_layout(folder_root: Path) -> None:
    ds = DATASETS.get("imagenet")(_cfg("imagenet", folder_root, image_size=32))
    assert (ds.num_classes, ds.channels, ds.native_size, ds.family) == (3, 3, 32, "imagenet")
    assert ds.mean == imagenet.MEAN and ds.std == imagenet.STD
    assert len(ds.train) == 9 and len(ds.val) == 6
    # Classes are numbered in sorted wnid order, as ImageFolder numbers them.
    order = {w: i for i, w in enumerate(sorted(WNIDS))}
    for source in (ds.train, ds.val):
        for i in range(len(source)):
            image, label = source[i]
            assert label == order[Path(source.paths[i]).parent.name]
            assert image.dtype == torch.uint8 and image.shape[0] == 3
            assert min(image.shape[1:]) == imagenet.resize_side(32) == 37
            _assert_label_in_image(image, label)


def test_default_size_resizes_the_shorter_side_to_256_keeping_the_aspect(folder_root: Path) -> None:
    ds = DATASETS.get("imagenet")(_cfg("imagenet", folder_root))
    assert ds.native_size == 224
    image, _ = ds.train[0]  # written 40×30 (width × height)
    assert tuple(image.shape) == (3, 256, 341)


def test_grayscale_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "gray.JPEG", 1, (50, 40), mode="L")
    image = imagenet.decode_image(path, 20)
    assert tuple(image.shape) == (3, 20, 25) and image.dtype == torch.uint8


def test_image_sources_pickle_without_images(folder_root: Path) -> None:
    ds = DATASETS.get("imagenet")(_cfg("imagenet", folder_root, image_size=32))
    clone = pickle.loads(pickle.dumps(ds.train))
    assert torch.equal(clone[4][0], ds.train[4][0]) and np.array_equal(clone.labels, ds.train.labels)


def test_folder_names_can_be_changed(folder_root: Path) -> None:
    shutil.move(folder_root / "val", folder_root / "validation")
    ds = DATASETS.get("imagenet")(_cfg("imagenet", folder_root, image_size=32, val_split="validation"))
    assert len(ds.val) == 6


@pytest.mark.parametrize(
    "how", ["no_root", "no_train", "no_val", "empty_class", "missing_val_class", "extra_val_class"]
)
def test_a_broken_image_folder_is_one_clear_data_error(folder_root: Path, how: str) -> None:
    root, named = folder_root, None
    if how == "no_root":
        root = named = folder_root / "nowhere"
    elif how == "no_train":
        shutil.rmtree(folder_root / "train")
        named = folder_root / "train"
    elif how == "no_val":
        shutil.rmtree(folder_root / "val")
        named = folder_root / "val"
    elif how == "empty_class":
        (folder_root / "train" / "n09999999").mkdir()
        named = "n09999999"
    elif how == "missing_val_class":
        shutil.rmtree(folder_root / "val" / WNIDS[0])
        named = WNIDS[0]
    else:
        (folder_root / "val" / "n09999999").mkdir()
        named = "n09999999"
    with pytest.raises(DataError) as err:
        DATASETS.get("imagenet")(_cfg("imagenet", root, image_size=32))
    msg = str(err.value)
    assert str(named) in msg and msg.startswith("dataset.root: ") and "\n" not in msg


def test_undecodable_image_is_a_data_error_naming_it(folder_root: Path) -> None:
    bad = folder_root / "train" / WNIDS[1] / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    ds = DATASETS.get("imagenet")(_cfg("imagenet", folder_root, image_size=32))
    index = ds.train.paths.index(str(bad))
    with pytest.raises(DataError, match="cannot decode image .*broken.JPEG"):
        ds.train[index]


# ImageNet-LT


@pytest.fixture
def lt_root(tmp_path: Path) -> Path:
    """Images in the ImageNet layout plus split files in the published format (labels 0..3)."""
    counts = [6, 3, 2, 1]  # a long tail
    train, val = [], []
    for label, n in enumerate(counts):
        wnid = f"n0{label}000000"
        for i in range(n):
            rel = f"train/{wnid}/{wnid}_{i}.JPEG"
            write_jpeg(tmp_path / rel, label, (36, 32), seed=i)
            train.append((rel, label))
        rel = f"val/ILSVRC2012_val_0000{label}.JPEG"
        write_jpeg(tmp_path / rel, label, (32, 40), seed=label)
        val.append((rel, label))
    write_split_file(tmp_path / "ImageNet_LT_train.txt", train)
    write_split_file(tmp_path / "ImageNet_LT_test.txt", val)
    (tmp_path / "ImageNet_LT_train.txt").write_text((tmp_path / "ImageNet_LT_train.txt").read_text() + "\n\n")
    return tmp_path


def test_imagenet_lt_reads_the_split_files(lt_root: Path) -> None:
    ds = DATASETS.get("imagenet_lt")(_cfg("imagenet_lt", lt_root, image_size=24))
    assert (ds.num_classes, ds.native_size, ds.family) == (4, 24, "imagenet_lt")
    assert np.bincount(ds.train.labels).tolist() == [6, 3, 2, 1] and ds.val.labels.tolist() == [0, 1, 2, 3]
    for source in (ds.train, ds.val):
        for i in range(len(source)):
            image, label = source[i]
            assert min(image.shape[1:]) == imagenet.resize_side(24)
            _assert_label_in_image(image, label)


def test_split_paths_may_be_relative_to_root_or_absolute(lt_root: Path) -> None:
    (lt_root / "splits").mkdir()
    shutil.move(lt_root / "ImageNet_LT_train.txt", lt_root / "splits" / "train.txt")
    ds = DATASETS.get("imagenet_lt")(
        _cfg(
            "imagenet_lt",
            lt_root,
            train_split="splits/train.txt",
            val_split=str(lt_root / "ImageNet_LT_test.txt"),
        )
    )
    assert len(ds.train) == 12 and len(ds.val) == 4


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("train/n00000000/x.JPEG", "train_split"),
        ("train/n00000000/x.JPEG seven", "train_split"),
        ("a.JPEG -1", "val_split"),
    ],
)
def test_a_malformed_split_line_names_file_and_line(lt_root: Path, line: str, field: str) -> None:
    split = lt_root / ("ImageNet_LT_train.txt" if field == "train_split" else "ImageNet_LT_test.txt")
    lines = split.read_text().splitlines()
    lines.insert(2, line)
    split.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        DATASETS.get("imagenet_lt")(_cfg("imagenet_lt", lt_root))
    msg = str(err.value)
    assert msg.startswith(f"dataset.{field}: {split}:3: expected 'relative/path label'") and "\n" not in msg


def test_missing_split_file_or_root(lt_root: Path) -> None:
    with pytest.raises(
        DataError, match=r"dataset.val_split: .*nope.txt not found; expected an ImageNet-LT split file"
    ):
        DATASETS.get("imagenet_lt")(_cfg("imagenet_lt", lt_root, val_split="nope.txt"))
    with pytest.raises(DataError, match="dataset.root: .*nowhere not found"):
        DATASETS.get("imagenet_lt")(_cfg("imagenet_lt", lt_root / "nowhere"))
    (lt_root / "ImageNet_LT_test.txt").write_text("\n")
    with pytest.raises(DataError, match="lists no images"):
        DATASETS.get("imagenet_lt")(_cfg("imagenet_lt", lt_root))


def test_a_split_naming_a_missing_image_fails_at_build_or_on_access(lt_root: Path) -> None:
    split = lt_root / "ImageNet_LT_train.txt"
    split.write_text(split.read_text().replace("n01000000_0.JPEG", "gone.JPEG"))  # line 7
    with pytest.raises(
        DataError,
        match=r"dataset.train_split: .*ImageNet_LT_train.txt:7 names .*gone.JPEG, which is not found",
    ):
        DATASETS.get("imagenet_lt")(_cfg("imagenet_lt", lt_root))
    # Beyond the first CHECK_FIRST entries existence is only checked when the image is read.
    lines = split.read_text().splitlines()
    split.write_text("\n".join(lines[7:] * 3 + lines[:7]) + "\n")
    ds = DATASETS.get("imagenet_lt")(_cfg("imagenet_lt", lt_root))
    index = next(i for i, p in enumerate(ds.train.paths) if p.endswith("gone.JPEG"))
    with pytest.raises(
        DataError, match=rf"ImageNet_LT_train.txt:{ds.train.lines[index]}: image .*gone.JPEG not found"
    ):
        ds.train[index]


@pytest.mark.parametrize("name", ["imagenet", "imagenet_lt"])
def test_imbalance_and_root_are_config_errors(lt_root: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="dataset.imbalance"):
        DATASETS.get(name)(_cfg(name, lt_root, imbalance=10.0))
    with pytest.raises(ConfigError, match="dataset.root: required"):
        DATASETS.get(name)(DatasetConfig(name=name))


@pytest.mark.parametrize("aug", ["w", "s"])
def test_decoded_images_of_different_sizes_are_augmented_as_one_batch(folder_root: Path, aug: str) -> None:
    """Files decode to different sizes (40×30 and 30×50 here); each is cropped on its own, then the
    batch is augmented whole, and a sample's pixels do not depend on the batch it is drawn in."""
    ds = DATASETS.get("imagenet")(_cfg("imagenet", folder_root, image_size=32))
    assert len({tuple(ds.train[i][0].shape) for i in range(len(ds.train))}) == 2
    loaders = build_loaders(ds, student_aug=aug, global_batch_size=4, stream_seed=3)
    loaders.set_epoch(1)
    first = loaders.train.batch_sampler.global_batches()[0].tolist()
    x, y = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert y.tolist() == [int(ds.train.labels[i]) for i in first]
    for position, index in enumerate(first):
        alone, label = loaders.train.dataset[index]
        assert torch.equal(alone, x[position]) and label == y[position]
    # Clean validation: the 256 → 224 transform at this size, image by image.
    clean = v2.Compose(
        [v2.Resize(37), v2.CenterCrop(32), v2.ToDtype(torch.float32, scale=True),
         v2.Normalize(list(imagenet.MEAN), list(imagenet.STD))]
    )  # fmt: skip
    val = torch.cat([batch for batch, _ in loaders.val])
    assert torch.equal(val, torch.stack([clean(ds.val[i][0]) for i in range(len(ds.val))]))
