"""Every model case of ../shared/parity, converted by our loading functions, reproduces the original's outputs."""

import pytest
import torch
from parity import assert_close, load_case, load_case_model

UNET_CASES = [
    "gd_unet_legacy_attention",
    "gd_unet_new_attention",
    "gd_unet_eps_fixed",
    "gd_unet_learned_kl",
    "gd_unet_xstart",
    "id_unet",
    "gd_superres",
    "ddpm_unet",
]
CLASSIFIER_CASES = [
    "gd_classifier_attention_pool",
    "gd_classifier_adaptive_pool",
    "gd_classifier_spatial_pool",
    "gd_classifier_spatial_v2_pool",
]


def _unet_inputs(io):
    kwargs = {}
    if "y" in io:
        kwargs["class_labels"] = io["y"]
    if "low_res" in io:
        kwargs["low_res"] = io["low_res"]
    return kwargs


@pytest.mark.parametrize("name", UNET_CASES)
def test_unet_matches_original(name):
    case, io = load_case(name)
    model = load_case_model(name)
    with torch.no_grad():
        assert_close(model(io["x"], io["timesteps"], **_unet_inputs(io)).sample, io["output"], case["tolerance"], f"{name} output")
        if "output_float_t" in io:
            out = model(io["x"], io["timesteps_float"], **_unet_inputs(io)).sample
            assert_close(out, io["output_float_t"], case["tolerance"], f"{name} output_float_t")


@pytest.mark.parametrize("name", CLASSIFIER_CASES)
def test_classifier_matches_original(name):
    case, io = load_case(name)
    model = load_case_model(name)
    x = io["x"].clone().requires_grad_(True)
    logits = model(x, io["timesteps"]).logits
    assert_close(logits, io["logits"], case["tolerance"], f"{name} logits")
    log_prob = torch.log_softmax(logits, dim=-1)[torch.arange(len(io["y"])), io["y"]].sum()
    (grad,) = torch.autograd.grad(log_prob, x)
    assert_close(grad, io["grad_log_prob"], case["tolerance"], f"{name} grad_log_prob")


def test_parity_cases_all_covered():
    """A new model case in the fixtures must be added to the lists above."""
    from parity import parity_dir

    kinds = {"unet", "superres_unet", "classifier"}
    import json

    names = {p.parent.name for p in parity_dir().glob("*/case.json") if json.loads(p.read_text())["kind"] in kinds}
    assert names == set(UNET_CASES) | set(CLASSIFIER_CASES)


# -- community checkpoints in guided-diffusion's format: their layouts at reduced width ---------------------------------


def _community_presets():
    from guided_diffusers.conversion.presets import PRESETS

    return {name: preset for name, preset in PRESETS["adm"].items() if preset.origin}


def _reduced_width(flags: str) -> str:
    """The release's flags at a width the tests can afford: levels, attention placement and head layout kept."""
    from guided_diffusers.conversion.flags import given_flags

    given = given_flags(flags)
    given.update(num_channels=32, num_res_blocks=1, num_head_channels=16)
    return " ".join(f"--{key} {value}" for key, value in given.items())


@pytest.mark.parametrize("name", sorted(_community_presets()))
def test_community_preset_layout_matches_the_original_constructor(name):
    """Names and shapes come from the original UNetModel's structure (original_layout, independent of our mapping);
    the converter must use every tensor and fill every parameter, and the network must run."""
    from original_layout import adm_unet_state_dict

    from guided_diffusers.conversion import convert_unet_checkpoint, unet_kwargs_from_flags

    preset = _community_presets()[name]
    flags = _reduced_width(preset.flags)
    kwargs = unet_kwargs_from_flags(flags, preset.family)
    original = adm_unet_state_dict(kwargs)
    unet = convert_unet_checkpoint(original, source=preset.family, flags=flags)
    assert sum(p.numel() for p in unet.parameters()) == sum(t.numel() for t in original.values())
    assert unet.config.out_channels == 6 and not unet.config.num_classes  # learned sigma, unconditional: every release
    with torch.no_grad():
        assert unet(torch.randn(1, 3, 64, 64), torch.tensor([10])).sample.shape == (1, 6, 64, 64)


def test_other_releases_configurations_are_the_released_networks():
    """RePaint's ImageNet confs and DPS's model configs build exactly a preset's network (the same file is used)."""
    from guided_diffusers.conversion import unet_kwargs_from_flags
    from guided_diffusers.conversion.presets import PRESETS, SAME_NETWORK_AS_PRESET

    for release, flags, preset_name in SAME_NETWORK_AS_PRESET:
        preset = PRESETS["adm"][preset_name]
        assert unet_kwargs_from_flags(flags, "guided-diffusion") == unet_kwargs_from_flags(preset.flags, preset.family), release
