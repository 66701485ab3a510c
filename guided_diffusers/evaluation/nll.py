"""Negative log-likelihood in bits per dimension over a dataset: the originals' ``image_nll``, on our pipelines.

Each image's whole variational bound comes from [`~guided_diffusers.evaluation.calc_bpd_loop`] (the prior term plus one
term per step of the full training process, decoder NLL at t = 0). Here the dataset is cut into global batches of
``batch_size`` consecutive images; batch b is evaluated by process ``b % num_processes`` with the noise of a generator
seeded ``seed + b``, so every image gets the same noise, and the same bound, whatever the number of processes. Each
image is evaluated exactly once (the original cycles its loader until ``num_samples`` and averages batch means).
Per-image totals and per-step sums are gathered from every process at the end.

``scripts/image_nll.py`` is the command line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models import null_class_id
from .bpd import calc_bpd_loop
from ..publishing import write_atomically
from .image_data import EvaluationImages

__all__ = [
    "BPD_SUMMARY_FILENAME",
    "BPD_TERMS_FILENAME",
    "BitsPerDimResults",
    "check_conditioning",
    "check_pipeline_for_bpd",
    "evaluate_bits_per_dim",
    "write_bits_per_dim_results",
]

BPD_TERMS_FILENAME = "bpd_terms.npz"
BPD_SUMMARY_FILENAME = "bpd_summary.json"


@dataclass
class BitsPerDimResults:
    """The variational bound over a dataset.

    Per-step arrays are in the originals' loop order (their ``*_terms.npz``): entry k is step ``timesteps[k]`` =
    T - 1 - k; each is the mean over the images.

    Attributes:
        indices: (N,) dataset positions of the evaluated images, ascending.
        total_bpd: (N,) each image's whole bound in bits/dim.
        prior_bpd: (N,) each image's prior term KL(q(x_T | x_0) || N(0, I)) in bits/dim.
        timesteps: (T,) the step of each per-step entry.
        vb_terms: (T,) mean vb term per step in bits/dim (the decoder NLL at step 0).
        xstart_mse_terms: (T,) mean squared error of the x_0 prediction per step.
        mse_terms: (T,) mean squared error of the implied epsilon per step.
        num_processes: how many processes shared the work.
    """

    indices: np.ndarray
    total_bpd: np.ndarray
    prior_bpd: np.ndarray
    timesteps: np.ndarray
    vb_terms: np.ndarray
    xstart_mse_terms: np.ndarray
    mse_terms: np.ndarray
    num_processes: int = 1

    @property
    def num_images(self) -> int:
        return int(len(self.indices))

    def summary(self) -> dict[str, Any]:
        """Dataset means: the bound and its parts (bits/dim), and the MSEs averaged over steps.

        ``total_bpd_std_error`` is the standard error of the mean over images (None for one image).
        """
        n = self.num_images
        std_error = float(np.std(self.total_bpd, ddof=1) / math.sqrt(n)) if n > 1 else None
        decoder = float(self.vb_terms[self.timesteps == 0][0])
        return {
            "num_images": n,
            "num_timesteps": int(len(self.timesteps)),
            "total_bpd": float(np.mean(self.total_bpd)),
            "total_bpd_std_error": std_error,
            "prior_bpd": float(np.mean(self.prior_bpd)),
            "vb_bpd": float(np.sum(self.vb_terms)),
            "decoder_nll_bpd": decoder,
            "xstart_mse": float(np.mean(self.xstart_mse_terms)),
            "mse": float(np.mean(self.mse_terms)),
        }

    def report_lines(self) -> list[str]:
        """What the command line prints."""
        s = self.summary()
        return [
            f"images: {s['num_images']}, steps: {s['num_timesteps']}, processes: {self.num_processes}",
            f"total bpd: {s['total_bpd']:.6f}"
            + (f" (std error {s['total_bpd_std_error']:.6f})" if s["total_bpd_std_error"] is not None else ""),
            f"prior bpd: {s['prior_bpd']:.6f}",
            f"vb bpd (sum over steps): {s['vb_bpd']:.6f} (decoder NLL at t=0: {s['decoder_nll_bpd']:.6f})",
            f"xstart mse: {s['xstart_mse']:.6f}, mse: {s['mse']:.6f}",
        ]


def check_pipeline_for_bpd(pipeline: Any) -> tuple[Any, torch.nn.Module]:
    """The process and the denoising network of a pipeline, or a one-line error saying why the bound cannot be taken.

    Args:
        pipeline: a loaded pipeline (e.g. [`ClassifierGuidedPipeline`]).

    Returns:
        ``(scheduler, unet)``: a guided scheduler (whose full training process the bound uses) and the U-Net.

    Raises:
        ValueError: no U-Net, a super-resolution or non-RGB U-Net, or a scheduler without the training process.
    """
    from ..models import ADMSuperResUNet2DModel
    from ..schedulers.gaussian import GaussianDiffusion

    unet = getattr(pipeline, "unet", None)
    if unet is None:
        raise ValueError(f"expected a pipeline with a unet, got {type(pipeline).__name__} without one")
    if isinstance(unet, ADMSuperResUNet2DModel):
        raise ValueError("expected a base (non-super-resolution) U-Net, got ADMSuperResUNet2DModel, which needs low_res")
    if getattr(unet.config, "in_channels", 3) != 3:
        raise ValueError(f"expected a U-Net on RGB images (in_channels 3), got in_channels {unet.config.in_channels}")
    scheduler = getattr(pipeline, "scheduler", None)
    if not isinstance(getattr(scheduler, "diffusion", None), GaussianDiffusion):
        raise ValueError(
            "expected a GuidedDDPMScheduler or GuidedDDIMScheduler (it carries the training process), "
            f"got {type(scheduler).__name__}"
        )
    return scheduler, unet


def check_conditioning(unet: Any, images: EvaluationImages, use_null_label: bool = False) -> tuple[int | None, int | None]:
    """What class conditioning the model gets: ``(num_classes, null_label)``, checked against the data.

    Args:
        unet: the model (its config's ``num_classes`` and ``class_dropout_prob`` are read).
        images: the data; its labels must lie in [0, num_classes) for a class-conditional model.
        use_null_label: give a label-dropout model its null label (the unconditional bound) instead of the labels.

    Returns:
        ``(None, None)`` for an unconditional model; ``(num_classes, None)`` with the data's labels;
        ``(num_classes, num_classes)`` with the null label.

    Raises:
        ValueError: labels missing or out of range, or a null label the model does not have.
    """
    num_classes = getattr(unet.config, "num_classes", None) or None
    if use_null_label:
        if null_class_id(unet) is None:
            raise ValueError(
                "expected a model trained with label dropout (config class_dropout_prob > 0) for the null label, "
                "got one without a null class"
            )
        return num_classes, num_classes
    if num_classes is None:
        return None, None
    if images.labels is None:
        raise ValueError(
            f"expected class labels for a class-conditional model ({num_classes} classes), got none from {images.source!r}"
        )
    bad = sorted({label for label in images.labels if not 0 <= label < num_classes})
    if bad:
        raise ValueError(f"expected class labels in [0, {num_classes}), got {bad[:5]} in {images.source!r}")
    return num_classes, None


def _gather(payload: dict[str, Any], accelerator: Any) -> list[dict[str, Any]]:
    if accelerator is None or accelerator.num_processes == 1:
        return [payload]
    from accelerate.utils import gather_object

    return gather_object([payload])


def evaluate_bits_per_dim(
    scheduler: Any,
    unet: torch.nn.Module,
    images: EvaluationImages,
    *,
    batch_size: int = 16,
    num_images: int | None = None,
    seed: int = 0,
    clip_denoised: bool = True,
    use_null_label: bool = False,
    accelerator: Any = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    step_progress: bool = False,
) -> BitsPerDimResults:
    """The variational bound of every image (the first ``num_images``), split across ``accelerator``'s processes.

    Args:
        scheduler: a guided scheduler or [`GaussianDiffusion`]; the bound runs over its full training process.
        unet: the model in eval mode, called as ``unet(x_t, model_timesteps, class_labels=...)``, in float32.
        images ([`EvaluationImages`]): the data (its labels are checked against the model first).
        batch_size: images per global batch.
        num_images: evaluate only the first ``num_images`` (default: all).
        seed: batch b draws its noise from a generator seeded ``seed + b``.
        clip_denoised: clip the x_0 predictions to [-1, 1], as the originals' default.
        use_null_label: condition a label-dropout model on its null label (the unconditional bound).
        accelerator (`accelerate.Accelerator`, *optional*): shares the batches among its processes.
        device: where to compute (default: the accelerator's device, else the model's).
        progress: a progress bar over images on the main process.
        step_progress: also a bar over the steps of each batch (main process).

    Returns:
        [`BitsPerDimResults`], the same on every process.
    """
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    total = len(images) if num_images is None else num_images
    if not 1 <= total <= len(images):
        raise ValueError(f"expected num_images in [1, {len(images)}] for {images.source!r}, got {num_images}")
    if getattr(unet, "training", False):
        raise ValueError("expected the model in eval mode (dropout off) for the bound, got training mode; call .eval()")
    num_classes, null_label = check_conditioning(unet, images, use_null_label)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    is_main = accelerator is None or accelerator.is_main_process
    if device is None:
        device = accelerator.device if accelerator is not None else next(unet.parameters()).device
    device = torch.device(device)

    num_batches = math.ceil(total / batch_size)
    my_batches = range(rank, num_batches, world)
    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="bits/dim", unit="img")
    indices_done: list[np.ndarray] = []
    totals: list[np.ndarray] = []
    priors: list[np.ndarray] = []
    sums: dict[str, np.ndarray] = {}
    for batch_index in my_batches:
        indices = list(range(batch_index * batch_size, min((batch_index + 1) * batch_size, total)))
        x_start, labels = images.load(indices)
        x_start = x_start.to(device)
        model_kwargs = {}
        if num_classes is not None:
            if null_label is not None:
                labels = torch.full((len(indices),), null_label, dtype=torch.long)
            model_kwargs["class_labels"] = labels.to(device)
        generator = torch.Generator(device=device).manual_seed(seed + batch_index)
        terms = calc_bpd_loop(scheduler, unet, x_start, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                              generator=generator, progress=step_progress and is_main)
        indices_done.append(np.asarray(indices, dtype=np.int64))
        totals.append(terms["total_bpd"].double().cpu().numpy())
        priors.append(terms["prior_bpd"].double().cpu().numpy())
        for key in ("vb", "xstart_mse", "mse"):
            batch_sum = terms[key].double().sum(dim=0).cpu().numpy()
            sums[key] = sums[key] + batch_sum if key in sums else batch_sum
        if bar is not None:
            # This round's batches on every process: batch_index .. batch_index + world - 1.
            round_end = min((batch_index + world) * batch_size, total)
            bar.update(round_end - bar.n)
            bar.set_postfix(bpd=f"{np.mean(np.concatenate(totals)):.4f}")
    if bar is not None:
        bar.close()

    num_timesteps = int(getattr(scheduler, "diffusion", scheduler).num_timesteps)
    payload = {
        "indices": np.concatenate(indices_done) if indices_done else np.zeros(0, dtype=np.int64),
        "total_bpd": np.concatenate(totals) if totals else np.zeros(0),
        "prior_bpd": np.concatenate(priors) if priors else np.zeros(0),
        "sums": sums or {key: np.zeros(num_timesteps) for key in ("vb", "xstart_mse", "mse")},
    }
    shards = _gather(payload, accelerator)
    indices_all = np.concatenate([s["indices"] for s in shards])
    order = np.argsort(indices_all, kind="stable")
    if not np.array_equal(indices_all[order], np.arange(total)):
        raise RuntimeError(f"gathered image indices do not cover 0..{total - 1} exactly once")
    means = {key: sum(s["sums"][key] for s in shards) / total for key in ("vb", "xstart_mse", "mse")}
    return BitsPerDimResults(
        indices=indices_all[order],
        total_bpd=np.concatenate([s["total_bpd"] for s in shards])[order],
        prior_bpd=np.concatenate([s["prior_bpd"] for s in shards])[order],
        timesteps=np.arange(num_timesteps - 1, -1, -1, dtype=np.int64),
        vb_terms=means["vb"],
        xstart_mse_terms=means["xstart_mse"],
        mse_terms=means["mse"],
        num_processes=world,
    )


def write_bits_per_dim_results(
    results: BitsPerDimResults, output_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``bpd_terms.npz`` (every array of the results) and ``bpd_summary.json`` (the summary and ``metadata``).

    Each file is written to a temporary name and renamed, so a reader never sees half a file.

    Args:
        results: what [`evaluate_bits_per_dim`] returned.
        output_dir: the directory (created if missing).
        metadata: run settings to record in the JSON (pipeline, dataset, seed...).

    Returns:
        ``(npz_path, json_path)``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        "indices": results.indices,
        "total_bpd": results.total_bpd,
        "prior_bpd": results.prior_bpd,
        "timesteps": results.timesteps,
        "vb_terms": results.vb_terms,
        "xstart_mse_terms": results.xstart_mse_terms,
        "mse_terms": results.mse_terms,
    }
    npz_path = output_dir / BPD_TERMS_FILENAME
    write_atomically(npz_path, lambda f: np.savez(f, **arrays), ".npz")
    report = {**dict(metadata or {}), "num_processes": results.num_processes, **results.summary()}
    json_path = output_dir / BPD_SUMMARY_FILENAME
    write_atomically(json_path, lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()), ".json")
    return npz_path, json_path
