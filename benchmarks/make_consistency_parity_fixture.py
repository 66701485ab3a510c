"""The consistency-model parity fixture: a reduced-width network of openai/consistency_models, built and run by that
repository's own code, in the format of the shared parity fixtures (``../shared/parity/README.md``); read by
``tests/test_consistency_models.py``. Run by a developer only, with the path of a checkout of the original:

    git --git-dir=<mirror of openai/consistency_models> archive HEAD | tar -x -C /tmp/cm_orig
    pip install --target /tmp/cmgen_deps einops       # the one package of the original's that this project lacks
    PYTHONPATH=/tmp/cmgen_deps python benchmarks/make_consistency_parity_fixture.py /tmp/cm_orig

It imports ``cm/unet.py`` and ``cm/karras_diffusion.py`` from that checkout. Their training-only imports (LPIPS from
piq, torchvision's RandomCrop, mpi4py and blobfile for distributed training) are stubbed in ``sys.modules`` before
import: none of them runs here. The network is built by ``cm.unet.UNetModel`` with its non-flash attention
(``attention_type="legacy"``, set as the constructor's default, so no flash_attn is needed), with the ImageNet-64
preset's architecture choices at a width the tests afford: attention at two resolutions with a fixed head width,
BigGAN up/down residual blocks, and scale-shift norm with class labels (ImageNet-64) or neither (LSUN). Every weight is random and non-zero (the original
zero-initialises some layers, which would hide mapping mistakes).

The original's legacy attention computes in float16 (``QKVAttentionLegacy`` casts q, k, v with ``.half()``; the flash
kernel the releases were trained with is float16 too), so its outputs carry float16 rounding. The fixture therefore
records the network twice: ``output``, the legacy path as it is, and ``output_fp32_attention``, each attention module
replaced by the original file's own float32 ``QKVAttention`` (the same q/k/v-then-heads channel layout), which our
float32 model must match to the shared fixtures' tolerance. The consistency model's whole denoiser
(``KarrasDenoiser.denoise``: c_skip * x + c_out * F(c_in * x, 250 * log(sigma + 1e-44)) with the boundary-condition
scalings), and one-step and multistep sampling (``karras_sample``, noise recorded), use the float32 attention.

Writes ``tests/fixtures/consistency_models/{cm_imagenet64_layout,cm_lsun256_layout}/{case.json, original.pt,
io.safetensors}``: the ImageNet-64 releases' choices and the LSUN-256 releases' (see ``CASES``).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "consistency_models"
SEED = 0
BATCH = 2
# The releases' architectures at 8 px and 32 channels (the fewest GroupNorm's 32 groups allow) on two levels: attention
# at 8 and 4 px (downsample factors 1 and 2, as --attention_resolutions 32,16,8 puts it on several levels), two
# 16-wide heads (--num_head_channels), BigGAN up/down (--resblock_updown True). ImageNet-64: scale-shift norm and
# class labels, with the CD models' multistep setting (--ts 0,22,39 --steps 40); LSUN-256: neither
# (--use_scale_shift_norm False --class_cond False), with the CT cat model's (--ts 0,62,150 --steps 151).
_NETWORK = dict(
    image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=[1, 2],
    dropout=0.0, channel_mult=[1, 1], num_heads=4, num_head_channels=16, num_heads_upsample=-1, resblock_updown=True,
    use_new_attention_order=False,
)
CASES = {
    "cm_imagenet64_layout": dict(
        kwargs=dict(_NETWORK, num_classes=10, use_scale_shift_norm=True), steps=40, ts=(0, 22, 39),
        describe="the ImageNet-64 releases' choices: attention at two resolutions with fixed head width (q/k/v split "
        "before heads), BigGAN up/down, scale-shift norm, class labels"),
    "cm_lsun256_layout": dict(
        kwargs=dict(_NETWORK, num_classes=None, use_scale_shift_norm=False), steps=151, ts=(0, 62, 150),
        describe="the LSUN-256 releases' choices: attention at two resolutions with fixed head width (q/k/v split "
        "before heads), BigGAN up/down, additive time embedding, unconditional"),
}
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
SIGMAS = (80.0, 2.5, 0.05)  # the denoiser's cases: the first level, a middle one, one near sigma_min


def _stub_training_imports() -> None:
    """Empty modules for the original's imports that only training and distributed runs use."""
    for name, attributes in {
        "piq": {"LPIPS": lambda **kwargs: None}, "torchvision": {}, "torchvision.transforms": {"RandomCrop": object},
        "mpi4py": {"MPI": types.SimpleNamespace()}, "blobfile": {},
    }.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules.setdefault(name, module)


def _import_original(path: Path) -> tuple[types.ModuleType, types.ModuleType]:
    if not (path / "cm" / "unet.py").is_file():
        raise SystemExit(f"expected a checkout of openai/consistency_models at {path}, got no cm/unet.py there")
    _stub_training_imports()
    sys.path.insert(0, str(path))
    from cm import karras_diffusion, unet

    # The constructor's attention_type defaults to "flash"; the fixture uses the non-flash path.
    defaults = list(unet.AttentionBlock.__init__.__defaults__)
    defaults[defaults.index("flash")] = "legacy"
    unet.AttentionBlock.__init__.__defaults__ = tuple(defaults)
    return unet, karras_diffusion


def _with_fp32_attention(unet: types.ModuleType, model: torch.nn.Module) -> list[torch.nn.Module]:
    """Swap every legacy (float16) attention for the original's float32 QKVAttention; returns the legacy modules."""
    legacy = []
    for block in model.modules():
        if isinstance(block, unet.AttentionBlock):
            legacy.append(block.attention)
            block.attention = unet.QKVAttention(block.num_heads)
    return legacy


def _restore(unet: types.ModuleType, model: torch.nn.Module, legacy: list[torch.nn.Module]) -> None:
    blocks = [block for block in model.modules() if isinstance(block, unet.AttentionBlock)]
    for block, attention in zip(blocks, legacy):
        block.attention = attention


class RecordingGenerator:
    """The original sampler's generator interface (``randn``, ``randn_like``), drawing from a seeded torch generator
    and keeping every draw for the fixture."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.draws: list[torch.Tensor] = []

    def randn(self, *shape, device=None, dtype=torch.float32):
        noise = torch.randn(*shape, generator=self.generator, dtype=dtype)
        self.draws.append(noise.clone())
        return noise

    def randn_like(self, tensor):
        return self.randn(*tensor.shape, dtype=tensor.dtype)


def make_case(unet: types.ModuleType, karras_diffusion: types.ModuleType, name: str, spec: dict) -> None:
    """One case folder: the network of ``spec["kwargs"]`` built and run by the original code."""
    kwargs, steps, ts = spec["kwargs"], spec["steps"], spec["ts"]
    torch.manual_seed(SEED)
    model = unet.UNetModel(**kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # random, non-zero, and small enough that outputs stay near unit scale
            parameter.copy_(torch.randn_like(parameter) * (0.5 / max(1, parameter[0].numel()) ** 0.5))
    diffusion = karras_diffusion.KarrasDenoiser(
        sigma_data=SIGMA_DATA, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, distillation=True, weight_schedule="uniform")

    size, channels = kwargs["image_size"], kwargs["in_channels"]
    x = torch.randn(BATCH, channels, size, size)
    sigmas = torch.tensor([SIGMA_MAX, 0.5])
    timesteps = 1000 * 0.25 * torch.log(sigmas + 1e-44)  # as KarrasDenoiser.denoise feeds the network
    io = {"x": x, "timesteps": timesteps}
    labels = {}
    if kwargs["num_classes"]:
        io["y"] = labels["y"] = torch.randint(0, kwargs["num_classes"], (BATCH,))
    with torch.no_grad():
        io["output"] = model(x, timesteps, **labels)
        legacy = _with_fp32_attention(unet, model)
        io["output_fp32_attention"] = model(x, timesteps, **labels)
        _restore(unet, model, legacy)
        fp16_gap = (io["output"] - io["output_fp32_attention"]).abs().max().item()
        _with_fp32_attention(unet, model)

        # The whole consistency function at a few noise levels: x_t = x_0 + sigma * noise.
        x_start = torch.rand(BATCH, channels, size, size) * 2 - 1
        for i, sigma in enumerate(SIGMAS):
            noise = torch.randn_like(x_start)
            x_t = x_start + sigma * noise
            io[f"denoise{i}_sigma"] = torch.full((BATCH,), sigma)
            io[f"denoise{i}_x_t"] = x_t
            model_output, denoised = diffusion.denoise(model, x_t, io[f"denoise{i}_sigma"], **labels)
            io[f"denoise{i}_model_output"], io[f"denoise{i}_denoised"] = model_output, denoised

        # Sampling as scripts/image_sample.py runs it (clip_denoised True), noise recorded.
        for sampler, extra in (("onestep", {}), ("multistep", dict(ts=ts))):
            generator = RecordingGenerator(SEED + 1)
            sample = karras_diffusion.karras_sample(
                diffusion, model, (BATCH, channels, size, size), steps=steps, clip_denoised=True, model_kwargs=labels,
                device="cpu", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sampler=sampler, generator=generator, **extra)
            io[f"{sampler}_sample"] = sample
            io[f"{sampler}_x_T"] = generator.draws[0]
            if sampler == "multistep":
                io["multistep_step_noise"] = torch.stack(generator.draws[1:])

    out = FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "original.pt")
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "io.safetensors"))
    case = {
        "kind": "unet",
        "source": "consistency-models",  # our source name (conversion/flags.py SOURCES), as the shared cases use theirs
        "describe": f"openai/consistency_models' UNetModel at reduced width with {spec['describe']}; non-flash attention",
        "constructor_kwargs": kwargs,
        "seed": SEED,
        "batch": BATCH,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "inputs": ["x", "timesteps (250 * log(sigma), floats)", *(["y"] if labels else [])],
        "outputs": {
            "output": "the legacy attention path as it is (q, k, v cast to float16 inside)",
            "output_fp32_attention": "each attention module the original's float32 QKVAttention",
            "denoise{i}_*": "KarrasDenoiser(distillation=True).denoise at sigma: x_t, model_output, denoised",
            "onestep_* / multistep_*": f"karras_sample, clip_denoised, steps {steps}, multistep ts {list(ts)}; "
            "x_T = the standard normal draw scaled by sigma_max inside; multistep_step_noise the later draws",
        },
        "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "sigma_data": SIGMA_DATA, "steps": steps, "ts": list(ts),
        "tolerance": {"atol": 1e-4, "rtol": 1e-4},
        # The measured gap between the original's float16 attention and its float32 one, on these inputs, doubled:
        # what a float32 port may differ from the legacy path by.
        "tolerance_fp16_attention": {"atol": float(f"{2 * fp16_gap:.2g}"), "rtol": 0.0},
    }
    (out / "case.json").write_text(json.dumps(case, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out} ({case['num_parameters']} parameters; float16 attention gap {fp16_gap:.3g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original", type=Path, help="a checkout of openai/consistency_models (its cm/ folder)")
    args = parser.parse_args()
    unet, karras_diffusion = _import_original(args.original)
    for name, spec in CASES.items():
        make_case(unet, karras_diffusion, name, spec)


if __name__ == "__main__":
    main()
