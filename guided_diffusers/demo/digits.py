"""The quick start's data and its judge: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes).

The judge is an independent classifier (a scikit-learn SVM fitted on the real digits, not one of ours) applied to
generated images brought back to 8x8, so the demo's accuracy figures say whether guidance produces the asked digit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = 10
DIGIT_NAMES = {i: str(i) for i in range(NUM_CLASSES)}


def load_digits_images(resolution: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The real digits as uint8 RGB images upscaled (bicubic) to ``resolution``, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)  # 0..16 ink levels to 0..255
    images = np.stack(
        [np.asarray(Image.fromarray(im, mode="L").resize((resolution, resolution), Image.BICUBIC).convert("RGB")) for im in small]
    )
    return images, digits.target.astype(np.int64)


def write_digits_folder(folder: str | Path, resolution: int = 16) -> Path:
    """The digits as PNG files labelled the originals' way (``{label}_{index}.png``), for ``--train_data_dir``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits_images(resolution)
    for index, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(folder / f"{label}_{index:04d}.png")
    return folder


def to_judge_space(images: np.ndarray) -> np.ndarray:
    """Generated images (N, H, W, C) in [0, 1] (C = 1 grey or 3 RGB) to the judge's input: grey, area-averaged to
    8x8, scaled to 0..16."""
    grey = images.mean(axis=-1)
    n, h, w = grey.shape
    if h % 8 or w % 8:
        raise ValueError(f"expected images whose size is a multiple of 8, got {h}x{w}")
    small = grey.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
    return (small * 16.0).reshape(n, 64)


@dataclass
class DigitsJudge:
    """An SVM on the real 8x8 digits; ``held_out_accuracy`` is measured on a half it was not fitted on."""

    model: object
    held_out_accuracy: float

    @classmethod
    def fit(cls, seed: int = 0) -> DigitsJudge:
        from sklearn.datasets import load_digits
        from sklearn.svm import SVC

        digits = load_digits()
        x, y = digits.data, digits.target
        order = np.random.default_rng(seed).permutation(len(x))
        half = len(x) // 2
        probe = SVC(gamma=0.001).fit(x[order[:half]], y[order[:half]])
        accuracy = float((probe.predict(x[order[half:]]) == y[order[half:]]).mean())
        return cls(model=SVC(gamma=0.001).fit(x, y), held_out_accuracy=accuracy)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Digit predictions for generated images (N, H, W, C) in [0, 1]."""
        return self.model.predict(to_judge_space(images))


def channel_spread(images: np.ndarray) -> float:
    """Mean colour tint of images (N, H, W, C) in [0, 1]: max minus min over the channels per pixel, averaged (0 for
    grey images, as every real digit is)."""
    return float((images.max(axis=-1) - images.min(axis=-1)).mean())


def class_balance(predictions: np.ndarray) -> np.ndarray:
    """The fraction of samples the judge puts in each class, ``(NUM_CLASSES,)``."""
    return np.bincount(np.asarray(predictions, dtype=np.int64), minlength=NUM_CLASSES)[:NUM_CLASSES] / max(len(predictions), 1)


@dataclass
class DigitsReference:
    """The real digits in the judge's space, for the Fréchet distance of generated sets to them.

    A Fréchet distance fitted on N samples is biased upwards by the finite N, so each distance comes with its floor:
    the distance of N real digits, drawn without replacement, to all of them.
    """

    real: np.ndarray
    _all: Any = field(default=None, init=False, repr=False)  # the statistics of all real digits, fitted once

    @classmethod
    def load(cls) -> DigitsReference:
        from sklearn.datasets import load_digits

        return cls(load_digits().data.astype(np.float64))

    def _statistics(self):
        from ..evaluation.metrics import compute_statistics

        if self._all is None:
            self._all = compute_statistics(self.real)
        return self._all

    def distance(self, images: np.ndarray) -> float:
        """Fréchet distance of generated images (N, H, W, C) in [0, 1] to all real digits, in the judge's space."""
        from ..evaluation.metrics import compute_statistics

        return compute_statistics(to_judge_space(images)).frechet_distance(self._statistics())

    def floor(self, num_samples: int, seed: int = 0) -> float:
        """The distance of ``num_samples`` real digits (a seeded draw) to all of them: what a perfect generator scores."""
        from ..evaluation.metrics import compute_statistics

        if not 2 <= num_samples <= len(self.real):
            raise ValueError(f"expected between 2 and {len(self.real)} samples for the floor, got {num_samples}")
        pick = np.random.default_rng(seed).choice(len(self.real), num_samples, replace=False)
        return compute_statistics(self.real[pick]).frechet_distance(self._statistics())


def mean_pairwise_distance(images: np.ndarray) -> float:
    """Diversity of a set of images: their mean pairwise L2 distance in the judge's 8x8 space, divided by 16 (pixel range)."""
    points = to_judge_space(images) / 16.0
    if len(points) < 2:
        return 0.0
    distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    return float(distances[np.triu_indices(len(points), 1)].mean())


def judge_samples(images: np.ndarray, targets: np.ndarray, guided: bool, judge: DigitsJudge,
                  reference: DigitsReference) -> dict[str, float | None]:
    """The quick start's figures for samples (NHWC in [0, 1]) drawn for the classes ``targets``: the class shares over
    all of them (an unguided draw may be larger, for the shares), the rest over the first ``len(targets)``: accuracy
    (guided samples only: unguided ones asked for no class), distance, colour spread and diversity."""
    predictions = judge.predict(images)
    shares = class_balance(predictions)
    images, predictions = images[: len(targets)], predictions[: len(targets)]
    return dict(
        accuracy=float((predictions == targets).mean()) if guided else None,
        distance=reference.distance(images),
        colour_spread=channel_spread(images),
        class_share_min=float(shares.min()),
        class_share_max=float(shares.max()),
        diversity=float(np.mean([mean_pairwise_distance(images[targets == c]) for c in range(NUM_CLASSES)])),
    )


def save_grid(images: np.ndarray, rows: int, path: str | Path, scale: int = 2) -> Path:
    """Images (N, H, W, C) in [0, 1] (C = 1 or 3) as one PNG grid of ``rows`` rows (row-major), upscaled ``scale`` times
    (the training's validation grid, saved)."""
    from ..training.validation import image_grid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, rows, scale)).save(path)
    return path
