"""ImageNet (ILSVRC-2012) in torchvision's ImageFolder layout, and ImageNet-LT (Liu et al. 2019).

Images stay on disk and are decoded lazily, one per ``source[i]``, so a 1.28M-image split costs
only its list of paths in memory. Each decoded image has its *shorter side* resized to
``round(native_size · 256 / 224)`` (256 for the default 224) with the aspect ratio kept: the
standard ImageNet resize-then-crop geometry, so the augmentations can random-crop (training) or
center-crop (evaluation) a ``native_size`` square out of every image, however small the file.
Doing that resize at decode time lets JPEG decoding use PIL's reduced-scale ``draft`` mode,
which is several times faster for the typical 400-500 pixel photos than a full decode.

``native_size`` is ``dataset.image_size`` (default 224): ImageNet crops are taken at training
resolution directly, so the train loop never resizes ImageNet batches.

* ``imagenet``: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the folder names
  can be changed with ``train_split`` / ``val_split``). Class ``i`` is the ``i``-th wnid of the
  training folder in sorted order, as ImageFolder numbers them; the validation folder is read
  with the training classes, so a missing or extra validation class is an error, never a shift.
* ``imagenet_lt``: the published split files of the open long-tailed recognition benchmark,
  one ``relative/path label`` per line (``ImageNet_LT_train.txt``: 115846 images, 1280 to 5 per
  class; ``ImageNet_LT_test.txt``: the 50000 balanced ILSVRC validation images). Paths are
  relative to ``root``; the split files are ``train_split`` / ``val_split``, absolute or
  relative to ``root``, by default those two names in ``root``. ``num_classes`` is the largest
  label + 1 (1000 for the published files). The class sizes come from the split file, so
  ``imbalance`` does not apply.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kd_ray.config import DatasetConfig
from kd_ray.data.base import DATASETS, ImageDatasets
from kd_ray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_SIZE = 224
RESIZE_RATIO = 256 / 224  # shorter side before cropping, as in the standard 256 → 224 recipe
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
LT_TRAIN_SPLIT = "ImageNet_LT_train.txt"
LT_VAL_SPLIT = "ImageNet_LT_test.txt"
# Existence is checked for the first few images of a split only: enough to catch a wrong root
# at build time, without one stat per image of a 1.28M-image split on a network file system.
CHECK_FIRST = 16


def resize_side(native_size: int) -> int:
    """Shorter side of a decoded image for crops of ``native_size`` (256 for 224)."""
    return max(native_size, round(native_size * RESIZE_RATIO))


def decode_image(path: str | Path, side: int) -> torch.Tensor:
    """Decode an image file to uint8 RGB ``3×H×W`` with ``min(H, W) == side``, aspect kept.

    Grayscale and CMYK files (a few thousand in ImageNet) become RGB. PIL's bilinear resize
    filters over the whole footprint, so downscaling is antialiased.
    """
    with Image.open(path) as img:
        img.draft("RGB", (side, side))  # JPEG only: decode at the smallest scale still >= side
        rgb = img.convert("RGB")
    w, h = rgb.size
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    if size != rgb.size:
        rgb = rgb.resize(size, Image.BILINEAR)
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


class FileImageSource:
    """A split of image files, decoded (and resized, see :func:`decode_image`) on access.

    Picklable and light (paths and labels only), so DataLoader workers and Ray workers each
    open the files themselves.

    Args:
        paths: image file of each sample.
        labels: class of each sample.
        side: shorter side of the returned images.
        origin: where the list came from, for error messages (a folder, or a split file whose
            ``lines`` give each sample's line number).
        lines: line number of each sample in ``origin``, if it is a split file.
    """

    def __init__(
        self,
        paths: list[str],
        labels: np.ndarray | list[int],
        side: int,
        origin: str,
        lines: np.ndarray | None = None,
    ) -> None:
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.side = side
        self.origin = origin
        self.lines = lines
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, index: int) -> str:
        """Where sample ``index`` was listed: ``file:line`` or the scanned folder."""
        return f"{self.origin}:{self.lines[index]}" if self.lines is not None else self.origin

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            image = decode_image(path, self.side)
        except FileNotFoundError:
            raise DataError(f"{self.where(index)}: image {path} not found") from None
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DataError(f"{self.where(index)}: cannot decode image {path} ({err})") from None
        return image, int(self.labels[index])


def _root(cfg: DatasetConfig) -> Path:
    if not cfg.root:
        raise ConfigError(f"dataset.root: required for {cfg.name} (the directory of the images)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset.root: {root} not found; expected the {cfg.name} image directory")
    return root


def _reject_imbalance(cfg: DatasetConfig, why: str) -> None:
    if cfg.imbalance is not None:
        raise ConfigError(f"dataset.imbalance: {cfg.name} {why}; remove imbalance")


def _scan_folder(
    folder: Path, class_to_idx: dict[str, int] | None
) -> tuple[list[str], list[int], dict[str, int]]:
    """ImageFolder's scan of ``folder/<class>/*``; ``class_to_idx`` fixes the classes if given."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not folder.is_dir():
        raise DataError(
            f"dataset.root: {folder} not found; expected ImageFolder class directories <wnid>/*.JPEG"
        )
    try:
        if class_to_idx is None:
            _, class_to_idx = find_classes(str(folder))
        else:
            extra = sorted(
                e.name
                for e in folder.iterdir()
                if e.is_dir() and not e.name.startswith(".") and e.name not in class_to_idx
            )
            if extra:
                raise DataError(
                    f"dataset.root: {folder} has class directories absent from the training folder: "
                    f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"
                )
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        # torchvision names the empty or missing classes; keep its reason on one line.
        reason = str(err).split(". Supported extensions")[0].replace("\n", " ")
        raise DataError(f"dataset.root: {folder}: {reason}; expected <wnid>/*.JPEG image files") from None
    paths = [p for p, _ in samples]
    labels = [c for _, c in samples]
    return paths, labels, class_to_idx


def _check_first(source: FileImageSource, field: str) -> None:
    for i in range(min(CHECK_FIRST, len(source))):
        if not Path(source.paths[i]).is_file():
            raise DataError(f"dataset.{field}: {source.where(i)} names {source.paths[i]}, which is not found")


def _imagenet_datasets(
    train: FileImageSource, val: FileImageSource, num_classes: int, size: int, family: str
) -> ImageDatasets:
    return ImageDatasets(
        train=train,
        val=val,
        num_classes=num_classes,
        channels=3,
        native_size=size,
        mean=MEAN,
        std=STD,
        family=family,
    )


@DATASETS.register("imagenet")
def build_imagenet(cfg: DatasetConfig) -> ImageDatasets:
    """ImageNet from ``root/train`` and ``root/val`` class folders (``train_split`` / ``val_split`` rename them).

    Reads ``root``, ``image_size`` (crop side, default 224), ``train_split``, ``val_split``.
    """
    _reject_imbalance(cfg, "is balanced; use imagenet_lt for the long-tailed benchmark")
    root = _root(cfg)
    size = cfg.image_size or DEFAULT_SIZE
    side = resize_side(size)
    train_dir = root / (cfg.train_split or "train")
    val_dir = root / (cfg.val_split or "val")
    train_paths, train_labels, classes = _scan_folder(train_dir, None)
    val_paths, val_labels, _ = _scan_folder(val_dir, classes)
    log.info(
        "ImageNet: %d classes, %d train and %d val images", len(classes), len(train_paths), len(val_paths)
    )
    train = FileImageSource(train_paths, train_labels, side, str(train_dir))
    val = FileImageSource(val_paths, val_labels, side, str(val_dir))
    return _imagenet_datasets(train, val, len(classes), size, "imagenet")


def read_split_file(path: Path, root: Path, field: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse an ImageNet-LT split file: one ``relative/path label`` per line, blank lines skipped.

    Returns:
        absolute image paths, labels and the 1-based line number of each entry.

    Raises:
        DataError: the file is missing or empty, or a line is not ``path label`` with a label >= 0.
    """
    if not path.is_file():
        raise DataError(
            f"dataset.{field}: {path} not found; expected an ImageNet-LT split file ('relative/path label' per line)"
        )
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit():
                shown = text if len(text) <= 80 else text[:77] + "..."
                raise DataError(
                    f"dataset.{field}: {path}:{number}: expected 'relative/path label', got {shown!r}"
                )
            paths.append(str(root / parts[0]))
            labels.append(int(parts[1]))
            lines.append(number)
    if not paths:
        raise DataError(f"dataset.{field}: {path} lists no images")
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64)


def _split_source(cfg: DatasetConfig, root: Path, field: str, default: str, side: int) -> FileImageSource:
    given = getattr(cfg, field)
    path = Path(given).expanduser() if given else Path(default)
    path = path if path.is_absolute() else root / path
    paths, labels, lines = read_split_file(path, root, field)
    source = FileImageSource(paths, labels, side, str(path), lines)
    _check_first(source, field)
    return source


@DATASETS.register("imagenet_lt")
def build_imagenet_lt(cfg: DatasetConfig) -> ImageDatasets:
    """ImageNet-LT from its split files (see the module docstring).

    Reads ``root`` (images), ``train_split``, ``val_split``, ``image_size`` (default 224).
    """
    _reject_imbalance(cfg, "takes its class sizes from the train_split file")
    root = _root(cfg)
    size = cfg.image_size or DEFAULT_SIZE
    side = resize_side(size)
    train = _split_source(cfg, root, "train_split", LT_TRAIN_SPLIT, side)
    val = _split_source(cfg, root, "val_split", LT_VAL_SPLIT, side)
    num_classes = int(max(train.labels.max(), val.labels.max())) + 1
    absent = num_classes - len(np.unique(train.labels))
    if absent:
        log.warning(
            "ImageNet-LT: %d of %d classes have no training image in %s", absent, num_classes, train.origin
        )
    log.info("ImageNet-LT: %d classes, %d train and %d val images", num_classes, len(train), len(val))
    return _imagenet_datasets(train, val, num_classes, size, "imagenet_lt")
