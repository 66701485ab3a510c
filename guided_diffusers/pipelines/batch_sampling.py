"""Many samples from a pipeline folder, split across processes, written as the originals write them.

The originals' image_sample / classifier_sample / super_res_sample save ``samples_NxHxWx3.npz`` with ``arr_0`` (uint8
NHWC) and, for class-conditional runs, ``arr_1`` (labels), which their evaluator reads. Here sample k is drawn from
its own generator seeded with ``seed + k``, so a run gives the same images whatever the number of processes; each
process takes the indices k = rank, rank + P, ...; the main process merges them in index order: exactly N, none twice.
Images keep the model's channels: ``arr_0`` is ``(N, H, W, C)``, so a grey model gives ``samples_NxHxWx1.npz`` and
grey PNGs; PNGs are written for 1 and 3 channels (other counts have no PNG form: the ``.npz`` only).

The output place is reserved before any sampling (a temporary folder beside ``output_dir``, or inside it when it is a
mount point, which cannot be replaced), so an unwritable place is refused before the work. The samples are written
there and moved into place whole, so ``output_dir`` holds one run's samples, never a mixture; if that last move
fails, the finished samples are kept in a folder beside it and the error says where.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models import null_class_id
from ..publishing import make_temp_folder, remove_stale_temp_folders, replace_directory


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


@dataclass
class OutputReservation:
    """The place a run's samples are written before they are moved to ``output_dir`` (see [`reserve_output_dir`]).

    Attributes:
        output_dir: where the samples go.
        temp: the temporary folder they are written into.
        inside: ``temp`` is inside ``output_dir`` (a mount point, or a folder whose parent cannot be written): the
            files are moved into it one by one instead of the folder replacing it.
        kept: the finished samples stayed in ``temp`` because the final move failed; nothing removes it.
    """

    output_dir: Path
    temp: Path
    inside: bool
    kept: bool = False

    def release(self) -> None:
        """Remove the temporary folder unless it holds finished samples that could not be moved (idempotent)."""
        if not self.kept:
            shutil.rmtree(self.temp, ignore_errors=True)


def _writes_inside(output_dir: Path) -> bool:
    """Whether the samples are written inside ``output_dir`` rather than beside it: an existing folder that cannot be
    swapped (a mount point) or has no writable parent to write beside it in."""
    resolved = output_dir.resolve()
    return resolved.is_dir() and (os.path.ismount(resolved) or not os.access(resolved.parent, os.W_OK))


def _temp_target(output_dir: Path, inside: bool) -> Path:
    # make_temp_folder(target) makes its folder beside target: beside output_dir, or inside it.
    return output_dir / "samples" if inside else output_dir


def reserve_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> OutputReservation:
    """Take the samples' place before any sampling: check ``output_dir`` ([`check_output_dir`]) and make the
    temporary folder the samples are written into, so that an unwritable place is refused before the work.

    The folder is made beside ``output_dir`` and later swapped in whole. A mount point (a container's volume) cannot
    be swapped (the kernel answers EBUSY), nor can a folder be made beside an existing one whose parent is not
    writable: then the folder is made inside ``output_dir`` and the files are moved in (such an ``output_dir`` must
    be empty: it cannot be replaced whole, so ``overwrite`` cannot apply).

    Args:
        output_dir: the samples' folder.
        overwrite: replace a non-empty ``output_dir``.

    Raises:
        ValueError: one line: a non-empty folder without ``overwrite``, a missing parent, or no writable place.
    """
    output_dir = Path(output_dir)
    resolved = output_dir.resolve()
    if not resolved.parent.is_dir():
        raise ValueError(f"expected --output_dir in an existing folder, got {str(output_dir)!r}")
    inside = _writes_inside(output_dir)
    if inside:
        remove_stale_temp_folders(_temp_target(resolved, True))
        if any(resolved.iterdir()):
            what = "a mount point" if os.path.ismount(resolved) else "a folder in an unwritable parent"
            raise ValueError(f"expected an empty --output_dir, got non-empty {str(output_dir)!r}: it is {what}, which cannot be "
                             "replaced whole (even with --overwrite); empty it or name a new folder inside it")
    else:
        check_output_dir(output_dir, overwrite)
    try:
        temp = make_temp_folder(_temp_target(output_dir, inside))
    except OSError as error:
        place = output_dir if inside else resolved.parent
        raise ValueError(f"expected a writable place for --output_dir {str(output_dir)!r}, got {error.strerror or error} "
                         f"creating a folder in {str(place)!r}") from None
    return OutputReservation(output_dir, temp, inside)


def _move_into_place(reservation: OutputReservation, num_samples: int) -> None:
    """The written samples to ``output_dir``; if that fails, they are kept in a folder beside it and the one-line
    error says where (never deleted: they took the whole run to compute)."""
    output_dir, temp = reservation.output_dir, reservation.temp
    try:
        if reservation.inside:
            # The .npz last: once it is there, every PNG is too.
            for entry in sorted(temp.iterdir(), key=lambda path: path.suffix == ".npz"):
                os.replace(entry, output_dir / entry.name)
            temp.rmdir()
        else:
            replace_directory(temp, output_dir)
        return
    except OSError as error:
        reason = error.strerror or str(error)
    # A name that no later run takes for a killed run's temporary folder.
    kept = temp.with_name(f"{output_dir.name}.finished-{temp.name.rsplit('.', 1)[-1]}")
    try:
        os.replace(temp, kept)
        reservation.temp = kept
        note = ""
    except OSError:
        kept, note = temp, " (rename it: a later run into the same place removes folders of that name)"
    reservation.kept = True
    where = "those not moved yet are" if reservation.inside else "they are all"
    raise ValueError(f"could not move the {num_samples} finished samples into {str(output_dir)!r} ({reason}); {where} "
                     f"in {str(kept)!r}{note}: move them from there") from None


def run_sampling_job(
    pipeline: Any,
    job: SamplingJob,
    output_dir: str | os.PathLike,
    accelerator: Any = None,
    overwrite: bool = False,
    reservation: OutputReservation | None = None,
) -> Path | None:
    """Sample ``job.num_samples`` images with ``pipeline`` and write ``samples_NxHxWxC.npz`` and PNGs to ``output_dir``.

    Args:
        pipeline: a [`ClassifierGuidedPipeline`] or [`ADMUpsamplingPipeline`].
        job ([`SamplingJob`]): what to sample.
        output_dir: where the .npz and the PNG files go: a new or empty folder, or any with ``overwrite`` (it is then
            replaced whole once the new samples are written).
        accelerator (`accelerate.Accelerator`, *optional*): splits the work across its processes.
        overwrite (`bool`): replace a non-empty ``output_dir``.
        reservation ([`OutputReservation`], *optional*): the main process's place for ``output_dir``, taken earlier
            with [`reserve_output_dir`] (the caller releases it); by default it is taken here, before any sampling.

    Returns:
        The .npz path on the main process; None on the others.

    Raises:
        ValueError: one line: bad arguments or an unwritable place (before any sampling), or a final move that
            failed (the finished samples are kept; the message says where).
    """
    from .pipeline_upsampling import ADMUpsamplingPipeline

    if job.num_samples < 1 or job.batch_size < 1:
        raise ValueError(f"expected num_samples and batch_size >= 1, got {job.num_samples} and {job.batch_size}")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    output_dir = check_output_dir(output_dir, overwrite) if reservation is None else reservation.output_dir
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
    if null_class_id(pipeline.unet) is not None and not job.class_labels and job.guidance_scale is None and not job.classifier_scale:
        num_classes = None  # a label-dropout model sampled without any label information

    is_main = accelerator is None or accelerator.is_main_process
    own_reservation = reservation is None and is_main
    if own_reservation:
        reservation = reserve_output_dir(output_dir, overwrite)
    try:
        shard = _sample_shard(pipeline, job, rank, world, num_classes, upsampling, base_images, base_labels)
        if accelerator is None or world == 1:
            return _write_outputs(reservation, [shard])
        return _merge_shards(accelerator, output_dir, reservation, shard)
    finally:
        if own_reservation:
            reservation.release()


def _sample_shard(pipeline: Any, job: SamplingJob, rank: int, world: int, num_classes: int | None, upsampling: bool,
                  base_images: np.ndarray | None, base_labels: np.ndarray | None) -> dict[str, np.ndarray | None]:
    """This process's samples (indices rank, rank + world, ...) as uint8 NHWC, their indices and labels."""
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
    return dict(indices=np.array(mine, dtype=np.int64), images=np.concatenate(images) if images else None,
                labels=np.array(labels, dtype=np.int64))


def _shards_dir(output_dir: Path) -> Path:
    """Where the processes leave their samples for the main one: beside ``output_dir``, or inside a mount point."""
    resolved = output_dir.resolve()
    return (resolved if _writes_inside(output_dir) else resolved.parent) / f".{output_dir.name}.shards"


def _merge_shards(accelerator: Any, output_dir: Path, reservation: OutputReservation | None, shard: dict) -> Path | None:
    """Every process's samples to the main process (through files), which writes them all."""
    rank, world = accelerator.process_index, accelerator.num_processes
    shards_dir = _shards_dir(output_dir)
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
        shutil.rmtree(shards_dir, ignore_errors=True)
        path = _write_outputs(reservation, loaded)
    accelerator.wait_for_everyone()
    return path


def _write_outputs(reservation: OutputReservation, shards: list[dict[str, np.ndarray]]) -> Path:
    """Merge the shards in index order, write the .npz and the PNGs into the reservation, move them into place."""
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

    np.savez(reservation.temp / name, **arrays)
    if c in (1, 3):  # PIL's grey (L, from H x W) and RGB; other channel counts have no PNG form
        for k, image in enumerate(images):
            Image.fromarray(image[..., 0] if c == 1 else image).save(reservation.temp / f"{k:06d}.png")
    _move_into_place(reservation, n)
    return reservation.output_dir / name
