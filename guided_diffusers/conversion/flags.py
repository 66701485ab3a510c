"""The original scripts' command-line flags, with each source's own defaults, and what they build.

guided-diffusion and improved-diffusion parse the same flag names with different defaults
(improved-diffusion rescales timesteps and learned sigmas by default, guided-diffusion does not),
and derive the network's channel multipliers and attention levels from the image size. This
module reproduces those derivations: flags in, the original classes' constructor kwargs out.
openai/consistency_models (``consistency-models``) builds guided-diffusion's network from the same
flags with its own defaults; its sampling flags (``--steps``, ``--ts``, ``--sigma_min/max``) give
diffusers' ``CMStochasticIterativeScheduler`` and its multistep timesteps.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

CONSISTENCY_MODELS = "consistency-models"
SOURCES = ("guided-diffusion", "improved-diffusion", CONSISTENCY_MODELS)
NUM_CLASSES = 1000

_GUIDED_MODEL = dict(
    image_size=64,
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    num_head_channels=-1,
    attention_resolutions="16,8",
    channel_mult="",
    dropout=0.0,
    class_cond=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
)
_GUIDED_DIFFUSION = dict(
    learn_sigma=False,
    sigma_small=False,
    diffusion_steps=1000,
    noise_schedule="linear",
    timestep_respacing="",
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
)
_GUIDED_CLASSIFIER = dict(
    classifier_use_fp16=False,
    classifier_width=128,
    classifier_depth=2,
    classifier_attention_resolutions="32,16,8",
    classifier_use_scale_shift_norm=True,
    classifier_resblock_updown=True,
    classifier_pool="attention",
    # Not one of the originals' flags: their classifiers take channel_mult from the image size (64 to 512 px only).
    classifier_channel_mult="",
)
_IMPROVED_MODEL = dict(
    image_size=64,
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    attention_resolutions="16,8",
    dropout=0.0,
    class_cond=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
)
_IMPROVED_DIFFUSION = dict(_GUIDED_DIFFUSION, rescale_timesteps=True, rescale_learned_sigmas=True)
_SUPER_RES = dict(large_size=256, small_size=64)
# Flags of the sampling and training scripts: accepted (so README command lines paste as they
# are) and kept, but they do not change the network.
_SCRIPT = dict(
    clip_denoised=True,
    num_samples=10000,
    batch_size=16,
    use_ddim=False,
    model_path="",
    classifier_path="",
    classifier_scale=1.0,
    base_samples="",
    data_dir="",
    val_data_dir="",
    schedule_sampler="uniform",
    lr=1e-4,
    weight_decay=0.0,
    lr_anneal_steps=0,
    microbatch=-1,
    ema_rate="0.9999",
    log_interval=10,
    save_interval=10000,
    resume_checkpoint="",
    fp16_scale_growth=1e-3,
    iterations=150000,
    anneal_lr=False,
    noised=True,
    eval_interval=5,
)

# openai/consistency_models: cm/script_util.py's model_and_diffusion_defaults and scripts/image_sample.py's flags
# (its README's sampling command lines paste as they are).
_CM_MODEL = dict(
    _GUIDED_MODEL,
    attention_resolutions="32,16,8",
    sigma_min=0.002,
    sigma_max=80.0,
    learn_sigma=False,
    weight_schedule="karras",
)
_CM_SAMPLE = dict(
    training_mode="edm",
    generator="determ",
    clip_denoised=True,
    num_samples=10000,
    batch_size=16,
    sampler="heun",
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
    steps=40,
    model_path="",
    seed=42,
    ts="",
)
#: The consistency models' training modes (image_sample.py's ``--training_mode``; ``edm`` is their diffusion teacher).
CONSISTENCY_TRAINING_MODES = ("consistency_distillation", "consistency_training")

DEFAULTS: dict[str, dict[str, Any]] = {
    "guided-diffusion": {**_GUIDED_MODEL, **_GUIDED_DIFFUSION, **_GUIDED_CLASSIFIER, **_SUPER_RES, **_SCRIPT},
    "improved-diffusion": {**_IMPROVED_MODEL, **_IMPROVED_DIFFUSION, **_SUPER_RES, **_SCRIPT},
    CONSISTENCY_MODELS: {**_CM_MODEL, **_CM_SAMPLE},
}


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"expected source in {SOURCES}, got {source!r}")


BOOLEAN_VALUES = {"yes": True, "true": True, "t": True, "y": True, "1": True, "no": False, "false": False, "f": False, "n": False, "0": False}


def str2bool(value: Any, name: str | None = None) -> bool:
    """The originals' boolean flag values: yes/no, true/false, t/f, y/n, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    parsed = BOOLEAN_VALUES.get(str(value).lower())
    if parsed is None:
        raise ValueError(f"expected a boolean for --{name}, got {value!r}" if name else f"expected a boolean (True/False), got {value!r}")
    return parsed


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        return str2bool(value, name)
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ValueError(f"expected {kind} for --{name}, got {value!r}") from None
    return "" if value is None else str(value)


def split_flag_string(flags: str) -> dict[str, str]:
    """``"--num_channels 256 --class_cond True"`` (or ``--name=value``) to ``{name: value}``."""
    tokens = shlex.split(flags)
    parsed: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ValueError(f"expected a flag like --name value, got {token!r} in {flags!r}")
        if "=" in token:
            name, value = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ValueError(f"expected a value after {token} in {flags!r}")
            name, value = token[2:], tokens[i + 1]
            i += 2
        parsed[name] = value
    return parsed


def given_flags(flags: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The flags the user actually gave, as a dict (no defaults applied)."""
    if flags is None:
        return {}
    if isinstance(flags, str):
        return split_flag_string(flags)
    return {str(k).lstrip("-"): v for k, v in flags.items()}


def parse_flags(flags: str | Mapping[str, Any] | None, source: str = "guided-diffusion") -> dict[str, Any]:
    """Every flag of ``source`` with its default, overridden by ``flags`` and typed as the original parsers type them.

    Args:
        flags: A flag string as passed to the original scripts, or a mapping of flag names to values.
        source: ``"guided-diffusion"`` or ``"improved-diffusion"`` (their defaults differ).
    """
    _check_source(source)
    defaults = DEFAULTS[source]
    given = given_flags(flags)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"expected {source} flags, got unknown flags {', '.join('--' + u for u in unknown)}")
    parsed = dict(defaults)
    for name, value in given.items():
        parsed[name] = _coerce(name, value, defaults[name])
    return parsed


def _attention_downsample_factors(resolutions: str, image_size: int) -> tuple[int, ...]:
    return tuple(image_size // int(res) for res in str(resolutions).split(",") if res.strip())


def _default_channel_mult(image_size: int, table: dict[int, tuple[float, ...]], what: str) -> tuple[float, ...]:
    if image_size not in table:
        raise ValueError(f"expected {what} in {sorted(table)} (or an explicit channel_mult), got {image_size}")
    return table[image_size]


_GUIDED_UNET_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
_GUIDED_SR_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
_GUIDED_CLASSIFIER_MULT = _GUIDED_UNET_MULT
_IMPROVED_UNET_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
_IMPROVED_SR_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def is_super_res(flags: str | Mapping[str, Any] | None) -> bool:
    """A super-resolution model is recognised from ``large_size``/``small_size`` among the given flags."""
    given = given_flags(flags)
    return "large_size" in given or "small_size" in given


def unet_kwargs_from_flags(flags: str | Mapping[str, Any] | None, source: str = "guided-diffusion") -> dict[str, Any]:
    """The original UNetModel/SuperResModel constructor kwargs the source's create_model builds from ``flags``.

    A super-resolution model (``large_size``/``small_size`` given) gets ``large_size``/``small_size`` keys too.
    """
    return unet_kwargs_from_parsed(parse_flags(flags, source), source, is_super_res(flags))


def unet_kwargs_from_parsed(f: Mapping[str, Any], source: str, super_res: bool) -> dict[str, Any]:
    """[`unet_kwargs_from_flags`] from flags [`parse_flags`] has already read (so a conversion reads them once).

    Args:
        f (mapping): every flag of ``source``, typed (``parse_flags``' result).
        source (`str`): ``"guided-diffusion"`` or ``"improved-diffusion"``.
        super_res (`bool`): a super-resolution model ([`is_super_res`] of the given flags).
    """
    _check_source(source)
    guided = source in ("guided-diffusion", CONSISTENCY_MODELS)  # consistency_models' network is guided-diffusion's
    image_size = f["large_size"] if super_res else f["image_size"]
    if super_res:
        channel_mult = _default_channel_mult(
            image_size, _GUIDED_SR_MULT if guided else _IMPROVED_SR_MULT, "large_size"
        )
    elif guided and f["channel_mult"]:
        channel_mult = tuple(int(m) for m in str(f["channel_mult"]).split(","))
    else:
        channel_mult = _default_channel_mult(
            image_size, _GUIDED_UNET_MULT if guided else _IMPROVED_UNET_MULT, "image_size"
        )
    kwargs = dict(
        image_size=image_size,
        in_channels=3,
        model_channels=f["num_channels"],
        out_channels=6 if f["learn_sigma"] else 3,
        num_res_blocks=f["num_res_blocks"],
        attention_resolutions=_attention_downsample_factors(f["attention_resolutions"], image_size),
        dropout=f["dropout"],
        channel_mult=channel_mult,
        num_classes=NUM_CLASSES if f["class_cond"] else None,
        num_heads=f["num_heads"],
        num_heads_upsample=f["num_heads_upsample"],
        use_scale_shift_norm=f["use_scale_shift_norm"],
    )
    if guided:
        kwargs.update(
            num_head_channels=f["num_head_channels"],
            resblock_updown=f["resblock_updown"],
            use_new_attention_order=False if super_res else f["use_new_attention_order"],
        )
    if source == CONSISTENCY_MODELS:  # its attention splits q/k/v before heads whatever the flag says (cm/unet.py)
        kwargs["use_new_attention_order"] = True
    if super_res:
        kwargs.update(large_size=f["large_size"], small_size=f["small_size"])
    return kwargs


def classifier_kwargs_from_flags(flags: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """guided-diffusion's create_classifier: the EncoderUNetModel constructor kwargs.

    ``classifier_channel_mult`` (ours, e.g. ``"1,2"``) gives the levels explicitly for sizes the original's table lacks.
    """
    f = parse_flags(flags, "guided-diffusion")
    image_size = f["image_size"]
    if f["classifier_channel_mult"]:
        channel_mult = tuple(int(m) for m in str(f["classifier_channel_mult"]).split(","))
    else:
        channel_mult = _default_channel_mult(image_size, _GUIDED_CLASSIFIER_MULT, "image_size")
    return dict(
        image_size=image_size,
        in_channels=3,
        model_channels=f["classifier_width"],
        out_channels=NUM_CLASSES,
        num_res_blocks=f["classifier_depth"],
        attention_resolutions=_attention_downsample_factors(f["classifier_attention_resolutions"], image_size),
        channel_mult=channel_mult,
        num_head_channels=64,
        use_scale_shift_norm=f["classifier_use_scale_shift_norm"],
        resblock_updown=f["classifier_resblock_updown"],
        pool=f["classifier_pool"],
    )


def scheduler_config_from_diffusion_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler config from the keyword arguments of the originals' ``create_gaussian_diffusion``.

    Missing flags take that function's defaults, which are guided-diffusion's script defaults (the same function in
    improved-diffusion; its scripts' own defaults differ: they set rescale_timesteps and rescale_learned_sigmas, see
    [`DEFAULTS`]). ``steps`` (the function's name) is accepted for ``diffusion_steps``. The loss flags (``use_kl``,
    ``rescale_learned_sigmas``) are not part of the scheduler; see ``guided_diffusers.training.losses.loss_type_from_flags``.

    Args:
        flags (mapping): ``diffusion_steps``, ``learn_sigma``, ``sigma_small``, ``noise_schedule``, ``predict_xstart``,
            ``rescale_timesteps``, ``timestep_respacing`` (and the loss flags, ignored here).

    Returns:
        `dict`: ``num_train_timesteps``, ``beta_schedule`` in diffusers' terms (the originals' ``linear`` as diffusers'
        ``linear`` with ``beta_start``/``beta_end`` scaled by 1000 / T, ``cosine`` as ``squaredcos_cap_v2``),
        ``prediction_type``, ``variance_type``, ``timestep_respacing``. ``rescale_timesteps`` describes the networks:
        see [`timestep_scale_from_flags`].
    """
    flags = dict(flags)
    if "steps" in flags:  # create_gaussian_diffusion's own name for the scripts' diffusion_steps
        flags.setdefault("diffusion_steps", flags.pop("steps"))
    unknown = sorted(set(flags) - set(_GUIDED_DIFFUSION))
    if unknown:
        raise ValueError(f"unknown diffusion flags {unknown}; expected some of {sorted(_GUIDED_DIFFUSION)}")
    values = {**_GUIDED_DIFFUSION, **flags}
    if values["noise_schedule"] not in ("linear", "cosine"):
        raise ValueError(f"unknown noise_schedule {values['noise_schedule']!r}; expected 'linear' or 'cosine'")
    if values["learn_sigma"]:
        variance_type = "learned_range"
    else:
        variance_type = "fixed_small" if values["sigma_small"] else "fixed_large"
    num_train_timesteps = int(values["diffusion_steps"])
    if values["noise_schedule"] == "linear":
        from ..schedulers.schedules import linear_schedule_bounds  # here: the command lines read flags without torch

        beta_start, beta_end = linear_schedule_bounds(num_train_timesteps)
        schedule = {"beta_schedule": "linear", "beta_start": beta_start, "beta_end": beta_end}
    else:
        schedule = {"beta_schedule": "squaredcos_cap_v2"}
    return {
        "num_train_timesteps": num_train_timesteps,
        **schedule,
        "prediction_type": "sample" if values["predict_xstart"] else "epsilon",
        "variance_type": variance_type,
        "timestep_respacing": values["timestep_respacing"] or None,
    }


def timestep_scale_from_flags(flags: Mapping[str, Any]) -> float:
    """The networks' ``timestep_scale`` for the originals' diffusion flags: 1000 / T with ``rescale_timesteps``
    (the originals feed such models t * 1000 / T), else 1.

    Args:
        flags (mapping): ``diffusion_steps`` (or ``steps``) and ``rescale_timesteps``; missing ones take
            ``create_gaussian_diffusion``'s defaults.
    """
    from ..models import rescaled_timestep_scale  # here: the command lines read flags without torch

    values = {**_GUIDED_DIFFUSION, **{("diffusion_steps" if k == "steps" else k): v for k, v in flags.items()}}
    return rescaled_timestep_scale(values["diffusion_steps"]) if values["rescale_timesteps"] else 1.0


def consistency_scheduler_config(flags: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers' ``CMStochasticIterativeScheduler`` config from consistency_models' parsed flags: its grid of
    ``--steps`` noise levels between ``--sigma_min`` and ``--sigma_max`` (Karras rho 7, KarrasDenoiser's sigma_data 0.5),
    clipping as ``--clip_denoised``. Refused in one line for a model that is not a consistency model.

    Args:
        flags (mapping): every flag of ``consistency-models``, typed ([`parse_flags`]' result).
    """
    if flags["training_mode"] not in CONSISTENCY_TRAINING_MODES:
        raise ValueError(f"expected --training_mode among {CONSISTENCY_TRAINING_MODES} (a consistency model), got "
                         f"{flags['training_mode']!r} (image_sample.py's default, an EDM diffusion model: not converted)")
    if not 0 < flags["sigma_min"] < flags["sigma_max"] or flags["steps"] < 2:
        raise ValueError(f"expected 0 < --sigma_min < --sigma_max and --steps >= 2, got {flags['sigma_min']}, "
                         f"{flags['sigma_max']} and {flags['steps']}")
    return dict(num_train_timesteps=flags["steps"], sigma_min=flags["sigma_min"], sigma_max=flags["sigma_max"],
                sigma_data=0.5, rho=7.0, clip_denoised=flags["clip_denoised"])


def consistency_timesteps(ts: str, steps: int) -> list[int] | None:
    """consistency_models' multistep ``--ts`` (indices into its ``--steps`` grid, ascending from sigma_max, ending at
    sigma_min) as diffusers' ``timesteps`` of ``CMStochasticIterativeScheduler.set_timesteps`` (descending, the last
    index left out: the scheduler always ends at sigma_min). ``"0,22,39"`` with 40 steps is ``[22, 0]``; ``""`` is None.
    """
    if not ts:
        return None
    try:
        indices = [int(t) for t in str(ts).split(",")]
    except ValueError:
        raise ValueError(f"expected --ts as comma-separated integers, got {ts!r}") from None
    if len(indices) < 2 or indices != sorted(set(indices)) or indices[0] < 0 or indices[-1] != steps - 1:
        raise ValueError(f"expected --ts ascending from 0 or more to --steps - 1 = {steps - 1} (the last level is sigma_min), got {ts!r}")
    return indices[-2::-1]
