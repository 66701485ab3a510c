"""Many samples from a pipeline folder, split across processes, written as the originals write them.

The originals' image_sample / classifier_sample / super_res_sample save ``samples_NxHxWx3.npz`` with ``arr_0`` (uint8
NHWC) and, for class-conditional runs, ``arr_1`` (labels), which their evaluator reads. Here sample k is drawn from
its own generator seeded with ``seed + k``, so a run gives the same images whatever the number of processes; each
process takes the indices k = rank, rank + P, ...; the main process merges them in index order: exactly N, none twice.
The output folder is written aside and moved into place whole, so it holds one run's samples, never a mixture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..publishing import write_folder_atomically


@dataclass
class SamplingJob:
    """What to sample. See ``scripts/sample.py --help`` for each field."""

    num_samples: int
    batch_size: int = 16
    seed: int = 0
    class_labels: list[int] | None = None  # cycled over the samples; random classes when None and the model needs them
    classifier_scale: float = 0.0
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    timestep_respacing: str | None = None
    eta: float = 0.0
    clip_denoised: bool = True
    base_samples: str | None = None  # super-resolution: an .npz of low-resolution images (arr_0) and labels (arr_1)


def _labels_for(job: SamplingJob, indices: list[int], num_classes: int | None, base_labels: np.ndarray | None) -> list[int] | None:
    if base_labels is not None:
        return [int(base_labels[k]) for k in indices]
    if job.class_labels:
        return [job.class_labels[k % len(job.class_labels)] for k in indices]
    if num_classes:
        # The originals draw uniform random classes; here from each sample's own generator.
        return [int(torch.randint(0, num_classes, (1,), generator=torch.Generator().manual_seed(job.seed + k))) for k in indices]
    return None


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """The samples' folder: new or empty, or ``overwrite`` to replace it whole (samples of two runs never mix)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ValueError(f"expected a new or empty output folder, got non-empty {str(output_dir)!r} (pass --overwrite to replace it)")
    return output_dir


def run_sampling_job(
    pipeline: Any, job: SamplingJob, output_dir: str | os.PathLike, accelerator: Any = None, overwrite: bool = False
) -> Path | None:
    """Sample ``job.num_samples`` images with ``pipeline`` and write ``samples_NxHxWx3.npz`` and PNGs to ``output_dir``.

    Args:
        pipeline: a [`ClassifierGuidedPipeline`] or [`ADMUpsamplingPipeline`].
        job ([`SamplingJob`]): what to sample.
        output_dir: where the .npz and the PNG files go: a new or empty folder, or any with ``overwrite`` (it is then
            replaced whole once the new samples are written).
        accelerator (`accelerate.Accelerator`, *optional*): splits the work across its processes.
        overwrite (`bool`): replace a non-empty ``output_dir``.

    Returns:
        The .npz path on the main process; None on the others.
    """
    from .pipeline_upsampling import ADMUpsamplingPipeline

    if job.num_samples < 1 or job.batch_size < 1:
        raise ValueError(f"expected num_samples and batch_size >= 1, got {job.num_samples} and {job.batch_size}")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    output_dir = check_output_dir(output_dir, overwrite)
    upsampling = isinstance(pipeline, ADMUpsamplingPipeline)
    base_images = base_labels = None
    if upsampling:
        if not job.base_samples:
            raise ValueError("expected base_samples (an .npz of low-resolution images) for an upsampling pipeline, got none")
        with np.load(job.base_samples) as data:
            base_images = data["arr_0"]
            base_labels = data["arr_1"] if "arr_1" in data else None
        if len(base_images) < job.num_samples:
            raise ValueError(f"expected at least {job.num_samples} base samples, got {len(base_images)} in {job.base_samples}")
        if base_labels is not None and (base_labels.ndim != 1 or not np.issubdtype(base_labels.dtype, np.integer)):
            raise ValueError(f"expected arr_1 of {job.base_samples} as 1-D integer labels, got {base_labels.dtype} of shape {base_labels.shape}")
        if base_labels is None and not job.class_labels and getattr(pipeline.unet.config, "num_classes", None):
            raise ValueError(f"expected labels (arr_1) in {job.base_samples} for the class-conditional upsampler (or class_labels), got none")
    elif job.base_samples:
        raise ValueError("expected base_samples only with an upsampling pipeline")
    num_classes = getattr(pipeline.unet.config, "num_classes", None)
    if not num_classes and job.classifier_scale and getattr(pipeline, "classifier", None) is not None:
        num_classes = pipeline.classifier.config.num_classes
    if getattr(pipeline.unet.config, "class_dropout_prob", 0.0) > 0 and not job.class_labels and job.guidance_scale is None and not job.classifier_scale:
        num_classes = None  # a label-dropout model sampled without any label information

    mine = list(range(rank, job.num_samples, world))
    images: list[np.ndarray] = []
    labels: list[int] = []
    for start in range(0, len(mine), job.batch_size):
        indices = mine[start : start + job.batch_size]
        generators = [torch.Generator(device=pipeline.device).manual_seed(job.seed + k) for k in indices]
        batch_labels = _labels_for(job, indices, num_classes, base_labels)
        common = dict(generator=generators, num_inference_steps=job.num_inference_steps, timestep_respacing=job.timestep_respacing,
                      eta=job.eta, clip_denoised=job.clip_denoised, output_type="pt")
        if upsampling:
            low_res = base_images[indices]
            out = pipeline(low_res, class_labels=batch_labels if num_classes else None, **common).images
        else:
            out = pipeline(class_labels=batch_labels, batch_size=len(indices), classifier_scale=job.classifier_scale,
                           guidance_scale=job.guidance_scale, **common).images
        # the originals' quantisation: ((x + 1) * 127.5).clamp(0, 255).to(uint8), i.e. truncation
        images.append((out * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        labels.extend(batch_labels or [])

    shard = dict(indices=np.array(mine, dtype=np.int64), images=np.concatenate(images) if images else None, labels=np.array(labels, dtype=np.int64))
    if accelerator is None or world == 1:
        return _write_outputs(output_dir, [shard])
    shards_dir = output_dir.parent / f".{output_dir.name}.shards"
    if accelerator.is_main_process:
        shards_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    np.savez(shards_dir / f"rank{rank}.npz", **{k: v for k, v in shard.items() if v is not None})
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        loaded = []
        for r in range(world):
            with np.load(shards_dir / f"rank{r}.npz") as data:
                loaded.append({k: data[k] for k in data.files})
        path = _write_outputs(output_dir, loaded)
        for r in range(world):
            (shards_dir / f"rank{r}.npz").unlink()
        shards_dir.rmdir()
    accelerator.wait_for_everyone()
    return path


def _write_outputs(output_dir: Path, shards: list[dict[str, np.ndarray]]) -> Path:
    indices = np.concatenate([s["indices"] for s in shards])
    images = np.concatenate([s["images"] for s in shards if s.get("images") is not None])
    order = np.argsort(indices)
    if not np.array_equal(indices[order], np.arange(len(indices))):
        raise RuntimeError(f"sample indices do not cover 0..{len(indices) - 1} exactly once")
    images = images[order]
    labels = np.concatenate([s["labels"] for s in shards])
    arrays = {"arr_0": images}
    if len(labels):
        arrays["arr_1"] = labels[order]
    n, h, w, c = images.shape
    name = f"samples_{n}x{h}x{w}x{c}.npz"
    from PIL import Image

    def write(folder: Path) -> None:
        np.savez(folder / name, **arrays)
        for k, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{k:06d}.png")

    write_folder_atomically(output_dir, write)  # the whole folder is written aside, then replaces output_dir in one step
    return output_dir / name
