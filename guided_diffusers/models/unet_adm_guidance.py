"""ADMGuidanceUNet2DModel: the ADM U-Net with the classifier-free guidance scale as an input, for distilled students.

A student distilled from a classifier-free guided teacher learns the guided output for a range of scales; the scale
is embedded like a timestep (sinusoids of ``1000 * w``, then Linear-SiLU-Linear) and added to the timestep and class
embedding, as latent consistency models do. The embedding's last layer starts at zero, so a new student is its
teacher exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from .blocks import timestep_embedding_layers
from .unet_adm import ADMUNet2DModel, broadcast_timesteps

# The scale's sinusoids see 1000 * w: scales a fraction apart then differ in more than the fastest frequencies.
GUIDANCE_EMBEDDING_FACTOR = 1000.0


class ADMGuidanceUNet2DModel(ADMUNet2DModel):
    r"""
    [`ADMUNet2DModel`] whose forward also takes ``guidance_scale`` (one per sample or shared). The config is
    [`ADMUNet2DModel`]'s; the weights add ``guidance_embedding`` (zero output at initialisation).
    """

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
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
            channel_mult=channel_mult, num_res_blocks=num_res_blocks, attention_downsample_factors=attention_downsample_factors,
            dropout=dropout, num_classes=num_classes, class_dropout_prob=class_dropout_prob, num_heads=num_heads,
            num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample, use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown, conv_resample=conv_resample, norm_num_groups=norm_num_groups, norm_eps=norm_eps,
            timestep_scale=timestep_scale,
        )
        self.guidance_proj, self.guidance_embedding = timestep_embedding_layers(model_channels)
        nn.init.zeros_(self.guidance_embedding.linear_2.weight)
        nn.init.zeros_(self.guidance_embedding.linear_2.bias)

    @classmethod
    def from_unet(cls, unet: ADMUNet2DModel) -> "ADMGuidanceUNet2DModel":
        """A student that computes what ``unet`` computes at every guidance scale (its weights, a zero guidance embedding).

        Args:
            unet ([`ADMUNet2DModel`]): the teacher's U-Net.
        """
        if type(unet) is not ADMUNet2DModel:
            raise ValueError(f"expected an ADMUNet2DModel to add a guidance input to, got {type(unet).__name__}")
        student = cls.from_config(unet.config)
        missing, unexpected = student.load_state_dict(unet.state_dict(), strict=False)
        if unexpected or any(not name.startswith("guidance_") for name in missing):
            raise ValueError(f"expected the teacher's weights to fit the student, got missing {missing} and unexpected {unexpected}")
        return student.to(unet.device)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        guidance_scale: torch.Tensor | float | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        r"""
        Args:
            sample (`torch.Tensor`): Noisy images ``(batch, in_channels, height, width)``.
            timestep (`torch.Tensor` or `float` or `int`): The model-facing timestep, one per sample or shared.
            class_labels (`torch.Tensor`, *optional*): ``(batch,)`` class ids for class-conditional models.
            guidance_scale (`torch.Tensor` or `float`): the classifier-free guidance weight w the output stands for,
                one per sample or shared.
            return_dict (`bool`, defaults to True): Return a [`~diffusers.models.unets.unet_2d.UNet2DOutput`].
        """
        if guidance_scale is None:
            raise ValueError("expected guidance_scale for a U-Net with a guidance input, got None")
        self._check_sample(sample, self.config.in_channels)
        scales = broadcast_timesteps(guidance_scale, sample.shape[0], sample.device).float() * GUIDANCE_EMBEDDING_FACTOR
        emb = self._embed(sample, timestep, class_labels)
        emb = emb + self.guidance_embedding(self.guidance_proj(scales).to(self.dtype)).to(emb.dtype)
        output = self._unet(sample.to(self.dtype), emb).to(sample.dtype)
        if not return_dict:
            return (output,)
        return UNet2DOutput(sample=output)
