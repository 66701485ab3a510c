"""State dicts in the originals' layout (names and shapes), with random weights, derived from their constructors.

Written from the original classes' module structure, independently of guided_diffusers.conversion, so a converter
test fails when the mapping and the real layout disagree.
"""

from __future__ import annotations

import torch


class _Builder:
    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, name: str, *shape: int) -> None:
        self.tensors[name] = torch.randn(*shape, generator=self.generator) * 0.05

    def conv(self, name: str, out: int, inp: int, k: int, dims: int = 2) -> None:
        self.add(f"{name}.weight", out, inp, *([k] * dims))
        self.add(f"{name}.bias", out)

    def linear(self, name: str, out: int, inp: int) -> None:
        self.add(f"{name}.weight", out, inp)
        self.add(f"{name}.bias", out)

    def norm(self, name: str, channels: int) -> None:
        self.add(f"{name}.weight", channels)
        self.add(f"{name}.bias", channels)

    def resblock(self, name: str, channels: int, out: int, emb: int, scale_shift: bool) -> None:
        self.norm(f"{name}.in_layers.0", channels)
        self.conv(f"{name}.in_layers.2", out, channels, 3)
        self.linear(f"{name}.emb_layers.1", 2 * out if scale_shift else out, emb)
        self.norm(f"{name}.out_layers.0", out)
        self.conv(f"{name}.out_layers.3", out, out, 3)
        if out != channels:
            self.conv(f"{name}.skip_connection", out, channels, 1)

    def attention(self, name: str, channels: int) -> None:
        self.norm(f"{name}.norm", channels)
        self.conv(f"{name}.qkv", 3 * channels, channels, 1, dims=1)
        self.conv(f"{name}.proj_out", channels, channels, 1, dims=1)


def _encoder(b: _Builder, k: dict, in_channels: int) -> tuple[int, list[int], int]:
    mc, mult = k["model_channels"], k.get("channel_mult", (1, 2, 4, 8))
    emb, ss = 4 * mc, k.get("use_scale_shift_norm", False)
    b.linear("time_embed.0", emb, mc)
    b.linear("time_embed.2", emb, emb)
    ch = int(mult[0] * mc)
    b.conv("input_blocks.0.0", ch, in_channels, 3)
    chans, ds, index = [ch], 1, 1
    for level, m in enumerate(mult):
        for _ in range(k["num_res_blocks"]):
            b.resblock(f"input_blocks.{index}.0", ch, int(m * mc), emb, ss)
            ch = int(m * mc)
            if ds in k["attention_resolutions"]:
                b.attention(f"input_blocks.{index}.1", ch)
            chans.append(ch)
            index += 1
        if level != len(mult) - 1:
            if k.get("resblock_updown", False):
                b.resblock(f"input_blocks.{index}.0", ch, ch, emb, ss)
            elif k.get("conv_resample", True):
                b.conv(f"input_blocks.{index}.0.op", ch, ch, 3)
            chans.append(ch)
            index += 1
            ds *= 2
    b.resblock("middle_block.0", ch, ch, emb, ss)
    b.attention("middle_block.1", ch)
    b.resblock("middle_block.2", ch, ch, emb, ss)
    return ch, chans, ds


def adm_unet_state_dict(kwargs: dict, seed: int = 0, super_res: bool = False) -> dict[str, torch.Tensor]:
    """guided-/improved-diffusion UNetModel (or SuperResModel) ``state_dict()`` layout for constructor ``kwargs``."""
    b = _Builder(seed)
    in_channels = kwargs.get("in_channels", 3) * (2 if super_res else 1)
    ch, chans, ds = _encoder(b, kwargs, in_channels)
    mc, mult = kwargs["model_channels"], kwargs.get("channel_mult", (1, 2, 4, 8))
    emb, ss = 4 * mc, kwargs.get("use_scale_shift_norm", False)
    if kwargs.get("num_classes"):
        b.add("label_emb.weight", kwargs["num_classes"], emb)
    index = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(kwargs["num_res_blocks"] + 1):
            b.resblock(f"output_blocks.{index}.0", ch + chans.pop(), int(mc * m), emb, ss)
            ch = int(mc * m)
            sub = 1
            if ds in kwargs["attention_resolutions"]:
                b.attention(f"output_blocks.{index}.1", ch)
                sub = 2
            if level and i == kwargs["num_res_blocks"]:
                if kwargs.get("resblock_updown", False):
                    b.resblock(f"output_blocks.{index}.{sub}", ch, ch, emb, ss)
                elif kwargs.get("conv_resample", True):
                    b.conv(f"output_blocks.{index}.{sub}.conv", ch, ch, 3)
                ds //= 2
            index += 1
    b.norm("out.0", ch)
    b.conv("out.2", kwargs["out_channels"], int(mult[0] * mc), 3)
    return b.tensors


def adm_classifier_state_dict(kwargs: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """guided-diffusion EncoderUNetModel ``state_dict()`` layout for constructor ``kwargs``."""
    b = _Builder(seed)
    ch, chans, ds = _encoder(b, kwargs, kwargs.get("in_channels", 3))
    pool, out = kwargs.get("pool", "adaptive"), kwargs["out_channels"]
    if pool == "adaptive":
        b.norm("out.0", ch)
        b.conv("out.3", out, ch, 1)
    elif pool == "attention":
        b.norm("out.0", ch)
        b.add("out.2.positional_embedding", ch, (kwargs["image_size"] // ds) ** 2 + 1)
        b.conv("out.2.qkv_proj", 3 * ch, ch, 1, dims=1)
        b.conv("out.2.c_proj", out, ch, 1, dims=1)
    else:
        features = sum(chans) + ch
        b.linear("out.0", 2048, features)
        if pool == "spatial_v2":
            b.norm("out.1", 2048)
            b.linear("out.3", out, 2048)
        else:
            b.linear("out.2", out, 2048)
    return b.tensors


def ddpm_state_dict(kwargs: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """The DDPM port's ``Model`` ``state_dict()`` layout for constructor ``kwargs``."""
    b = _Builder(seed)
    ch, mult, res = kwargs["ch"], tuple(kwargs["ch_mult"]), kwargs["resolution"]
    temb = 4 * ch
    b.linear("temb.dense.0", temb, ch)
    b.linear("temb.dense.1", temb, temb)
    b.conv("conv_in", ch, kwargs["in_channels"], 3)

    def block(name: str, cin: int, cout: int) -> None:
        b.norm(f"{name}.norm1", cin)
        b.conv(f"{name}.conv1", cout, cin, 3)
        b.linear(f"{name}.temb_proj", cout, temb)
        b.norm(f"{name}.norm2", cout)
        b.conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            b.conv(f"{name}.nin_shortcut", cout, cin, 1)

    def attn(name: str, c: int) -> None:
        b.norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            b.conv(f"{name}.{part}", c, c, 1)

    in_mult = (1,) + mult
    curr = res
    for level in range(len(mult)):
        block_in, block_out = ch * in_mult[level], ch * mult[level]
        for i in range(kwargs["num_res_blocks"]):
            block(f"down.{level}.block.{i}", block_in, block_out)
            block_in = block_out
            if curr in kwargs["attn_resolutions"]:
                attn(f"down.{level}.attn.{i}", block_in)
        if level != len(mult) - 1:
            b.conv(f"down.{level}.downsample.conv", block_in, block_in, 3)
            curr //= 2
    block("mid.block_1", block_in, block_in)
    attn("mid.attn_1", block_in)
    block("mid.block_2", block_in, block_in)
    for level in reversed(range(len(mult))):
        block_out = ch * mult[level]
        skip_in = ch * mult[level]
        for i in range(kwargs["num_res_blocks"] + 1):
            if i == kwargs["num_res_blocks"]:
                skip_in = ch * in_mult[level]
            block(f"up.{level}.block.{i}", block_in + skip_in, block_out)
            block_in = block_out
            if curr in kwargs["attn_resolutions"]:
                attn(f"up.{level}.attn.{i}", block_in)
        if level != 0:
            b.conv(f"up.{level}.upsample.conv", block_in, block_in, 3)
            curr *= 2
    b.norm("norm_out", block_in)
    b.conv("conv_out", kwargs["out_ch"], block_in, 3)
    return b.tensors
