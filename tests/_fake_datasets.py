"""Writers of small fake datasets in the exact on-disk formats of the real ones.

The real datasets cannot be downloaded where the tests run, so the real loaders are tested on
files these helpers write: the CIFAR-100 python archive (Python 2 pickles, as Krizhevsky
published them), torchvision's ImageFolder layout of JPEGs, and ImageNet-LT split files.

Every fake image carries its label (a CIFAR image in its first pixel, a JPEG as a flat red
level), so a test can check that labels still match their images after subsetting or reordering.
"""

from __future__ import annotations

import pickle
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``str`` and ``bytes`` as Python 2 ``str`` (BINSTRING), like the official pickles.

    Loaded with ``encoding="latin1"`` (torchvision) they come back as ``str``, with
    ``encoding="bytes"`` (Krizhevsky's snippet) as ``bytes``, exactly as the real files do.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def dump_py2_pickle(obj: Any, path: Path) -> None:
    """Pickle ``obj`` as Python 2's cPickle (protocol 2) would have."""
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def fake_cifar_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 rows of 3072 pixels (R plane, G plane, B plane), the first pixel set to the label."""
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    data[:, 0] = labels
    return data


def write_cifar100_python(
    root: Path,
    train_labels: Sequence[int] | np.ndarray,
    test_labels: Sequence[int] | np.ndarray,
    *,
    seed: int = 0,
) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` in the official format; returns the dir."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, labels in (("train", train_labels), ("test", test_labels)):
        labels = np.asarray(labels, dtype=np.int64)
        entry = {
            "filenames": [f"fake_{name}_{i}.png" for i in range(len(labels))],
            "batch_label": f"{name}ing batch 1 of 1",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": fake_cifar_images(labels, rng),
        }
        dump_py2_pickle(entry, folder / name)
    meta = {
        "fine_label_names": [f"fine_{i}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i}" for i in range(20)],
    }
    dump_py2_pickle(meta, folder / "meta")
    return folder


def balanced_labels(per_class: int, num_classes: int = 100, *, seed: int = 0) -> np.ndarray:
    """``per_class`` labels of each class, shuffled as in the real files."""
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def pack_targz(folder: Path, archive: Path) -> Path:
    """Pack ``folder`` (with its own name as the top entry) into a ``.tar.gz``, as published."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def label_red(label: int) -> int:
    """The red level that encodes ``label`` in a fake JPEG (distinct for up to 8 classes)."""
    return 16 + 32 * (label % 8)


def write_jpeg(path: Path, label: int, size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Path:
    """A JPEG of ``size`` (width, height) whose red channel is flat at :func:`label_red`.

    JPEG is lossy and subsamples colour, so the label is a flat colour (which survives
    compression and resizing to within a few levels) rather than a single pixel; green carries
    mild seeded noise (strong noise would leak into red through chroma subsampling) so images
    differ. ``mode="L"`` writes a grayscale JPEG, as some ImageNet files are.
    """
    rng = np.random.default_rng(seed)
    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 0] = label_red(label)
    pixels[..., 1] = rng.integers(112, 144, size=(size[1], size[0]), dtype=np.uint8)
    pixels[..., 2] = 128
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format="JPEG", quality=95)
    return path


def write_image_folder(
    root: Path,
    wnids: Sequence[str],
    per_class: int,
    *,
    sizes: Sequence[tuple[int, int]] = ((40, 30), (30, 50)),
    seed: int = 0,
) -> list[tuple[str, int]]:
    """``root/<wnid>/<wnid>_<i>.JPEG`` for each wnid; returns (relative path, class) pairs.

    The class index is the wnid's rank in sorted order, as ImageFolder assigns it.
    """
    order = {w: i for i, w in enumerate(sorted(wnids))}
    written = []
    for wnid in wnids:
        for i in range(per_class):
            rel = f"{wnid}/{wnid}_{i}.JPEG"
            write_jpeg(root / rel, order[wnid], sizes[i % len(sizes)], seed=seed + i)
            written.append((rel, order[wnid]))
    return written


def write_split_file(path: Path, entries: Sequence[tuple[str, int]]) -> Path:
    """An ImageNet-LT split file: one ``relative/path label`` per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel} {label}\n" for rel, label in entries))
    return path
