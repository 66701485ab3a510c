"""Distillation (guided-diffusers-distill) and the consistency pipeline: a one-step student approaches its teacher's
ODE endpoint on a toy distribution, a progressive stage brings the student's one step to its teacher's two, Heun's
teacher step beats Euler's against an exact ODE, the adversarial critic learns the images and pulls the student
towards them (one critic over processes), a run (consistency, progressive, or with the critic) resumes with identical
state, the student folder loads through
DiffusionPipeline.from_pretrained and samples as the in-memory one, the pipeline gives the U-Net the right timestep,
and bad arguments are refused in one line before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is fastest on a busy machine

TINY = dict(sample_size=8, in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
            attention_downsample_factors=(2,), num_head_channels=32)


def _run(main, argv: list[str]) -> None:
    from accelerate.state import AcceleratorState, GradientState

    try:
        main([*argv, "--report_to", "none"])
    finally:  # accelerate keeps process-wide state between Accelerator objects
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _distill(argv: list[str]) -> None:
    from guided_diffusers.cli.distill import main

    _run(main, argv)


def _toy_digits(folder: Path, count: int = 32) -> Path:
    """Two classes of flat grey 8x8 images: 'lo' at -0.5 and 'hi' at +0.5 in the model's [-1, 1]."""
    folder.mkdir(parents=True)
    for k in range(count):
        name, value = ("lo", 64) if k % 2 else ("hi", 191)
        Image.fromarray(np.full((8, 8), value, dtype=np.uint8), mode="L").save(folder / f"{name}_{k:03d}.png")
    return folder


def _random_teacher(folder: Path, seed: int = 0) -> Path:
    from guided_diffusers import ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler

    torch.manual_seed(seed)
    unet = ADMUNet2DModel(**TINY, num_classes=2, class_dropout_prob=0.1)
    scheduler = GuidedDDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    ClassifierGuidedPipeline(unet=unet, scheduler=scheduler, id2label={0: "hi", 1: "lo"}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy data and a teacher trained on it by the training script (conditional, with a null class)."""
    from guided_diffusers.cli.train import train_diffusion

    root = tmp_path_factory.mktemp("toy")
    data = _toy_digits(root / "data")
    _run(train_diffusion, [
        "--train_data_dir", str(data), "--resolution", "8", "--in_channels", "1", "--num_channels", "32", "--num_res_blocks", "1",
        "--channel_mult", "1,2", "--attention_resolutions", "4", "--num_head_channels", "32", "--diffusion_steps", "100",
        "--noise_schedule", "cosine", "--class_cond", "True", "--class_dropout_prob", "0.2", "--learning_rate", "2e-3",
        "--train_batch_size", "16", "--max_train_steps", "400", "--ema_rate", "0.95", "--output_dir", str(root / "teacher"),
    ])
    return root


def _teacher_ode_endpoint(task, noise: torch.Tensor, labels: torch.Tensor, levels: int = 200) -> torch.Tensor:
    """The teacher's probability-flow ODE from sigma_max to sigma_min in ``levels`` DDIM steps, from sigma_max * noise."""
    from diffusers import CMStochasticIterativeScheduler

    grid_scheduler = CMStochasticIterativeScheduler(**{**task.cm_scheduler.config, "num_train_timesteps": levels})
    sigmas = torch.as_tensor(grid_scheduler._convert_to_karras(np.linspace(0, 1, levels)), dtype=torch.float32)
    x = noise * sigmas[0]
    for high, low in zip(sigmas[:-1], sigmas[1:]):
        x = task.teacher_step(x, high.expand(len(x)), low.expand(len(x)), labels, None, None)
    return x


@pytest.mark.slow  # two short trainings: about a minute on a quiet machine
def test_one_step_student_approaches_the_teachers_ode_endpoint(toy):
    """After a short distillation the student's one step from sigma_max lands nearer the end of the teacher's
    200-step ODE from the same noise: its squared error falls below half the starting student's (the teacher, trained
    briefly, is erratic at high noise, so its endpoints are a hard function of the noise; 0.41 of it after 100 steps here)."""
    from diffusers import DiffusionPipeline

    from guided_diffusers.cli.distill import parse_distill_args
    from guided_diffusers.data import images_from_folder
    from guided_diffusers.training.distillation_task import DistillationTask

    output = toy / "student"
    argv = ["--teacher", str(toy / "teacher"), "--train_data_dir", str(toy / "data"), "--guidance", "none", "--unconditional_prob", "0",
            "--num_discretization_steps", "8", "--target_ema_rate", "0", "--learning_rate", "5e-4", "--train_batch_size", "16",
            "--max_train_steps", "150", "--use_ema", "False", "--output_dir", str(output)]
    task = DistillationTask(parse_distill_args(argv))
    task.build(images_from_folder(toy / "data"))
    noise = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 2
    endpoint = _teacher_ode_endpoint(task, noise, labels).clamp(-1, 1)

    def one_step_error(pipe) -> float:
        images = pipe(class_labels=labels, latents=noise, num_inference_steps=1, output_type="latent").images
        return float(((images - endpoint) ** 2).mean())

    from guided_diffusers import ADMConsistencyPipeline

    start = ADMConsistencyPipeline(unet=task.setup.model.eval(), scheduler=task.cm_scheduler, teacher_scheduler=task.teacher.scheduler)
    start.set_progress_bar_config(disable=True)
    before = one_step_error(start)
    _distill(argv)
    student = DiffusionPipeline.from_pretrained(output)
    student.set_progress_bar_config(disable=True)
    after = one_step_error(student)
    assert after < 0.5 * before, (before, after)


def test_a_progressive_stage_brings_the_students_one_step_to_the_teachers_two(tmp_path):
    """Stage 0 of progressive distillation on a toy: after 40 optimizer steps the student's one DDIM step over two grid
    intervals lands nearer where two guided teacher steps land (fresh noise, every interval), under half the squared
    error of the starting student (the teacher itself with its output negated)."""
    from guided_diffusers.cli.distill import parse_distill_args
    from guided_diffusers.data import images_from_folder
    from guided_diffusers.training.distillation_task import DistillationTask

    data, teacher = _toy_digits(tmp_path / "data", 16), _random_teacher(tmp_path / "teacher")
    args = parse_distill_args(["--teacher", str(teacher), "--train_data_dir", str(data), "--method", "progressive",
                               "--num_discretization_steps", "4", "--w_min", "1", "--w_max", "3", "--max_train_steps", "1000"])
    task = DistillationTask(args)
    student = task.build(images_from_folder(data))
    grid = task.grid
    generator = torch.Generator().manual_seed(1)
    starts = torch.tensor([0, 2] * 8)
    sigma, middle, end = grid[starts], grid[starts + 1], grid[starts + 2]
    x0 = torch.where(torch.arange(16) % 2 == 0, 0.5, -0.5).view(-1, 1, 1, 1).expand(16, 1, 8, 8)
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(16, 1, 8, 8, generator=generator)
    labels, scales = torch.arange(16) % 2, torch.full((16,), 2.0)
    kwargs = {"class_labels": labels, "guidance_scale": scales}
    landed = task.teacher_step(task.teacher_step(x, sigma, middle, labels, scales, None), middle, end, labels, scales, None)

    def error() -> float:
        return float(((task.student_step(student, x, sigma, end, kwargs) - landed) ** 2).mean())

    before = error()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    torch.manual_seed(0)
    batch = {"pixel_values": x0.clone(), "class_labels": labels}
    for step in range(1, 41):
        optimizer.zero_grad()
        task.compute_loss(student, batch).loss.backward()
        optimizer.step()
        task.optimizer_step_done(student, step)
    assert task.previous.stage == 0  # the second of the two stages starts at step 500
    after = error()
    assert after < 0.5 * before, (before, after)


def test_heuns_teacher_step_lands_nearer_the_exact_ode_solution_than_eulers(tmp_path):
    """With a teacher whose x_0 is exact for Gaussian data N(0, s^2), D(x, sigma) = x s^2 / (s^2 + sigma^2), the
    probability-flow ODE's solution is known, x(sigma') = x sqrt((s^2 + sigma'^2) / (s^2 + sigma^2)): on every
    interval of an 18-level Karras grid the Heun step lands nearer it than the Euler (DDIM) step, and under a tenth of
    its error on the intervals that start below half the data's scale s."""
    from diffusers import CMStochasticIterativeScheduler

    from guided_diffusers.cli.distill import parse_distill_args
    from guided_diffusers.training.distillation_task import DistillationTask

    data, teacher = _toy_digits(tmp_path / "data", 4), _random_teacher(tmp_path / "teacher")
    task = DistillationTask(parse_distill_args(["--teacher", str(teacher), "--train_data_dir", str(data), "--max_train_steps", "1"]))
    variance = 0.25
    task.teacher_denoised = lambda x, sigma, *conditioning: x * variance / (variance + sigma.view(-1, 1, 1, 1) ** 2)
    grid = torch.as_tensor(CMStochasticIterativeScheduler(num_train_timesteps=18, sigma_min=0.002, sigma_max=80.0)._convert_to_karras(
        np.linspace(0, 1, 18)), dtype=torch.float64)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = {}
    for solver in ("euler", "heun"):
        task.args.teacher_solver = solver
        errors[solver] = []
        for high, low in zip(grid[:-1], grid[1:]):
            start = x * (variance + high**2).sqrt()
            exact = x * (variance + low**2).sqrt()
            landed = task.teacher_step(start, high.expand(4), low.expand(4), None, None, None)
            errors[solver].append(float((landed - exact).abs().max()))
    assert all(h < e for h, e in zip(errors["heun"], errors["euler"])), errors
    below = [i for i, high in enumerate(grid[:-1]) if high < 0.5 * variance**0.5]  # the last 4 intervals
    assert len(below) == 4 and all(errors["heun"][i] < 0.1 * errors["euler"][i] for i in below), errors


def test_the_critic_learns_the_images_and_its_term_pulls_the_students_x0_towards_them():
    """The adversarial term: 30 critic steps on the 'hi' images (+0.5) against flat fakes at 0 score the images above
    the fakes, and a gradient step of the student's term on the fakes moves them towards +0.5 (the critic's own
    gradient from that term is discarded by its next step)."""
    from guided_diffusers.training.distillation_task import _Adversary

    torch.manual_seed(0)
    adversary = _Adversary(1, 8, 3, learning_rate=1e-3)
    real, labels = torch.full((16, 1, 8, 8), 0.5), torch.zeros(16, dtype=torch.long)
    fake = torch.zeros(16, 1, 8, 8)
    for _ in range(30):
        adversary.step(real, fake, labels)
    assert adversary.network(real, labels).mean() > adversary.network(fake, labels).mean()
    fake = fake.requires_grad_(True)
    adversary.generator_loss(fake, labels).mean().backward()
    assert float(fake.grad.mean()) < 0.0  # descending the term raises the fakes towards +0.5


def test_the_students_adversarial_term_moves_its_x0_where_the_critic_scores_higher(tmp_path):
    """With a fixed critic that scores brightness (its own step disabled) and the term's weight dominant, one SGD step
    of the distillation loss makes the student's x_0 brighter on fixed noisy inputs: the student is trained to raise
    the critic's score, not lower it."""
    from guided_diffusers.cli.distill import parse_distill_args
    from guided_diffusers.data import images_from_folder
    from guided_diffusers.training.distillation_task import DistillationTask

    data, teacher = _toy_digits(tmp_path / "data", 8), _random_teacher(tmp_path / "teacher")
    task = DistillationTask(parse_distill_args(["--teacher", str(teacher), "--train_data_dir", str(data), "--max_train_steps", "1",
                                                "--adversarial_weight", "100"]))
    student = task.build(images_from_folder(data))

    class Brightness(torch.nn.Module):
        def forward(self, images, labels):
            return 10 * images.mean(dim=(1, 2, 3))

    task.adversary.network = Brightness()
    task.adversary.step = lambda *args: None
    labels = torch.arange(8) % 2
    x0 = torch.where(labels == 0, 0.5, -0.5).view(-1, 1, 1, 1).expand(8, 1, 8, 8).clone()
    sigma = task.grid[8].expand(8)
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    kwargs = {"class_labels": labels, "guidance_scale": torch.full((8,), 2.0)}

    def brightness() -> float:
        with torch.no_grad():
            return float(task.consistency_function(student, x, sigma, kwargs).mean())

    before = brightness()
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-4)
    torch.manual_seed(0)
    task.compute_loss(student, {"pixel_values": x0, "class_labels": labels}).loss.backward()
    optimizer.step()
    assert brightness() > before + 1e-3, (before, brightness())


def _critic_worker(rank: int, world_size: int, init_file: str, results) -> None:
    import torch.distributed as dist

    from guided_diffusers.training.distillation_task import _Adversary

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        adversary = _Adversary(1, 8, 3, learning_rate=1e-2)
        real, fake, labels = _critic_batches()
        half = slice(rank * 4, rank * 4 + 4)
        adversary.step(real[half], fake[half], labels[half])
        results[rank] = {key: value.clone() for key, value in adversary.network.state_dict().items()}
        results[f"grad{rank}"] = {name: param.grad.clone() for name, param in adversary.network.named_parameters()}
    finally:
        dist.destroy_process_group()


def _critic_batches() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 8, 8, generator=generator), torch.randn(8, 1, 8, 8, generator=generator), torch.arange(8) % 3


def test_two_processes_keep_one_critic_the_one_process_critic_of_their_joint_batch(tmp_path):
    """The critic's step under torch.distributed averages its gradients: two processes with half a batch each end
    with the same weights and gradients, those of one process stepping on the whole batch."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from guided_diffusers.training.distillation_task import _Adversary

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed gloo missing")
    results = mp.Manager().dict()
    mp.start_processes(_critic_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True, start_method="fork")
    torch.manual_seed(0)
    alone = _Adversary(1, 8, 3, learning_rate=1e-2)
    alone.step(*_critic_batches())
    for key, value in alone.network.state_dict().items():
        assert torch.equal(results[0][key], results[1][key]), key
        torch.testing.assert_close(results[0][key], value, rtol=1e-5, atol=1e-6)
    for name, param in alone.network.named_parameters():  # averaged, not summed (Adam's first step hides the scale)
        torch.testing.assert_close(results["grad0"][name], param.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["consistency", "progressive", "adversarial"])
def test_resumed_distillation_equals_the_uninterrupted_one_and_the_folder_round_trips(tmp_path, method):
    """A run stopped at its step-2 checkpoint and resumed ends with the uninterrupted run's student, target network
    (progressive: the previous stage's student and the stage, which changes at step 2) and logs; the student folder
    loads through DiffusionPipeline.from_pretrained and samples as the weights it holds."""
    import json
    import shutil

    from diffusers import CMStochasticIterativeScheduler, DiffusionPipeline
    from safetensors.torch import load_file

    from guided_diffusers import ADMConsistencyPipeline, ADMGuidanceUNet2DModel, GuidedDDPMScheduler

    data, teacher = _toy_digits(tmp_path / "data", 8), _random_teacher(tmp_path / "teacher")
    argv = ["--teacher", str(teacher), "--train_data_dir", str(data), "--train_batch_size", "2", "--checkpointing_steps", "2",
            "--num_discretization_steps", "6" if method == "consistency" else "4", "--w_min", "1", "--w_max", "3", "--ema_rate", "0.9",
            "--method", "progressive" if method == "progressive" else "consistency"]
    if method == "adversarial":  # the critic and its optimizer are resumed too
        argv += ["--adversarial_weight", "0.5", "--teacher_solver", "heun"]
    _distill([*argv, "--max_train_steps", "4", "--output_dir", str(tmp_path / "straight")])
    if method != "progressive":  # stopped at step 2
        _distill([*argv, "--max_train_steps", "2", "--output_dir", str(tmp_path / "resumed")])
    else:  # progressive stages split --max_train_steps: a run of 4 interrupted after its step-2 checkpoint
        _distill([*argv, "--max_train_steps", "4", "--output_dir", str(tmp_path / "resumed")])
        shutil.rmtree(tmp_path / "resumed" / "checkpoint-4")
    _distill([*argv, "--max_train_steps", "4", "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "latest"])
    for part in ("unet/diffusion_pytorch_model.safetensors", "weights/model/diffusion_pytorch_model.safetensors",
                 "checkpoint-4/trainer_state.safetensors"):
        straight, resumed = load_file(tmp_path / "straight" / part), load_file(tmp_path / "resumed" / part)
        assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight), part
    kept = {"consistency": ["target_network"], "progressive": ["previous_student"], "adversarial": ["target_network", "adversary.weights", "adversary.optimizer"]}
    state = load_file(tmp_path / "resumed/checkpoint-4/trainer_state.safetensors")
    assert all(any(key.startswith(name) for key in state) for name in kept[method]), sorted(state)[:20]
    if method == "progressive":  # the second stage began at step 2: its teacher is the student of step 2
        assert json.loads((tmp_path / "resumed/checkpoint-2/trainer_state.json").read_text())["previous_student"]["stage"] == 1
    logs = [[json.loads(line)["loss"] for line in open(tmp_path / run / "logs/metrics.jsonl")] for run in ("straight", "resumed")]
    assert logs[0] == logs[1] and len(logs[0]) == 4

    folder = tmp_path / "straight"
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe, ADMConsistencyPipeline) and isinstance(pipe.unet, ADMGuidanceUNet2DModel)
    assert isinstance(pipe.scheduler, CMStochasticIterativeScheduler) and isinstance(pipe.teacher_scheduler, GuidedDDPMScheduler)
    assert pipe.config.guidance_scale == 2.0 and pipe.config.distillation["teacher"] == str(teacher)
    unet = ADMGuidanceUNet2DModel.from_pretrained(folder / "unet")
    again = ADMConsistencyPipeline(unet=unet, scheduler=CMStochasticIterativeScheduler.from_pretrained(folder / "scheduler"),
                                   teacher_scheduler=GuidedDDPMScheduler.from_pretrained(folder / "teacher_scheduler"), id2label=pipe.config.id2label,
                                   guidance_scale=2.0)
    for steps in (1, 2, 4):
        kwargs = dict(class_labels=["hi", "lo", 1], num_inference_steps=steps, guidance_scale=2.0, output_type="np")
        first = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
        second = again(generator=torch.Generator().manual_seed(0), **kwargs).images
        assert first.shape == (3, 8, 8, 1) and np.array_equal(first, second)
    unguided = pipe(batch_size=2, num_inference_steps=2, output_type="np").images  # the null class
    assert unguided.shape == (2, 8, 8, 1)
    card = (folder / "README.md").read_text()
    assert str(teacher) in card and "optimizer steps: 4" in card
    assert f"{'progressive' if method == 'progressive' else 'consistency'} distillation" in card
    assert ("adversarial term (weight 0.5" in card and "Heun step" in card) == (method == "adversarial")


def test_the_pipeline_gives_the_unet_the_teachers_timestep_or_the_schedulers_own(tmp_path):
    """With a teacher process the U-Net sees the teacher's timestep of each noise level (the integer t at sigma_t);
    without one (OpenAI's consistency models) the scheduler's 250 log(sigma); one step is c_skip x + c_out F, clamped."""
    from diffusers import CMStochasticIterativeScheduler

    from guided_diffusers import ADMConsistencyPipeline, ADMUNet2DModel, GuidedDDPMScheduler
    from guided_diffusers.pipelines.pipeline_adm_consistency import process_noise_levels, teacher_timesteps

    process = GuidedDDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    levels = process_noise_levels(process.alphas_cumprod).float()
    picked = torch.tensor([0, 7, 50, 99])
    assert torch.allclose(teacher_timesteps(process, levels[picked]), picked.float(), atol=1e-3)
    between = (levels[10] * levels[11]).sqrt()  # halfway in log sigma
    assert abs(float(teacher_timesteps(process, between[None])[0]) - 10.5) < 1e-3

    torch.manual_seed(0)
    unet = ADMUNet2DModel(**TINY)
    seen = []
    forward = unet.forward
    unet.forward = lambda sample, timestep, **kwargs: (seen.append((sample.clone(), timestep.clone())), forward(sample, timestep, **kwargs))[1]
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=10, sigma_min=0.01, sigma_max=20.0, sigma_data=1.0)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for teacher, expected in ((None, 250 * np.log(20.0)), (process, None)):
        seen.clear()
        pipe = ADMConsistencyPipeline(unet=unet, scheduler=scheduler, teacher_scheduler=teacher)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, latents=noise, output_type="latent").images
        sample, timestep = seen[0]
        if expected is None:
            expected = float(teacher_timesteps(process, torch.tensor([20.0]))[0])
        assert abs(float(timestep) - expected) < 1e-3
        assert torch.allclose(sample, noise * 20.0 / (20.0**2 + 1) ** 0.5, atol=1e-6)  # c_in x
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition(torch.tensor(20.0))
        output = forward(sample, timestep).sample
        assert torch.allclose(images, (c_skip * noise * 20.0 + c_out * output).clamp(-1, 1), atol=1e-5)


def test_a_guidance_student_starts_as_its_teacher_at_every_scale_and_then_reads_the_scale():
    """ADMGuidanceUNet2DModel.from_unet: the teacher's config (its copied constructor takes every key) and weights, and
    a zero guidance embedding, so its output is the teacher's at any w; once that embedding is non-zero the output
    depends on w. A missing scale and a non-ADM U-Net are refused in one line."""
    from guided_diffusers import ADMGuidanceUNet2DModel, ADMUNet2DModel

    torch.manual_seed(0)
    teacher = ADMUNet2DModel(**TINY, num_classes=2, class_dropout_prob=0.1, timestep_scale=10.0).eval()
    student = ADMGuidanceUNet2DModel.from_unet(teacher).eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(student.config) == public(teacher.config)
    x, t, labels = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 70]), torch.tensor([0, 2])
    with torch.no_grad():
        expected = teacher(x, t, class_labels=labels).sample
        for w in (1.0, 2.5, torch.tensor([0.0, 7.0])):
            assert torch.equal(student(x, t, class_labels=labels, guidance_scale=w).sample, expected)
        torch.nn.init.normal_(student.guidance_embedding.linear_2.weight)
        low, high = (student(x, t, class_labels=labels, guidance_scale=w).sample for w in (1.0, 3.0))
    assert (low - high).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"^expected guidance_scale for a U-Net with a guidance input, got None$"):
        student(x, t, class_labels=labels)
    with pytest.raises(ValueError, match=r"^expected an ADMUNet2DModel to add a guidance input to, got ADMGuidanceUNet2DModel$"):
        ADMGuidanceUNet2DModel.from_unet(student)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--num_channels", "64"], "expected no model or process flags (the student is the --teacher's model), got --num_channels"),
        (["--w_min", "3", "--w_max", "2"], "expected 1 <= --w_min <= --w_max, got 3.0 and 2.0"),
        (["--classifier_scale", "2"], "expected --classifier_scale >= 0 with --guidance classifier only"),
        (["--guidance", "classifier"], "expected a teacher pipeline with a classifier for --guidance classifier, got none"),
        (["--resolution", "16"], "expected --resolution 8 (the teacher's), got 16"),
        (["--method", "progressive", "--num_discretization_steps", "6"],
         "expected --num_discretization_steps a power of two with --method progressive, got 6"),
        (["--method", "progressive", "--num_discretization_steps", "8"], "expected --max_train_steps >= 3 (one per progressive stage), got 2"),
        (["--method", "progressive", "--num_discretization_steps", "2", "--target_ema_rate", "0.9"],
         "expected no --target_ema_rate with --method progressive"),
        (["--class_dropout_prob", "0.1"], "expected no --class_dropout_prob (use --unconditional_prob), got 0.1"),
        (["--guidance_scale", "5"], "expected --guidance_scale in [--w_min, --w_max] = [1.0, 4.0], got 5.0"),
        (["--unconditional_prob", "1"], "expected --unconditional_prob in [0, 1), got 1.0"),
        (["--num_discretization_steps", "1"], "expected --num_discretization_steps >= 2, got 1"),
        (["--target_ema_rate", "1"], "expected --target_ema_rate in [0, 1), got 1.0"),
        (["--adversarial_weight", "-0.1"], "expected --adversarial_weight >= 0, got -0.1"),
        (["--method", "progressive", "--num_discretization_steps", "2", "--adversarial_weight", "0.01"],
         "expected no --adversarial_weight with --method progressive (a consistency term), got 0.01"),
        (["--teacher", "{no_null_class}"],
         "expected a teacher trained with label dropout (a null class) for --guidance classifier-free, got none"),
        (["--teacher", "{no_null_class}", "--guidance", "none"],
         "expected a teacher with a null class for --unconditional_prob 0.1, got none (pass 0)"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_before_any_work(tmp_path, capsys, extra, expected):
    data, teacher = _toy_digits(tmp_path / "data", 4), _random_teacher(tmp_path / "teacher")
    if "{no_null_class}" in extra:  # a class-conditional teacher trained without label dropout
        from guided_diffusers import ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler

        no_null_class = tmp_path / "no_null_class"
        ClassifierGuidedPipeline(unet=ADMUNet2DModel(**TINY, num_classes=2), scheduler=GuidedDDPMScheduler(num_train_timesteps=100),
                                 id2label={0: "hi", 1: "lo"}).save_pretrained(no_null_class)
        extra = [str(no_null_class) if x == "{no_null_class}" else x for x in extra]
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        _distill(["--teacher", str(teacher), "--train_data_dir", str(data), "--train_batch_size", "2", "--max_train_steps", "2",
                  "--output_dir", str(output), *extra])
    # argparse's refusals print usage and the reason; a refused run exits with "error: ..." as its code
    message = stopped.value.code if isinstance(stopped.value.code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert "\n" not in message
    assert expected in message
    assert not output.exists() or not any(output.glob("checkpoint-*"))


def test_the_consistency_pipeline_refuses_bad_calls_in_one_line_before_sampling():
    """Each refusal names what was expected and what came, before the U-Net runs once."""
    from diffusers import CMStochasticIterativeScheduler

    from guided_diffusers import ADMConsistencyPipeline, ADMGuidanceUNet2DModel, ADMUNet2DModel

    torch.manual_seed(0)
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=10, sigma_min=0.01, sigma_max=20.0, sigma_data=1.0)
    unconditional = ADMUNet2DModel(**TINY)
    no_null = ADMUNet2DModel(**TINY, num_classes=2)
    student = ADMGuidanceUNet2DModel.from_unet(ADMUNet2DModel(**TINY, num_classes=2, class_dropout_prob=0.1))
    calls = []
    for unet in (unconditional, no_null, student):
        unet.register_forward_hook(lambda *args: calls.append(1))
    pipe = lambda unet: ADMConsistencyPipeline(unet=unet, scheduler=scheduler)  # noqa: E731
    cases = [
        (pipe(unconditional), dict(num_inference_steps=0), "expected num_inference_steps as a whole number in [1, 10], got 0"),
        (pipe(unconditional), dict(num_inference_steps=11), "expected num_inference_steps as a whole number in [1, 10], got 11"),
        (pipe(unconditional), dict(callback_on_step_end_tensor_inputs=["noise"]),
         "expected callback tensor inputs among ['latents'], got ['noise']"),
        (pipe(unconditional), dict(class_labels=[1]), "expected no class_labels for an unconditional U-Net, got some"),
        (pipe(unconditional), dict(guidance_scale=2.0),
         "expected no guidance_scale for a U-Net without a guidance input (its guidance, if any, is folded in), got 2.0"),
        (pipe(no_null), dict(batch_size=2), "expected class_labels for a class-conditional U-Net (2 classes), got None"),
        (pipe(no_null), dict(class_labels=[0, 1], batch_size=3), "expected 3 class labels for batch_size 3, got 2"),
        (pipe(student), dict(class_labels=[0]), "expected a guidance_scale for a student with a guidance input (none in the call or the config)"),
    ]
    for pipeline, kwargs, message in cases:
        with pytest.raises(ValueError) as refused:
            pipeline(output_type="np", **kwargs)
        assert str(refused.value) == message
    assert calls == []
