"""Model cards of every kind (guided-diffusion, improved-diffusion and DDPM conversions, a classifier conversion, trained
diffusion, super-resolution and classifier models): Hub metadata that validates, licenses, base_model for fine-tunes,
citations, sampling labelled by where it came from, and a usage snippet that runs as written on a tiny folder."""

import dataclasses
import json
import os
import re

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.utils import validate_repo_id
from original_layout import adm_classifier_state_dict, adm_unet_state_dict, ddpm_state_dict

from guided_diffusers import (
    ADMClassifier,
    ADMSuperResUNet2DModel,
    ADMUNet2DModel,
    ADMUpsamplingPipeline,
    ClassifierGuidedPipeline,
    GuidedDDPMScheduler,
)
from guided_diffusers.conversion import classifier_kwargs_from_flags, unet_kwargs_from_flags
from guided_diffusers.conversion import presets as presets_module
from guided_diffusers.conversion.writing import convert_adm, convert_ddpm
from guided_diffusers.training.model_card import HUB_LICENSES, render_trained_model_card

pytestmark = pytest.mark.usefixtures("single_torch_thread")

UNET_FLAGS = "--image_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 4 --learn_sigma True"
CLASSIFIER_FLAGS = ("--image_size 8 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 "
                    "--classifier_attention_resolutions 4 --classifier_pool adaptive")
ID_FLAGS = "--image_size 32 --num_channels 32 --num_res_blocks 1 --attention_resolutions 8 --learn_sigma True"
PIPELINE_TAGS = {"unconditional-image-generation", "image-to-image", "image-classification"}


def check_hub_metadata(card: ModelCard) -> dict:
    """What the Hub checks of a model card's YAML, offline: known license id, repo ids, list types, a round trip."""
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers"
    assert data["license"] in HUB_LICENSES
    assert data["pipeline_tag"] in PIPELINE_TAGS
    assert isinstance(data["tags"], list) and all(isinstance(tag, str) and tag for tag in data["tags"])
    for repo in data.get("datasets") or []:
        validate_repo_id(repo)
    if "base_model" in data:
        validate_repo_id(data["base_model"])
    assert ModelCard(str(card)).data.to_dict() == data
    assert "## Citation" in card.text and "```bibtex" in card.text and re.search(r"@\w+\{\w+,", card.text)
    return data


def run_usage_snippet(card: ModelCard, workdir) -> dict:
    """Execute the card's python block exactly as written (cwd = workdir); returns its namespace."""
    blocks = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert len(blocks) == 1, card.text
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        namespace: dict = {}
        exec(compile(blocks[0], "<model card>", "exec"), namespace)  # noqa: S102 - our own generated snippet
    finally:
        os.chdir(cwd)
    return namespace


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("originals")
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(UNET_FLAGS + " --class_cond True", "guided-diffusion")), root / "gd.pt")
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(ID_FLAGS, "improved-diffusion")), root / "id.pt")
    sr_flags = "--large_size 64 --small_size 16 --num_channels 32 --num_res_blocks 1 --attention_resolutions 8 --learn_sigma True"
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(sr_flags, "guided-diffusion"), super_res=True), root / "sr.pt")
    torch.save(adm_classifier_state_dict(classifier_kwargs_from_flags(CLASSIFIER_FLAGS)), root / "clf.pt")
    ddpm = dict(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, resolution=8, in_channels=3)
    torch.save(ddpm_state_dict(ddpm), root / "ddpm.pt")
    return root, sr_flags, ddpm


def test_guided_diffusion_card_with_classifier_and_user_sampling(checkpoints, tmp_path):
    root, _, _ = checkpoints
    out = tmp_path / "gd"
    convert_adm(root / "gd.pt", out, model_flags=UNET_FLAGS + " --class_cond True", diffusion_flags="--diffusion_steps 100 --timestep_respacing 3",
                classifier=root / "clf.pt", classifier_flags=CLASSIFIER_FLAGS)
    card = ModelCard.load(out / "README.md")
    data = check_hub_metadata(card)
    assert data["license"] == "mit" and "dhariwal2021diffusion" in card.text
    assert "Sampling settings given by the user at conversion (not from the original README): timestep_respacing=3" in card.text
    assert "from the original release" not in card.text
    namespace = run_usage_snippet(card, tmp_path)
    assert len(namespace["images"]) == 2 and (tmp_path / "sample.png").is_file()


def test_preset_card_labels_its_sampling_as_the_original_release(checkpoints, tmp_path, monkeypatch):
    preset = presets_module.PRESETS["adm"]["64x64_diffusion"]
    flags = UNET_FLAGS.replace("--image_size 8", "--image_size 64") + " --class_cond True --num_head_channels 32"
    monkeypatch.setitem(presets_module.PRESETS["adm"], "64x64_diffusion", dataclasses.replace(preset, flags=flags))
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(flags, "guided-diffusion")), tmp_path / "64x64_diffusion.pt")
    convert_adm(tmp_path / "64x64_diffusion.pt", tmp_path / "out")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    data = check_hub_metadata(card)
    assert data["datasets"] == ["ILSVRC/imagenet-1k"]
    assert f"Recommended sampling (from the original release): timestep_respacing={preset.sampling['timestep_respacing']}" in card.text
    assert "given by the user" not in card.text


def test_improved_diffusion_card(checkpoints, tmp_path):
    root, _, _ = checkpoints
    convert_adm(root / "id.pt", tmp_path / "id", source="improved-diffusion", model_flags=ID_FLAGS,
                diffusion_flags="--diffusion_steps 20 --noise_schedule cosine --timestep_respacing 2")
    card = ModelCard.load(tmp_path / "id" / "README.md")
    data = check_hub_metadata(card)
    assert data["license"] == "mit" and "nichol2021improved" in card.text
    assert len(run_usage_snippet(card, tmp_path)["images"]) == 4


def test_super_resolution_conversion_card(checkpoints, tmp_path):
    root, sr_flags, _ = checkpoints
    convert_adm(root / "sr.pt", tmp_path / "sr", model_flags=sr_flags, diffusion_flags="--diffusion_steps 100 --timestep_respacing 2")
    card = ModelCard.load(tmp_path / "sr" / "README.md")
    assert check_hub_metadata(card)["pipeline_tag"] == "image-to-image"
    images = run_usage_snippet(card, tmp_path)["images"]
    assert images[0].size == (64, 64)


def test_classifier_conversion_card(checkpoints, tmp_path):
    root, _, _ = checkpoints
    convert_adm(None, tmp_path / "clf", classifier=root / "clf.pt", classifier_flags=CLASSIFIER_FLAGS)
    card = ModelCard.load(tmp_path / "clf" / "README.md")
    assert check_hub_metadata(card)["pipeline_tag"] == "image-classification"
    assert run_usage_snippet(card, tmp_path)["logits"].shape == (2, 1000)


def test_ddpm_card_states_its_unknown_license(checkpoints, tmp_path):
    root, _, ddpm = checkpoints
    convert_ddpm(root / "ddpm.pt", tmp_path / "ddpm", model_config=ddpm)
    card = ModelCard.load(tmp_path / "ddpm" / "README.md")
    data = check_hub_metadata(card)
    assert data["license"] == "unknown" and "states no license" in card.text and "ho2020denoising" in card.text
    scheduler = json.loads((tmp_path / "ddpm" / "scheduler" / "scheduler_config.json").read_text())
    scheduler["timestep_respacing"] = "2"  # the snippet as written samples all 1000 steps; 2 keep the test short
    (tmp_path / "ddpm" / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    assert len(run_usage_snippet(card, tmp_path)["images"]) == 4


# -- trained models -------------------------------------------------------------------------------------------------


def _tiny_unet(cls=ADMUNet2DModel, **extra):
    torch.manual_seed(0)
    return cls(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,),
               num_classes=3, out_channels=6, **extra)


def _trained_card(kind, folder, **overrides):
    settings = dict(kind=kind, model_name="tiny", location=str(folder), resolution=8, training={"steps": 2}, dataset="a folder",
                    hub_dataset_id=None, id2label={0: "cat", 1: "dog", 2: "fox"}, flags={"num_channels": 32}, num_timesteps=20,
                    conditional=kind != "classifier", low_res_size=4 if kind == "super_res" else None)
    settings.update(overrides)
    card = render_trained_model_card(**settings)
    card.save(folder / "README.md")
    return ModelCard.load(folder / "README.md")


def test_trained_diffusion_card_runs_and_names_its_base_model(tmp_path):
    folder = tmp_path / "diffusion"
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range")
    ClassifierGuidedPipeline(unet=_tiny_unet(), scheduler=scheduler, id2label={0: "cat", 1: "dog", 2: "fox"}).save_pretrained(folder)
    card = _trained_card("diffusion", folder, flags={"init_pipeline": "me/adm-base"}, license="cc-by-4.0",
                         hub_dataset_id="me/pets")
    data = check_hub_metadata(card)
    assert data["license"] == "cc-by-4.0" and data["base_model"] == "me/adm-base" and data["datasets"] == ["me/pets"]
    assert "Fine-tuned from `me/adm-base`" in card.text and "fine-tuned" in data["tags"]
    assert len(run_usage_snippet(card, tmp_path)["images"]) == 1
    local = _trained_card("diffusion", folder, flags={"init_pipeline": str(folder)})  # a local folder is no Hub id
    assert "base_model" not in local.data.to_dict() and f"Fine-tuned from `{folder}`" in local.text
    assert local.data.license == "unknown" and "did not pass `--license`" in local.text
    with pytest.raises(ValueError, match="expected --license to be a Hub license identifier"):
        _trained_card("diffusion", folder, license="MIT License")


def test_trained_super_res_card_runs(tmp_path):
    folder = tmp_path / "super_res"
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range")
    ADMUpsamplingPipeline(unet=_tiny_unet(ADMSuperResUNet2DModel), scheduler=scheduler, low_res_size=4,
                          id2label={0: "cat", 1: "dog", 2: "fox"}).save_pretrained(folder)
    card = _trained_card("super_res", folder)
    assert check_hub_metadata(card)["pipeline_tag"] == "image-to-image"
    assert run_usage_snippet(card, tmp_path)["images"][0].size == (8, 8)


def test_trained_classifier_card_runs(tmp_path):
    folder = tmp_path / "classifier"
    ADMClassifier(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,),
                  num_classes=3, pool="adaptive").save_pretrained(folder)
    GuidedDDPMScheduler(num_train_timesteps=20).save_pretrained(folder)
    card = _trained_card("classifier", folder)
    assert check_hub_metadata(card)["pipeline_tag"] == "image-classification"
    assert run_usage_snippet(card, tmp_path)["logits"].shape == (2, 3)


# -- community checkpoints (RePaint, P2-weighting, ILVR / DPS) ---------------------------------------------------------

COMMUNITY = sorted(name for name, preset in presets_module.PRESETS["adm"].items() if preset.origin)


@pytest.mark.parametrize("name", COMMUNITY)
def test_community_card_names_origin_paper_license_and_use(name):
    from guided_diffusers.conversion.model_card import render_model_card

    preset = presets_module.PRESETS["adm"][name]
    card = render_model_card(preset, family=preset.family, kind="diffusion", flags=preset.flags, repo_id="someone/model",
                             checkpoint_name=preset.file_names[0], conditional=False, has_classifier=False,
                             sampling=preset.sampling, verification="checked")
    data = check_hub_metadata(card)
    assert data["license"] == preset.license
    assert f"https://github.com/{preset.origin}" in card.text and preset.paper in card.text
    assert preset.license_note in card.text and preset.recommended_use in card.text
    assert "dhariwal2021diffusion" in card.text
    for key in preset.citations:
        assert re.search(r"@inproceedings\{" + {"repaint": "lugmayr", "p2": "choi2022", "ilvr": "choi2021", "dps": "chung2023"}[key], card.text)
    (block,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    compile(block, "<model card>", "exec")
    assert ("ADMInpaintPipeline" in block) == (preset.usage == "inpaint")


def test_repaint_card_snippet_inpaints_as_written(tmp_path, monkeypatch):
    """A RePaint preset at a tiny size (and 20 steps instead of 250, to stay fast): converted by file name, its card's
    snippet runs as written and inpaints."""
    preset = presets_module.PRESETS["adm"]["repaint_celebahq_256"]
    flags = UNET_FLAGS + " --diffusion_steps 40"
    tiny = dataclasses.replace(preset, flags=flags, sampling=dict(preset.sampling, timestep_respacing="20"))
    monkeypatch.setitem(presets_module.PRESETS["adm"], preset.name, tiny)
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(flags, "guided-diffusion")), tmp_path / preset.file_names[0])
    convert_adm(tmp_path / preset.file_names[0], tmp_path / "out")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert check_hub_metadata(card)["license"] == "unknown" and "CC BY-NC-SA 4.0" in card.text
    namespace = run_usage_snippet(card, tmp_path)
    assert type(namespace["pipe"]).__name__ == "ADMInpaintPipeline" and (tmp_path / "inpainted.png").is_file()
