"""Scheduler configs mean what diffusers means: swaps both ways, saved folders, defaults, grids, step interfaces."""

from __future__ import annotations

import inspect

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from guided_diffusers import GuidedDDIMScheduler, GuidedDDPMScheduler
from guided_diffusers.schedulers import (
    get_ddpm_beta_schedule,
    get_named_beta_schedule,
)
from guided_diffusers.conversion import scheduler_config_from_diffusion_flags
from guided_diffusers.schedulers.scheduling_utils import COMPATIBLE_SCHEDULERS

STOCK = [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler,
         HeunDiscreteScheduler]
OURS = [GuidedDDPMScheduler, GuidedDDIMScheduler]


def _expected_alphas_cumprod(process: str) -> np.ndarray:
    """The originals' float64 alpha_bar for each process, computed from the originals' own schedule definitions."""
    kind, steps = process.rsplit("_", 1)
    steps = int(steps)
    if kind in ("linear", "cosine"):
        betas = get_named_beta_schedule(kind, steps)
    else:
        betas = get_ddpm_beta_schedule(kind, beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=steps)
    return np.cumprod(1 - betas)


def _ours(process: str, cls=GuidedDDPMScheduler, **kwargs):
    """Our scheduler for a process, built as the converters and training build it (the originals' flags)."""
    kind, steps = process.rsplit("_", 1)
    if kind in ("linear", "cosine"):
        config = scheduler_config_from_diffusion_flags({"steps": int(steps), "noise_schedule": kind, "learn_sigma": True})
        return cls(**config, **kwargs)
    return cls(num_train_timesteps=int(steps), beta_schedule=kind, **kwargs)


PROCESSES = ["linear_1000", "linear_4000", "cosine_1000", "cosine_4000", "quad_1000", "warmup10_1000", "const_1000"]


def _error(scheduler, expected: np.ndarray) -> float:
    return float(np.abs(scheduler.alphas_cumprod.double().cpu().numpy() - expected).max())


@pytest.mark.parametrize("stock", STOCK, ids=lambda c: c.__name__)
@pytest.mark.parametrize("process", PROCESSES)
def test_swap_keeps_alphas_cumprod_both_ways(process, stock, tmp_path):
    expected = _expected_alphas_cumprod(process)
    ours = _ours(process)
    assert _error(ours, expected) < 1e-12
    # ours -> stock, from the config in memory and from a saved folder
    swapped = stock.from_config(ours.config)
    assert _error(swapped, expected) < 1e-6
    ours.save_pretrained(tmp_path / "ours")
    from_folder = stock.from_pretrained(tmp_path / "ours")
    assert _error(from_folder, expected) < 1e-6
    # stock -> ours, in memory and from the stock scheduler's saved folder, and the round trip
    for cls in OURS:
        back = cls.from_config(swapped.config)
        assert _error(back, expected) < 1e-6
        swapped.save_pretrained(tmp_path / "stock")
        assert _error(cls.from_pretrained(tmp_path / "stock"), expected) < 1e-6
    round_trip = GuidedDDPMScheduler.from_config(stock.from_config(ours.config).config)
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type"):
        assert round_trip.config[key] == ours.config[key]


def test_stock_schedules_load_into_ours_with_diffusers_meaning():
    # diffusers' linear is unscaled at any T: 1e-4..0.02 at T = 4000 stays 1e-4..0.02
    stock = DDPMScheduler(num_train_timesteps=4000, beta_schedule="linear")
    ours = GuidedDDPMScheduler.from_config(stock.config)
    assert float(ours.betas[0]) == pytest.approx(1e-4) and float(ours.betas[-1]) == pytest.approx(0.02)
    assert _error(ours, stock.alphas_cumprod.double().numpy()) < 1e-6
    # the same names under the originals' spellings are stored under diffusers' names
    assert GuidedDDPMScheduler(beta_schedule="cosine").config.beta_schedule == "squaredcos_cap_v2"
    assert GuidedDDPMScheduler(beta_schedule="quad").config.beta_schedule == "scaled_linear"
    scaled = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert _error(GuidedDDIMScheduler.from_config(scaled.config), scaled.alphas_cumprod.double().numpy()) < 1e-6


def test_originals_linear_is_stored_as_diffusers_linear_with_scaled_bounds():
    config = _ours("linear_4000").config
    assert config.beta_schedule == "linear"
    assert config.beta_start == pytest.approx(2.5e-5) and config.beta_end == pytest.approx(0.005)
    assert _ours("cosine_4000").config.beta_schedule == "squaredcos_cap_v2"
    # DDPM schedules diffusers lacks carry explicit betas, which no from_config drops as a default
    warmup = GuidedDDPMScheduler(beta_schedule="warmup10")
    assert len(warmup.config.trained_betas) == 1000
    assert "trained_betas" not in warmup.config.get("_use_default_values", [])


def test_defaults_are_diffusers_defaults():
    """Every key our schedulers share with diffusers' DDPM/DDIM schedulers has diffusers' default."""
    for ours, stock in ((GuidedDDPMScheduler, DDPMScheduler), (GuidedDDIMScheduler, DDIMScheduler)):
        ours_params = inspect.signature(ours.__init__).parameters
        stock_params = inspect.signature(stock.__init__).parameters
        shared = sorted(set(ours_params) & set(stock_params) - {"self"})
        assert {"variance_type", "timestep_spacing", "steps_offset", "clip_sample", "beta_schedule"} & set(shared)
        for name in shared:
            assert ours_params[name].default == stock_params[name].default, name
    # so a swap of a default-built scheduler keeps the sampling variance
    ours = GuidedDDPMScheduler()
    assert DDPMScheduler.from_config(ours.config).config.variance_type == ours.config.variance_type == "fixed_small"
    explicit = GuidedDDPMScheduler(variance_type="fixed_large")
    assert DDPMScheduler.from_config(explicit.config).config.variance_type == "fixed_large"


def test_saved_dpm_solver_config_loads_into_ours(tmp_path):
    stock = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    assert stock.config.variance_type is None
    stock.save_pretrained(tmp_path)
    for cls in OURS:
        loaded = cls.from_pretrained(tmp_path)
        assert loaded.config.variance_type == "fixed_small"
        assert _error(loaded, stock.alphas_cumprod.double().numpy()) < 1e-6


def test_compatibles_are_the_stock_schedulers():
    for cls in OURS:
        names = {c.__name__ for c in cls().compatibles}
        assert set(COMPATIBLE_SCHEDULERS) <= names
    for name in COMPATIBLE_SCHEDULERS:  # each swaps with the same process
        stock = getattr(diffusers, name).from_config(_ours("cosine_1000").config)
        assert _error(stock, _expected_alphas_cumprod("cosine_1000")) < 1e-6, name


# ---------------------------------------------------------------------------------------------------------------------
# Timesteps, steps, add_noise
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50, 1000])
def test_int_steps_give_diffusers_grid(spacing, steps):
    for ours_cls, stock_cls in ((GuidedDDPMScheduler, DDPMScheduler), (GuidedDDIMScheduler, DDIMScheduler)):
        ours = ours_cls(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" and steps < 1000 else 0)
        stock = stock_cls.from_config(ours.config)
        ours.set_timesteps(steps)
        stock.set_timesteps(steps)
        assert ours.timesteps.tolist() == stock.timesteps.tolist()


def test_previous_timestep_is_a_tensor():
    scheduler = GuidedDDIMScheduler()
    scheduler.set_timesteps(10)
    previous = scheduler.previous_timestep(scheduler.timesteps[0])
    assert torch.is_tensor(previous) and previous.item() == 800
    assert scheduler.previous_timestep(scheduler.timesteps[-1]).item() == -1
    stock = DDPMScheduler()
    stock.set_timesteps(10)
    assert scheduler.previous_timestep(900).item() == stock.previous_timestep(900).item()


@pytest.mark.parametrize("cls", OURS)
def test_step_output_shapes_add_noise_and_scale_model_input(cls):
    scheduler = cls(num_train_timesteps=100, variance_type="learned_range")
    scheduler.set_timesteps(10)
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    output = torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    assert scheduler.scale_model_input(sample, scheduler.timesteps[0]) is sample
    assert scheduler.init_noise_sigma == 1.0
    step = scheduler.step(output, scheduler.timesteps[0], sample, generator=torch.Generator().manual_seed(2))
    assert step.prev_sample.shape == sample.shape and step.pred_original_sample.shape == sample.shape
    prev, pred = scheduler.step(output, scheduler.timesteps[0], sample, return_dict=False)
    assert prev.shape == pred.shape == sample.shape
    clean, noise = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    stock = DDPMScheduler.from_config(scheduler.config)
    t = torch.tensor([10, 90])
    torch.testing.assert_close(scheduler.add_noise(clean, noise, t), stock.add_noise(clean, noise, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_clipped", [True, False, None])
def test_ddim_use_clipped_model_output_matches_diffusers(use_clipped):
    ours = GuidedDDIMScheduler(num_train_timesteps=1000)
    stock = DDIMScheduler.from_config(ours.config)
    ours.set_timesteps(10)
    stock.set_timesteps(10)
    t = ours.timesteps[3]
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2  # x_0 beyond [-1, 1]: clipping acts
    eps = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = stock.step(eps, t, sample, eta=0.0, use_clipped_model_output=use_clipped).prev_sample
    got = ours.step(eps, t, sample, use_clipped_model_output=use_clipped).prev_sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the two settings differ exactly when clipping acts
    clipped = ours.step(eps, t, sample, use_clipped_model_output=True).prev_sample
    raw = ours.step(eps, t, sample, use_clipped_model_output=False).prev_sample
    assert (clipped - raw).abs().max() > 1e-3
    unclipped = dict(clip_sample=False)
    torch.testing.assert_close(
        ours.step(eps, t, sample, use_clipped_model_output=True, **unclipped).prev_sample,
        ours.step(eps, t, sample, use_clipped_model_output=False, **unclipped).prev_sample, rtol=1e-5, atol=1e-5,
    )


def test_diffusers_ddim_pipeline_runs_our_scheduler_config():
    unet = diffusers.UNet2DModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                                 norm_num_groups=8)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=GuidedDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=1, num_inference_steps=2, use_clipped_model_output=True, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 8, 8, 3) and np.isfinite(images).all()


def test_converted_folder_scheduler_swaps(tmp_path):
    """A converted improved-diffusion folder (cosine, T = 4000) writes a scheduler config every stock scheduler reads
    as the same process, and a saved stock config loads back into ours."""
    from parity import load_case, parity_dir

    from guided_diffusers.conversion.writing import convert_adm

    case, _ = load_case("id_unet")
    convert_adm(parity_dir() / "id_unet" / "original.pt", tmp_path / "out", source=case["source"],
                model_config=case["constructor_kwargs"],
                diffusion_flags="--diffusion_steps 4000 --noise_schedule cosine --learn_sigma True")
    folder = tmp_path / "out" / "scheduler"
    ours = GuidedDDPMScheduler.from_pretrained(folder)
    assert ours.config.beta_schedule == "squaredcos_cap_v2" and ours.config.num_train_timesteps == 4000
    expected = _expected_alphas_cumprod("cosine_4000")
    for stock in STOCK:
        swapped = stock.from_pretrained(folder)
        assert _error(swapped, expected) < 1e-6
        swapped.save_pretrained(tmp_path / stock.__name__)
        assert _error(GuidedDDIMScheduler.from_pretrained(tmp_path / stock.__name__), expected) < 1e-6
