"""Distilling a pipeline into a one- to few-step student (``guided-diffusers-distill``): consistency distillation
(Song et al. 2023) or progressive distillation (Salimans & Ho 2022) with the teacher's guidance folded in, as a
[`TrainingTask`] of the shared loop.

The student is a consistency model in the parameterization diffusers' ``CMStochasticIterativeScheduler`` samples:
f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, t(sigma)) on the variance-exploding image x = x_t /
sqrt(alpha_bar_t) of the teacher's process, with sigma_data = 1 so that c_in x is the teacher's own input x_t and
t(sigma) the teacher's timestep. It starts as the teacher with its output negated (F = -eps, which is the
v-prediction F of the parameterization at low noise) and learns f(x_{n+1}, sigma_{n+1}) = f_target(x_n, sigma_n),
where x_n is one DDIM (Euler) or Heun step of the guided teacher from x_{n+1} and f_target an EMA of the student.
A student that learns only this is bounded by the end of the teacher's ODE, which on a small model lies well behind
its ancestral sampler; ``--adversarial_weight`` adds the adversarial term of adversarial diffusion distillation (Sauer
et al. 2023): a small class-conditional critic learns to tell the training images from the student's f, and the
student is also trained to fool it, which pulls its few-step samples past the ODE's end towards the data.

Progressive distillation uses the same parameterization as a denoiser D(x, sigma) (x-prediction, well posed at the
one-step end) on a Karras grid of N + 1 levels (N a power of two): in stage k the student learns to land, with one
DDIM step of D over 2^(k+1) grid intervals, where two DDIM steps of its teacher over 2^k intervals each land (stage 0:
the guided teacher; later: the student frozen at the end of the previous stage). The grids are nested, so the last
stages' levels are the scheduler's levels at 1, 2 and 4 steps, and each student step that ends at sigma_min maps to
the end of the teacher's ODE: the consistency pipeline samples it as it samples a consistency model.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from diffusers import CMStochasticIterativeScheduler, DiffusionPipeline
from torch import nn

from ..data import LabelledImages
from ..models import ADMGuidanceUNet2DModel, ADMUNet2DModel, null_class_id
from ..pipelines import ADMConsistencyPipeline
from ..pipelines.pipeline_adm_consistency import process_noise_levels, teacher_timesteps
from ..pipelines.sampling import classifier_gradient
from .builders import DiffusionSetup, map_data_classes
from .losses import LossType
from .trainer import MicroBatchResult, TrainingTask, load_training_images

__all__ = ["METHODS", "DistillationTask", "ImageDiscriminator", "consistency_scheduler", "karras_grid", "progressive_stage", "write_distilled_card"]

#: The distillation methods (``--method``), by the name the model card gives them.
METHODS = {"consistency": "consistency distillation", "progressive": "progressive distillation"}
#: EDM's and the consistency models' largest noise level.
SIGMA_MAX = 80.0


def consistency_scheduler(teacher_scheduler: Any, num_discretization_steps: int) -> CMStochasticIterativeScheduler:
    """The student's scheduler: the Karras grid (rho 7) of ``num_discretization_steps`` noise levels from the
    teacher's sigma at t = 0 to EDM's 80 (or the teacher's sigma at t = T - 1 where lower; above 80 an image is
    1/80 of x and the grid's levels would be spent on noise), sigma_data 1 (the teacher's input scaling), clipping
    as the teacher clips."""
    levels = process_noise_levels(teacher_scheduler.alphas_cumprod)
    return CMStochasticIterativeScheduler(
        num_train_timesteps=num_discretization_steps, sigma_min=float(levels[0]), sigma_max=min(float(levels[-1]), SIGMA_MAX),
        sigma_data=1.0, rho=7.0, clip_denoised=bool(teacher_scheduler.config.get("clip_sample", True)),
    )


def karras_grid(scheduler: CMStochasticIterativeScheduler) -> torch.Tensor:
    """The scheduler's ``num_train_timesteps`` noise levels, descending (sigma_max .. sigma_min), computed in float64
    and stored as float32 (the precision the losses use); built once, not per step."""
    ramp = torch.linspace(0, 1, scheduler.config.num_train_timesteps, dtype=torch.float64)
    return torch.as_tensor(scheduler._convert_to_karras(ramp.numpy())).float()


class _TargetNetwork:
    """The EMA of the student that gives the consistency targets (its state is kept in checkpoints)."""

    def __init__(self, student: nn.Module, rate: float):
        self.rate = rate
        self.network = copy.deepcopy(student).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        target = [param for param in self.network.parameters()]
        source = [param.detach() for param in student.parameters()]
        torch._foreach_mul_(target, self.rate)
        torch._foreach_add_(target, source, alpha=1.0 - self.rate)

    def state_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "weights": {key: value.clone() for key, value in self.network.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["rate"]) != self.rate:
            raise ValueError(f"expected a checkpoint with --target_ema_rate {self.rate}, got {state['rate']}")
        self.network.load_state_dict(state["weights"])


def progressive_stage(step: int, max_train_steps: int, num_stages: int) -> int:
    """The progressive stage that optimizer step ``step`` + 1 trains: the steps are split evenly among the stages."""
    return min(num_stages - 1, step * num_stages // max_train_steps)


class _PreviousStudent:
    """Progressive distillation's stage and its teacher after stage 0: the student frozen at the end of the previous
    stage (both kept in checkpoints)."""

    def __init__(self, student: nn.Module):
        self.stage = 0
        self.network = copy.deepcopy(student).requires_grad_(False).eval()

    @torch.no_grad()
    def advance(self, student: nn.Module) -> None:
        """Freeze ``student`` as the next stage's teacher."""
        self.network.load_state_dict(student.state_dict())
        self.stage += 1

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "weights": {key: value.clone() for key, value in self.network.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state["stage"])
        self.network.load_state_dict(state["weights"])


class ImageDiscriminator(nn.Module):
    """A small class-conditional convolutional critic of clean images (the adversarial term's): strided
    convolutions down to 4x4 (channels doubled per halving, at most 512), summed features, a linear score plus a
    class projection (Miyato & Koyama 2018) over the teacher's labels (the null class included).

    Args:
        in_channels (`int`): image channels.
        resolution (`int`): image size.
        num_labels (`int`, *optional*): class labels it scores by (with the null class); None: unconditional.
        channels (`int`, defaults to 64): the first convolution's channels.
    """

    def __init__(self, in_channels: int, resolution: int, num_labels: int | None, channels: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        while resolution > 4:
            wider = min(channels * 2, 512)
            layers += [nn.Conv2d(channels, wider, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels, resolution = wider, resolution // 2
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(channels, 1)
        self.embedding = nn.Embedding(num_labels, channels) if num_labels else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        features = self.features(images).sum(dim=(2, 3))
        score = self.score(features).squeeze(1)
        if self.embedding is not None:
            score = score + (self.embedding(labels) * features).sum(dim=1)
        return score


class _Adversary:
    """The critic and its optimizer (both kept in checkpoints); one critic step per micro-batch, on the training
    images against the student's detached x_0, its gradients averaged over processes."""

    def __init__(self, in_channels: int, resolution: int, num_labels: int | None, learning_rate: float):
        self.network = ImageDiscriminator(in_channels, resolution, num_labels)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=learning_rate, betas=(0.5, 0.999))

    def step(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None) -> None:
        """One step of the critic's logistic loss: training images ``real`` scored up, the student's ``fake`` down."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.softplus(-self.network(real, labels)).mean() + nn.functional.softplus(self.network(fake, labels)).mean()
        loss.backward()
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # one critic on every process
            for param in self.network.parameters():
                torch.distributed.all_reduce(param.grad)  # a sum (gloo has no average)
                param.grad /= torch.distributed.get_world_size()
        self.optimizer.step()

    def generator_loss(self, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The student's per-example non-saturating term: low where the critic scores its ``fake`` as an image."""
        return nn.functional.softplus(-self.network(fake, labels))

    def state_dict(self) -> dict[str, Any]:
        optimizer = self.optimizer.state_dict()
        return {"weights": {key: value.clone() for key, value in self.network.state_dict().items()},
                "optimizer": {**optimizer, "state": {str(key): value for key, value in optimizer["state"].items()}}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["weights"])
        optimizer = state["optimizer"]  # JSON object keys are strings: the parameter ids back to ints
        self.optimizer.load_state_dict({**optimizer, "state": {int(key): value for key, value in optimizer["state"].items()}})


class DistillationTask(TrainingTask):
    """Consistency or progressive distillation (``--method``) of ``--teacher`` (a pipeline folder) into an
    [`ADMConsistencyPipeline`] student.

    Each micro-batch: training images x_0 and labels; per example a grid index n, the noisy x = x_0 + sigma_{n+1} z,
    one guided teacher step (DDIM or Heun) to sigma_n, and the squared distance between the student's f at
    (x, sigma_{n+1}) and the target network's at the teacher's step (at sigma_min the boundary condition makes it
    the step itself); with ``--adversarial_weight``, one critic step on the images against the detached f, then the
    weighted non-saturating critic loss of f added. Progressive: a student interval of the stage, two teacher steps
    across it, and the squared distance between the student's D and the D whose DDIM step lands where the teacher's
    two did.
    ``--unconditional_prob`` of the examples get the null label and the unguided teacher, so the student also samples
    without guidance.
    """

    def __init__(self, args: argparse.Namespace):
        super().__init__(args, "diffusion", loadable_entry="model_index.json")
        self.teacher: DiffusionPipeline | None = None
        self.target: _TargetNetwork | None = None
        self.adversary: _Adversary | None = None
        self.previous: _PreviousStudent | None = None
        self.cm_scheduler: CMStochasticIterativeScheduler | None = None
        self.grid: torch.Tensor | None = None
        self.null_class: int | None = None
        self.num_classes: int | None = None
        self.classifier_scale = 0.0

    # -- set-up -------------------------------------------------------------------------------------------------------

    def load_images(self) -> tuple[LabelledImages, None]:
        return load_training_images(self.args, require_labels=self.args.guidance != "none"), None

    def _load_teacher(self) -> DiffusionPipeline:
        args = self.args
        teacher = DiffusionPipeline.from_pretrained(args.teacher)
        unet, scheduler = getattr(teacher, "unet", None), getattr(teacher, "scheduler", None)
        if type(unet) is not ADMUNet2DModel or not hasattr(scheduler, "alphas_cumprod") or not hasattr(scheduler, "diffusion"):
            raise ValueError(
                f"expected a teacher pipeline with an ADMUNet2DModel and a guided scheduler in --teacher, got {type(teacher).__name__} "
                f"with {type(unet).__name__} and {type(scheduler).__name__}"
            )
        if scheduler.config.prediction_type != "epsilon" or unet.config.out_channels != unet.config.in_channels:
            raise ValueError(
                "expected an epsilon-predicting teacher without learned variances, got prediction_type "
                f"{scheduler.config.prediction_type!r} with {unet.config.out_channels} output channels for {unet.config.in_channels} image channels"
            )
        null = null_class_id(unet)
        if args.guidance == "classifier-free" and null is None:
            raise ValueError("expected a teacher trained with label dropout (a null class) for --guidance classifier-free, got none")
        if args.guidance == "classifier" and getattr(teacher, "classifier", None) is None:
            raise ValueError("expected a teacher pipeline with a classifier for --guidance classifier, got none")
        if args.guidance != "none" and not unet.config.num_classes:
            raise ValueError(f"expected a class-conditional teacher for --guidance {args.guidance}, got an unconditional one")
        if args.unconditional_prob > 0 and null is None:
            raise ValueError(f"expected a teacher with a null class for --unconditional_prob {args.unconditional_prob}, got none (pass 0)")
        if args.resolution is not None and args.resolution != unet.config.sample_size:
            raise ValueError(f"expected --resolution {unet.config.sample_size} (the teacher's), got {args.resolution}")
        return teacher

    def build(self, train_images: LabelledImages) -> nn.Module:
        args = self.args
        teacher = self._load_teacher()
        unet = teacher.unet.requires_grad_(False).eval()
        if getattr(teacher, "classifier", None) is not None:
            teacher.classifier.requires_grad_(False).eval()
        self.teacher = teacher
        self.num_classes = unet.config.num_classes or None
        self.null_class = null_class_id(unet)
        self.classifier_scale = args.classifier_scale if args.classifier_scale is not None else float(teacher.config.get("classifier_scale") or 0.0)
        self.id2label = {int(k): v for k, v in (teacher.config.get("id2label") or {}).items()} or None
        label_map = None
        if self.num_classes:
            data = train_images.id2label or {index: str(index) for index in range(train_images.num_classes or 0)}
            label_map = map_data_classes(data, train_images.named, self.id2label, self.num_classes, "teacher")
        student = ADMGuidanceUNet2DModel.from_unet(unet) if args.guidance == "classifier-free" else copy.deepcopy(unet)
        with torch.no_grad():  # F = -eps: at low noise, the parameterization's F is -v = -eps
            student.conv_out.weight.neg_()
            student.conv_out.bias.neg_()
        student.requires_grad_(True).train()
        progressive = args.method == "progressive"
        # Progressive: N steps of the first teacher on a grid of N + 1 levels.
        self.cm_scheduler = consistency_scheduler(teacher.scheduler, args.num_discretization_steps + progressive)
        self.grid = karras_grid(self.cm_scheduler)
        if progressive:
            self.previous = _PreviousStudent(student)
        else:
            self.target = _TargetNetwork(student, args.target_ema_rate)
        if args.adversarial_weight:
            num_labels = (self.num_classes + (self.null_class is not None)) if self.num_classes else None
            self.adversary = _Adversary(unet.config.in_channels, unet.config.sample_size, num_labels, args.learning_rate)
        flags = {"teacher": args.teacher, "method": METHODS[args.method], "guidance": args.guidance}
        self.setup = DiffusionSetup(student, teacher.scheduler, LossType.MSE, unet.config.sample_size, None, self.id2label, flags, label_map)
        self.label_map = label_map
        self.resolution = unet.config.sample_size
        self.num_timesteps = len(self.grid) - 1  # the grid intervals, which the loss is logged by
        return student

    @property
    def num_stages(self) -> int:
        """Progressive distillation's stages: log2 of the first teacher's steps."""
        return self.args.num_discretization_steps.bit_length() - 1

    def checkpoint_objects(self) -> dict[str, Any]:
        objects = {"previous_student": self.previous} if self.previous is not None else {"target_network": self.target}
        return {**objects, "adversary": self.adversary} if self.adversary is not None else objects

    # -- the loss -----------------------------------------------------------------------------------------------------

    def consistency_function(self, network: nn.Module, x: torch.Tensor, sigma: torch.Tensor, unet_kwargs: dict[str, Any]) -> torch.Tensor:
        """f(x, sigma) = c_skip x + c_out F(c_in x, t(sigma)), exactly as the student's scheduler computes it."""
        scheduler = self.cm_scheduler
        view = sigma.view(-1, 1, 1, 1)
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition(view)
        c_in = 1.0 / (view**2 + scheduler.config.sigma_data**2).sqrt()
        timesteps = teacher_timesteps(self.teacher.scheduler, sigma)
        return c_skip * x + c_out * network(c_in * x, timesteps, **unet_kwargs).sample

    @torch.no_grad()
    def teacher_denoised(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None, guidance_scale: torch.Tensor | None,
                         guided: torch.Tensor | None) -> torch.Tensor:
        """The guided teacher's x_0 at the variance-exploding ``x`` of noise level ``sigma``: x - sigma eps, with eps
        its guided prediction at x / sqrt(1 + sigma^2), clipped where the teacher's scheduler clips."""
        unet = self.teacher.unet
        view = sigma.view(-1, 1, 1, 1)
        x_t = x / (1.0 + view**2).sqrt()
        timesteps = teacher_timesteps(self.teacher.scheduler, sigma)
        kwargs = {"class_labels": labels} if labels is not None else {}
        if guidance_scale is not None:
            null = torch.full_like(labels, self.null_class)
            both = unet(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]), class_labels=torch.cat([labels, null])).sample
            conditional, unconditional = both.chunk(2)
            eps = unconditional + guidance_scale.view(-1, 1, 1, 1) * (conditional - unconditional)
        else:
            eps = unet(x_t, timesteps, **kwargs).sample
        if guided is not None and self.classifier_scale:
            # DDIM's classifier guidance: eps - sqrt(1 - alpha_bar) * scale * grad log p(y | x_t).
            gradient = classifier_gradient(self.teacher.classifier, x_t, timesteps, labels.clamp(max=self.num_classes - 1), self.classifier_scale)
            eps = eps - (view / (1.0 + view**2).sqrt()) * gradient * guided.view(-1, 1, 1, 1)
        denoised = x - view * eps
        if self.teacher.scheduler.config.get("clip_sample", True):  # as the teacher's own DDIM clips its x_0
            denoised = denoised.clamp(-1, 1)
        return denoised

    @torch.no_grad()
    def teacher_step(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, labels: torch.Tensor | None,
                     guidance_scale: torch.Tensor | None, guided: torch.Tensor | None) -> torch.Tensor:
        """One step of the guided teacher's probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from noise
        level ``sigma`` to ``sigma_next`` on the variance-exploding x, with D its x_0 ([`teacher_denoised`]):
        ``--teacher_solver euler`` is DDIM's step, D + sigma_next (x - D) / sigma; ``heun`` (EDM's and the consistency
        models' second-order step) averages that slope with the slope at the Euler step's end (a second teacher
        evaluation), which lands much nearer the ODE's exact solution on a coarse grid.

        Args:
            x (`torch.Tensor`): the variance-exploding sample.
            sigma, sigma_next (`torch.Tensor`): (batch,) noise levels, sigma_next > 0.
            labels (`torch.Tensor`, *optional*): the teacher's labels (the null class for unguided examples).
            guidance_scale (`torch.Tensor`, *optional*): (batch,) classifier-free weights.
            guided (`torch.Tensor`, *optional*): (batch,) bool, the examples the classifier guides.
        """
        view, view_next = sigma.view(-1, 1, 1, 1), sigma_next.view(-1, 1, 1, 1)
        slope = (x - self.teacher_denoised(x, sigma, labels, guidance_scale, guided)) / view
        euler = x + (view_next - view) * slope
        if self.args.teacher_solver == "euler":
            return euler
        slope_next = (euler - self.teacher_denoised(euler, sigma_next, labels, guidance_scale, guided)) / view_next
        return x + (view_next - view) * (slope + slope_next) / 2

    @torch.no_grad()
    def student_step(self, network: nn.Module, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                     unet_kwargs: dict[str, Any]) -> torch.Tensor:
        """One DDIM step of a student (progressive distillation's teacher after stage 0) from ``sigma`` to
        ``sigma_next``: its D, clipped as the student's scheduler clips, then D + sigma_next (x - D) / sigma."""
        denoised = self.consistency_function(network, x, sigma, unet_kwargs)
        if self.cm_scheduler.config.clip_denoised:
            denoised = denoised.clamp(-1, 1)
        return denoised + sigma_next.view(-1, 1, 1, 1) * (x - denoised) / sigma.view(-1, 1, 1, 1)

    def _move_to(self, device: torch.device) -> None:
        if self.teacher.unet.device != device:
            self.teacher.to(device)
            (self.previous or self.target).network.to(device)
            if self.adversary is not None:
                self.adversary.network.to(device)
            self.grid = self.grid.to(device)

    def _conditioning(self, batch: dict[str, torch.Tensor]) -> tuple[Any, Any, Any, dict[str, Any]]:
        """(teacher labels, classifier-guided mask, classifier-free weights, the student's U-Net kwargs) of a batch."""
        args = self.args
        size, device = batch["pixel_values"].shape[0], batch["pixel_values"].device
        labels = guided = scales = None
        student_kwargs: dict[str, Any] = {}
        if self.num_classes:
            labels = batch["class_labels"]
            guided = torch.ones(size, dtype=torch.bool, device=device)
            if args.unconditional_prob > 0:
                guided = torch.rand(size, device=device) >= args.unconditional_prob
                labels = torch.where(guided, labels, torch.full_like(labels, self.null_class))
            student_kwargs["class_labels"] = labels
        if args.guidance == "classifier-free":
            scales = args.w_min + (args.w_max - args.w_min) * torch.rand(size, device=device)
            student_kwargs["guidance_scale"] = scales
        return labels, guided if args.guidance == "classifier" else None, scales, student_kwargs

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> MicroBatchResult:
        x0 = batch["pixel_values"]
        self._move_to(x0.device)
        if self.previous is not None:
            return self._progressive_loss(model, x0, *self._conditioning(batch))
        size, device = x0.shape[0], x0.device
        index = torch.randint(0, len(self.grid) - 1, (size,), device=device)
        sigma, sigma_next = self.grid[index], self.grid[index + 1]
        labels, guided, scales, student_kwargs = self._conditioning(batch)
        x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn_like(x0)
        x_next = self.teacher_step(x, sigma, sigma_next, labels, scales, guided)
        with torch.no_grad():
            target = self.consistency_function(self.target.network, x_next, sigma_next, student_kwargs)
        prediction = self.consistency_function(model, x, sigma, student_kwargs)
        loss = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
        logged = {"loss": loss.detach()}
        if self.adversary is not None:
            labels = student_kwargs.get("class_labels")
            self.adversary.step(x0, prediction.detach(), labels)
            adversarial = self.adversary.generator_loss(prediction, labels)
            logged["adversarial"] = adversarial.detach()
            loss = loss + self.args.adversarial_weight * adversarial
        # Logged by grid interval, noisiest first: the "timestep" of each example is its index n.
        return MicroBatchResult(loss.mean(), logged, index)

    def _progressive_loss(self, model: nn.Module, x0: torch.Tensor, labels: Any, guided: Any, scales: Any,
                          student_kwargs: dict[str, Any]) -> MicroBatchResult:
        """Stage k's loss: per example a student interval of 2^(k+1) grid intervals from level j, the noisy
        x = x_0 + sigma_j z, two teacher steps across it, and the squared distance between the student's D(x, sigma_j)
        and the D whose DDIM step lands where the teacher's did: (x'' - r x) / (1 - r), r = sigma_end / sigma_j."""
        stage = self.previous.stage
        width = 2 ** (stage + 1)
        start = torch.randint(0, (len(self.grid) - 1) // width, (x0.shape[0],), device=x0.device) * width
        sigma, middle, end = (self.grid[start + offset] for offset in (0, width // 2, width))
        x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn_like(x0)
        if stage == 0:
            halfway = self.teacher_step(x, sigma, middle, labels, scales, guided)
            landed = self.teacher_step(halfway, middle, end, labels, scales, guided)
        else:
            halfway = self.student_step(self.previous.network, x, sigma, middle, student_kwargs)
            landed = self.student_step(self.previous.network, halfway, middle, end, student_kwargs)
        ratio = (end / sigma).view(-1, 1, 1, 1)
        target = (landed - ratio * x) / (1.0 - ratio)
        prediction = self.consistency_function(model, x, sigma, student_kwargs)
        loss = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
        return MicroBatchResult(loss.mean(), {"loss": loss.detach()}, start)

    def optimizer_step_done(self, model: nn.Module, step: int) -> None:
        if self.previous is None:
            self.target.update(model)
        elif progressive_stage(step, self.args.max_train_steps, self.num_stages) > self.previous.stage:
            self.previous.advance(model)

    # -- output -------------------------------------------------------------------------------------------------------

    def write_output(self, folder: Path, model: nn.Module, extra_models: dict[str, nn.Module], facts: dict[str, Any]) -> None:
        args = self.args
        distillation = {
            "teacher": str(args.teacher), "method": METHODS[args.method], "guidance": args.guidance,
            "num_discretization_steps": args.num_discretization_steps, "unconditional_prob": args.unconditional_prob,
            "teacher_solver": args.teacher_solver,
        }
        if args.method == "consistency":
            distillation.update(target_ema_rate=args.target_ema_rate, adversarial_weight=args.adversarial_weight)
        if args.guidance == "classifier":
            distillation["classifier_scale"] = self.classifier_scale
        if args.guidance == "classifier-free":
            distillation.update(w_min=args.w_min, w_max=args.w_max)
        guidance_scale = args.guidance_scale if args.guidance == "classifier-free" else None
        pipeline = ADMConsistencyPipeline(
            unet=model, scheduler=self.cm_scheduler, teacher_scheduler=self.teacher.scheduler, id2label=self.id2label,
            guidance_scale=guidance_scale, distillation=distillation,
        )
        pipeline.save_pretrained(folder, safe_serialization=True)
        for name, weights in extra_models.items():
            weights.save_pretrained(folder / "weights" / name, safe_serialization=True)
        write_distilled_card(folder / "README.md", distillation, facts, guidance_scale, bool(self.num_classes), args.license)


def write_distilled_card(path: Path, distillation: dict[str, Any], facts: dict[str, Any], guidance_scale: float | None,
                         conditional: bool, license: str) -> None:
    """The student's model card: what it was distilled from and how, the loop's settings, and how to sample it."""
    from ..publishing import write_text_atomically

    guidance = distillation["guidance"]
    how = {
        "classifier-free": f"classifier-free guidance with the weight as a student input (trained for w in [{distillation.get('w_min')}, "
        f"{distillation.get('w_max')}]; default {guidance_scale})",
        "classifier": f"the teacher's classifier guidance folded in at classifier scale {distillation.get('classifier_scale')}",
        "none": "no guidance",
    }[guidance]
    steps = distillation["num_discretization_steps"]
    step = {"euler": "DDIM (Euler) step", "heun": "Heun step"}[distillation.get("teacher_solver", "euler")]
    if distillation["method"] == METHODS["consistency"]:
        method = (f"consistency distillation (Song et al. 2023) with an EMA target network (rate {distillation['target_ema_rate']}) "
                  f"over a Karras grid of {steps} noise levels of the teacher's process, one {step} of the guided teacher per example")
        if distillation.get("adversarial_weight"):
            method += (f", plus an adversarial term (weight {distillation['adversarial_weight']}: a small class-conditional critic trained "
                       "on the training images against the student's x_0, as in adversarial diffusion distillation, Sauer et al. 2023)")
    else:
        method = (f"progressive distillation (Salimans & Ho 2022) from {steps} {step}s of the guided teacher on a Karras grid "
                  f"of {steps + 1} noise levels of its process to 1 step, halving the steps in each of {steps.bit_length() - 1} "
                  "stages (the student's one step matches two of its teacher's; the student denoises, x-prediction)")
    call = "pipe(class_labels=[0, 1, 2], num_inference_steps=2" if conditional else "pipe(batch_size=4, num_inference_steps=2"
    if guidance == "classifier-free":
        call += f", guidance_scale={guidance_scale}"
    training = "\n".join(f"- {key}: {value}" for key, value in facts["training"].items())
    text = f"""---
license: {license}
library_name: diffusers
tags:
- guided_diffusers
- consistency-models
- distillation
- {distillation["method"].replace(" ", "-")}
---

# {facts["model_name"]}

A few-step student distilled with `guided-diffusers-distill` from the pipeline `{distillation["teacher"]}`: {method}, \
{how}. {distillation["unconditional_prob"]:.0%} of the examples were distilled without \
guidance (the null class), so the student also samples unguided (no class labels). It samples in 1 to 4 steps with \
diffusers' `CMStochasticIterativeScheduler`.

Data: {facts["dataset"]}

## Use

```python
import guided_diffusers  # registers the pipeline classes with diffusers
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{facts["location"]}")
images = {call}).images
```

## Distillation

{training}
"""
    results = facts.get("results") or {}
    if results:
        text += "\n## Results\n\n" + "\n".join(f"- {key}: {value}" for key, value in results.items()) + "\n"
    write_text_atomically(path, text)
