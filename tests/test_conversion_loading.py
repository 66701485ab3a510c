"""Loading original checkpoints: every key used, every parameter filled, one error listing every mismatch."""

import pytest
import torch
from parity import load_case, parity_dir

from guided_diffusers.conversion import (
    convert_classifier_checkpoint,
    convert_ddpm_checkpoint,
    convert_unet_checkpoint,
    load_original_state_dict,
)


def _legacy_case():
    case, _ = load_case("gd_unet_legacy_attention")
    return case, load_original_state_dict(parity_dir() / "gd_unet_legacy_attention" / "original.pt")


def test_every_mismatch_in_one_error():
    case, state_dict = _legacy_case()
    state_dict = dict(state_dict)
    del state_dict["label_emb.weight"]
    state_dict["input_blocks.1.0.extra.weight"] = torch.zeros(1)
    state_dict["out.2.bias"] = torch.zeros(7)
    with pytest.raises(ValueError) as info:
        convert_unet_checkpoint(state_dict, flags=case["flags"])
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys: class_embedding.weight (from label_emb.weight)" in message
    assert "unexpected keys: input_blocks.1.0.extra.weight" in message
    assert "shape mismatches: out.2.bias (7,) -> conv_out.bias (6,)" in message


def test_wrong_flags_for_the_checkpoint():
    case, state_dict = _legacy_case()
    flags = dict(case["flags"], num_channels=64)
    with pytest.raises(ValueError, match="the checkpoint does not fit ADMUNet2DModel: .*shape mismatches"):
        convert_unet_checkpoint(state_dict, flags=flags)
    with pytest.raises(ValueError, match="unexpected keys: label_emb.weight"):
        convert_unet_checkpoint(state_dict, flags=dict(case["flags"], class_cond=False))


def test_flags_xor_constructor_kwargs():
    case, state_dict = _legacy_case()
    with pytest.raises(ValueError, match="expected exactly one of flags or constructor_kwargs, got neither"):
        convert_unet_checkpoint(state_dict)
    with pytest.raises(ValueError, match="expected source in"):
        convert_unet_checkpoint(state_dict, flags=case["flags"], source="ddpm")
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        convert_classifier_checkpoint({}, constructor_kwargs={"bogus": 1})
    with pytest.raises(ValueError, match="expected DDPM Model constructor kwargs"):
        convert_ddpm_checkpoint({}, constructor_kwargs={"channels": 3})


def test_legacy_and_new_order_differ_only_in_qkv_layout():
    """The same weights read in the other order give a different network: the order really is applied."""
    case, state_dict = _legacy_case()
    _, io = load_case("gd_unet_legacy_attention")
    legacy = convert_unet_checkpoint(state_dict, flags=case["flags"]).eval()
    swapped = convert_unet_checkpoint(state_dict, flags=dict(case["flags"], use_new_attention_order=True)).eval()
    with torch.no_grad():
        a = legacy(io["x"], io["timesteps"], class_labels=io["y"]).sample
        b = swapped(io["x"], io["timesteps"], class_labels=io["y"]).sample
    assert (a - b).abs().max() > 1e-3


class Payload:
    """Stands for arbitrary pickled code: weights_only loading must refuse it."""


def test_load_original_state_dict_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(ValueError, match="expected a PyTorch checkpoint .* code, not data"):
        load_original_state_dict(path)
    with pytest.raises(FileNotFoundError, match="expected an original checkpoint file"):
        load_original_state_dict(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_original_state_dict(good)["w"], torch.ones(2))
