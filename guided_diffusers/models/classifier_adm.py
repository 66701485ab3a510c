"""The noisy classifier of ADM-G: the U-Net's encoder half and middle, then a pooling head."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .folders import CheckedFolderMixin, check_config_types
from .blocks import ADMBlockSettings, attention_heads, build_encoder, timestep_embedding_layers
from .unet_adm import broadcast_timesteps, check_timestep_scale

POOLING_HEADS = ("attention", "adaptive", "spatial", "spatial_v2")


@dataclass
class ADMClassifierOutput(BaseOutput):
    """
    Args:
        logits (`torch.Tensor` of shape `(batch_size, num_classes)`): Unnormalised class scores.
    """

    logits: torch.Tensor


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token, plus a learned positional embedding, attends over
    all positions; only the mean token's output is kept (so only its query is computed)."""

    def __init__(self, spatial_size: int, channels: int, head_channels: int, out_features: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(channels, spatial_size**2 + 1) / channels**0.5)
        self.qkv_proj = nn.Linear(channels, 3 * channels)
        self.c_proj = nn.Linear(channels, out_features)
        self.num_heads = channels // head_channels
        self.spatial_size = spatial_size

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = hidden_states.shape
        if height * width != self.spatial_size**2:
            raise ValueError(
                f"expected a {self.spatial_size}x{self.spatial_size} feature map at the attention pool, got {height}x{width}"
            )
        tokens = hidden_states.reshape(batch, channels, -1)
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1)
        tokens = (tokens + self.positional_embedding.to(tokens.dtype)).transpose(1, 2)  # (batch, L+1, C)
        query, key, value = self.qkv_proj(tokens).chunk(3, dim=-1)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, x.shape[1], self.num_heads, -1).transpose(1, 2)

        pooled = F.scaled_dot_product_attention(heads(query[:, :1]), heads(key), heads(value))
        return self.c_proj(pooled.transpose(1, 2).reshape(batch, channels))


class SpatialPoolHead(nn.Module):
    """An MLP on the concatenated spatial means of every encoder output and the middle block
    (``spatial``: ReLU; ``spatial_v2``: GroupNorm and SiLU)."""

    def __init__(self, in_features: int, out_features: int, v2: bool, norm_num_groups: int, norm_eps: float) -> None:
        super().__init__()
        hidden = 2048
        self.linear_1 = nn.Linear(in_features, hidden)
        self.norm = nn.GroupNorm(norm_num_groups, hidden, eps=norm_eps) if v2 else None
        self.act = nn.SiLU() if v2 else nn.ReLU()
        self.linear_2 = nn.Linear(hidden, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(features)
        if self.norm is not None:
            hidden = self.norm(hidden)
        return self.linear_2(self.act(hidden))


class ADMClassifier(CheckedFolderMixin, ModelMixin, ConfigMixin):
    r"""
    The noisy ImageNet classifier of ADM-G (guided-diffusion's EncoderUNetModel): the encoder half and the
    middle block of an ADM U-Net, then a pooling head, trained on noisy images x_t to give p(y | x_t).

    Args:
        sample_size (`int`): Height and width of the images.
        in_channels (`int`, defaults to 3): Image channels.
        num_classes (`int`, defaults to 1000): Output classes.
        model_channels (`int`, defaults to 128): Base width.
        channel_mult (`tuple[float]`): Width multiplier per level.
        num_res_blocks (`int`, defaults to 2): Residual blocks per level.
        attention_downsample_factors (`tuple[int]`): Downsampling factors of the levels with attention.
        dropout (`float`, defaults to 0.0): Dropout inside the residual blocks.
        num_heads (`int`, defaults to 1): Heads where ``num_head_channels`` is not set.
        num_head_channels (`int`, *optional*, defaults to 64): A fixed head width (required by attention pooling).
        use_scale_shift_norm (`bool`, defaults to True): AdaGN timestep conditioning.
        resblock_updown (`bool`, defaults to True): BigGAN residual downsampling.
        conv_resample (`bool`, defaults to True): A convolution in the plain downsampler.
        pool (`str`, defaults to ``"attention"``): The head: ``attention``, ``adaptive``, ``spatial`` or ``spatial_v2``.
        norm_num_groups (`int`, defaults to 32): Groups of every GroupNorm.
        norm_eps (`float`, defaults to 1e-5): Epsilon of every GroupNorm.
        id2label (`dict`, *optional*): class names by id (kept in the config only).
        timestep_scale (`float`, defaults to 1.0): The network embeds ``timestep * timestep_scale`` (1000 / T for
            classifiers of rescaled-timestep processes), as [`ADMUNet2DModel`].
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 3,
        num_classes: int = 1000,
        model_channels: int = 128,
        channel_mult: Sequence[float] = (1, 2, 3, 4),
        num_res_blocks: int = 2,
        attention_downsample_factors: Sequence[int] = (2, 4, 8),
        dropout: float = 0.0,
        num_heads: int = 1,
        num_head_channels: int | None = 64,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        pool: str = "attention",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        id2label: dict[str, str] | None = None,
        timestep_scale: float = 1.0,
    ):
        check_config_types(type(self), ADMClassifier.__init__, locals())
        check_timestep_scale(timestep_scale)
        super().__init__()
        if pool not in POOLING_HEADS:
            raise ValueError(f"expected pool in {POOLING_HEADS}, got {pool!r}")
        if num_head_channels is not None and num_head_channels <= 0:
            num_head_channels = None
        if pool == "attention" and num_head_channels is None:
            raise ValueError("expected num_head_channels for attention pooling, got None")
        time_embed_dim = 4 * model_channels
        self.time_proj, self.time_embedding = timestep_embedding_layers(model_channels)
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
            in_channels=in_channels,
            model_channels=model_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            attention_downsample_factors=tuple(int(f) for f in attention_downsample_factors),
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            settings=settings,
        )
        channels = layout.out_channels
        if pool.startswith("spatial"):
            self.conv_norm_out = self.conv_act = None
            feature_size = sum(layout.skip_channels) + channels
            self.head = SpatialPoolHead(feature_size, num_classes, pool == "spatial_v2", norm_num_groups, norm_eps)
        else:
            self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels, eps=norm_eps)
            self.conv_act = nn.SiLU()
            if pool == "attention":
                attention_heads(channels, num_heads, num_head_channels)  # validates the width
                self.head = AttentionPool2d(sample_size // layout.downsample_factor, channels, num_head_channels, num_classes)
            else:
                self.head = nn.Linear(channels, num_classes)  # a 1x1 conv on the global average

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, return_dict: bool = True
    ) -> ADMClassifierOutput | tuple[torch.Tensor]:
        r"""
        Args:
            sample (`torch.Tensor`): Noisy images ``(batch, in_channels, height, width)``.
            timestep (`torch.Tensor` or `float` or `int`): The diffusion timestep of each sample (the scheduler's,
                unspaced); embedded times ``timestep_scale``.
            return_dict (`bool`, defaults to True): Return an [`ADMClassifierOutput`].

        Returns:
            [`ADMClassifierOutput`] with ``logits`` ``(batch, num_classes)`` in the input's dtype, or a tuple.
        """
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected sample of shape (batch, {self.config.in_channels}, height, width), got {tuple(sample.shape)}"
            )
        timesteps = broadcast_timesteps(timestep, sample.shape[0], sample.device, self.config.timestep_scale)
        emb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))
        hidden_states = self.conv_in(sample.to(self.dtype))
        features = (hidden_states,)
        for block in self.down_blocks:
            hidden_states, outputs = block(hidden_states, emb)
            features += outputs
        hidden_states = self.mid_block(hidden_states, emb)
        if self.config.pool.startswith("spatial"):
            pooled = torch.cat([f.mean(dim=(2, 3)) for f in features + (hidden_states,)], dim=-1)
            logits = self.head(pooled)
        else:
            hidden_states = self.conv_act(self.conv_norm_out(hidden_states))
            if self.config.pool == "adaptive":
                hidden_states = hidden_states.mean(dim=(2, 3))
            logits = self.head(hidden_states)
        logits = logits.to(sample.dtype)
        if not return_dict:
            return (logits,)
        return ADMClassifierOutput(logits=logits)
