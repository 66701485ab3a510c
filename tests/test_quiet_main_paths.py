"""The README's main paths say nothing unless something is wrong: converting a tiny checkpoint, loading it, ``.to(dtype)``,
swapping schedulers both ways, sampling (the pipeline, ``from_pipe`` and the sample command), a tiny training run and
the evaluator, each with every warning a user would see turned into an error and the diffusers (and our) loggers
captured: nothing at WARNING or above.

Python shows a user DeprecationWarnings only from their own ``__main__`` code; those raised inside libraries (numpy's
``__array__`` notice from diffusers' DPM-Solver, on any scheduler) are left to their default, ours are errors too.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from original_layout import adm_unet_state_dict
from PIL import Image

from guided_diffusers import ADMInpaintPipeline, GuidedDDIMScheduler, GuidedDDPMScheduler
from guided_diffusers.conversion import unet_kwargs_from_flags
from guided_diffusers.conversion.writing import convert_adm

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FLAGS = "--image_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 4 --learn_sigma True"
# Rescaled timesteps (improved-diffusion's default): the network owns that scale, so no key of ours rides in a stock config.
DIFFUSION_FLAGS = "--diffusion_steps 20 --noise_schedule cosine --rescale_timesteps True"
LOGGERS = ("diffusers", "guided_diffusers", "accelerate")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Every warning a user would see raises; the block's log records at WARNING or above fail the test at its end."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
            warnings.filterwarnings("error", category=DeprecationWarning, module="guided_diffusers")
            yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert [f"{r.name}: {r.getMessage()}" for r in records] == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("original")
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(FLAGS, "guided-diffusion")), root / "model.pt")
    return root / "model.pt"


def test_convert_load_cast_swap_and_sample_are_quiet(checkpoint, tmp_path):
    with quiet():
        convert_adm(checkpoint, tmp_path / "pipe", model_flags=FLAGS, diffusion_flags=DIFFUSION_FLAGS)
        pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
        assert pipe.unet.config.timestep_scale == 1000 / 20 and not pipe.scheduler.config.get("rescale_timesteps")
        pipe.to(torch.float64)
        pipe.to("cpu", torch.float32)
        guided = pipe.scheduler
        for scheduler_class in (DPMSolverMultistepScheduler, DDIMScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler):
            pipe.scheduler = scheduler_class.from_config(guided.config)
            pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        pipe.scheduler = GuidedDDIMScheduler.from_config(pipe.scheduler.config)  # and back, from a stock config
        pipe.scheduler = GuidedDDPMScheduler.from_config(pipe.scheduler.config)
        pipe(batch_size=1, timestep_respacing="2", generator=torch.Generator().manual_seed(0))
        inpaint = ADMInpaintPipeline.from_pipe(pipe)
        inpaint(torch.zeros(1, 3, 8, 8), torch.ones(8, 8), timestep_respacing="2", generator=torch.Generator().manual_seed(0))


def test_a_swap_from_a_swapped_stock_scheduler_is_quiet(checkpoint, tmp_path):
    convert_adm(checkpoint, tmp_path / "pipe", model_flags=FLAGS, diffusion_flags=DIFFUSION_FLAGS)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with quiet():
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)


def test_sample_command_is_quiet(checkpoint, tmp_path):
    from guided_diffusers.cli.sample import main

    convert_adm(checkpoint, tmp_path / "pipe", model_flags=FLAGS, diffusion_flags=DIFFUSION_FLAGS)
    try:
        with quiet():
            assert main(["--pipeline", str(tmp_path / "pipe"), "--output_dir", str(tmp_path / "samples"), "--num_samples", "2",
                         "--batch_size", "2", "--timestep_respacing", "2"]) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert list((tmp_path / "samples").glob("*.npz"))


def test_tiny_training_run_is_quiet(tmp_path):
    from guided_diffusers.cli.train import main

    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(data / f"{'cat' if k % 2 else 'dog'}_{k}.png")
    try:
        with quiet():
            main("diffusion", ["--train_data_dir", str(data), "--output_dir", str(tmp_path / "out"), "--resolution", "8",
                               "--max_train_steps", "2", "--train_batch_size", "2", "--num_channels", "32", "--num_res_blocks", "1",
                               "--channel_mult", "1,2", "--attention_resolutions", "4", "--diffusion_steps", "20", "--report_to", "none"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert (tmp_path / "out" / "model_index.json").is_file()


def test_evaluate_is_quiet(tmp_path):
    from safetensors.torch import save_file

    from guided_diffusers.cli.evaluate import main
    from guided_diffusers.evaluation import random_fid_inception

    weights = tmp_path / "inception.safetensors"
    state = random_fid_inception(seed=0).state_dict()
    save_file({key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}, str(weights))
    rng = np.random.default_rng(0)
    for name in ("ref", "samples"):
        coarse = rng.uniform(0, 255, size=(6, 4, 4, 3))
        np.savez(tmp_path / f"{name}.npz", np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).astype(np.uint8))
    with quiet():
        assert main([str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"), "--batch_size", "6", "--device", "cpu",
                     "--inception_weights", str(weights)]) == 0


def test_registry_names_our_schedulers_and_filters_only_the_empty_float32_warning():
    import diffusers

    assert diffusers.GuidedDDPMScheduler is GuidedDDPMScheduler and diffusers.GuidedDDIMScheduler is GuidedDDIMScheduler
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("diffusers").addHandler(handler)
    try:
        model_logger = logging.getLogger("diffusers.models.modeling_utils")
        for kept in ("[]", "['norm_out']"):
            model_logger.warning(f"There are modules in UNet2DModel that should be kept in float32: {kept}. Casting directly with "
                                 "`to()` can lead to inconsistent results; set `torch_dtype` in `from_pretrained()` instead")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert len(records) == 1 and "['norm_out']" in records[0]
