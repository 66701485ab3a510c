"""Key mapping from the originals' state dicts to ours, with one error for every mismatch.

Each ``*_state_dict`` function walks our model's structure alongside the original's module
numbering and names where every original tensor goes. Nothing is guessed from key names: a
key the walk does not consume, a parameter it does not fill, or a shape that does not fit
ends in a single ``ValueError`` listing all of them.
"""

from __future__ import annotations

import torch
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

_ADM_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_DDPM_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "temb_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model: the message lists them, ``summary`` counts them in a few
    words (for a preset's one-line refusal, where the fix is other flags, not a key)."""

    def __init__(self, message: str, summary: str):
        super().__init__(message)
        self.summary = summary


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


def _preview(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


class StateDictMapper:
    """Moves tensors from an original state dict into our model's parameter names."""

    def __init__(self, original: dict[str, torch.Tensor], model: nn.Module) -> None:
        self.original = original
        self.target = model.state_dict()
        self.converted: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()
        self.wanted: dict[str, str] = {}  # our key -> the original key that should have filled it
        self.mismatched: list[str] = []

    def take(self, key: str) -> torch.Tensor | None:
        if key in self.original:
            self.used.add(key)
            return self.original[key]
        return None

    def put(self, key: str, tensor: torch.Tensor | None, source: str) -> None:
        self.wanted[key] = source
        if tensor is None:
            return
        expected = self.target[key].shape if key in self.target else None
        if expected is None:
            self.mismatched.append(f"{source} -> {key} (no such parameter)")
        elif tensor.shape == expected:
            self.converted[key] = tensor
        elif _squeezed(tensor.shape) == _squeezed(expected):  # 1x1 conv <-> linear
            self.converted[key] = tensor.reshape(expected)
        else:
            self.mismatched.append(f"{source} {tuple(tensor.shape)} -> {key} {tuple(expected)}")

    def _direct_params(self, prefix: str) -> list[str]:
        return [k[len(prefix) + 1 :] for k in self.target if k.startswith(prefix + ".") and "." not in k[len(prefix) + 1 :]]

    def module(self, source: str, prefix: str) -> None:
        """A layer whose tensors keep their names (conv, linear, norm, embedding)."""
        for name in self._direct_params(prefix):
            self.put(f"{prefix}.{name}", self.take(f"{source}.{name}"), f"{source}.{name}")

    def renamed(self, source: str, prefix: str, names: dict[str, str]) -> None:
        for original_name, our_name in names.items():
            if self._direct_params(f"{prefix}.{our_name}"):
                self.module(f"{source}.{original_name}", f"{prefix}.{our_name}")

    def adm_resnet(self, source: str, prefix: str) -> None:
        self.renamed(source, prefix, _ADM_RESNET)

    def adm_attention(self, source: str, prefix: str, heads: int, legacy_order: bool) -> None:
        """ADM's fused qkv 1x1 conv into to_q/to_k/to_v.

        Legacy order splits heads first: channels are [head][q|k|v][head_dim]. The new order
        splits q/k/v first: [q|k|v][head][head_dim]. Ours is the latter's (diffusers' layout).
        """
        self.module(f"{source}.norm", f"{prefix}.group_norm")
        for name in ("weight", "bias"):
            key = f"{source}.qkv.{name}"
            fused = self.take(key)
            expected = self.target.get(f"{prefix}.to_q.{name}")
            if fused is not None and expected is not None and fused.reshape(fused.shape[0], -1).shape != (3 * expected.shape[0], expected.reshape(expected.shape[0], -1).shape[1]):
                self.mismatched.append(f"{key} {tuple(fused.shape)} -> {prefix}.to_q/k/v.{name} 3 x {tuple(expected.shape)}")
                fused = None
            for i, part in enumerate(("to_q", "to_k", "to_v")):
                tensor = None
                if fused is not None:
                    rows = fused.reshape(fused.shape[0], -1)
                    width = rows.shape[0] // 3
                    grouped = rows.reshape(heads, 3, width // heads, -1) if legacy_order else rows.reshape(3, heads, width // heads, -1)
                    tensor = (grouped[:, i] if legacy_order else grouped[i]).reshape(width, -1).squeeze(-1)
                self.put(f"{prefix}.{part}.{name}", tensor, key)
        self.module(f"{source}.proj_out", f"{prefix}.to_out.0")

    def finish(self, model: nn.Module, what: str) -> None:
        missing = [f"{k} (from {self.wanted[k]})" if k in self.wanted else k for k in self.target if k not in self.converted]
        unexpected = sorted(set(self.original) - self.used)
        found = [(name, items) for name, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                     ("shape mismatches", self.mismatched)) if items]
        if found:
            raise CheckpointMismatchError(
                f"the checkpoint does not fit {what}: " + "; ".join(f"{name}: {_preview(items)}" for name, items in found),
                summary=", ".join(f"{len(items)} {name}" for name, items in found),
            )
        model.load_state_dict({k: v.to(self.target[k].dtype) for k, v in self.converted.items()}, strict=True)


def _adm_encoder(mapper: StateDictMapper, model: nn.Module, legacy_order: bool) -> None:
    mapper.module("time_embed.0", "time_embedding.linear_1")
    mapper.module("time_embed.2", "time_embedding.linear_2")
    mapper.module("input_blocks.0.0", "conv_in")
    index = 1
    for level, block in enumerate(model.down_blocks):
        for i in range(len(block.resnets)):
            mapper.adm_resnet(f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{i}")
            if block.attentions:
                attention = block.attentions[i]
                mapper.adm_attention(f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{i}", attention.heads, legacy_order)
            index += 1
        for downsampler in block.downsamplers:
            prefix = f"down_blocks.{level}.downsamplers.0"
            if isinstance(downsampler, ResnetBlock2D):
                mapper.adm_resnet(f"input_blocks.{index}.0", prefix)
            else:
                mapper.module(f"input_blocks.{index}.0.op", f"{prefix}.conv")
            index += 1
    mapper.adm_resnet("middle_block.0", "mid_block.resnets.0")
    mapper.adm_attention("middle_block.1", "mid_block.attentions.0", model.mid_block.attentions[0].heads, legacy_order)
    mapper.adm_resnet("middle_block.2", "mid_block.resnets.1")


def load_adm_unet_state_dict(model: nn.Module, original: dict[str, torch.Tensor], legacy_order: bool) -> None:
    """Fill an ADMUNet2DModel (or the super-resolution one) from a guided-/improved-diffusion UNetModel state dict."""
    mapper = StateDictMapper(original, model)
    _adm_encoder(mapper, model, legacy_order)
    if model.class_embedding is not None:
        mapper.module("label_emb", "class_embedding")
    index = 0
    for level, block in enumerate(model.up_blocks):
        for i in range(len(block.resnets)):
            mapper.adm_resnet(f"output_blocks.{index}.0", f"up_blocks.{level}.resnets.{i}")
            sub = 1
            if block.attentions:
                attention = block.attentions[i]
                mapper.adm_attention(f"output_blocks.{index}.1", f"up_blocks.{level}.attentions.{i}", attention.heads, legacy_order)
                sub = 2
            if block.upsamplers and i == len(block.resnets) - 1:
                prefix = f"up_blocks.{level}.upsamplers.0"
                if isinstance(block.upsamplers[0], ResnetBlock2D):
                    mapper.adm_resnet(f"output_blocks.{index}.{sub}", prefix)
                else:
                    mapper.module(f"output_blocks.{index}.{sub}.conv", f"{prefix}.conv")
            index += 1
    mapper.module("out.0", "conv_norm_out")
    mapper.module("out.2", "conv_out")
    mapper.finish(model, f"{type(model).__name__}")


def load_adm_classifier_state_dict(model: nn.Module, original: dict[str, torch.Tensor], legacy_order: bool) -> None:
    """Fill an ADMClassifier from a guided-diffusion EncoderUNetModel state dict."""
    mapper = StateDictMapper(original, model)
    _adm_encoder(mapper, model, legacy_order)
    pool = model.config.pool
    if pool == "attention":
        mapper.module("out.0", "conv_norm_out")
        mapper.module("out.2", "head")  # positional_embedding
        mapper.module("out.2.qkv_proj", "head.qkv_proj")  # the pool's attention is in the new order
        mapper.module("out.2.c_proj", "head.c_proj")
    elif pool == "adaptive":
        mapper.module("out.0", "conv_norm_out")
        mapper.module("out.3", "head")
    elif pool == "spatial":
        mapper.renamed("out", "head", {"0": "linear_1", "2": "linear_2"})
    else:
        mapper.renamed("out", "head", {"0": "linear_1", "1": "norm", "3": "linear_2"})
    mapper.finish(model, f"ADMClassifier (pool={pool})")


def load_ddpm_state_dict(model: nn.Module, original: dict[str, torch.Tensor]) -> None:
    """Fill a diffusers UNet2DModel from the DDPM port's ``Model`` state dict (cifar10 / LSUN checkpoints)."""
    mapper = StateDictMapper(original, model)
    attention = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    mapper.module("temb.dense.0", "time_embedding.linear_1")
    mapper.module("temb.dense.1", "time_embedding.linear_2")
    mapper.module("conv_in", "conv_in")
    levels = len(model.down_blocks)
    for level, block in enumerate(model.down_blocks):
        for i in range(len(block.resnets)):
            mapper.renamed(f"down.{level}.block.{i}", f"down_blocks.{level}.resnets.{i}", _DDPM_RESNET)
            if getattr(block, "attentions", None):
                mapper.renamed(f"down.{level}.attn.{i}", f"down_blocks.{level}.attentions.{i}", attention)
        if block.downsamplers:
            mapper.module(f"down.{level}.downsample.conv", f"down_blocks.{level}.downsamplers.0.conv")
    mapper.renamed("mid.block_1", "mid_block.resnets.0", _DDPM_RESNET)
    mapper.renamed("mid.attn_1", "mid_block.attentions.0", attention)
    mapper.renamed("mid.block_2", "mid_block.resnets.1", _DDPM_RESNET)
    for position, block in enumerate(model.up_blocks):
        level = levels - 1 - position  # the port stores its up path by level, highest resolution first
        for i in range(len(block.resnets)):
            mapper.renamed(f"up.{level}.block.{i}", f"up_blocks.{position}.resnets.{i}", _DDPM_RESNET)
            if getattr(block, "attentions", None):
                mapper.renamed(f"up.{level}.attn.{i}", f"up_blocks.{position}.attentions.{i}", attention)
        if block.upsamplers:
            mapper.module(f"up.{level}.upsample.conv", f"up_blocks.{position}.upsamplers.0.conv")
    mapper.module("norm_out", "conv_norm_out")
    mapper.module("conv_out", "conv_out")
    mapper.finish(model, "UNet2DModel (DDPM layout)")
