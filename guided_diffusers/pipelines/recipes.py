"""Named sampling recipes (``"ddpm:50"``, ``"dpmpp2m:10"``): a scheduler swapped in the diffusers way
(``X.from_config(pipe.scheduler.config)``) and the call arguments that go with it. The quick start, the quality
benchmark, the web demo and the model cards name samplers this way, and the fast recipe is defined here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..checks import check_whole_number

__all__ = ["FAST_RECIPE", "SAMPLERS", "SamplingRecipe", "fast_sampling_note"]

#: Sampler names and what they are. ``ddpm``/``ddim`` are our schedulers (the originals' respacing "N" / "ddimN");
#: the others are stock diffusers schedulers.
SAMPLERS = {
    "ddpm": "GuidedDDPMScheduler (ancestral)",
    "ddim": "GuidedDDIMScheduler (eta 0)",
    "dpmpp2m": "DPM-Solver++ 2M",
    "dpmpp3m": "DPM-Solver++ 3M",
    "dpmpp2m_sde": "SDE-DPM-Solver++ 2M",
    "unipc": "UniPC",
    "euler": "Euler",
    "heun": "Heun",
}
# Stock schedulers that cannot clip x_0 run unclipped; the others clip to [-1, 1] as the originals' samplers do.
_UNCLIPPED = ("euler", "heun")


@dataclass(frozen=True)
class SamplingRecipe:
    """A sampler and its step count.

    Args:
        sampler (`str`): one of [`SAMPLERS`].
        steps (`int`): sampling steps (Heun takes two network evaluations per step but the last).
    """

    sampler: str
    steps: int

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"expected a sampler among {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check_whole_number("steps", self.steps, 1)

    @classmethod
    def parse(cls, text: str) -> SamplingRecipe:
        """``"NAME:STEPS"``, e.g. ``"dpmpp2m:10"``."""
        name, sep, steps = str(text).partition(":")
        if not sep or not (steps.strip().isascii() and steps.strip().isdigit()):
            raise ValueError(f"expected a sampling recipe as NAME:STEPS (e.g. dpmpp2m:10), got {text!r}")
        return cls(name.strip(), int(steps))

    def __str__(self) -> str:
        return f"{self.sampler}:{self.steps}"

    def describe(self) -> str:
        """A reader's name, e.g. ``"DPM-Solver++ 2M, 10 steps"``."""
        return f"{SAMPLERS[self.sampler]}, {self.steps} steps"

    def scheduler(self, config: Any) -> Any:
        """The recipe's scheduler made from a pipeline's scheduler config, the diffusers way, clipping as it should.

        Stock solvers that can clip x_0 are made to clip to [-1, 1] (as the originals' samplers do); Euler and Heun
        cannot and run unclipped.
        """
        from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler

        from ..schedulers import GuidedDDIMScheduler, GuidedDDPMScheduler
        from .sampling import stock_clip_settings

        makers = {
            "ddpm": (GuidedDDPMScheduler, {}),
            "ddim": (GuidedDDIMScheduler, {}),
            "dpmpp2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
            "dpmpp3m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 3}),
            "dpmpp2m_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
            "unipc": (UniPCMultistepScheduler, {}),
            "euler": (EulerDiscreteScheduler, {}),
            "heun": (HeunDiscreteScheduler, {}),
        }
        scheduler_class, settings = makers[self.sampler]
        if self.sampler not in ("ddpm", "ddim"):
            settings = {**settings, **stock_clip_settings(scheduler_class, self.sampler not in _UNCLIPPED, config)}
        return scheduler_class.from_config(config, **settings)

    def call_kwargs(self) -> dict[str, Any]:
        """The pipeline call's step arguments: the originals' respacing for ours, a step count otherwise."""
        if self.sampler == "ddpm":
            return {"timestep_respacing": str(self.steps)}
        if self.sampler == "ddim":
            return {"timestep_respacing": f"ddim{self.steps}"}
        return {"num_inference_steps": self.steps}

    def apply(self, pipeline: Any) -> dict[str, Any]:
        """Swap the recipe's scheduler into ``pipeline`` (from its current config); returns the call arguments."""
        pipeline.scheduler = self.scheduler(pipeline.scheduler.config)
        return self.call_kwargs()


#: The fastest recipe that keeps the quality of 250 ancestral steps on the quick start's digits model, measured by
#: benchmarks/bench_quality.py (docs/benchmarks.md).
FAST_RECIPE = SamplingRecipe("dpmpp2m_sde", 8)


def fast_sampling_note() -> str:
    """The model cards' recommended fast sampling: the fast recipe, where it was measured, and the call."""
    return (
        f"Fast sampling: {FAST_RECIPE.describe()} (`\"{FAST_RECIPE}\"`) is the package's fast recipe, the cheapest setting "
        "that kept the class accuracy and Fréchet distance of 250 ancestral steps on the quick start's digits model "
        "(measured by `benchmarks/bench_quality.py`; check it on this model's own data before relying on it): "
        f"`kwargs = SamplingRecipe.parse(\"{FAST_RECIPE}\").apply(pipe); images = pipe(..., **kwargs).images` "
        "(`from guided_diffusers.pipelines.recipes import SamplingRecipe`)."
    )
