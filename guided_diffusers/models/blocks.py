"""The ADM network's building blocks, assembled from diffusers' own layers.

ADM (guided-diffusion / improved-diffusion) is the same U-Net topology as diffusers'
UNet2DModel, with four differences these blocks absorb:

- the attention head count may differ per level (a fixed head *width*), so each level
  gets its own head count instead of one ``attention_head_dim`` for the whole net;
- BigGAN-style resampling: the down/up sampler of a level may be a residual block that
  resamples inside (diffusers' ``ResnetBlock2D(down=True)``/``(up=True)`` is exactly it);
- resampling without a convolution (``conv_resample=False``);
- channel multipliers may be fractional (``int(mult * model_channels)``).

Everything else is diffusers' exact layers: ``ResnetBlock2D`` (its ``scale_shift`` norm is
ADM's AdaGN), ``Attention`` with the SDPA processor, ``Downsample2D``/``Upsample2D`` and
``UNetMidBlock2D``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D
from torch import nn


@dataclass(frozen=True)
class ADMBlockSettings:
    """What every block of one network shares."""

    temb_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    conv_resample: bool = True
    norm_num_groups: int = 32
    norm_eps: float = 1e-5

    def resnet(self, in_channels: int, out_channels: int, up: bool = False, down: bool = False) -> ResnetBlock2D:
        return ResnetBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=self.temb_channels,
            dropout=self.dropout,
            groups=self.norm_num_groups,
            eps=self.norm_eps,
            non_linearity="silu",
            time_embedding_norm="scale_shift" if self.use_scale_shift_norm else "default",
            up=up,
            down=down,
        )

    def downsampler(self, channels: int) -> nn.Module:
        if self.resblock_updown:
            return self.resnet(channels, channels, down=True)
        return Downsample2D(channels, use_conv=self.conv_resample, out_channels=channels, padding=1, name="op")

    def upsampler(self, channels: int) -> nn.Module:
        if self.resblock_updown:
            return self.resnet(channels, channels, up=True)
        return Upsample2D(channels, use_conv=self.conv_resample, out_channels=channels)


def timestep_embedding_layers(model_channels: int) -> tuple[Timesteps, TimestepEmbedding]:
    """ADM's timestep embedding: cos-then-sin sinusoids of width ``model_channels`` (not the first level's width,
    which differs with fractional multipliers), then Linear-SiLU-Linear to ``4 * model_channels``."""
    return (
        Timesteps(model_channels, flip_sin_to_cos=True, downscale_freq_shift=0),
        TimestepEmbedding(model_channels, 4 * model_channels),
    )


def attention_heads(channels: int, num_heads: int, num_head_channels: int | None) -> int:
    """ADM's head count: a fixed head width wins over a fixed head count."""
    if num_head_channels is not None and num_head_channels > 0:
        if channels % num_head_channels:
            raise ValueError(f"expected channels divisible by num_head_channels={num_head_channels}, got {channels}")
        return channels // num_head_channels
    if channels % num_heads:
        raise ValueError(f"expected channels divisible by num_heads={num_heads}, got {channels}")
    return num_heads


def spatial_attention(channels: int, heads: int, norm_num_groups: int, norm_eps: float) -> Attention:
    """ADM's AttentionBlock: GroupNorm, q/k/v, softmax(qk^T/sqrt(d))v per head, projection, residual."""
    return Attention(
        query_dim=channels,
        heads=heads,
        dim_head=channels // heads,
        bias=True,
        norm_num_groups=norm_num_groups,
        eps=norm_eps,
        residual_connection=True,
        upcast_softmax=True,
    )


class _CheckpointedBlock(nn.Module):
    """Runs a sub-module under diffusers' gradient checkpointing when it is enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)


class ADMDownBlock2D(_CheckpointedBlock):
    """One encoder level: ``num_res_blocks`` residual blocks, each followed by attention
    when the level has it, then an optional downsampler.

    Returns the hidden states and every intermediate output the decoder concatenates.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        settings: ADMBlockSettings,
        attention_heads: int | None = None,
        add_downsample: bool = True,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            settings.resnet(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            spatial_attention(out_channels, attention_heads, settings.norm_num_groups, settings.norm_eps)
            for _ in range(num_layers if attention_heads else 0)
        )
        self.downsamplers = nn.ModuleList([settings.downsampler(out_channels)] if add_downsample else [])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        outputs = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = self._run(resnet, hidden_states, temb)
            if self.attentions:
                hidden_states = self._run(self.attentions[i], hidden_states)
            outputs += (hidden_states,)
        for downsampler in self.downsamplers:
            hidden_states = self._run(downsampler, hidden_states, temb) if isinstance(downsampler, ResnetBlock2D) else downsampler(hidden_states)
            outputs += (hidden_states,)
        return hidden_states, outputs


class ADMUpBlock2D(_CheckpointedBlock):
    """One decoder level: ``num_res_blocks + 1`` residual blocks on the concatenation of
    the hidden states and one skip each (attention after each when the level has it),
    then an optional upsampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        skip_channels: list[int],
        settings: ADMBlockSettings,
        attention_heads: int | None = None,
        add_upsample: bool = True,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            settings.resnet((in_channels if i == 0 else out_channels) + skip, out_channels)
            for i, skip in enumerate(skip_channels)
        )
        self.attentions = nn.ModuleList(
            spatial_attention(out_channels, attention_heads, settings.norm_num_groups, settings.norm_eps)
            for _ in range(len(skip_channels) if attention_heads else 0)
        )
        self.upsamplers = nn.ModuleList([settings.upsampler(out_channels)] if add_upsample else [])

    def forward(
        self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...], temb: torch.Tensor
    ) -> torch.Tensor:
        skips = list(res_hidden_states_tuple)
        for i, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
            hidden_states = self._run(resnet, hidden_states, temb)
            if self.attentions:
                hidden_states = self._run(self.attentions[i], hidden_states)
        for upsampler in self.upsamplers:
            hidden_states = self._run(upsampler, hidden_states, temb) if isinstance(upsampler, ResnetBlock2D) else upsampler(hidden_states)
        return hidden_states


def mid_block(channels: int, heads: int, settings: ADMBlockSettings) -> UNetMidBlock2D:
    """ADM's middle: residual block, attention, residual block (diffusers' UNetMidBlock2D)."""
    return UNetMidBlock2D(
        in_channels=channels,
        temb_channels=settings.temb_channels,
        dropout=settings.dropout,
        num_layers=1,
        resnet_eps=settings.norm_eps,
        resnet_act_fn="silu",
        resnet_groups=settings.norm_num_groups,
        attn_groups=settings.norm_num_groups,
        resnet_time_scale_shift="scale_shift" if settings.use_scale_shift_norm else "default",
        attention_head_dim=channels // heads,
    )


@dataclass
class EncoderLayout:
    """What the encoder half hands the rest of the network."""

    skip_channels: list[int]  # channels of every encoder output, in order (conv_in first)
    out_channels: int  # channels at the bottom
    downsample_factor: int  # spatial reduction at the bottom


def build_encoder(
    *,
    in_channels: int,
    model_channels: int,
    channel_mult: tuple[float, ...],
    num_res_blocks: int,
    attention_downsample_factors: tuple[int, ...],
    num_heads: int,
    num_head_channels: int | None,
    settings: ADMBlockSettings,
) -> tuple[nn.Conv2d, nn.ModuleList, UNetMidBlock2D, EncoderLayout]:
    """conv_in, the down blocks and the middle block of an ADM network (UNet and classifier alike)."""
    channels = int(channel_mult[0] * model_channels)
    conv_in = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
    skip_channels = [channels]
    down_blocks = nn.ModuleList()
    downsample_factor = 1
    for level, mult in enumerate(channel_mult):
        out_channels = int(mult * model_channels)
        has_attention = downsample_factor in attention_downsample_factors
        is_last = level == len(channel_mult) - 1
        down_blocks.append(
            ADMDownBlock2D(
                channels,
                out_channels,
                num_res_blocks,
                settings,
                attention_heads=attention_heads(out_channels, num_heads, num_head_channels) if has_attention else None,
                add_downsample=not is_last,
            )
        )
        channels = out_channels
        skip_channels += [channels] * num_res_blocks
        if not is_last:
            skip_channels.append(channels)
            downsample_factor *= 2
    middle = mid_block(channels, attention_heads(channels, num_heads, num_head_channels), settings)
    return conv_in, down_blocks, middle, EncoderLayout(skip_channels, channels, downsample_factor)
