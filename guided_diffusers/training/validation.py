"""Validation while training: fixed-seed sample grids, the Fréchet distance of samples to real images, held-out
bits/dim, the best score so far (for ``--keep_best`` and early stopping), and the kept weights.

Every evaluation samples through the public pipelines ([`ClassifierGuidedPipeline`], [`ADMUpsamplingPipeline`]) with
the fast recipe ([`~guided_diffusers.pipelines.recipes.FAST_RECIPE`]) from the weights the run publishes (the first
EMA rate's). Each sample has its own seeded generator, so the samples do not depend on how many processes share them
out (beyond float rounding): process ``p`` of ``P`` draws samples ``p, p + P, ...`` and the main process gathers
them. Evaluation reaches ``guided_diffusers.evaluation`` (the FID Inception, Fréchet distance) only inside functions,
so importing training imports no evaluation.

Feature spaces for the Fréchet distance:

- ``pixels`` (default): each channel area-averaged to 8x8 and scaled to [0, 16], 64 values per channel. For grey
  8x8 images this is exactly the quick start judge's space (scikit-learn's digits); for larger images it is a cheap
  proxy that sees layout, colour and contrast, not texture.
- the FID Inception's 2048 pool features (``--inception_weights FILE``), as ``guided-diffusers-evaluate`` computes
  them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data import LabelledImages, TrainingImageDataset
from ..publishing import write_atomically, write_folder_atomically
from ..schedulers.likelihood import as_diffusion, call_model, prior_bpd, vb_terms_bpd

__all__ = [
    "BEST_WEIGHTS_DIR",
    "BestScore",
    "REFERENCE_CACHE",
    "DiffusionValidation",
    "FeatureSpace",
    "bpd_timesteps",
    "estimate_bits_per_dim",
    "image_grid",
    "inception_space",
    "load_best_weights",
    "log_images",
    "pixel_features",
    "pixel_space",
    "sample_seed",
    "save_best_weights",
]

logger = logging.getLogger(__name__)

#: Where ``--keep_best`` keeps the best weights during training (a model folder; not uploaded: ``checkpoint-*``).
BEST_WEIGHTS_DIR = "checkpoint-best"
_BEST_INFO = "best.json"
#: The reference statistics' cache, in the logging folder.
REFERENCE_CACHE = "validation_reference.npz"
_CACHE_FORMAT = 1
#: At most this many reference images (a seeded draw from larger sets), as the originals' reference batches.
MAX_REFERENCE_IMAGES = 10_000
INCEPTION_BATCH_SIZE = 64
GRID_COLUMNS = 8
#: A class-conditional grid shows at most this many classes (evenly spread over the ids), one row each.
GRID_MAX_CLASSES = 16
UNCONDITIONAL_GRID_ROWS = 8
UPSAMPLER_GRID_ROWS = 8
# Seed streams: the grid, the Fréchet samples and the held-out noise never share a generator.
_GRID, _SAMPLES, _BPD, _REFERENCE = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------------------------------
# The best score and when to stop
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class BestScore:
    """The best validation score so far and how many evaluations since it, rebuilt from the run's own log on resume.

    Args:
        metric (`str`): the logged key judged, e.g. ``val_frechet_distance``.
        higher_is_better (`bool`): True for accuracies, False for distances and bits/dim.
        patience (`int`, *optional*): stop after this many evaluations in a row without improvement.
    """

    metric: str
    higher_is_better: bool
    patience: int | None = None
    best: float | None = None
    best_step: int | None = None
    evaluations: int = 0
    since_best: int = 0

    def update(self, step: int, value: float) -> bool:
        """Count evaluation ``step`` scoring ``value``; True when it beats the best so far (the first always does)."""
        self.evaluations += 1
        better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if better and np.isfinite(value):
            self.best, self.best_step, self.since_best = float(value), int(step), 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` evaluations in a row have not improved on the best."""
        return self.patience is not None and self.since_best >= self.patience

    def replay(self, log_path: str | os.PathLike, up_to_step: int) -> None:
        """Update from the scores in a ``metrics.jsonl`` up to ``up_to_step`` (a resumed run's own history)."""
        path = Path(log_path)
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if self.metric in entry and entry.get("step", 0) <= up_to_step:
                self.update(int(entry["step"]), float(entry[self.metric]))

    def describe(self) -> str:
        direction = "highest" if self.higher_is_better else "lowest"
        return f"the {direction} {self.metric}"


def save_best_weights(model: nn.Module, output_dir: str | os.PathLike, step: int, metric: str, score: float) -> Path:
    """Write ``model`` as ``output_dir/checkpoint-best`` (a model folder plus ``best.json``), replacing it whole."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        (folder / _BEST_INFO).write_text(json.dumps({"step": step, "metric": metric, "score": score}, indent=2))

    return write_folder_atomically(Path(output_dir) / BEST_WEIGHTS_DIR, write)


def load_best_weights(output_dir: str | os.PathLike, best: BestScore) -> dict[str, torch.Tensor]:
    """The kept weights' state dict, checked by their ``best.json`` to be the best of this run's log.

    Raises:
        ValueError: no kept weights, or weights of another step than the log's best (a run resumed from before its
            last best that ended sooner).
    """
    from safetensors.torch import load_file

    folder = Path(output_dir) / BEST_WEIGHTS_DIR
    info_path = folder / _BEST_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    if info is None or info.get("step") != best.best_step or info.get("metric") != best.metric:
        found = f"step {info.get('step')}" if info else "none"
        raise ValueError(
            f"expected the weights of step {best.best_step} ({best.describe()} logged) in {str(folder)!r} for --keep_best, got {found}"
        )
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"expected one safetensors weights file in {str(folder)!r}, got {[f.name for f in files]}")
    return load_file(str(files[0]))


# ---------------------------------------------------------------------------------------------------------------------
# Feature spaces
# ---------------------------------------------------------------------------------------------------------------------


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] to the small pixel space: each channel area-averaged to 8x8, scaled to [0, 16],
    flattened (8, 8, C) row-major: (N, 64 * C). For grey 8x8 images, the quick start judge's space."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float64)).permute(0, 3, 1, 2)
    small = F.adaptive_avg_pool2d(tensor, 8) * 16.0
    return small.permute(0, 2, 3, 1).reshape(len(images), -1).numpy()


@dataclass
class FeatureSpace:
    """Where the Fréchet distance is measured.

    Attributes:
        name (`str`): for logs and the model card.
        fingerprint (`str`): what the features depend on, for the reference cache's key.
        extract (`Callable`): images (N, H, W, C) in [0, 1] to features (N, D).
    """

    name: str
    fingerprint: str
    extract: Callable[[np.ndarray], np.ndarray]


def pixel_space() -> FeatureSpace:
    """The default space: [`pixel_features`]."""
    return FeatureSpace("pixels (each channel area-averaged to 8x8, 0-16)", "pixels8x8", pixel_features)


def inception_space(weights_path: str | os.PathLike, device: torch.device | str) -> FeatureSpace:
    """The FID Inception's 2048 pool features (the evaluator's FID), from a local weights file.

    Raises:
        FileNotFoundError, ValueError: no such file, or not the network's weights (one line, before training).
    """
    from ..evaluation.evaluator import compute_activations
    from ..evaluation.feature_cache import weights_fingerprint
    from ..evaluation.inception import load_fid_inception

    network = load_fid_inception(weights_path, device=device)

    def extract(images: np.ndarray) -> np.ndarray:
        pixels = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        pool, _ = compute_activations(network, _chunks(pixels, INCEPTION_BATCH_SIZE), device=device)
        return pool

    return FeatureSpace("FID Inception pool_3 (2048)", "inception:" + weights_fingerprint(network), extract)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling, sharding, gathering
# ---------------------------------------------------------------------------------------------------------------------


def sample_seed(seed: int, stream: int, index: int) -> int:
    """The seed of sample ``index`` of ``stream`` (grid, Fréchet samples, held-out noise) in a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1, np.uint64)[0] % 2**63)


def _generators(seed: int, stream: int, indices: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(sample_seed(seed, stream, int(index))) for index in indices]


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _gather_in_order(accelerator: Any, indices: Sequence[int], rows: np.ndarray) -> np.ndarray | None:
    """Every process's ``rows`` (one per index) on the main process, in index order; None elsewhere."""
    from accelerate.utils import gather_object

    pairs = gather_object([(int(index), row) for index, row in zip(indices, rows)])
    if not accelerator.is_main_process:
        return None
    pairs.sort(key=lambda pair: pair[0])
    return np.stack([row for _, row in pairs]) if pairs else None


def _mine(accelerator: Any, count: int) -> list[int]:
    return list(range(accelerator.process_index, count, accelerator.num_processes))


def _to_unit(pixel_values: torch.Tensor) -> np.ndarray:
    """Dataset tensors (N, C, H, W) in [-1, 1] to images (N, H, W, C) in [0, 1]."""
    return ((pixel_values.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------------
# Held-out bits/dim
# ---------------------------------------------------------------------------------------------------------------------


def bpd_timesteps(num_timesteps: int, evaluations: int) -> tuple[list[int], list[int]]:
    """The steps at which the bound's terms are evaluated, in the originals' loop order (T - 1 down to 0), and how many
    of the process's steps each stands for.

    Step 0 (the decoder NLL) is always evaluated; steps 1 .. T - 1 are cut into ``evaluations - 1`` strata of
    consecutive steps, each represented by its middle step times its size. With ``evaluations >= T`` every step is
    evaluated once: the whole bound, as [`~guided_diffusers.evaluation.calc_bpd_loop`] computes it.

    Args:
        num_timesteps (`int`): T.
        evaluations (`int`): network evaluations per image (at least 2).
    """
    if evaluations < 2:
        raise ValueError(f"expected at least 2 evaluations per image for the held-out bits/dim, got {evaluations}")
    strata = min(evaluations - 1, num_timesteps - 1)
    edges = np.linspace(1, num_timesteps, strata + 1).round().astype(int)
    steps = [0] + [int((low + high - 1) // 2) for low, high in zip(edges[:-1], edges[1:])]
    weights = [1] + [int(high - low) for low, high in zip(edges[:-1], edges[1:])]
    return steps[::-1], weights[::-1]


@torch.no_grad()
def estimate_bits_per_dim(
    diffusion: Any,
    model: Callable[..., Any],
    x_start: torch.Tensor,
    steps: Sequence[int],
    weights: Sequence[int],
    generator: torch.Generator,
    model_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Each image's variational bound in bits/dim from the terms at ``steps`` (see [`bpd_timesteps`]): the prior term
    plus each step's term times its weight; one fresh noise draw per step from ``generator``, in ``steps``' order.

    Args:
        diffusion: the process (a guided scheduler or [`GaussianDiffusion`]).
        model (`Callable`): called as ``model(x_t, model_timesteps, **model_kwargs)``.
        x_start (`torch.Tensor`): the images, uint8 values rescaled to [-1, 1].
        steps, weights: from [`bpd_timesteps`].
        generator (`torch.Generator`): the noise's generator (on the CPU).
        model_kwargs (`dict`, *optional*): ``class_labels``, ``low_res``.

    Returns:
        `torch.Tensor`: (batch,) bits per dimension.
    """
    diffusion = as_diffusion(diffusion)
    total = prior_bpd(diffusion, x_start)
    for step, weight in zip(steps, weights):
        t = torch.full((x_start.shape[0],), step, dtype=torch.long, device=x_start.device)
        noise = torch.randn(x_start.shape, generator=generator, dtype=x_start.dtype).to(x_start.device)
        x_t = diffusion.q_sample(x_start, t, noise=noise)
        output = call_model(model, x_t, diffusion.model_timesteps(t), model_kwargs)
        total = total + weight * vb_terms_bpd(diffusion, output, x_start, x_t, t, clip_denoised=True)["output"]
    return total


# ---------------------------------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------------------------------


def image_grid(images: np.ndarray, rows: int, scale: int = 1) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] (C = 1 or 3) as one uint8 RGB picture (H', W', 3) of ``rows`` rows (row-major),
    a white line between images, each pixel repeated ``scale`` times."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    count, height, width, _ = images.shape
    columns = -(-count // rows)
    grid = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1, 3), dtype=np.float32)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = 1 + row * (height + 1), 1 + column * (width + 1)
        grid[top : top + height, left : left + width] = image
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return (np.clip(grid, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def log_images(accelerator: Any, name: str, picture: np.ndarray, step: int) -> None:
    """Log one uint8 (H, W, 3) picture to the run's trackers that take images (TensorBoard, Weights & Biases). Main
    process only (the trackers live there)."""
    for tracker in getattr(accelerator, "trackers", []):
        if tracker.name == "tensorboard":
            tracker.log_images({name: picture[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({name: [picture]}, step=step)


def _save_png(picture: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda file: Image.fromarray(picture).save(file, format="PNG"), ".png")


# ---------------------------------------------------------------------------------------------------------------------
# A diffusion model's validation
# ---------------------------------------------------------------------------------------------------------------------


def _reference_key(images: LabelledImages, indices: Sequence[int], resolution: int, channels: int, space: FeatureSpace) -> str:
    """What the reference statistics depend on: the feature space, the preprocessing, and each image's file (path,
    size and modification time) or bytes."""
    digest = hashlib.sha256()
    for index in indices:
        value = images.dataset[int(index)]["image"]
        if value.get("bytes"):
            digest.update(hashlib.sha256(value["bytes"]).digest())
        else:
            stat = os.stat(value["path"])
            digest.update(f"{value['path']}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return json.dumps({"format": _CACHE_FORMAT, "features": space.fingerprint, "resolution": resolution, "channels": channels,
                       "count": len(indices), "images": digest.hexdigest()}, sort_keys=True)


def _read_cached_statistics(path: Path, key: str) -> Any:
    from ..evaluation.metrics import FIDStatistics

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if str(arrays["key"]) != key:
                return None
            factor = arrays["factor"] if "factor" in arrays.files else None
            return FIDStatistics(arrays["mu"], arrays["sigma"], factor)
    except (OSError, ValueError, KeyError):
        return None  # damaged: recomputed and rewritten


def _write_cached_statistics(path: Path, key: str, statistics: Any) -> None:
    arrays = {"key": np.array(key), "mu": statistics.mu, "sigma": statistics.sigma}
    if statistics.factor is not None:
        arrays["factor"] = statistics.factor
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda file: np.savez(file, **arrays), ".npz")


@dataclass
class DiffusionValidation:
    """What a diffusion or upsampler run evaluates every ``--validation_steps``; made once by [`prepare`].

    Attributes:
        scheduler: the training process's scheduler (the pipelines' scheduler config).
        resolution, channels (`int`): the model's image size and channels.
        num_classes (`int`, *optional*): the classes of a class-conditional model.
        low_res_size (`int`, *optional*): the upsampler's input size.
        reference (`TrainingImageDataset`): the real images: the held-out split when there is one, else the
            training images (at most ``MAX_REFERENCE_IMAGES``, a seeded draw).
        reference_indices (`list[int]`): their positions.
        held_out (`TrainingImageDataset`, *optional*): images for the bits/dim.
        space ([`FeatureSpace`], *optional*): where the distance is measured (None: no distance).
        reference_statistics: the reference's Gaussian fit (main process only).
        num_samples (`int`): K, samples for the distance.
        batch_size (`int`): images per forward, per process.
        bpd_evaluations (`int`): network evaluations per held-out image for the bits/dim.
        seed (`int`): the run's seed.
        output_dir (`Path`): where ``validation/step-N.png`` goes.
    """

    scheduler: Any
    resolution: int
    channels: int
    num_classes: int | None
    low_res_size: int | None
    reference: TrainingImageDataset
    reference_indices: list[int]
    held_out: TrainingImageDataset | None
    space: FeatureSpace | None
    reference_statistics: Any
    num_samples: int
    batch_size: int
    bpd_evaluations: int
    seed: int
    output_dir: Path

    @classmethod
    def prepare(
        cls,
        accelerator: Any,
        *,
        scheduler: Any,
        resolution: int,
        channels: int,
        num_classes: int | None,
        low_res_size: int | None,
        train_images: LabelledImages,
        held_out: LabelledImages | None,
        num_samples: int,
        batch_size: int,
        bpd_evaluations: int,
        inception_weights: str | None,
        seed: int,
        output_dir: Path,
        cache_path: Path,
    ) -> DiffusionValidation:
        """Load the feature space and compute (or read from ``cache_path``) the reference statistics; call on every
        process (they share the reference's features out).

        Raises:
            FileNotFoundError, ValueError: an unusable ``inception_weights`` file.
        """
        source = held_out if held_out is not None else train_images
        reference = TrainingImageDataset(source, resolution, role="validation" if held_out is not None else "training", channels=channels)
        count = len(source)
        indices = list(range(count))
        if count > MAX_REFERENCE_IMAGES:
            indices = sorted(np.random.default_rng(sample_seed(seed, _REFERENCE, 0)).choice(count, MAX_REFERENCE_IMAGES, replace=False).tolist())
        space = None
        if num_samples > 0:
            space = inception_space(inception_weights, accelerator.device) if inception_weights else pixel_space()
        validation = cls(
            scheduler, resolution, channels, num_classes, low_res_size, reference, indices, reference if held_out is not None else None,
            space, None, num_samples, batch_size, bpd_evaluations, seed, output_dir,
        )
        if space is not None:
            validation.reference_statistics = validation._reference_statistics(accelerator, source, cache_path)
        return validation

    # -- the reference ----------------------------------------------------------------------------------------------

    def _reference_statistics(self, accelerator: Any, source: LabelledImages, cache_path: Path) -> Any:
        from accelerate.utils import broadcast_object_list

        from ..evaluation.metrics import compute_statistics

        start = time.perf_counter()
        key, cached = None, None
        if accelerator.is_main_process:  # the cache's only reader and writer: the others need no key (a stat or hash per image)
            key = _reference_key(source, self.reference_indices, self.resolution, self.channels, self.space)
            cached = _read_cached_statistics(cache_path, key)
        found = broadcast_object_list([cached is not None])[0]
        if found:
            logger.info("validation: reference statistics of %d images read from %s", len(self.reference_indices), cache_path)
            return cached
        positions = _mine(accelerator, len(self.reference_indices))
        rows = []
        for chunk in _chunks(positions, self.batch_size):
            images, _ = self._reference_batch(chunk)
            rows.append(self.space.extract(_to_unit(images)))
        features = _gather_in_order(accelerator, positions, np.concatenate(rows) if rows else np.zeros((0, 1)))
        if not accelerator.is_main_process:
            return None
        statistics = compute_statistics(features)
        _write_cached_statistics(cache_path, key, statistics)
        logger.info("validation: reference statistics of %d images in %s computed in %.1f s (cached in %s)",
                    len(features), self.space.name, time.perf_counter() - start, cache_path)
        return statistics

    # -- sampling ---------------------------------------------------------------------------------------------------

    def _pipeline(self, unet: nn.Module) -> tuple[Any, dict[str, Any]]:
        from ..pipelines import ADMUpsamplingPipeline, ClassifierGuidedPipeline
        from ..pipelines.recipes import FAST_RECIPE

        if self.low_res_size is not None:
            pipeline = ADMUpsamplingPipeline(unet=unet, scheduler=self.scheduler, low_res_size=self.low_res_size)
        else:
            pipeline = ClassifierGuidedPipeline(unet=unet, scheduler=self.scheduler)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline, FAST_RECIPE.apply(pipeline)

    def _reference_batch(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        items = [self.reference[self.reference_indices[k]] for k in positions]
        images = torch.stack([item["pixel_values"] for item in items])
        labels = torch.stack([item["class_labels"] for item in items]) if "class_labels" in items[0] and self.num_classes else None
        return images, labels

    def _sample(self, pipeline: Any, call: dict[str, Any], stream: int, indices: Sequence[int], labels: Sequence[int] | None,
                device: torch.device) -> np.ndarray:
        """Samples ``indices`` of ``stream`` (N, H, W, C) in [0, 1]; for an upsampler, of the reference's images at
        those positions; class-conditional ones of ``labels``."""
        outputs = [np.zeros((0, self.resolution, self.resolution, self.channels), np.float32)]
        for chunk_start in range(0, len(indices), self.batch_size):
            chunk = list(indices[chunk_start : chunk_start + self.batch_size])
            kwargs = dict(call, generator=_generators(self.seed, stream, chunk), output_type="np")
            if self.low_res_size is not None:
                images, image_labels = self._reference_batch(chunk)
                kwargs["low_res_images"] = F.interpolate(images, size=(self.low_res_size,) * 2, mode="area").to(device)
                if image_labels is not None:
                    kwargs["class_labels"] = image_labels.tolist()
            elif labels is not None:
                kwargs["class_labels"] = [labels[k] for k in range(chunk_start, chunk_start + len(chunk))]
            else:
                kwargs["batch_size"] = len(chunk)
            outputs.append(pipeline(**kwargs).images)
        return np.concatenate(outputs)

    def _grid(self, accelerator: Any, pipeline: Any, call: dict[str, Any]) -> tuple[np.ndarray | None, int]:
        """The fixed-seed grid (main process): one row per class (evenly spread when more than
        ``GRID_MAX_CLASSES``); an upsampler's rows are low-res input (nearest), output, original."""
        if self.low_res_size is not None:
            rows = min(UPSAMPLER_GRID_ROWS, len(self.reference_indices))
            labels = None
        elif self.num_classes:
            shown = np.unique(np.linspace(0, self.num_classes - 1, min(self.num_classes, GRID_MAX_CLASSES)).round().astype(int))
            rows = len(shown)
            labels = [int(c) for c in shown for _ in range(GRID_COLUMNS)]
        else:
            rows, labels = UNCONDITIONAL_GRID_ROWS, None
        count = rows if self.low_res_size is not None else rows * GRID_COLUMNS
        mine = _mine(accelerator, count)
        sampled = self._sample(pipeline, call, _GRID, mine, [labels[k] for k in mine] if labels else None, accelerator.device)
        images = _gather_in_order(accelerator, mine, sampled)
        if images is None:
            return None, rows
        if self.low_res_size is not None:
            originals, _ = self._reference_batch(range(rows))
            low_res = F.interpolate(originals, size=(self.low_res_size,) * 2, mode="area")
            low_res = F.interpolate(low_res, size=(self.resolution,) * 2, mode="nearest")
            images = np.stack([image for triple in zip(_to_unit(low_res), images, _to_unit(originals)) for image in triple])
        return images, rows

    def _frechet_distance(self, accelerator: Any, pipeline: Any, call: dict[str, Any]) -> float | None:
        from ..evaluation.metrics import compute_statistics

        count = self.num_samples if self.low_res_size is None else min(self.num_samples, len(self.reference_indices))
        mine = _mine(accelerator, count)
        labels = [k % self.num_classes for k in mine] if self.num_classes and self.low_res_size is None else None
        samples = self._sample(pipeline, call, _SAMPLES, mine, labels, accelerator.device)
        features = _gather_in_order(accelerator, mine, self.space.extract(samples) if len(samples) else np.zeros((0, 1)))
        if features is None:
            return None
        return compute_statistics(features).frechet_distance(self.reference_statistics)

    # -- bits/dim ---------------------------------------------------------------------------------------------------

    def _bits_per_dim(self, accelerator: Any, unet: nn.Module) -> float:
        """The held-out images' mean bound: global batches of ``batch_size``, batch ``b`` on process ``b % P`` with
        noise seeded by ``b``, the same at every evaluation."""
        steps, weights = bpd_timesteps(self.scheduler.diffusion.num_timesteps, self.bpd_evaluations)
        total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        batches = _chunks(list(range(len(self.held_out))), self.batch_size)
        for number in _mine(accelerator, len(batches)):
            items = [self.held_out[k] for k in batches[number]]
            x_start = torch.stack([item["pixel_values"] for item in items]).to(accelerator.device)
            kwargs = {}
            if self.num_classes:
                kwargs["class_labels"] = torch.stack([item["class_labels"] for item in items]).to(accelerator.device)
            if self.low_res_size is not None:
                kwargs["low_res"] = F.interpolate(x_start, size=(self.low_res_size,) * 2, mode="area")
            generator = torch.Generator().manual_seed(sample_seed(self.seed, _BPD, number))
            bpd = estimate_bits_per_dim(self.scheduler, unet, x_start, steps, weights, generator, kwargs)
            total += torch.stack([bpd.double().sum(), torch.tensor(float(len(items)), dtype=torch.float64, device=total.device)])
        total = accelerator.reduce(total, reduction="sum")
        return float(total[0] / total[1])

    # -- one evaluation ---------------------------------------------------------------------------------------------

    def run(self, accelerator: Any, unet: nn.Module, step: int) -> dict[str, float]:
        """Grid, distance and bits/dim of ``unet`` (the published weights, in eval mode) at ``step``; call on every
        process. Returns the metrics (on the main process; the others return an empty dict)."""
        metrics: dict[str, float] = {}
        timings: dict[str, float] = {}
        pipeline, call = self._pipeline(unet)
        start = time.perf_counter()
        images, rows = self._grid(accelerator, pipeline, call)
        timings["grid"] = time.perf_counter() - start
        if images is not None:
            picture = image_grid(images, rows, scale=max(1, 32 // self.resolution))
            _save_png(picture, self.output_dir / "validation" / f"step-{step:07d}.png")
            log_images(accelerator, "validation/samples", picture, step)
        if self.space is not None:
            start = time.perf_counter()
            distance = self._frechet_distance(accelerator, pipeline, call)
            timings["distance"] = time.perf_counter() - start
            if distance is not None:
                metrics["val_frechet_distance"] = distance
        if self.held_out is not None:
            start = time.perf_counter()
            bpd = self._bits_per_dim(accelerator, unet)
            timings["bpd"] = time.perf_counter() - start
            metrics["val_bpd"] = bpd
        metrics.update({f"val_seconds_{part}": seconds for part, seconds in timings.items()})
        return metrics if accelerator.is_main_process else {}
