"""The web demo's inpainting: an image and the strokes drawn on it to a RePaint fill by the loaded pipeline.

No Gradio here: the page hands over what its image editor holds (the background image and the drawn layers) and
shows what comes back, so the logic is tested without a browser.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from ..pipelines.pipeline_adm_inpaint import ADMInpaintPipeline
from ..schedulers import GuidedDDPMScheduler
from .chain import Guidance, check_seed
from .images import to_grid_image

__all__ = ["MAX_UPLOAD_PIXELS", "InpaintResult", "check_upload", "inpaint", "mask_from_layers"]

# A model pixel is filled when the strokes cover at least this share of it (thin strokes on a large canvas still count).
_COVERAGE = 0.25
# The largest upload decoded (a 12-megapixel phone photo fits): its RGBA copies stay near 64 MB each. Every upload is
# resized to the model's size (at most a few hundred pixels a side), so nothing larger is needed.
MAX_UPLOAD_PIXELS = 4096 * 4096


def check_upload(file: str | os.PathLike | bytes | IO[bytes], max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[int, int]:
    """An uploaded image's ``(width, height)``, read from its header, refused above ``max_pixels`` before any pixel is
    decoded (a 9000 x 9000 upload decoded whole takes about 1 GB as the page's RGBA copies, to be resized to 64 px).

    Args:
        file: the upload: a path, its bytes, or a binary file.
        max_pixels: the most pixels accepted.

    Raises:
        ValueError: one line: not an image PIL reads, or too large (with its size).
    """
    source = io.BytesIO(file) if isinstance(file, (bytes, bytearray, memoryview)) else file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below, in one line
            with Image.open(source) as image:  # reads the header only
                width, height = image.size
    except Image.DecompressionBombError as error:
        raise ValueError(f"expected an image of at most {max_pixels / 1e6:.1f} megapixels, got a larger one ({error})") from None
    except (OSError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise ValueError(f"expected an image file (PNG, JPEG, WebP, ...), got one PIL cannot read ({error})") from None
    _check_size(width, height, max_pixels)
    return width, height


def _check_size(width: int, height: int, max_pixels: int = MAX_UPLOAD_PIXELS) -> None:
    if width * height > max_pixels:
        raise ValueError(
            f"expected an image of at most {max_pixels / 1e6:.1f} megapixels, got {width} x {height} ({width * height / 1e6:.1f} "
            "megapixels): scale it down before uploading (it is resized to the model's size anyway)"
        )


@dataclass(frozen=True)
class InpaintResult:
    """What the page shows: the input at the model's size with the mask tinted, the filled image, and a status line."""

    masked: Image.Image
    filled: Image.Image
    status: str


def mask_from_layers(layers: list[Image.Image], size: int) -> np.ndarray:
    """The drawn strokes (any pixel with some opacity, on any layer) as a (size, size) bool mask of pixels to fill.

    Args:
        layers: the editor's drawing layers, RGBA, all of the canvas's size.
        size: the model's image size.
    """
    if not layers:
        raise ValueError("expected strokes drawn on the image to mark what to fill, got none")
    painted = np.zeros(layers[0].size[::-1], dtype=np.float32)
    for layer in layers:
        alpha = np.asarray(layer.convert("RGBA"))[..., 3]
        painted = np.maximum(painted, (alpha > 0).astype(np.float32))
    coverage = np.asarray(Image.fromarray(painted * 255).convert("L").resize((size, size), Image.Resampling.BOX)) / 255
    return coverage >= _COVERAGE


def inpaint(
    pipeline: Any,
    background: Image.Image | None,
    layers: list[Image.Image],
    guidance: Guidance,
    steps: int,
    seed: int,
    jump_length: int = 10,
    jump_n_sample: int = 10,
) -> InpaintResult:
    """Fill the strokes drawn on ``background`` with RePaint on the loaded pipeline's U-Net (and classifier).

    Args:
        pipeline: a loaded [`ClassifierGuidedPipeline`]; its components are shared, the scheduler is a fresh
            [`GuidedDDPMScheduler`] of the same process (each request has its own).
        background: the uploaded image, up to ``MAX_UPLOAD_PIXELS`` (resized to the model's size, as a square); an
            image opened lazily (``Image.open``) is refused above that before it is decoded.
        layers: the editor's drawing layers.
        guidance: the class and scales, as the sampling controls set them.
        steps: the sampling steps the RePaint schedule runs over.
        seed: the noise's seed.
        jump_length: RePaint's jump length.
        jump_n_sample: RePaint's resampling count.
    """
    if background is None:
        raise ValueError("expected an image to inpaint: upload one into the editor first")
    seed = check_seed(seed)
    _check_size(*background.size)
    size = pipeline.unet.config.sample_size
    image = background.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    mask = mask_from_layers(layers, size)
    if not mask.any():
        raise ValueError("expected strokes covering at least one model pixel, got none: draw a larger stroke")
    filler = ADMInpaintPipeline(
        unet=pipeline.unet, scheduler=GuidedDDPMScheduler.from_config(pipeline.scheduler.config),
        classifier=pipeline.classifier, id2label=pipeline.config.id2label,
    )
    filler.set_progress_bar_config(disable=True)
    labels = None if guidance.class_label is None else [guidance.class_label]
    calls = []
    handle = filler.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        filled = filler(
            image, mask.astype(np.float32), class_labels=labels, num_inference_steps=int(steps),
            jump_length=jump_length, jump_n_sample=jump_n_sample, classifier_scale=guidance.classifier_scale,
            guidance_scale=guidance.guidance_scale, generator=torch.Generator().manual_seed(seed), output_type="pt",
        ).images
    finally:
        handle.remove()
    shown = np.asarray(image).astype(np.float32)
    shown[mask] = 0.5 * shown[mask] + 0.5 * np.array([255.0, 0.0, 255.0])  # the region to fill, tinted magenta
    masked = to_grid_image(torch.from_numpy(shown / 127.5 - 1).permute(2, 0, 1)[None])
    status = (
        f"Filled {int(mask.sum())} of {size * size} pixels: RePaint over {int(steps)} steps, jump length {jump_length}, "
        f"{jump_n_sample} resamplings, {len(calls)} U-Net evaluations, seed {seed}."
    )
    return InpaintResult(masked=masked, filled=to_grid_image(filled * 2 - 1), status=status)
