"""Access to the parity fixtures in ../shared/parity (see its README).

The folder comes from GUIDED_DIFFUSERS_PARITY_DIR, defaulting to ../shared/parity
beside the checkout. Where it is absent the parity tests skip, except under CI
(CI=true), where its absence fails them.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get("GUIDED_DIFFUSERS_PARITY_DIR", ROOT.parent / "shared" / "parity"))


def parity_dir() -> Path:
    """The fixture folder, or skip (fail under CI) when it is missing."""
    if not PARITY_DIR.is_dir():
        message = f"parity fixtures not found at {PARITY_DIR} (set GUIDED_DIFFUSERS_PARITY_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return PARITY_DIR


def load_case(name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """case.json and io.safetensors of one case."""
    folder = parity_dir() / name
    case = json.loads((folder / "case.json").read_text())
    return case, load_file(str(folder / "io.safetensors"))


def load_case_model(name: str) -> torch.nn.Module:
    """The case's original.pt converted by the project's own loading functions, in eval mode."""
    from guided_diffusers.conversion import (
        convert_classifier_checkpoint,
        convert_ddpm_checkpoint,
        convert_unet_checkpoint,
        load_original_state_dict,
    )

    case, _ = load_case(name)
    state_dict = load_original_state_dict(parity_dir() / name / "original.pt")
    source = case.get("source", "guided-diffusion")
    if source.startswith("ddpm"):
        model = convert_ddpm_checkpoint(state_dict, constructor_kwargs=case["constructor_kwargs"])
    elif case["kind"] == "classifier":
        model = convert_classifier_checkpoint(
            state_dict, flags=case.get("classifier_flags"), constructor_kwargs=case.get("constructor_kwargs")
        )
    else:
        kwargs = case.get("constructor_kwargs")
        model = convert_unet_checkpoint(
            state_dict,
            source=source,
            flags=None if kwargs else case.get("flags"),
            constructor_kwargs=kwargs,
        )
    return model.eval()


@functools.lru_cache(maxsize=None)
def _scaled_case_model(name: str, timestep_scale: float) -> torch.nn.Module:
    model = load_case_model(name)
    model.register_to_config(timestep_scale=timestep_scale)
    return model


def process_model(case: dict[str, Any], key: str = "model_case") -> torch.nn.Module:
    """A diffusion case's network (``model_case`` or ``classifier_case``) as its process drives it: with the timestep
    scale its diffusion flags give (the originals' ``rescale_timesteps``, which the networks own)."""
    from guided_diffusers.conversion import timestep_scale_from_flags

    return _scaled_case_model(case[key], timestep_scale_from_flags(case["diffusion_flags"]))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: dict[str, float], what: str = "") -> None:
    """torch.testing.assert_close with the case's atol/rtol, reporting the max error."""
    actual = actual.detach().to(expected.dtype)
    err = (actual - expected).abs().max().item()
    torch.testing.assert_close(
        actual, expected, atol=tolerance["atol"], rtol=tolerance["rtol"], msg=lambda m: f"{what}: max abs err {err:.3g}\n{m}"
    )
