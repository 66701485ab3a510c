"""guided_diffusers: OpenAI's ADM family (guided-diffusion, improved-diffusion) and the original DDPM, in diffusers."""

import sys
from pathlib import Path

__version__ = "0.1.0"

__all__ = [
    "ADMClassifier",
    "ADMConsistencyPipeline",
    "ADMGuidanceUNet2DModel",
    "ADMImg2ImgPipeline",
    "ADMInpaintPipeline",
    "ADMSuperResUNet2DModel",
    "ADMUNet2DModel",
    "ADMUpsamplingPipeline",
    "ClassifierGuidedPipeline",
    "DDIMInversionPipeline",
    "GuidedDDIMScheduler",
    "GuidedDDPMScheduler",
    "ModelMixin",
    "SchedulerMixin",
]


def _import_public_names() -> None:
    """The package's classes, with diffusers and torch; importing the pipelines registers them with diffusers' loader."""
    # diffusers' component loader accepts a library's classes only if the library exposes these two base classes.
    from diffusers import ModelMixin, SchedulerMixin

    from .models import ADMClassifier, ADMGuidanceUNet2DModel, ADMSuperResUNet2DModel, ADMUNet2DModel
    from .pipelines import (
        ADMConsistencyPipeline,
        ADMImg2ImgPipeline,
        ADMInpaintPipeline,
        ADMUpsamplingPipeline,
        ClassifierGuidedPipeline,
        DDIMInversionPipeline,
    )
    from .schedulers import GuidedDDIMScheduler, GuidedDDPMScheduler

    globals().update(locals())


def __getattr__(name: str):
    """In a console script's process, the classes on first use (the same imports and registration)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _import_public_names()
    return globals()[name]


def _runs_a_command_line() -> bool:
    """Whether this process runs one of our command lines: a console script (``guided-diffusers-*``), a checkout's
    wrapper of one (``scripts/*.py``, ``convert/*.py`` beside this package), or ``python -m guided_diffusers.cli.<name>``
    (as ``accelerate launch -m`` runs it), whose ``sys.argv[0]`` is ``"-m"`` while the package imports (the module is
    in ``sys.orig_argv``)."""
    program = sys.argv[0] if sys.argv else ""
    if program != "-m":
        path = Path(program or "python")
        checkout = Path(__file__).resolve().parents[1]
        wrapper = path.suffix == ".py" and path.resolve().parent in (checkout / "scripts", checkout / "convert")
        return path.name.startswith("guided-diffusers-") or wrapper
    command = getattr(sys, "orig_argv", [])
    for index, arg in enumerate(command):
        if arg.startswith("-m"):  # "-m module" or "-mmodule"
            return (arg[2:] or "".join(command[index + 1 : index + 2])).startswith("guided_diffusers.cli.")
    return False


# A command line imports this package only to reach its command in guided_diffusers.cli, which imports what it uses
# once its arguments are parsed: importing diffusers (and torch) here would make `--help` take seconds. Anywhere else
# `import guided_diffusers` imports the classes and registers them with diffusers' loader.
if not _runs_a_command_line():
    _import_public_names()
