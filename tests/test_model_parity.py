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
