"""Images to evaluate a model's likelihood on, read and preprocessed by the training data loader.

The sources and the preprocessing are [`guided_diffusers.data`]'s, so a model is evaluated on images prepared
exactly as it was trained on them (the originals' centre crop, no augmentation):

- a folder of image files (searched recursively; a file's class is its name before the first ``_``, classes numbered
  in sorted order, as the originals' ``load_data``);
- a ``save_to_disk`` folder or a Hub dataset id, with an image column and a label column.

[`open_evaluation_images`] checks the source (and reads every image header) before any image is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import (
    LabelledImages,
    TrainingImageDataset,
    find_unreadable_images,
    images_from_dataset,
    images_from_folder,
)

__all__ = ["DEFAULT_EVALUATION_SPLIT", "EvaluationImages", "open_evaluation_images"]

# Likelihoods are reported on held-out data; a DatasetDict without this split needs --split.
DEFAULT_EVALUATION_SPLIT = "test"


class EvaluationImages:
    """Evaluation images (and labels), decoded and centre-cropped on demand. Build one with [`open_evaluation_images`].

    Attributes:
        source: what was opened, for messages and result files.
        image_size: the side the images are resized and cropped to.
        labels: one class id per image, or None when labels were not asked for.
        id2label: class names by id, where the source has them.
    """

    def __init__(self, images: LabelledImages, image_size: int, with_labels: bool) -> None:
        self.source = images.source
        self.image_size = image_size
        self.labels = [int(label) for label in images.dataset["label"]] if with_labels else None
        self.id2label = images.id2label if with_labels else None
        self._examples = TrainingImageDataset(images, image_size)

    def __len__(self) -> int:
        return len(self._examples)

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images at ``indices`` as float32 NCHW in [-1, 1], and their int64 labels (None without labels).

        Args:
            indices: positions in ``range(len(self))``.
        """
        images = torch.stack([self._examples[int(index)]["pixel_values"] for index in indices])
        labels = None
        if self.labels is not None:
            labels = torch.tensor([self.labels[int(index)] for index in indices], dtype=torch.long)
        return images, labels

    def load_uint8(self, indices: Sequence[int]) -> np.ndarray:
        """The images at ``indices`` as uint8 ``(N, H, W, 3)``, the layout of the originals' ``.npz`` batches.

        Args:
            indices: positions in ``range(len(self))``.
        """
        pixels = self.load(indices)[0] if len(indices) else torch.zeros(0, 3, self.image_size, self.image_size)
        # The loader's floats are uint8 / 127.5 - 1: this recovers the bytes exactly.
        return ((pixels + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _is_save_to_disk_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def open_evaluation_images(
    source: str | os.PathLike,
    *,
    image_size: int,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    with_labels: bool = False,
    check_headers: bool = True,
) -> EvaluationImages:
    """Open a folder of images, a ``save_to_disk`` / dataset folder or a Hub dataset for evaluation.

    Args:
        source: a directory of image files, a directory written by ``save_to_disk``, or a Hub dataset id.
        image_size: the side images are resized and centre-cropped to (the model's ``sample_size``).
        split: the split of a dataset with several (default ``"test"``); not for an image folder.
        image_column: the image column of a dataset (default ``"image"``); not for an image folder.
        label_column: the class column of a dataset (default ``"label"``); not for an image folder.
        with_labels: read class labels (for a class-conditional model); a dataset without the label column is refused.
        check_headers: read every image's header first, so an unreadable file is reported before any work.

    Returns:
        [`EvaluationImages`].

    Raises:
        ValueError: a missing or empty source, an unknown split or column, missing labels, unreadable images (one line
            each).
    """
    if image_size < 1:
        raise ValueError(f"expected image_size >= 1, got {image_size}")
    text = str(source)
    path = Path(source).expanduser()
    if path.is_dir() and not _is_save_to_disk_folder(path):
        if split is not None or image_column is not None or label_column is not None:
            raise ValueError(f"expected no --split/--image_column/--label_column for the image folder {text!r}")
        images = images_from_folder(path)
    elif not path.is_dir() and (path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1):
        raise ValueError(f"expected a folder of images, a save_to_disk folder or a Hub dataset id, got {text!r}")
    else:
        try:
            images = images_from_dataset(
                str(path) if path.is_dir() else text,
                split=split or DEFAULT_EVALUATION_SPLIT,
                image_column=image_column or "image",
                label_column=label_column or "label",
                require_labels=with_labels,
            )
        except ValueError:
            raise
        except Exception as error:  # noqa: BLE001 - offline, unknown id, damaged folder: one clear line
            reason = (str(error).strip().splitlines() or [""])[0]
            raise ValueError(f"could not load the dataset {text!r}: {type(error).__name__}: {reason}") from error
    if check_headers:
        unreadable = find_unreadable_images(images, range(len(images)))
        if unreadable:
            more = f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
            raise ValueError(f"expected readable images in {text!r}, got unreadable {'; '.join(unreadable[:3])}{more}")
    return EvaluationImages(images, image_size, with_labels)
