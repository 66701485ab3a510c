"""ADM, the U-Net of guided-diffusion and improved-diffusion, as a diffusers model."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DModel, UNet2DOutput
from torch import nn

from .folders import CheckedFolderMixin, check_config_types
from .blocks import ADMBlockSettings, ADMUpBlock2D, attention_heads, build_encoder, timestep_embedding_layers


def broadcast_timesteps(
    timestep: torch.Tensor | float | int, batch_size: int, device: torch.device, scale: float = 1.0
) -> torch.Tensor:
    """A (batch,) tensor of the timesteps the network embeds: integer or float, times the network's ``timestep_scale``
    (float32, as the originals rescale them: improved-diffusion's models see t * 1000 / T)."""
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], device=device)
    timestep = timestep.to(device)
    if timestep.ndim == 0:
        timestep = timestep[None]
    if timestep.ndim != 1 or timestep.shape[0] not in (1, batch_size):
        raise ValueError(f"expected a scalar timestep or one per sample ({batch_size}), got shape {tuple(timestep.shape)}")
    if scale != 1.0:
        timestep = timestep.float() * scale
    return timestep.expand(batch_size)


def null_class_id(unet: torch.nn.Module) -> int | None:
    """The label that means "no class" for a U-Net trained with label dropout (classifier-free guidance): its
    ``num_classes``, the extra row of the class embedding; None for any other U-Net (ours or diffusers')."""
    num_classes = getattr(unet.config, "num_classes", None)
    if num_classes and getattr(unet.config, "class_dropout_prob", 0.0) > 0:
        return num_classes
    return None


def rescaled_timestep_scale(num_train_timesteps: int) -> float:
    """The ``timestep_scale`` of a network trained on rescaled timesteps (improved-diffusion's ``rescale_timesteps``):
    the originals feed it t * 1000 / T."""
    return 1000.0 / int(num_train_timesteps)


def check_timestep_scale(timestep_scale: float) -> None:
    if not (timestep_scale > 0 and timestep_scale != float("inf")):
        raise ValueError(f"expected timestep_scale as a finite number > 0 (1000 / T for rescaled models), got {timestep_scale}")


@functools.lru_cache(maxsize=None)
def _takes_variance_type(scheduler_class: type) -> bool:
    return "variance_type" in inspect.signature(scheduler_class.__init__).parameters


def check_stock_pipeline_caller(unet: torch.nn.Module) -> None:
    """Refuse, in one line, a learned-sigma U-Net called by one of diffusers' own pipelines whose scheduler would take
    the variance channels as part of the prediction (DDIMPipeline; any with DDIMScheduler, PNDM, Euler...).

    Such a pipeline hands the output whole to its scheduler's step, and of diffusers' schedulers only those with a
    learned ``variance_type`` (DDPMScheduler, DPM-Solver) set the variance channels aside: the others fail inside the
    step on a tensor size that names nothing. Nothing of ours runs between the pipeline and that step but this
    forward, so it looks a few frames up for the calling pipeline (only learned-sigma models pay this: 1.3 us a
    call, where the smallest forward takes milliseconds). Our pipelines, and a stock pipeline with our scheduler (which
    refuses a mismatch itself), are left alone.
    """
    frame = sys._getframe(2)  # the caller of forward's caller (nn.Module's call machinery, hooks)
    for _ in range(8):
        if frame is None:
            return
        if frame.f_code.co_name == "__call__" and frame.f_globals.get("__name__", "").startswith("diffusers.pipelines."):
            break
        frame = frame.f_back
    else:
        return
    pipeline = frame.f_locals.get("self")
    scheduler = getattr(pipeline, "scheduler", None)
    if scheduler is None or not type(scheduler).__module__.startswith("diffusers."):
        return
    learned = _takes_variance_type(type(scheduler)) and scheduler.config.get("variance_type") in ("learned", "learned_range")
    # (the class, not the config: a config swapped from ours keeps variance_type even where the class takes none.)
    # DDPMScheduler splits the variance off by the sample's channels; DPM-Solver keeps the first three, RGB's only.
    if learned and (isinstance(scheduler, DDPMScheduler) or unet.config.in_channels == 3):
        return
    channels, name = unet.config.in_channels, type(scheduler).__name__
    raise ValueError(
        f"expected {channels}-channel predictions for {name}.step under {type(pipeline).__name__}, got a learned-sigma "
        f"model's {unet.config.out_channels} channels (prediction and variance, which {name} cannot set aside): sample "
        f"with guided_diffusers' ClassifierGuidedPipeline and the same scheduler, which hands it the prediction channels"
    )


class ADMUNet2DModel(CheckedFolderMixin, UNet2DModel):
    r"""
    The ADM U-Net (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021), able to represent every U-Net that
    guided-diffusion and improved-diffusion build, with identical numerics.

    Derived from [`~diffusers.UNet2DModel`]: the same attribute layout (``conv_in``, ``time_proj``,
    ``time_embedding``, ``class_embedding``, ``down_blocks``, ``mid_block``, ``up_blocks``,
    ``conv_norm_out``, ``conv_act``, ``conv_out``) and output, with the ADM options UNet2DModel lacks:
    per-level head counts, BigGAN residual resampling, fractional channel multipliers and a time
    embedding sized by ``model_channels`` alone. Both of the originals' attention orders (legacy and new)
    are served by the same layers: the converter puts the q/k/v weights in order when loading.

    Args:
        sample_size (`int`): Height and width of the images.
        in_channels (`int`, defaults to 3): Channels of the input image.
        out_channels (`int`, defaults to 3): Output channels; 6 for learned-sigma models (epsilon, then the
            variance interpolation value).
        model_channels (`int`, defaults to 128): Base width; the time embedding is ``4 * model_channels``.
        channel_mult (`tuple[float]`): Width multiplier per level; level ``i`` has
            ``int(channel_mult[i] * model_channels)`` channels (the 512x512 model starts at 0.5).
        num_res_blocks (`int`, defaults to 2): Residual blocks per encoder level (decoder levels have one more).
        attention_downsample_factors (`tuple[int]`): Downsampling factors (1, 2, 4, ...) of the levels with
            attention, as the originals' constructor takes them (image_size // resolution).
        dropout (`float`, defaults to 0.0): Dropout inside the residual blocks.
        num_classes (`int`, *optional*): Number of class labels for a class-conditional model.
        class_dropout_prob (`float`, defaults to 0.0): The label dropout the model was trained with for
            classifier-free guidance; when positive the class embedding has one more row, the null label
            ``num_classes``.
        num_heads (`int`, defaults to 4): Attention heads where ``num_head_channels`` is not set.
        num_head_channels (`int`, *optional*): A fixed head width; the head count then varies per level.
        num_heads_upsample (`int`, *optional*): Heads of the decoder attention (defaults to ``num_heads``).
        use_scale_shift_norm (`bool`, defaults to True): AdaGN timestep conditioning instead of an additive one.
        resblock_updown (`bool`, defaults to False): BigGAN residual blocks for up/downsampling.
        conv_resample (`bool`, defaults to True): Convolutions in the plain up/downsamplers.
        norm_num_groups (`int`, defaults to 32): Groups of every GroupNorm.
        norm_eps (`float`, defaults to 1e-5): Epsilon of every GroupNorm.
        timestep_scale (`float`, defaults to 1.0): The network embeds ``timestep * timestep_scale``: 1000 / T for
            models trained on rescaled timesteps (improved-diffusion's default, ``--rescale_timesteps``), so that any
            scheduler (ours or diffusers') hands it its own timesteps.
    """

    # How many image-sized tensors conv_in sees (the super-resolution model concatenates two).
    _input_multiplicity = 1

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        model_channels: int = 128,
        channel_mult: Sequence[float] = (1, 2, 3, 4),
        num_res_blocks: int = 2,
        attention_downsample_factors: Sequence[int] = (2, 4, 8),
        dropout: float = 0.0,
        num_classes: int | None = None,
        class_dropout_prob: float = 0.0,
        num_heads: int = 4,
        num_head_channels: int | None = None,
        num_heads_upsample: int | None = None,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        conv_resample: bool = True,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        timestep_scale: float = 1.0,
    ):
        check_config_types(type(self), ADMUNet2DModel.__init__, locals())
        check_timestep_scale(timestep_scale)
        # UNet2DModel's own __init__ builds diffusers' block types; ADM's are built here.
        super(UNet2DModel, self).__init__()
        if num_head_channels is not None and num_head_channels <= 0:
            num_head_channels = None
        if num_heads_upsample is None or num_heads_upsample <= 0:
            num_heads_upsample = num_heads
        channel_mult = tuple(channel_mult)
        attention_downsample_factors = tuple(int(f) for f in attention_downsample_factors)
        self.sample_size = sample_size
        time_embed_dim = 4 * model_channels

        self.time_proj, self.time_embedding = timestep_embedding_layers(model_channels)
        null_class = 1 if num_classes and class_dropout_prob > 0 else 0  # the row of null_class_id
        self.class_embedding = nn.Embedding(num_classes + null_class, time_embed_dim) if num_classes else None

        settings = ADMBlockSettings(
            temb_channels=time_embed_dim,
            dropout=dropout,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            conv_resample=conv_resample,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
        )
        self.conv_in, self.down_blocks, self.mid_block, layout = build_encoder(
            in_channels=in_channels * self._input_multiplicity,
            model_channels=model_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_downsample_factors=attention_downsample_factors,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            settings=settings,
        )

        skip_channels = list(layout.skip_channels)
        channels = layout.out_channels
        downsample_factor = layout.downsample_factor
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            out_ch = int(channel_mult[level] * model_channels)
            has_attention = downsample_factor in attention_downsample_factors
            level_skips = [skip_channels.pop() for _ in range(num_res_blocks + 1)]
            self.up_blocks.append(
                ADMUpBlock2D(
                    channels,
                    out_ch,
                    level_skips,
                    settings,
                    attention_heads=attention_heads(out_ch, num_heads_upsample, num_head_channels) if has_attention else None,
                    add_upsample=level > 0,
                )
            )
            channels = out_ch
            downsample_factor //= 2

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)

    def _embed(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None) -> torch.Tensor:
        timesteps = broadcast_timesteps(timestep, sample.shape[0], sample.device, self.config.timestep_scale)
        emb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError("expected no class_labels for an unconditional model (num_classes is None), got some")
            return emb
        if class_labels is None:
            raise ValueError(f"expected class_labels for a class-conditional model ({self.config.num_classes} classes), got None")
        class_labels = torch.as_tensor(class_labels, device=sample.device).reshape(-1).expand(sample.shape[0])
        return emb + self.class_embedding(class_labels).to(emb.dtype)

    def _unet(self, sample: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(sample)
        skips = (hidden_states,)
        for block in self.down_blocks:
            hidden_states, outputs = block(hidden_states, emb)
            skips += outputs
        hidden_states = self.mid_block(hidden_states, emb)
        for block in self.up_blocks:
            count = len(block.resnets)
            hidden_states = block(hidden_states, skips[-count:], emb)
            skips = skips[:-count]
        return self.conv_out(self.conv_act(self.conv_norm_out(hidden_states)))

    def _check_sample(self, sample: torch.Tensor, channels: int, name: str = "sample") -> None:
        if sample.ndim != 4 or sample.shape[1] != channels:
            raise ValueError(f"expected {name} of shape (batch, {channels}, height, width), got {tuple(sample.shape)}")

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        r"""
        Args:
            sample (`torch.Tensor`): Noisy images ``(batch, in_channels, height, width)``.
            timestep (`torch.Tensor` or `float` or `int`): The scheduler's timestep, one per sample or shared (integer
                or fractional); the network embeds it times ``timestep_scale``.
            class_labels (`torch.Tensor`, *optional*): ``(batch,)`` class ids for class-conditional models.
            return_dict (`bool`, defaults to True): Return a [`~diffusers.models.unets.unet_2d.UNet2DOutput`].

        Returns:
            [`UNet2DOutput`] or a tuple: ``(batch, out_channels, height, width)`` in the input's dtype; the model
            itself computes in its own dtype.
        """
        self._check_sample(sample, self.config.in_channels)
        # learned sigma: a stock pipeline may misread it (not while torch.compile traces: frames are not graph ops)
        if self.config.out_channels != self.config.in_channels and not torch.compiler.is_compiling():
            check_stock_pipeline_caller(self)
        output = self._unet(sample.to(self.dtype), self._embed(sample, timestep, class_labels)).to(sample.dtype)
        if not return_dict:
            return (output,)
        return UNet2DOutput(sample=output)


class ADMSuperResUNet2DModel(ADMUNet2DModel):
    r"""
    ADM-U, the super-resolution U-Net: ``low_res`` is upsampled bilinearly to the sample's size and
    concatenated with it inside forward, so ``conv_in`` sees ``2 * in_channels`` channels.

    Takes the same arguments as [`ADMUNet2DModel`]; ``in_channels`` is the image's channel count. ``forward`` keeps the
    parent's argument order and takes ``low_res`` as a keyword.
    """

    _input_multiplicity = 2

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        low_res: torch.Tensor | None = None,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        r"""
        Args:
            sample (`torch.Tensor`): Noisy high-resolution images ``(batch, in_channels, H, W)``.
            timestep (`torch.Tensor` or `float` or `int`): As in [`ADMUNet2DModel.forward`].
            class_labels (`torch.Tensor`, *optional*): Class ids for class-conditional models.
            return_dict (`bool`, defaults to True): Return a [`UNet2DOutput`].
            low_res (`torch.Tensor`, keyword): The low-resolution conditioning images ``(batch, in_channels, h, w)``
                in [-1, 1]; required.
        """
        channels = self.config.in_channels
        self._check_sample(sample, channels)
        if low_res is None:
            raise ValueError("expected low_res images for the super-resolution model, got None")
        self._check_sample(low_res, channels, "low_res")
        if low_res.shape[0] != sample.shape[0]:
            raise ValueError(f"expected low_res with batch {sample.shape[0]}, got {low_res.shape[0]}")
        upsampled = F.interpolate(low_res.to(sample.dtype), size=sample.shape[-2:], mode="bilinear")
        hidden = torch.cat([sample, upsampled], dim=1).to(self.dtype)
        output = self._unet(hidden, self._embed(sample, timestep, class_labels)).to(sample.dtype)
        if not return_dict:
            return (output,)
        return UNet2DOutput(sample=output)
