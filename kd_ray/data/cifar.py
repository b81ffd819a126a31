"""CIFAR-100 and its long-tailed variant CIFAR-100-LT (Cui et al. 2019), as used by the paper.

Both read Krizhevsky's "python version" archive: a ``cifar-100-python`` directory holding the
pickles ``train`` (50000 images), ``test`` (10000) and ``meta``. ``dataset.root`` is the
directory that contains ``cifar-100-python`` (torchvision's convention) or that directory
itself; a ``cifar-100-python.tar.gz`` found in the root and not yet extracted is extracted first.

Two readers, chosen by ``dataset.verify_checksums``:

* ``true`` (default): :class:`torchvision.datasets.CIFAR100`, which checks each file against
  the official MD5 digest and can download the archive (``download: true``).
* ``false``: a small reader of the same pickles without the digest check, for archives that are
  re-packed, truncated on purpose, or written by tests (a fake archive never matches the
  official digests). It reads exactly what torchvision reads, so both give identical tensors.

Both give the images as one uint8 ``(N, 3, 32, 32)`` tensor (the pickle rows are already
channel-major, so no copy through PIL). CIFAR-100-LT keeps a deterministic long-tailed subset
of the training split (:func:`kd_ray.data.long_tail.long_tail_indices`, default imbalance 100:
10847 images, 500 in class 0 and 5 in class 99) and validates on the full, balanced test split,
as Cui et al. and the paper do.
"""

from __future__ import annotations

import logging
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_ray.config import DatasetConfig
from kd_ray.data.base import DATASETS, ImageDatasets, TensorImageSource
from kd_ray.data.long_tail import long_tail_indices
from kd_ray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BASE_FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"
NUM_CLASSES = 100
NATIVE_SIZE = 32
# Per-channel statistics of the CIFAR-100 training images, on [0, 1] pixels.
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
DEFAULT_IMBALANCE = 100.0

_HINT = "expected the extracted CIFAR-100 python archive (set download: true where the network allows)"


def _archive_dir(root: str | None) -> Path:
    """The ``cifar-100-python`` directory under ``root``, extracting the tar.gz if only it is there."""
    if not root:
        raise ConfigError(
            "dataset.root: required for cifar100 datasets (the directory holding cifar-100-python)"
        )
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"dataset.root: {base} not found; {_HINT}")
    if base.name == BASE_FOLDER and (base / "train").exists():
        return base
    folder = base / BASE_FOLDER
    archive = base / ARCHIVE
    if not folder.is_dir() and archive.is_file():
        log.info("extracting %s", archive)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # The "data" filter refuses absolute paths and links out of the root (Pythons
                # without it predate the CVE fix and extract as before).
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(base, **safe)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"dataset.root: cannot extract {archive} ({err}); {_HINT}") from None
    return folder


def _to_str_keys(entry: Any, path: Path) -> dict[str, Any]:
    # The official pickles are Python 2 pickles: latin1 decoding gives str keys, while files
    # re-pickled after loading with encoding="bytes" (Krizhevsky's own snippet) have bytes keys.
    if not isinstance(entry, dict):
        raise DataError(
            f"dataset.root: {path} holds a {type(entry).__name__}, not a CIFAR pickle dict; {_HINT}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _load_pickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"dataset.root: {path} not found; {_HINT}")
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # unpickling corrupt bytes can raise almost any exception type
        raise DataError(
            f"dataset.root: {path} is not a readable CIFAR pickle ({type(err).__name__}: {err})"
        ) from None
    return _to_str_keys(entry, path)


def read_cifar100_split(folder: Path, train: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Read one split of an extracted ``cifar-100-python`` directory without digest checks.

    Args:
        folder: the ``cifar-100-python`` directory.
        train: the ``train`` pickle if true, else ``test``.

    Returns:
        uint8 images ``(N, 3, 32, 32)`` and int64 fine labels ``(N,)``.

    Raises:
        DataError: a file is missing, or not a pickle of the CIFAR-100 layout.
    """
    meta_path = folder / "meta"
    meta = _load_pickle(meta_path)
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"dataset.root: {meta_path} has no list of {NUM_CLASSES} 'fine_label_names'")
    path = folder / ("train" if train else "test")
    entry = _load_pickle(path)
    missing = [k for k in ("data", "fine_labels") if k not in entry]
    if missing:
        raise DataError(f"dataset.root: {path} lacks the key(s) {missing}; {_HINT}")
    data = entry["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
    ):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"dataset.root: {path}: 'data' must be uint8 rows of 3072 pixels, got {what}")
    labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"dataset.root: {path}: {len(data)} images but {labels.size} 'fine_labels'")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"dataset.root: {path}: 'fine_labels' outside 0..{NUM_CLASSES - 1}")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return images, labels


def _read_torchvision(folder: Path, train: bool, download: bool) -> tuple[torch.Tensor, np.ndarray]:
    from torchvision.datasets import CIFAR100

    try:
        ds = CIFAR100(str(folder.parent), train=train, download=download)
    except RuntimeError as err:
        present = [n for n in ("train", "test", "meta") if (folder / n).is_file()]
        if len(present) < 3:
            missing = next(n for n in ("train", "test", "meta") if n not in present)
            raise DataError(f"dataset.root: {folder / missing} not found; {_HINT}") from None
        raise DataError(
            f"dataset.root: {folder} failed torchvision's MD5 digest check against the official "
            f"CIFAR-100 files ({err}); set verify_checksums: false to read these files without it"
        ) from None
    except OSError as err:
        raise DataError(
            f"dataset.root: cannot download or read CIFAR-100 into {folder.parent} ({err})"
        ) from None
    # torchvision keeps HWC rows for PIL; the pipeline wants CHW tensors.
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return images, np.asarray(ds.targets, dtype=np.int64)


def load_cifar100(cfg: DatasetConfig, train: bool) -> TensorImageSource:
    """One CIFAR-100 split as a :class:`TensorImageSource`, by the reader ``cfg`` selects."""
    folder = _archive_dir(cfg.root)
    if cfg.verify_checksums:
        images, labels = _read_torchvision(folder, train, cfg.download)
    else:
        if cfg.download:
            raise ConfigError(
                "dataset.download: true needs verify_checksums: true (a download is always checked)"
            )
        images, labels = read_cifar100_split(folder, train)
    log.debug("CIFAR-100 %s: %d images from %s", "train" if train else "test", len(labels), folder)
    return TensorImageSource(images, labels)


def _datasets(train: TensorImageSource, val: TensorImageSource) -> ImageDatasets:
    return ImageDatasets(
        train=train,
        val=val,
        num_classes=NUM_CLASSES,
        channels=3,
        native_size=NATIVE_SIZE,
        mean=MEAN,
        std=STD,
        family="cifar",
    )


@DATASETS.register("cifar100")
def build_cifar100(cfg: DatasetConfig) -> ImageDatasets:
    """CIFAR-100: 50000 training and 10000 validation (the official test split) 32×32 images.

    Reads ``root``, ``download``, ``verify_checksums``. ``imbalance`` belongs to ``cifar100_lt``.
    """
    if cfg.imbalance is not None:
        raise ConfigError(
            "dataset.imbalance: cifar100 is balanced; use the cifar100_lt dataset for imbalance"
        )
    return _datasets(load_cifar100(cfg, train=True), load_cifar100(cfg, train=False))


@DATASETS.register("cifar100_lt")
def build_cifar100_lt(cfg: DatasetConfig) -> ImageDatasets:
    """CIFAR-100-LT: an exponentially long-tailed subset of the training split.

    Class ``i`` keeps ``floor(500 · imbalance^(-i/99))`` images (imbalance defaults to 100;
    10, 50 and 100 are the usual benchmarks, any value ≥ 1 works), chosen as Cao et al.'s
    LDAM-DRW code chooses them (seed 0), so the subset is the literature's and the same for
    every trial and worker. Validation is the full, balanced test split, so accuracies compare
    with balanced CIFAR-100.
    """
    imbalance = DEFAULT_IMBALANCE if cfg.imbalance is None else float(cfg.imbalance)
    train = load_cifar100(cfg, train=True)
    keep = long_tail_indices(train.labels, imbalance, num_classes=NUM_CLASSES, seed=0)
    log.info("CIFAR-100-LT imbalance %g keeps %d of %d training images", imbalance, len(keep), len(train))
    return _datasets(train.subset(keep), load_cifar100(cfg, train=False))
