"""The converters: parity cases through pipeline folders, every preset at reduced width, cards, safety, the Hub call."""

import dataclasses
import json
import re
import runpy
import sys
from pathlib import Path

import diffusers
import pytest
import torch
from huggingface_hub import ModelCard
from original_layout import adm_classifier_state_dict, adm_unet_state_dict, ddpm_state_dict
from parity import assert_close, load_case, parity_dir
from safetensors.torch import load_file

import guided_diffusers  # noqa: F401  (registers the pipelines with diffusers)
from guided_diffusers import ADMClassifier, ADMUpsamplingPipeline, ClassifierGuidedPipeline, GuidedDDPMScheduler
from guided_diffusers.conversion import classifier_kwargs_from_flags, unet_kwargs_from_flags
from guided_diffusers.conversion import writing as convert_module
from guided_diffusers.conversion import presets as presets_module
from guided_diffusers.conversion.writing import convert_adm, convert_ddpm
from guided_diffusers.publishing import HubPushError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _flag_string(flags: dict) -> str:
    return " ".join(f"--{k} {v}" for k, v in flags.items())


def _load(folder):
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Two folder round trips: the ADM converter from constructor kwargs (an upsampler, whose folder carries low_res_size) and
# the DDPM converter. Every model case's parity is tests/test_model_parity.py's; the ADM flags path through a folder is
# test_converted_scheduler_reproduces_a_diffusion_case's (a whole guided trajectory).
@pytest.mark.parametrize("name", ["gd_superres", "ddpm_unet"])
def test_parity_models_through_pipeline_folders(name, tmp_path):
    case, io = load_case(name)
    checkpoint = parity_dir() / name / "original.pt"
    if case["source"].startswith("ddpm"):
        convert_ddpm(checkpoint, tmp_path / "out", model_config=case["constructor_kwargs"])
    elif case.get("constructor_kwargs"):
        convert_adm(checkpoint, tmp_path / "out", source=case["source"], model_config=case["constructor_kwargs"])
    else:
        convert_adm(checkpoint, tmp_path / "out", source=case["source"], model_flags=_flag_string(case["flags"]))
    pipe = _load(tmp_path / "out")
    kwargs = {"class_labels": io["y"]} if "y" in io else {}
    if name == "gd_superres":
        assert isinstance(pipe, ADMUpsamplingPipeline) and pipe.config.low_res_size == 8
        kwargs["low_res"] = io["low_res"]
    else:
        assert isinstance(pipe, ClassifierGuidedPipeline)
    with torch.no_grad():
        assert_close(pipe.unet(io["x"], io["timesteps"], **kwargs).sample, io["output"], case["tolerance"], name)
        if "output_float_t" in io:
            assert_close(pipe.unet(io["x"], io["timesteps_float"], **kwargs).sample, io["output_float_t"], case["tolerance"], name)


@pytest.mark.parametrize("name", ["gd_classifier_attention_pool", "gd_classifier_adaptive_pool", "gd_classifier_spatial_pool", "gd_classifier_spatial_v2_pool"])
def test_classifier_alone_writes_a_classifier(name, tmp_path):
    case, io = load_case(name)
    convert_adm(None, tmp_path / "clf", classifier=parity_dir() / name / "original.pt", classifier_config=case["constructor_kwargs"])
    classifier = ADMClassifier.from_pretrained(tmp_path / "clf")
    with torch.no_grad():
        assert_close(classifier(io["x"], io["timesteps"]).logits, io["logits"], case["tolerance"], name)
    assert ModelCard.load(tmp_path / "clf" / "README.md").data.library_name == "diffusers"


def test_converted_scheduler_reproduces_a_diffusion_case(tmp_path):
    case, io = load_case("diffusion_kl_cosine")
    model_case, _ = load_case(case["model_case"])
    clf_case, _ = load_case(case["classifier_case"])
    diffusion = case["diffusion_flags"]
    diffusion_flags = f"--diffusion_steps {diffusion['steps']} --noise_schedule {diffusion['noise_schedule']} --use_kl {diffusion['use_kl']}"
    convert_adm(
        parity_dir() / case["model_case"] / "original.pt", tmp_path / "out", model_flags=_flag_string(model_case["flags"]),
        diffusion_flags=diffusion_flags, classifier=parity_dir() / case["classifier_case"] / "original.pt",
        classifier_config=clf_case["constructor_kwargs"],
    )
    pipe = _load(tmp_path / "out")
    assert isinstance(pipe.scheduler, GuidedDDPMScheduler) and pipe.scheduler.config.variance_type == "learned_range"
    tolerance = {"atol": case["tolerance"]["trajectory_atol"], "rtol": case["tolerance"]["rtol"]}
    for kind, scale in (("plain", 0.0), ("guided", case["classifier_scale"])):
        seen = {}
        pipe(class_labels=io["guide_y"], classifier_scale=scale, timestep_respacing=case["sample_respacing"], latents=io["p_x_T"],
             step_noise=io[f"p_{kind}_noise"], output_type="pt", callback_on_step_end=lambda p, i, t, d: seen.update(d) or d)
        assert_close(seen["latents"], io[f"p_{kind}_trajectory"][-1], tolerance, f"converted folder p_{kind}")


# -- every released preset, at reduced width ----------------------------------------------------------------------------


def _reduced_flags(preset) -> str:
    """The preset's flags at a width the tests can afford (structure, levels and head layout kept)."""
    from guided_diffusers.conversion.flags import given_flags

    flags = given_flags(preset.flags)
    if preset.kind == "classifier":
        flags["classifier_width"] = 64  # the original's fixed 64-wide heads need multiples of 64
        flags["classifier_depth"] = 1
    else:
        size = int(flags.get("image_size", flags.get("large_size", 64)))
        flags["num_channels"] = 64 if size == 512 and "large_size" not in flags else 32  # 0.5 * 64 = 32 at the first level
        flags["num_res_blocks"] = 1
        if "num_head_channels" in flags:
            flags["num_head_channels"] = 32
    return _flag_string(flags)


ADM_PRESETS = sorted(presets_module.PRESETS["adm"])
DDPM_PRESETS = sorted(presets_module.PRESETS["ddpm"])
# consistency_models' presets write consistency pipelines: tests/test_consistency_models.py converts each.
ADM_DIFFUSION_PRESETS = [name for name in ADM_PRESETS if presets_module.PRESETS["adm"][name].family != presets_module.CONSISTENCY]


@pytest.mark.parametrize("name", ADM_DIFFUSION_PRESETS)
def test_every_adm_preset_converts_its_released_layout(name, tmp_path, monkeypatch):
    preset = presets_module.PRESETS["adm"][name]
    reduced = dataclasses.replace(preset, flags=_reduced_flags(preset))
    monkeypatch.setitem(presets_module.PRESETS["adm"], name, reduced)
    released_file = tmp_path / preset.file_names[0]
    if preset.kind == "classifier":
        kwargs = classifier_kwargs_from_flags(reduced.flags)
        torch.save(adm_classifier_state_dict(kwargs), released_file)
        convert_adm(None, tmp_path / "out", classifier=released_file)  # the preset is picked from the file name
        model = ADMClassifier.from_pretrained(tmp_path / "out")
        size = kwargs["image_size"]
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size), 10).logits.shape == (1, 1000)
        return
    kwargs = unet_kwargs_from_flags(reduced.flags, preset.family)
    torch.save(adm_unet_state_dict(kwargs, super_res=preset.kind == "super_res"), released_file)
    convert_adm(released_file, tmp_path / "out")
    pipe = _load(tmp_path / "out")
    assert pipe.scheduler.config.timestep_respacing == preset.sampling["timestep_respacing"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert name in card and reduced.flags in card
    x = torch.randn(1, 3, 64, 64)
    extra = {"class_labels": torch.tensor([1])} if pipe.unet.config.num_classes else {}
    if preset.kind == "super_res":
        assert isinstance(pipe, ADMUpsamplingPipeline)
        extra["low_res"] = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert pipe.unet(x, torch.tensor([10]), **extra).sample.shape == (1, pipe.unet.config.out_channels, 64, 64)


@pytest.mark.parametrize("name", DDPM_PRESETS)
def test_every_ddpm_preset_converts_its_released_layout(name, tmp_path, monkeypatch):
    preset = presets_module.PRESETS["ddpm"][name]
    reduced = dataclasses.replace(preset, constructor_kwargs=dict(preset.constructor_kwargs, ch=32))
    monkeypatch.setitem(presets_module.PRESETS["ddpm"], name, reduced)
    released = tmp_path / preset.file_names[0] / "model-790000.ckpt"
    released.parent.mkdir()
    torch.save(ddpm_state_dict(reduced.constructor_kwargs), released)
    convert_ddpm(released, tmp_path / "out")
    pipe = _load(tmp_path / "out")
    assert pipe.scheduler.config.variance_type == preset.scheduler["variance_type"]
    assert ("EMA" in (tmp_path / "out" / "README.md").read_text()) == name.endswith("_ema")
    with torch.no_grad():
        assert pipe.unet(torch.randn(1, 3, 64, 64), torch.tensor([10])).sample.shape == (1, 3, 64, 64)


def test_help_lists_the_presets(capsys, monkeypatch):
    """The checkout's wrappers (convert/*.py), run in this process as ``python convert/<script> --help`` runs them."""
    for script, names in (("convert_guided_diffusion.py", ADM_PRESETS), ("convert_ddpm.py", DDPM_PRESETS)):
        monkeypatch.setattr(sys, "argv", [script, "--help"])
        with pytest.raises(SystemExit) as info:
            runpy.run_path(str(ROOT / "convert" / script), run_name="__main__")
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: ")
        for name in names:
            assert name in out, (script, name)


def test_one_conversion_reads_the_flags_once(tmp_path, monkeypatch):
    """The flags are parsed once per model converted: the U-Net's model and diffusion flags together, the classifier's."""
    from guided_diffusers.conversion import flags as flags_module

    parsed = []
    real = flags_module.parse_flags

    def counting(flags, source="guided-diffusion"):
        parsed.append(flags)
        return real(flags, source)

    monkeypatch.setattr(flags_module, "parse_flags", counting)
    monkeypatch.setattr(convert_module, "parse_flags", counting)
    case, _ = load_case("gd_unet_learned_kl")
    model_flags, diffusion_flags = _flag_string(case["flags"]), "--diffusion_steps 100 --noise_schedule cosine"
    convert_adm(parity_dir() / "gd_unet_learned_kl" / "original.pt", tmp_path / "unet", model_flags=model_flags,
                diffusion_flags=diffusion_flags)
    assert parsed == [f"{model_flags} {diffusion_flags}"]
    assert _load(tmp_path / "unet").scheduler.config.num_train_timesteps == 100

    clf_flags = ("--image_size 16 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 "
                 "--classifier_attention_resolutions 4 --classifier_pool adaptive")
    torch.save(adm_classifier_state_dict(classifier_kwargs_from_flags(clf_flags)), tmp_path / "classifier.pt")
    parsed.clear()
    convert_adm(parity_dir() / "gd_unet_learned_kl" / "original.pt", tmp_path / "both", model_flags=model_flags,
                classifier=tmp_path / "classifier.pt", classifier_flags=clf_flags)
    assert sorted(parsed) == sorted([model_flags, clf_flags])


# -- card, dtype, safety, errors, Hub -------------------------------------------------------------------------------------


def test_model_card_and_stored_dtype(tmp_path):
    case, _ = load_case("gd_unet_legacy_attention")
    convert_adm(parity_dir() / "gd_unet_legacy_attention" / "original.pt", tmp_path / "out",
                model_flags=_flag_string(case["flags"]), dtype="float16")
    weights = load_file(str(tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float16}
    assert not list((tmp_path / "out").rglob("*.bin")) and not list((tmp_path / "out").rglob("*.pt"))
    card = ModelCard.load(tmp_path / "out" / "README.md")
    # converted with --model_flags (no preset): a user checkpoint, whose license nobody stated
    assert card.data.library_name == "diffusers" and card.data.license == "unknown" and "guided-diffusers" in card.data.tags
    assert "--attention_resolutions 8,4" in card.text and "## Intended use and limitations" in card.text
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["unet"] == ["guided_diffusers", "ADMUNet2DModel"] and len(index["id2label"]) == 1000


def test_refusals_leave_nothing_half_written(tmp_path):
    case, _ = load_case("gd_unet_legacy_attention")
    checkpoint = parity_dir() / "gd_unet_legacy_attention" / "original.pt"
    flags = _flag_string(case["flags"])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="expected an empty or new output folder"):
        convert_adm(checkpoint, occupied, model_flags=flags)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    # a preset that does not fit the file: one short line naming the preset and the flags to pass instead, nothing written
    with pytest.raises(ValueError) as info:
        convert_adm(checkpoint, tmp_path / "new", preset="64x64_diffusion")
    message = str(info.value)
    assert re.fullmatch(r"preset '64x64_diffusion' does not fit the file \(\d+ missing keys, \d+ unexpected keys, \d+ shape mismatches\): "
                        r"the file is not that release; pass its own flags with --model_flags \(and --diffusion_flags\) or "
                        r"--model_config instead of a preset", message), message
    assert not (tmp_path / "new").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".new")]
    with pytest.raises(ValueError, match="could not pick a preset from the file name"):
        convert_adm(checkpoint, tmp_path / "new")
    with pytest.raises(FileNotFoundError, match="expected an original checkpoint file"):
        convert_adm(tmp_path / "missing.pt", tmp_path / "new", model_flags=flags)
    convert_adm(checkpoint, occupied, model_flags=flags, overwrite=True)
    assert (occupied / "model_index.json").is_file() and not (occupied / "keep.txt").exists()


def test_failure_while_writing_leaves_no_folder(tmp_path, monkeypatch):
    case, _ = load_case("gd_unet_legacy_attention")

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(convert_module, "render_model_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_adm(parity_dir() / "gd_unet_legacy_attention" / "original.pt", tmp_path / "out", model_flags=_flag_string(case["flags"]))
    assert list(tmp_path.iterdir()) == []


def test_push_to_hub_uploads_the_folder_and_survives_failure(tmp_path, monkeypatch):
    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, exist_ok, private):
            calls.append(("create_repo", repo_id, exist_ok, private))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload_folder", folder_path, repo_id))
            return "https://example.invalid/commit"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    case, _ = load_case("gd_classifier_adaptive_pool")
    convert_adm(None, tmp_path / "clf", classifier=parity_dir() / "gd_classifier_adaptive_pool" / "original.pt",
                classifier_config=case["constructor_kwargs"], push_to_hub="me/adm-classifier")
    assert calls == [("init", None), ("create_repo", "me/adm-classifier", True, False),
                     ("upload_folder", str(tmp_path / "clf"), "me/adm-classifier")]

    class FailingApi(RecordingApi):
        def upload_folder(self, folder_path, repo_id, commit_message):
            raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    with pytest.raises(HubPushError, match=r"the folder .* is intact: retry with `hf upload me/x .*` once logged in \(`hf auth login`\)"):
        convert_adm(None, tmp_path / "clf2", classifier=parity_dir() / "gd_classifier_adaptive_pool" / "original.pt",
                    classifier_config=case["constructor_kwargs"], push_to_hub="me/x")
    assert ADMClassifier.from_pretrained(tmp_path / "clf2") is not None
