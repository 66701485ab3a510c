"""Sampling recipes: names to schedulers swapped the diffusers way, and the call arguments that go with them."""

import pytest
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler

from guided_diffusers import GuidedDDIMScheduler, GuidedDDPMScheduler
from guided_diffusers.pipelines.recipes import FAST_RECIPE, SAMPLERS, SamplingRecipe, fast_sampling_note


def _config():
    return GuidedDDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", variance_type="learned_range").config


def test_every_sampler_builds_its_scheduler_with_the_same_process():
    classes = {"ddpm": GuidedDDPMScheduler, "ddim": GuidedDDIMScheduler, "dpmpp2m": DPMSolverMultistepScheduler,
               "dpmpp3m": DPMSolverMultistepScheduler, "dpmpp2m_sde": DPMSolverMultistepScheduler,
               "unipc": UniPCMultistepScheduler, "euler": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler}
    assert set(classes) == set(SAMPLERS)
    reference = GuidedDDPMScheduler.from_config(_config()).alphas_cumprod
    for name, cls in classes.items():
        scheduler = SamplingRecipe(name, 10).scheduler(_config())
        assert type(scheduler) is cls
        assert float((scheduler.alphas_cumprod.double() - reference.double()).abs().max()) < 1e-6
    dpm = {name: SamplingRecipe(name, 10).scheduler(_config()).config for name in ("dpmpp2m", "dpmpp3m", "dpmpp2m_sde")}
    assert [(c.algorithm_type, c.solver_order) for c in dpm.values()] == [("dpmsolver++", 2), ("dpmsolver++", 3), ("sde-dpmsolver++", 2)]


def test_call_arguments_and_names():
    assert SamplingRecipe.parse("ddpm:25").call_kwargs() == {"timestep_respacing": "25"}
    assert SamplingRecipe.parse("ddim:10").call_kwargs() == {"timestep_respacing": "ddim10"}
    assert SamplingRecipe.parse("dpmpp2m:10").call_kwargs() == {"num_inference_steps": 10}
    assert SamplingRecipe.parse("euler:10").call_kwargs() == {"num_inference_steps": 10}
    # clipping is chosen when the recipe makes its scheduler, not per call
    config = GuidedDDPMScheduler(num_train_timesteps=40).config
    dpm = SamplingRecipe.parse("dpmpp2m:10").scheduler(config)
    assert dpm.config.thresholding is True and dpm.config.sample_max_value == 1.0
    assert not hasattr(SamplingRecipe.parse("euler:10").scheduler(config).config, "thresholding")  # cannot clip
    assert str(SamplingRecipe.parse(" unipc:5")) == "unipc:5" and SamplingRecipe("heun", 6).describe() == "Heun, 6 steps"
    assert str(FAST_RECIPE) in fast_sampling_note()


@pytest.mark.parametrize(
    ("text", "message"),
    [("dpmpp2m", "expected a sampling recipe as NAME:STEPS"), ("ddpm:x", "expected a sampling recipe as NAME:STEPS"),
     ("lms:10", "expected a sampler among ddpm, ddim"), ("ddpm:0", "expected steps as a whole number >= 1, got 0")],
)
def test_bad_recipes_are_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=message):
        SamplingRecipe.parse(text)
