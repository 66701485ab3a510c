"""Image data for training and evaluation alike: from a folder labelled the originals' way or from a `datasets`
dataset, checked, preprocessed as the originals do, in a deterministic per-process order that a resumed run
reproduces.

- [`images_from_folder`]: every jpg/jpeg/png/gif/webp file under a folder (recursively, each real folder once: see
  [`list_image_files`] for folder links), labelled by
  [`folder_class_names`]: the originals' file-name prefix before the first underscore (``n01440764_10026.JPEG`` is
  class ``n01440764``, as guided-diffusion's ``load_data`` does) or the class subfolder (``dog/001.png``, the layout
  of ``imagefolder`` and diffusers' examples); classes numbered in sorted order.
- [`images_from_dataset`]: a Hub dataset id, a local dataset folder (e.g. an ``imagefolder``) or a
  ``save_to_disk`` folder, with an image column and an optional label column (class label, integer or string).
- [`TrainingImageDataset`]: an image (RGB) resized and centre-cropped as the originals do (BOX halving while the
  short side is at least twice the target, then a bicubic resize of the short side, then a centre crop), or
  randomly cropped (the classifier's augmentation), optionally flipped; values in [-1, 1]. Its random draws depend
  only on (seed, epoch, index), so they are the same whatever the number of processes or workers.
- [`EpochShuffledBatchSampler`]: an endless stream of this process's batches, a fresh permutation per epoch; it
  can start at any micro-batch, which is how a resumed run continues the data order exactly.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "LABEL_SOURCES",
    "EpochShuffledBatchSampler",
    "LabelledImages",
    "TrainingImageDataset",
    "center_crop_array",
    "check_global_batch",
    "class_name_from_filename",
    "find_unreadable_images",
    "folder_class_names",
    "images_from_dataset",
    "images_from_folder",
    "list_image_files",
    "random_crop_array",
    "split_held_out",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp")
# Where an image folder's labels come from (--label_from); see folder_class_names.
LABEL_SOURCES = ("auto", "folder", "filename")


@dataclass
class LabelledImages:
    """Images as a `datasets.Dataset` with an ``image`` column (undecoded: ``{"path", "bytes"}``) and, when labelled,
    an int64 ``label`` column.

    Attributes:
        dataset (`datasets.Dataset`): the rows.
        id2label (`dict[int, str]`, *optional*): class names by id, for labelled images.
        source (`str`): where the images came from, for messages and the model card.
        hub_dataset_id (`str`, *optional*): the Hub dataset id, when they came from the Hub.
        named (`bool`, defaults to True): whether the classes have names (False for a bare integer label column,
            whose ids are their own names).
    """

    dataset: Any
    id2label: dict[int, str] | None
    source: str
    hub_dataset_id: str | None = None
    named: bool = True

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_classes(self) -> int | None:
        return len(self.id2label) if self.id2label is not None else None

    def select(self, indices: Sequence[int]) -> LabelledImages:
        """The rows at ``indices`` (same classes)."""
        return LabelledImages(self.dataset.select(list(indices)), self.id2label, self.source, self.hub_dataset_id, self.named)

    def relabelled(self, label_map: dict[int, int], id2label: dict[int, str]) -> LabelledImages:
        """The same rows with label ``k`` replaced by ``label_map[k]``, numbered by ``id2label`` (a model's classes)."""
        import datasets

        labels = [label_map[label] for label in self.dataset["label"]]
        # A new column beside the old table (no copy of the images, nothing written next to the user's dataset).
        dataset = self.dataset.remove_columns("label").add_column("label", labels, feature=datasets.Value("int64"))
        return LabelledImages(dataset, dict(id2label), self.source, self.hub_dataset_id, self.named)


# ---------------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------------


def _within(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_image_files(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursively, sorted by path), by extension as the originals list them.

    Each real folder is read once, at its own place: a link to a folder inside ``folder`` or above it (a loop such as
    ``cat/loop -> ..``, or a second name for a class folder) is not followed, since it would read the same images
    again under another name and label; a link to a folder elsewhere is followed, unless that folder was read
    already (a loop there, or a second link to it). The links not followed are named in one logged warning.
    """
    root = os.path.realpath(folder)
    found: list[str] = []
    not_followed: list[str] = []
    read: set[tuple[int, int]] = set()  # (device, inode) of each folder read

    def visit(directory: str) -> None:
        status = os.stat(directory)
        read.add((status.st_dev, status.st_ino))
        for entry in sorted(os.listdir(directory)):
            path = os.path.join(directory, entry)
            if os.path.isdir(path):
                target = os.path.realpath(path)
                status = os.stat(path)
                loop = os.path.islink(path) and (_within(target, root) or _within(root, target))
                if loop or (status.st_dev, status.st_ino) in read:
                    not_followed.append(path)
                else:
                    visit(path)
            elif "." in entry and entry.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                found.append(path)

    visit(os.fspath(folder))
    if not_followed:
        example = not_followed[0]
        logger.warning(
            f"not following {len(not_followed)} folder link(s) under {os.fspath(folder)!r} that lead to a folder read "
            f"already, inside it or above it, e.g. {os.path.relpath(example, folder)!r} -> {os.path.realpath(example)!r}: each "
            "image is read once, at its own place"
        )
    return found


def class_name_from_filename(path: str | os.PathLike) -> str:
    """The originals' class of an image file: its name's prefix before the first underscore."""
    return os.path.basename(path).split("_")[0]


def folder_class_names(folder: str | os.PathLike, files: Sequence[str], label_from: str = "auto", check_agreement: bool = True) -> list[str]:
    """The class of each image file under ``folder``.

    - ``"filename"``: the originals' file-name prefix before the first underscore (the whole name without one).
    - ``"folder"``: the first-level subfolder the file is in (``folder/dog/x.png`` and ``folder/dog/a/y.png`` are
      ``dog``); an image at the folder's top level is an error.
    - ``"auto"``: ``"filename"`` when any image lies at the folder's top level, else ``"folder"``; then, with
      ``check_agreement``, a file whose name has an underscore prefix other than its subfolder's name stops the
      run, naming both (``--label_from`` says which to use).

    Raises:
        ValueError: a top-level image with ``"folder"``; disagreeing prefixes and subfolders with ``"auto"``.
    """
    if label_from not in LABEL_SOURCES:
        raise ValueError(f"expected --label_from among {LABEL_SOURCES}, got {label_from!r}")
    folder = str(folder)
    relative = [os.path.relpath(path, folder) for path in files]
    top_level = [path for path in relative if os.sep not in path]
    prefixes = [class_name_from_filename(path) for path in files]
    if label_from == "filename" or (label_from == "auto" and top_level):
        return prefixes
    if top_level:
        raise ValueError(
            f"expected every image in a class subfolder of {folder!r} (--label_from folder), got {len(top_level)} at its top "
            f"level, e.g. {top_level[0]!r}"
        )
    subfolders = [path.split(os.sep, 1)[0] for path in relative]
    if label_from == "auto" and check_agreement:
        conflicts = [
            (path, subfolder, prefix)
            for path, subfolder, prefix in zip(relative, subfolders, prefixes)
            if "_" in os.path.basename(path) and prefix != subfolder
        ]
        if conflicts:
            path, subfolder, prefix = conflicts[0]
            raise ValueError(
                f"expected file-name prefixes that agree with the class subfolders of {folder!r}, got {len(conflicts)} that "
                f"disagree, e.g. {path!r}: subfolder {subfolder!r}, file-name prefix {prefix!r} "
                "(pass --label_from folder or --label_from filename)"
            )
    return subfolders


def images_from_folder(
    folder: str | os.PathLike, class_names: Sequence[str] | None = None, *, label_from: str = "auto", check_agreement: bool = True
) -> LabelledImages:
    """Every image under ``folder``, labelled by [`folder_class_names`].

    Args:
        folder: the image folder (searched recursively).
        class_names (sequence of `str`, *optional*): the classes to number the labels by (a validation folder takes
            the training folder's); by default the sorted distinct class names.
        label_from (`str`, defaults to ``"auto"``): ``"auto"``, ``"folder"`` or ``"filename"``.
        check_agreement (`bool`, defaults to True): with ``"auto"``, refuse prefixes that disagree with subfolders
            (off when the labels are not used).

    Raises:
        ValueError: the folder is missing or holds no images, the labels are ambiguous, or (with ``class_names``)
            an image's class is unknown.
    """
    import datasets

    folder = str(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"expected an image folder, got {folder!r} (no such folder)")
    files = list_image_files(folder)
    if not files:
        raise ValueError(f"expected image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}, found none")
    names = folder_class_names(folder, files, label_from, check_agreement)
    classes = sorted(set(names)) if class_names is None else list(class_names)
    class_ids = {name: index for index, name in enumerate(classes)}
    unknown = sorted(set(names) - set(class_ids))
    if unknown:
        raise ValueError(f"expected the images under {folder!r} to have the training classes, got unknown classes {unknown[:5]}")
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")})
    dataset = datasets.Dataset.from_dict({"image": files, "label": [class_ids[name] for name in names]}, features=features)
    return LabelledImages(dataset, dict(enumerate(classes)), f"image folder {folder}")


def _is_saved_dataset(path: str) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    folder = Path(path)
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def images_from_dataset(
    name: str,
    *,
    config_name: str | None = None,
    split: str = "train",
    image_column: str = "image",
    label_column: str | None = "label",
    require_labels: bool = False,
    cache_dir: str | None = None,
) -> LabelledImages:
    """Images from a `datasets` dataset: a Hub id, a local dataset folder or a ``save_to_disk`` folder.

    Args:
        name (`str`): the dataset.
        config_name (`str`, *optional*): the dataset's configuration.
        split (`str`, defaults to ``"train"``): the split to take when the dataset has several.
        image_column (`str`, defaults to ``"image"``): the image column (an ``Image`` feature or file paths).
        label_column (`str`, *optional*, defaults to ``"label"``): the label column: a ``ClassLabel``, integer ids
            or class names (numbered in sorted order). Ignored when absent unless ``require_labels``.
        require_labels (`bool`, defaults to False): raise when the label column is missing.
        cache_dir (`str`, *optional*): the `datasets` cache.
    """
    import datasets

    if os.path.isdir(name) and _is_saved_dataset(name):
        loaded = datasets.load_from_disk(name)
    else:
        loaded = datasets.load_dataset(name, config_name, cache_dir=cache_dir)
    if isinstance(loaded, (datasets.DatasetDict, dict)):
        if split not in loaded:
            raise ValueError(f"expected a {split!r} split in the dataset {name!r}, got splits {sorted(loaded)}")
        loaded = loaded[split]
    columns = loaded.column_names
    if image_column not in columns:
        raise ValueError(f"expected an image column {image_column!r} (--image_column) in the dataset {name!r}, got columns {columns}")
    feature = loaded.features[image_column]
    if isinstance(feature, datasets.Image) or (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        loaded = loaded.cast_column(image_column, datasets.Image(decode=False))
    else:
        raise ValueError(f"expected images (an Image feature or file paths) in column {image_column!r}, got {feature}")

    id2label = None
    named = True
    keep = [image_column]
    if label_column and label_column in columns:
        feature = loaded.features[label_column]
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            loaded = loaded.class_encode_column(label_column)
            feature = loaded.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            id2label = dict(enumerate(feature.names))
        elif isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
            labels = np.asarray(loaded[label_column])
            if labels.size and labels.min() < 0:
                raise ValueError(f"expected class ids >= 0 in column {label_column!r}, got {int(labels.min())}")
            id2label = {index: str(index) for index in range(int(labels.max()) + 1 if labels.size else 0)}
            named = False
        else:
            raise ValueError(f"expected class labels (ClassLabel, integer ids or names) in column {label_column!r}, got {feature}")
        keep.append(label_column)
    elif require_labels:
        raise ValueError(
            f"expected a label column {label_column!r} (--label_column) for class-conditional training in the dataset "
            f"{name!r}, got columns {columns}"
        )
    loaded = loaded.select_columns(keep).rename_columns({image_column: "image", **({label_column: "label"} if len(keep) > 1 else {})})
    if len(keep) > 1:
        loaded = loaded.cast_column("label", datasets.Value("int64"))
    if len(loaded) == 0:
        raise ValueError(f"expected images in the dataset {name!r} ({split} split), got an empty dataset")
    hub_id = None if os.path.exists(name) else name
    return LabelledImages(loaded, id2label, f"dataset {name}", hub_id, named)


def split_held_out(images: LabelledImages, fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """A random held-out split: (training rows, held-out rows), at least one row in each.

    Args:
        images ([`LabelledImages`]): the rows to split.
        fraction (`float`): the share held out, in (0, 1).
        seed (`int`): the split's seed (the same seed gives the same split).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"expected a held-out fraction in (0, 1) (--validation_split), got {fraction}")
    total = len(images)
    held_out = max(1, int(round(fraction * total)))
    if total - held_out < 1:
        raise ValueError(f"expected at least 2 images to hold some out for validation, got {total}")
    order = np.random.default_rng(seed).permutation(total)
    return images.select(sorted(order[held_out:].tolist())), images.select(sorted(order[:held_out].tolist()))


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and checks
# ---------------------------------------------------------------------------------------------------------------------


def _describe(value: dict[str, Any], index: int) -> str:
    return value.get("path") or f"row {index}"


def open_image(value: dict[str, Any]) -> Image.Image:
    """An undecoded `datasets` image (``{"path", "bytes"}``) opened with PIL and loaded."""
    source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if source is None:
        raise ValueError("expected image bytes or a path, got neither")
    image = Image.open(source)
    image.load()
    return image


def _check_one(value: dict[str, Any]) -> str | None:
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        with Image.open(source) as image:
            image.load()  # decode it all: a file cut short after a valid header fails here, not at step N
            width, height = image.size
        if width < 1 or height < 1:
            return f"empty image ({width}x{height})"
    except Exception as error:  # noqa: BLE001 - every failure is reported
        return f"{type(error).__name__}: {error}"
    return None


def find_unreadable_images(images: LabelledImages, indices: Sequence[int], max_workers: int = 8) -> list[str]:
    """The images at ``indices`` that PIL cannot decode completely, as ``"where (why)"`` lines."""
    column = images.dataset.select(list(indices))["image"] if len(indices) else []
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        problems = list(pool.map(_check_one, column))
    return [f"{_describe(value, index)} ({problem})" for index, value, problem in zip(indices, column, problems) if problem]


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------------------


def _halve_while_large(image: Image.Image, target: int) -> Image.Image:
    """BOX-downsample by 2 while the short side is at least twice ``target`` (better than one big bicubic step)."""
    while min(image.size) >= 2 * target:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    return image


def _resize_short_side(image: Image.Image, short_side: int) -> np.ndarray:
    scale = short_side / min(image.size)
    return np.array(image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC))


def center_crop_array(image: Image.Image, size: int) -> np.ndarray:
    """The originals' centre crop: halve, resize the short side to ``size`` (bicubic), crop the centre (HWC uint8)."""
    array = _resize_short_side(_halve_while_large(image, size), size)
    top = (array.shape[0] - size) // 2
    left = (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def random_crop_array(
    image: Image.Image, size: int, rng: np.random.Generator, min_crop_frac: float = 0.8, max_crop_frac: float = 1.0
) -> np.ndarray:
    """The originals' random crop: the short side resized to a random length in [size / max_crop_frac,
    size / min_crop_frac], then a random ``size`` x ``size`` window (HWC uint8)."""
    low = int(np.ceil(size / max_crop_frac))
    high = int(np.ceil(size / min_crop_frac))
    short_side = int(rng.integers(low, high + 1))
    array = _resize_short_side(_halve_while_large(image, short_side), short_side)
    top = int(rng.integers(0, array.shape[0] - size + 1))
    left = int(rng.integers(0, array.shape[1] - size + 1))
    return array[top : top + size, left : left + size]


class TrainingImageDataset(torch.utils.data.Dataset):
    """Preprocessed training examples: ``{"pixel_values": (C, H, W) float32 in [-1, 1], "class_labels": int64}``.

    Indexed by ``(epoch, index)`` (as [`EpochShuffledBatchSampler`] yields) or a plain index (epoch 0); the random
    crop and flip of an example are drawn from a generator seeded by ``(seed, epoch, index)``.

    Args:
        images ([`LabelledImages`]): the rows.
        resolution (`int`): the output height and width.
        random_crop (`bool`, defaults to False): the originals' random-resized crop instead of the centre crop.
        random_flip (`bool`, defaults to False): flip horizontally with probability 1/2.
        seed (`int`, defaults to 0): the augmentations' seed.
        role (`str`, defaults to ``"training"``): what the images are, for messages (``"validation"``).
        channels (`int`, defaults to 3): 3 reads images as RGB, 1 as grey (the model's ``in_channels``).
    """

    def __init__(
        self,
        images: LabelledImages,
        resolution: int,
        *,
        random_crop: bool = False,
        random_flip: bool = False,
        seed: int = 0,
        role: str = "training",
        channels: int = 3,
    ):
        if resolution < 1:
            raise ValueError(f"expected a positive resolution, got {resolution}")
        self.images = images
        self.resolution = resolution
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.seed = seed
        self.role = role
        if channels not in (1, 3):
            raise ValueError(f"expected 1 (grey) or 3 (RGB) image channels, got {channels}")
        self.mode = "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        row = self.images.dataset[int(index)]
        try:
            image = open_image(row["image"]).convert(self.mode)
        except Exception as error:  # noqa: BLE001 - re-raised with the image it concerns
            raise ValueError(f"could not read {self.role} image {_describe(row['image'], index)}: {error}") from error
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.random_crop:
            array = random_crop_array(image, self.resolution, rng)
        else:
            array = center_crop_array(image, self.resolution)
        if self.random_flip and rng.random() < 0.5:
            array = array[:, ::-1]
        array = array[:, :, None] if array.ndim == 2 else array  # a grey image: one channel
        pixels = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        example = {"pixel_values": pixels.contiguous()}
        if "label" in row:
            example["class_labels"] = torch.tensor(row["label"], dtype=torch.long)
        return example


# ---------------------------------------------------------------------------------------------------------------------
# Order
# ---------------------------------------------------------------------------------------------------------------------


def check_global_batch(num_examples: int, batch_size: int, num_processes: int = 1) -> None:
    """Refuse a batch size the data cannot fill: one global batch (``batch_size`` on each of ``num_processes``) needs
    at least that many examples, since an incomplete last batch is dropped.

    Raises:
        ValueError: a batch size below 1, or fewer examples than one global batch.
    """
    if batch_size < 1:
        raise ValueError(f"expected a positive batch size, got {batch_size}")
    global_batch = batch_size * num_processes
    if num_examples < global_batch:
        raise ValueError(
            f"expected at least train_batch_size x processes = {batch_size} x {num_processes} = {global_batch} "
            f"training images, got {num_examples}"
        )


class EpochShuffledBatchSampler(torch.utils.data.Sampler):
    """An endless stream of this process's batches of ``(epoch, index)`` keys.

    Each epoch is a permutation of the examples (seeded by ``(seed, epoch)``; in order when not ``shuffle``), cut
    into global batches of ``batch_size * num_processes`` (an incomplete last one is dropped, as the originals' loader
    does); process ``p`` takes the ``p``-th slice of each. Micro-batch ``k`` of the stream is therefore a function of
    ``k`` alone, so a run resumed at micro-batch ``k`` (``start_batch``) sees exactly the data it would have seen.

    Args:
        num_examples (`int`): the dataset's length.
        batch_size (`int`): examples per process and batch.
        num_processes (`int`, defaults to 1): processes sharing the stream.
        process_index (`int`, defaults to 0): this process.
        seed (`int`, defaults to 0): the order's seed.
        start_batch (`int`, defaults to 0): the first micro-batch to yield.
        shuffle (`bool`, defaults to True): permute each epoch.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        num_processes: int = 1,
        process_index: int = 0,
        seed: int = 0,
        start_batch: int = 0,
        shuffle: bool = True,
    ):
        check_global_batch(num_examples, batch_size, num_processes)
        if not 0 <= process_index < num_processes:
            raise ValueError(f"expected process_index in [0, {num_processes}), got {process_index}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.start_batch = start_batch
        self.shuffle = shuffle

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per process in one pass over the data."""
        return self.num_examples // (self.batch_size * self.num_processes)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The examples' order in ``epoch``."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        global_batch = self.batch_size * self.num_processes
        while True:
            order = self.epoch_order(epoch)
            for batch in range(offset, self.batches_per_epoch):
                start = batch * global_batch + self.process_index * self.batch_size
                yield [(epoch, int(index)) for index in order[start : start + self.batch_size]]
            offset = 0
            epoch += 1
