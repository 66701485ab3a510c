"""OpenAI's consistency models (openai/consistency_models): converted onto our ADM U-Net, they reproduce the original
code's network, denoiser and samplers (tests/fixtures/consistency_models, made by that code:
benchmarks/make_consistency_parity_fixture.py), and every released checkpoint's preset writes an ADMConsistencyPipeline
with diffusers' CMStochasticIterativeScheduler."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import CMStochasticIterativeScheduler, DiffusionPipeline
from diffusers.schedulers import scheduling_consistency_models
from huggingface_hub import ModelCard
from original_layout import adm_unet_state_dict
from parity import assert_close
from safetensors.torch import load_file
from test_model_cards import check_hub_metadata, check_samples, run_usage_snippet, usage_snippet

import guided_diffusers  # noqa: F401  (registers the pipelines with diffusers)
from guided_diffusers import ADMConsistencyPipeline
from guided_diffusers.cli.convert_guided_diffusion import main as convert_main
from guided_diffusers.conversion import convert_unet_checkpoint, load_original_state_dict, unet_kwargs_from_flags
from guided_diffusers.conversion import presets as presets_module
from guided_diffusers.conversion.flags import consistency_timesteps, given_flags
from guided_diffusers.conversion.writing import convert_adm

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FIXTURES = Path(__file__).parent / "fixtures" / "consistency_models"
CASES = ["cm_imagenet64_layout", "cm_lsun256_layout"]  # the ImageNet-64 releases' choices, the LSUN-256 releases'
CASE = FIXTURES / "cm_imagenet64_layout"
CM = "consistency-models"
CM_PRESETS = sorted(name for name, preset in presets_module.PRESETS["adm"].items() if preset.family == CM)


def _case(name: str = "cm_imagenet64_layout"):
    return json.loads((FIXTURES / name / "case.json").read_text()), load_file(str(FIXTURES / name / "io.safetensors"))


def _labels(io) -> dict:
    return {"class_labels": io["y"]} if "y" in io else {}


def _convert_case(tmp_path: Path, name: str = "cm_imagenet64_layout") -> Path:
    """The fixture's original.pt converted by the command line, with the sampling flags the fixture ran."""
    case, _ = _case(name)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(case["constructor_kwargs"]))
    flags = f"--training_mode consistency_distillation --steps {case['steps']} --ts {','.join(map(str, case['ts']))}"
    assert convert_main(["--checkpoint", str(FIXTURES / name / "original.pt"), "--source", CM, "--model_config", str(config),
                         "--diffusion_flags", flags, "--output", str(tmp_path / "out")]) == 0
    return tmp_path / "out"


@pytest.mark.parametrize("name", CASES)
def test_converted_network_matches_the_original_code(name):
    case, io = _case(name)
    state_dict = load_original_state_dict(FIXTURES / name / "original.pt")
    model = convert_unet_checkpoint(state_dict, source=CM, constructor_kwargs=case["constructor_kwargs"]).eval()
    with torch.no_grad():
        output = model(io["x"], io["timesteps"], **_labels(io)).sample
    assert_close(output, io["output_fp32_attention"], case["tolerance"], "float32 attention")
    assert_close(output, io["output"], case["tolerance_fp16_attention"], "the original's legacy (float16) attention")
    # The attention order is what the source decides: guided-diffusion's default (heads split first) misreads it.
    legacy = convert_unet_checkpoint(state_dict, source="guided-diffusion", constructor_kwargs=case["constructor_kwargs"]).eval()
    with torch.no_grad():
        assert (legacy(io["x"], io["timesteps"], **_labels(io)).sample - io["output_fp32_attention"]).abs().max() > 1e-2


def test_release_timesteps_are_diffusers_timesteps_of_the_same_noise_levels():
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=40)
    assert consistency_timesteps("0,22,39", 40) == [22, 0]
    scheduler.set_timesteps(timesteps=[22, 0])
    rho_max, rho_min = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    original = [(rho_max + t / 39 * (rho_min - rho_max)) ** 7 for t in (0, 22, 39)]  # the multistep sampler's levels
    torch.testing.assert_close(scheduler.sigmas.double(), torch.tensor(original, dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", CASES)
def test_pipeline_scheduler_gives_the_original_denoiser(name, tmp_path):
    """c_skip * x + c_out * F(c_in * x, 250 log sigma) at noise levels on and off the grid, from the folder's parts."""
    case, io = _case(name)
    pipe = DiffusionPipeline.from_pretrained(_convert_case(tmp_path, name))
    scheduler = pipe.scheduler
    for i in range(3):
        sigma, x_t = io[f"denoise{i}_sigma"], io[f"denoise{i}_x_t"]
        c_skip, c_out = (c.reshape(-1, 1, 1, 1) for c in scheduler.get_scalings_for_boundary_condition(sigma))
        c_in = (sigma**2 + scheduler.config.sigma_data**2).rsqrt().reshape(-1, 1, 1, 1)
        with torch.no_grad():
            output = pipe.unet(c_in * x_t, torch.from_numpy(scheduler.sigma_to_t(sigma.numpy())), **_labels(io)).sample
        assert_close(output, io[f"denoise{i}_model_output"], case["tolerance"], f"model output at sigma {sigma[0]:g}")
        assert_close(c_skip * x_t + c_out * output, io[f"denoise{i}_denoised"], case["tolerance"], f"denoised at sigma {sigma[0]:g}")


@pytest.mark.parametrize("name", CASES)
def test_pipeline_samples_as_the_original_in_one_and_two_steps(name, tmp_path, monkeypatch):
    """ADMConsistencyPipeline with CMStochasticIterativeScheduler = the original's karras_sample ("onestep" and
    "multistep": --ts 0,22,39 --steps 40; 0,62,150 and 151), from the same noise: the first denoised x_0 and the
    two-step sample."""
    case, io = _case(name)
    pipe = DiffusionPipeline.from_pretrained(_convert_case(tmp_path, name))
    assert isinstance(pipe, ADMConsistencyPipeline) and isinstance(pipe.scheduler, CMStochasticIterativeScheduler)
    batch = {**_labels(io)} or {"batch_size": len(io["onestep_x_T"])}
    one = pipe(**batch, num_inference_steps=1, latents=io["onestep_x_T"], output_type="latent").images
    assert_close(one, io["onestep_sample"], case["tolerance"], "one step")

    draws = iter(io["multistep_step_noise"])
    monkeypatch.setattr(scheduling_consistency_models, "randn_tensor", lambda shape, **kwargs: next(draws).reshape(shape))
    timesteps = consistency_timesteps(",".join(map(str, case["ts"])), case["steps"])
    two = pipe(**batch, timesteps=timesteps, latents=io["multistep_x_T"], output_type="latent").images
    assert next(draws, None) is None  # the scheduler drew exactly the original's noise, one draw a step
    assert_close(two, io["multistep_sample"], case["tolerance"], "two steps")
    assert (two - one).abs().max() > 1e-2  # the second step changed the sample


def test_converted_folder_round_trips_and_samples_with_a_generator(tmp_path):
    folder = _convert_case(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert pipe.unet.config.timestep_scale == 1.0
    config = pipe.scheduler.config
    assert (config.num_train_timesteps, config.sigma_min, config.sigma_max, config.sigma_data, config.rho, config.clip_denoised) == (
        40, 0.002, 80.0, 0.5, 7.0, True)
    images = {}
    for name, steps in (("one", dict(num_inference_steps=1)), ("two", dict(timesteps=[22, 0]))):
        runs = [pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="pt", **steps).images for _ in range(2)]
        assert torch.equal(runs[0], runs[1])
        assert runs[0].shape == (2, 3, 8, 8) and 0 <= runs[0].min() and runs[0].max() <= 1
        images[name] = runs[0]
    assert not torch.equal(images["one"], images["two"])


# -- the releases' presets, at reduced width -----------------------------------------------------------------------------


def _reduced(preset):
    """The preset at a width the tests afford: levels, attention placement, head width, up/down blocks kept."""
    flags = given_flags(preset.flags)
    flags.update(num_channels="32", num_res_blocks="1", num_head_channels="32")
    return dataclasses.replace(preset, flags=" ".join(f"--{k} {v}" for k, v in flags.items()))


@pytest.mark.parametrize("name", CM_PRESETS)
def test_every_consistency_preset_writes_a_consistency_pipeline(name, tmp_path, monkeypatch):
    preset = presets_module.PRESETS["adm"][name]
    reduced = _reduced(preset)
    monkeypatch.setitem(presets_module.PRESETS["adm"], name, reduced)
    released = tmp_path / preset.file_names[0]
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(reduced.flags, CM)), released)
    convert_adm(released, tmp_path / "out")  # the preset is picked from the file name
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "out")
    assert isinstance(pipe, ADMConsistencyPipeline) and isinstance(pipe.scheduler, CMStochasticIterativeScheduler)
    flags = given_flags(preset.flags)
    assert pipe.scheduler.config.num_train_timesteps == int(flags["steps"]) == {"cd": 40, "ct": 201 if "imagenet" in name else 151}[name[:2]]
    assert (pipe.scheduler.config.sigma_min, pipe.scheduler.config.sigma_max, pipe.scheduler.config.sigma_data) == (0.002, 80.0, 0.5)
    assert bool(pipe.unet.config.num_classes) == ("imagenet" in name)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert check_hub_metadata(card)["license"] == "mit" and "song2023consistency" in card.text
    snippet = usage_snippet(card)
    assert "num_inference_steps=1" in snippet
    if "ts" in flags:
        assert f"timesteps={consistency_timesteps(flags['ts'], int(flags['steps']))}" in snippet
    else:
        assert "no multistep setting" in card.text and "num_inference_steps=2" in snippet


def test_cd_imagenet64_card_snippet_samples_in_one_and_two_steps(tmp_path, monkeypatch):
    name = "cd_imagenet64_l2"
    reduced = _reduced(presets_module.PRESETS["adm"][name])
    monkeypatch.setitem(presets_module.PRESETS["adm"], name, reduced)
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(reduced.flags, CM)), tmp_path / f"{name}.pt")
    assert convert_main(["--preset", name, "--checkpoint", str(tmp_path / f"{name}.pt"), "--output", str(tmp_path / "out")]) == 0
    card = ModelCard.load(tmp_path / "out" / "README.md")
    calls = []
    monkeypatch.setattr(ADMConsistencyPipeline, "unet_timesteps", lambda self, s, t, _f=ADMConsistencyPipeline.unet_timesteps: calls.append(len(t)) or _f(self, s, t))
    namespace = run_usage_snippet(card, tmp_path)
    assert calls == [1, 2]  # one step, then the release's two
    check_samples(namespace, 2, 3, 64)


def test_a_user_checkpoints_card_snippet_samples_with_its_own_classes(tmp_path, monkeypatch):
    """The fixture's 10-class network converted from the user's own config: the card's snippet asks for a class the
    model has (ImageNet names would be refused by a 10-class model) and runs as written."""
    card = ModelCard.load(_convert_case(tmp_path) / "README.md")
    assert "class_labels=[0]" in usage_snippet(card) and "golden retriever" not in card.text
    calls = []
    monkeypatch.setattr(ADMConsistencyPipeline, "unet_timesteps", lambda self, s, t, _f=ADMConsistencyPipeline.unet_timesteps: calls.append(len(t)) or _f(self, s, t))
    check_samples(run_usage_snippet(card, tmp_path), 1, 3, 8)
    assert calls == [1, 2]


# -- refusals, each one line before any write -----------------------------------------------------------------------------


def _refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        convert_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_a_checkpoint_that_is_not_the_preset_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """The fixture's network (10 classes) is not cd_imagenet64_l2's: the preset's refusal is one line, nothing written."""
    monkeypatch.setitem(presets_module.PRESETS["adm"], "cd_imagenet64_l2", _reduced(presets_module.PRESETS["adm"]["cd_imagenet64_l2"]))
    released = tmp_path / "cd_imagenet64_l2.pt"
    released.write_bytes((CASE / "original.pt").read_bytes())
    err = _refused(capsys, ["--checkpoint", str(released), "--output", str(tmp_path / "out")])
    assert err.startswith("error: preset 'cd_imagenet64_l2' does not fit the file (") and "--model_flags" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, expected", [
    (["--classifier", "{case}/original.pt"], "expected no --classifier with a consistency model"),
    (["--diffusion_flags", "--ts 0,22,30"], "expected --ts ascending from 0 or more to --steps - 1 = 39"),
    (["--source", "guided-diffusion"], "preset 'cd_imagenet64_l2' is consistency-models's, got --source guided-diffusion"),
])
def test_consistency_conversions_refuse_bad_input_in_one_line(extra, expected, tmp_path, capsys):
    argv = ["--checkpoint", str(CASE / "original.pt"), "--preset", "cd_imagenet64_l2", "--output", str(tmp_path / "out")]
    err = _refused(capsys, argv + [x.format(case=CASE) for x in extra])
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_user_flags_without_a_consistency_training_mode_are_refused(tmp_path, capsys):
    """image_sample.py's default --training_mode is edm (the teachers): not a consistency model."""
    err = _refused(capsys, ["--checkpoint", str(CASE / "original.pt"), "--source", CM, "--model_flags", "--image_size 64",
                            "--output", str(tmp_path / "out")])
    assert "expected --training_mode among ('consistency_distillation', 'consistency_training')" in err and "'edm'" in err
