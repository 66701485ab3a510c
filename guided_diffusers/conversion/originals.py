"""Reading original checkpoints into our models: ``torch.load(weights_only=True)``, the model built from the original
flags or constructor kwargs, then every weight mapped and checked (state_dict.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import UNet2DModel

from ..safe_loading import load_weights_only
from ..models import ADMClassifier, ADMSuperResUNet2DModel, ADMUNet2DModel
from ..models.folders import check_config_types
from .flags import CONSISTENCY_MODELS, SOURCES, classifier_kwargs_from_flags, unet_kwargs_from_flags
from .state_dict import load_adm_classifier_state_dict, load_adm_unet_state_dict, load_ddpm_state_dict

# Constructor kwargs of the originals that do not change the network's weights or numerics.
_RUNTIME_ONLY = {"use_checkpoint", "use_fp16", "dims"}


def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an original ``.pt`` checkpoint safely (``weights_only=True``: tensors only, no code runs)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"expected an original checkpoint file, got {str(path)!r} (no such file)")
    if os.path.getsize(path) == 0:
        raise ValueError(f"expected a PyTorch checkpoint (torch.save) at {str(path)!r}, got an empty file (0 bytes)")
    state_dict = load_weights_only(path, "a PyTorch checkpoint (torch.save)")
    if isinstance(state_dict, Mapping) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, Mapping) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"expected a state dict of tensors at {str(path)!r}, got {type(state_dict).__name__}")
    return dict(state_dict)


def _check_kwargs(kwargs: Mapping[str, Any], allowed: set[str], what: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"expected {what} constructor kwargs as a JSON object, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - allowed - _RUNTIME_ONLY)
    if unknown:
        raise ValueError(f"expected {what} constructor kwargs, got unknown keys {unknown}")
    missing = [key for key in required if key not in kwargs]
    if missing:
        raise ValueError(f"expected {what} constructor kwargs with {list(required)}, got none for {missing}")
    if kwargs.get("dims", 2) != 2:
        raise ValueError(f"expected a 2-D model (dims=2), got dims={kwargs['dims']}")
    return dict(kwargs)


def _checked(model_class: type, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` after its values' types are checked against ``model_class``'s constructor (one line, before any
    checkpoint is read): a value given as ``"32"`` in a JSON config is refused here, not deep inside torch."""
    check_config_types(model_class, model_class.__init__, config)
    return config


def _head_channels(value: int | None) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return value  # None, or a wrong type that _checked reports
    return None if value <= 0 else value


_UNET_KWARGS = {
    "image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
    "dropout", "channel_mult", "conv_resample", "num_classes", "num_heads", "num_head_channels",
    "num_heads_upsample", "use_scale_shift_norm", "resblock_updown", "use_new_attention_order",
    "large_size", "small_size",
}  # fmt: skip
_UNET_REQUIRED = ("model_channels", "out_channels", "num_res_blocks", "attention_resolutions")
_CLASSIFIER_KWARGS = {
    "image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
    "dropout", "channel_mult", "conv_resample", "num_heads", "num_head_channels", "num_heads_upsample",
    "use_scale_shift_norm", "resblock_updown", "use_new_attention_order", "pool",
}  # fmt: skip


def adm_unet_config(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Our ADMUNet2DModel config from the original UNetModel/SuperResModel constructor kwargs."""
    kwargs = _check_kwargs(kwargs, _UNET_KWARGS, "UNetModel/SuperResModel", _UNET_REQUIRED)
    return _checked(ADMUNet2DModel, dict(
        sample_size=kwargs.get("image_size", kwargs.get("large_size")),
        in_channels=kwargs.get("in_channels", 3),
        out_channels=kwargs["out_channels"],
        model_channels=kwargs["model_channels"],
        channel_mult=list(kwargs.get("channel_mult", (1, 2, 4, 8))),
        num_res_blocks=kwargs["num_res_blocks"],
        attention_downsample_factors=list(kwargs["attention_resolutions"]),
        dropout=kwargs.get("dropout", 0.0),
        num_classes=kwargs.get("num_classes"),
        num_heads=kwargs.get("num_heads", 1),
        num_head_channels=_head_channels(kwargs.get("num_head_channels")),
        num_heads_upsample=_head_channels(kwargs.get("num_heads_upsample")),
        use_scale_shift_norm=kwargs.get("use_scale_shift_norm", False),
        resblock_updown=kwargs.get("resblock_updown", False),
        conv_resample=kwargs.get("conv_resample", True),
    ))


def adm_classifier_config(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Our ADMClassifier config from the original EncoderUNetModel constructor kwargs."""
    kwargs = _check_kwargs(kwargs, _CLASSIFIER_KWARGS, "EncoderUNetModel", ("image_size", *_UNET_REQUIRED))
    return _checked(ADMClassifier, dict(
        sample_size=kwargs["image_size"],
        in_channels=kwargs.get("in_channels", 3),
        num_classes=kwargs["out_channels"],
        model_channels=kwargs["model_channels"],
        channel_mult=list(kwargs.get("channel_mult", (1, 2, 4, 8))),
        num_res_blocks=kwargs["num_res_blocks"],
        attention_downsample_factors=list(kwargs["attention_resolutions"]),
        dropout=kwargs.get("dropout", 0.0),
        num_heads=kwargs.get("num_heads", 1),
        num_head_channels=_head_channels(kwargs.get("num_head_channels")),
        use_scale_shift_norm=kwargs.get("use_scale_shift_norm", False),
        resblock_updown=kwargs.get("resblock_updown", False),
        conv_resample=kwargs.get("conv_resample", True),
        pool=kwargs.get("pool", "adaptive"),
    ))


_DDPM_KWARGS = {"ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv", "in_channels", "resolution"}


def ddpm_unet_config(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers UNet2DModel config equal to the DDPM port's ``Model(**kwargs)``."""
    _check_kwargs(kwargs, _DDPM_KWARGS, "DDPM Model", ("ch", "out_ch", "num_res_blocks", "attn_resolutions", "resolution", "in_channels"))
    if not kwargs.get("resamp_with_conv", True):
        raise ValueError("expected resamp_with_conv=True (every released DDPM model), got False")
    ch_mult = tuple(kwargs.get("ch_mult", (1, 2, 4, 8)))
    resolution = kwargs["resolution"]
    attention = [resolution // 2**level in set(kwargs["attn_resolutions"]) for level in range(len(ch_mult))]
    return dict(
        sample_size=resolution,
        in_channels=kwargs["in_channels"],
        out_channels=kwargs["out_ch"],
        block_out_channels=[kwargs["ch"] * m for m in ch_mult],
        layers_per_block=kwargs["num_res_blocks"],
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        freq_shift=1,
        flip_sin_to_cos=False,
        downsample_padding=0,  # the port pads (0, 1, 0, 1) before a stride-2 valid conv
        dropout=kwargs.get("dropout", 0.0),
        act_fn="silu",
        attention_head_dim=None,  # one head as wide as the channels
        norm_num_groups=32,
        norm_eps=1e-6,
    )


def unet_kwargs(
    flags: str | Mapping[str, Any] | None, constructor_kwargs: Mapping[str, Any] | None, source: str
) -> dict[str, Any]:
    """The original constructor kwargs from exactly one of ``flags`` or ``constructor_kwargs``."""
    if source not in SOURCES:
        raise ValueError(f"expected source in {SOURCES}, got {source!r}")
    if (flags is None) == (constructor_kwargs is None):
        raise ValueError("expected exactly one of flags or constructor_kwargs, got " + ("both" if flags is not None else "neither"))
    return dict(constructor_kwargs) if constructor_kwargs is not None else unet_kwargs_from_flags(flags, source)


def convert_unet_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "guided-diffusion",
    flags: str | Mapping[str, Any] | None = None,
    constructor_kwargs: Mapping[str, Any] | None = None,
) -> ADMUNet2DModel:
    """Build our U-Net from the original flags (or constructor kwargs) and load an original state dict into it.

    Args:
        state_dict: The original ``UNetModel``/``SuperResModel`` state dict.
        source: ``"guided-diffusion"``, ``"improved-diffusion"`` or ``"consistency-models"``: flag defaults differ;
            improved-diffusion always uses the legacy attention order, consistency_models always the new one.
        flags: The original scripts' model flags (a string such as ``"--num_channels 256 --class_cond True"`` or
            a mapping). ``large_size``/``small_size`` among them make a super-resolution model.
        constructor_kwargs: Instead of flags, the original class's constructor kwargs; ``large_size`` or
            ``small_size`` among them make a super-resolution model.

    Returns:
        An [`ADMUNet2DModel`] or [`ADMSuperResUNet2DModel`] in float32.

    Raises:
        ValueError: One error listing every missing key, unexpected key and shape mismatch.
    """
    kwargs = unet_kwargs(flags, constructor_kwargs, source)
    # improved-diffusion always splits heads first; consistency_models always splits q/k/v first (cm/unet.py).
    legacy_order = source == "improved-diffusion" or (source != CONSISTENCY_MODELS and not kwargs.get("use_new_attention_order", False))
    model_class = ADMSuperResUNet2DModel if ("large_size" in kwargs or "small_size" in kwargs) else ADMUNet2DModel
    model = model_class(**adm_unet_config(kwargs))
    load_adm_unet_state_dict(model, dict(state_dict), legacy_order)
    return model


def convert_classifier_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    *,
    flags: str | Mapping[str, Any] | None = None,
    constructor_kwargs: Mapping[str, Any] | None = None,
) -> ADMClassifier:
    """Build our noisy classifier from guided-diffusion's classifier flags (or EncoderUNetModel kwargs) and load
    an original state dict into it.

    Args:
        state_dict: The original ``EncoderUNetModel`` state dict.
        flags: The classifier flags (``--image_size 256 --classifier_width 128 ...``) as a string or mapping.
        constructor_kwargs: Instead of flags, the EncoderUNetModel constructor kwargs.

    Raises:
        ValueError: One error listing every missing key, unexpected key and shape mismatch.
    """
    if (flags is None) == (constructor_kwargs is None):
        raise ValueError("expected exactly one of flags or constructor_kwargs, got " + ("both" if flags is not None else "neither"))
    kwargs = dict(constructor_kwargs) if constructor_kwargs is not None else classifier_kwargs_from_flags(flags)
    model = ADMClassifier(**adm_classifier_config(kwargs))
    load_adm_classifier_state_dict(model, dict(state_dict), not kwargs.get("use_new_attention_order", False))
    return model


def convert_ddpm_checkpoint(
    state_dict: Mapping[str, torch.Tensor], *, constructor_kwargs: Mapping[str, Any]
) -> UNet2DModel:
    """Build a diffusers UNet2DModel equal to the DDPM port's ``Model(**constructor_kwargs)`` and load its state dict.

    Args:
        state_dict: The DDPM port's state dict (cifar10 / LSUN checkpoints).
        constructor_kwargs: ``ch``, ``out_ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``dropout``,
            ``resolution``, ``in_channels``.
    """
    model = UNet2DModel(**ddpm_unet_config(constructor_kwargs))
    load_ddpm_state_dict(model, dict(state_dict))
    return model
