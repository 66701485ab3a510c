"""Model cards of every kind (guided-diffusion, improved-diffusion and DDPM conversions, a classifier conversion, trained
diffusion, super-resolution and classifier models): Hub metadata that validates, provenance and licenses from what is
known (a release's, or a user checkpoint's `unknown` / `--license`), base_model for fine-tunes, citations, sampling
labelled by where it came from, and a usage snippet that runs as written on a tiny grey and a tiny RGB folder of each
kind: it uses the folder's classifier (with a scale), the fast recipe or the release's respacing, and the model's own
channel count."""

import dataclasses
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
from guided_diffusers.conversion.model_card import install_lines
from guided_diffusers.conversion import presets as presets_module
from guided_diffusers.conversion.writing import convert_adm, convert_ddpm
from guided_diffusers.pipelines.recipes import FAST_RECIPE
from guided_diffusers.training.model_card import HUB_LICENSES, render_trained_model_card

pytestmark = pytest.mark.usefixtures("single_torch_thread")

UNET_FLAGS = "--image_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 4 --learn_sigma True"
CLASSIFIER_FLAGS = ("--image_size 8 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 "
                    "--classifier_attention_resolutions 4 --classifier_pool adaptive")
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


def usage_snippet(card: ModelCard) -> str:
    (block,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    return block


def run_usage_snippet(card: ModelCard, workdir) -> dict:
    """Execute the card's python block exactly as written (cwd = workdir); returns its namespace."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        namespace: dict = {}
        exec(compile(usage_snippet(card), "<model card>", "exec"), namespace)  # noqa: S102 - our own generated snippet
    finally:
        os.chdir(cwd)
    return namespace


def count_calls(monkeypatch, model_class) -> list[int]:
    """Count the forwards of ``model_class`` from now on."""
    calls: list[int] = []

    def counting(self, *args, _forward=model_class.forward, **kwargs):
        calls.append(1)
        return _forward(self, *args, **kwargs)

    monkeypatch.setattr(model_class, "forward", counting)
    return calls


def check_samples(namespace: dict, count: int, channels: int, size: int) -> None:
    """The snippet sampled ``count`` PIL images of the model's own size and channels (grey: mode L)."""
    images = namespace["images"]
    assert len(images) == count
    assert images[0].size == (size, size) and images[0].mode == ("L" if channels == 1 else "RGB")


def check_user_checkpoint_card(card: ModelCard, license: str = "unknown") -> None:
    """A user checkpoint's card: no release claimed, no MIT claimed, the license given or unknown, the real install."""
    assert card.data.license == license
    text = " ".join(card.text.split())
    assert "Converted from a user checkpoint" in text and "not one of the original authors' releases" in text
    assert "release (`" not in text and "MIT" not in text
    assert "pip install guided-diffusers\n" not in card.text and install_lines() in card.text


# -- conversions: a tiny grey and a tiny RGB checkpoint of each kind -------------------------------------------------


def _configs(channels: int) -> dict[str, dict]:
    """The originals' constructor kwargs of tiny models with ``channels`` image channels (learned sigmas: 2x out)."""
    levels = dict(model_channels=32, num_res_blocks=1, attention_resolutions=(2,), channel_mult=(1, 2))
    return {
        "unet": dict(image_size=8, in_channels=channels, out_channels=2 * channels, num_classes=3, **levels),
        "improved": dict(image_size=8, in_channels=channels, out_channels=2 * channels, **levels),
        "super_res": dict(large_size=16, small_size=8, in_channels=channels, out_channels=2 * channels, **levels),
        "classifier": dict(image_size=8, in_channels=channels, out_channels=3, pool="adaptive", **levels),
        "ddpm": dict(ch=32, out_ch=channels, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, resolution=8,
                     in_channels=channels),
    }


@pytest.fixture(scope="module", params=[1, 3], ids=["grey", "rgb"])
def user_checkpoints(request, tmp_path_factory):
    """Original-format checkpoints of every kind with 1 or 3 channels, and their constructor kwargs."""
    channels = request.param
    root = tmp_path_factory.mktemp(f"originals{channels}")
    configs = _configs(channels)
    torch.save(adm_unet_state_dict(configs["unet"]), root / "gd.pt")
    torch.save(adm_unet_state_dict(configs["improved"]), root / "id.pt")
    torch.save(adm_unet_state_dict(configs["super_res"], super_res=True), root / "sr.pt")
    torch.save(adm_classifier_state_dict(configs["classifier"]), root / "clf.pt")
    torch.save(ddpm_state_dict(configs["ddpm"]), root / "ddpm.pt")
    return root, channels, configs


def test_user_checkpoint_with_classifier_card_guides_with_a_scale_and_the_fast_recipe(user_checkpoints, tmp_path, monkeypatch):
    root, channels, configs = user_checkpoints
    license = "cc-by-4.0" if channels == 3 else None
    convert_adm(root / "gd.pt", tmp_path / "gd", model_config=configs["unet"], diffusion_flags="--diffusion_steps 100",
                classifier=root / "clf.pt", classifier_config=configs["classifier"], license=license)
    card = ModelCard.load(tmp_path / "gd" / "README.md")
    check_hub_metadata(card)
    check_user_checkpoint_card(card, license or "unknown")
    assert "dhariwal2021diffusion" in card.text and "converted from a user checkpoint (`clf.pt`)" in card.text
    snippet = usage_snippet(card)
    assert "classifier_scale=1.0" in snippet and "FAST_RECIPE.apply(pipe)" in snippet and "timestep_respacing" not in snippet
    classifier_calls = count_calls(monkeypatch, ADMClassifier)
    check_samples(run_usage_snippet(card, tmp_path), 1, channels, 8)
    assert len(classifier_calls) == FAST_RECIPE.steps  # the bundled classifier guided every step


def test_model_flags_conversion_is_a_user_checkpoint_not_an_openai_release(tmp_path):
    """The issue's case: --model_flags and no preset gave a card calling the file an OpenAI release under MIT."""
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(UNET_FLAGS, "guided-diffusion")), tmp_path / "model.pt")
    convert_adm(tmp_path / "model.pt", tmp_path / "out", model_flags=UNET_FLAGS)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    check_hub_metadata(card)
    check_user_checkpoint_card(card)
    assert "OpenAI's [guided-diffusion](https://github.com/openai/guided-diffusion)" in card.text  # the format, not the source
    assert "batch_size=4" in usage_snippet(card) and "FAST_RECIPE.apply(pipe)" in usage_snippet(card)


def test_user_checkpoint_user_respacing_is_labelled_and_used(user_checkpoints, tmp_path):
    root, channels, configs = user_checkpoints
    convert_adm(root / "id.pt", tmp_path / "id", source="improved-diffusion", model_config=configs["improved"],
                diffusion_flags="--diffusion_steps 20 --noise_schedule cosine --timestep_respacing 3")
    card = ModelCard.load(tmp_path / "id" / "README.md")
    check_hub_metadata(card)
    check_user_checkpoint_card(card)
    assert "nichol2021improved" in card.text and "from the original release" not in card.text
    assert "Sampling settings given by the user at conversion (not from the original README): timestep_respacing=3" in card.text
    assert 'timestep_respacing="3"' in usage_snippet(card) and "FAST_RECIPE" not in usage_snippet(card)
    check_samples(run_usage_snippet(card, tmp_path), 4, channels, 8)


def test_user_super_resolution_card_makes_a_low_res_input_of_the_models_channels(user_checkpoints, tmp_path):
    root, channels, configs = user_checkpoints
    convert_adm(root / "sr.pt", tmp_path / "sr", model_config=configs["super_res"], diffusion_flags="--diffusion_steps 100")
    card = ModelCard.load(tmp_path / "sr" / "README.md")
    assert check_hub_metadata(card)["pipeline_tag"] == "image-to-image"
    check_user_checkpoint_card(card)
    assert "pipe.unet.config.in_channels" in usage_snippet(card)
    check_samples(run_usage_snippet(card, tmp_path), 1, channels, 16)


def test_user_classifier_card_classifies_inputs_of_the_classifiers_channels(user_checkpoints, tmp_path):
    root, channels, configs = user_checkpoints
    convert_adm(None, tmp_path / "clf", classifier=root / "clf.pt", classifier_config=configs["classifier"])
    card = ModelCard.load(tmp_path / "clf" / "README.md")
    assert check_hub_metadata(card)["pipeline_tag"] == "image-classification"
    check_user_checkpoint_card(card)
    namespace = run_usage_snippet(card, tmp_path)
    assert namespace["images"].shape[1] == channels and namespace["logits"].shape == (2, 3)


def test_user_ddpm_card_states_no_license_and_samples_with_the_fast_recipe(user_checkpoints, tmp_path):
    root, channels, configs = user_checkpoints
    convert_ddpm(root / "ddpm.pt", tmp_path / "ddpm", model_config=configs["ddpm"])
    card = ModelCard.load(tmp_path / "ddpm" / "README.md")
    check_hub_metadata(card)
    check_user_checkpoint_card(card)
    assert "ho2020denoising" in card.text and "FAST_RECIPE.apply(pipe)" in usage_snippet(card)
    check_samples(run_usage_snippet(card, tmp_path), 4, channels, 8)


# -- conversions of releases (presets shrunk to tiny sizes) ----------------------------------------------------------


@pytest.fixture
def tiny_adm_g(monkeypatch, tmp_path):
    """The 64x64 ADM-G pair's presets at a tiny width (10 respaced steps instead of 250), files named as released."""
    adm = presets_module.PRESETS["adm"]
    unet_flags = UNET_FLAGS.replace("--image_size 8", "--image_size 64") + " --class_cond True --num_head_channels 32"
    classifier_flags = CLASSIFIER_FLAGS.replace("--image_size 8", "--image_size 64")
    unet = dataclasses.replace(adm["64x64_diffusion"], flags=unet_flags, sampling=dict(adm["64x64_diffusion"].sampling, timestep_respacing="10"))
    classifier = dataclasses.replace(adm["64x64_classifier"], flags=classifier_flags)
    monkeypatch.setitem(adm, unet.name, unet)
    monkeypatch.setitem(adm, classifier.name, classifier)
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(unet_flags, "guided-diffusion")), tmp_path / "64x64_diffusion.pt")
    torch.save(adm_classifier_state_dict(classifier_kwargs_from_flags(classifier_flags)), tmp_path / "64x64_classifier.pt")
    return unet, tmp_path / "64x64_diffusion.pt", tmp_path / "64x64_classifier.pt"


def test_released_adm_g_card_says_its_release_and_guides_with_the_release_scale(tiny_adm_g, tmp_path, monkeypatch):
    preset, unet_file, classifier_file = tiny_adm_g
    convert_adm(unet_file, tmp_path / "out", classifier=classifier_file)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    data = check_hub_metadata(card)
    assert data["license"] == "mit" and data["datasets"] == ["ILSVRC/imagenet-1k"]
    assert "Converted from OpenAI's [guided-diffusion]" in card.text and "user checkpoint" not in card.text
    assert "Recommended sampling (from the original release): timestep_respacing=10, classifier_scale=1.0" in card.text
    assert "given by the user" not in card.text and install_lines() in card.text
    snippet = usage_snippet(card)
    assert f"classifier_scale={preset.sampling['classifier_scale']}" in snippet and 'timestep_respacing="10"' in snippet
    classifier_calls = count_calls(monkeypatch, ADMClassifier)
    check_samples(run_usage_snippet(card, tmp_path), 2, 3, 64)
    assert len(classifier_calls) == 10


def test_license_flag_is_refused_for_releases_before_any_work(tiny_adm_g, tmp_path):
    _, unet_file, classifier_file = tiny_adm_g
    with pytest.raises(ValueError, match="expected --license only for a user checkpoint .* preset '64x64_diffusion'"):
        convert_adm(unet_file, tmp_path / "out", classifier=classifier_file, license="cc-by-4.0")
    with pytest.raises(ValueError, match="expected --license to be a Hub license identifier"):
        convert_adm(unet_file, tmp_path / "out", model_flags=UNET_FLAGS, license="MIT License")
    assert not (tmp_path / "out").exists()


def test_release_with_a_user_classifier_has_the_users_license(tiny_adm_g, tmp_path):
    _, unet_file, _ = tiny_adm_g
    torch.save(adm_classifier_state_dict(classifier_kwargs_from_flags(CLASSIFIER_FLAGS.replace("8", "64", 1))), tmp_path / "mine.pt")
    convert_adm(unet_file, tmp_path / "out", classifier=tmp_path / "mine.pt", classifier_flags=CLASSIFIER_FLAGS.replace("8", "64", 1))
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert check_hub_metadata(card)["license"] == "unknown"
    assert "Converted from OpenAI's [guided-diffusion]" in card.text
    assert "The classifier in this folder was converted from a user checkpoint (`mine.pt`)" in card.text
    assert "The classifier is a user checkpoint, so the folder's license is: Not stated (`unknown`)" in card.text


def test_released_ddpm_card_samples_with_the_fast_recipe_not_every_step(tmp_path, monkeypatch):
    """The DDPM release recommends all 1000 steps: the snippet samples with the fast recipe and says so."""
    preset = presets_module.PRESETS["ddpm"]["cifar10"]
    assert preset.sampling["timestep_respacing"] == "1000"
    tiny = _configs(3)["ddpm"]
    monkeypatch.setitem(presets_module.PRESETS["ddpm"], "cifar10", dataclasses.replace(preset, constructor_kwargs=tiny))
    torch.save(ddpm_state_dict(tiny), tmp_path / "model.ckpt")
    convert_ddpm(tmp_path / "model.ckpt", tmp_path / "ddpm", preset="cifar10")
    card = ModelCard.load(tmp_path / "ddpm" / "README.md")
    data = check_hub_metadata(card)
    assert data["license"] == "unknown" and "states no license" in card.text and "ho2020denoising" in card.text
    assert "Recommended sampling (from the original release): timestep_respacing=1000" in card.text
    assert "The snippet above samples with the package's fast recipe instead of every step." in card.text
    assert "FAST_RECIPE.apply(pipe)" in usage_snippet(card) and "timestep_respacing" not in usage_snippet(card)
    check_samples(run_usage_snippet(card, tmp_path), 4, 3, 8)


# -- trained models -------------------------------------------------------------------------------------------------


def _tiny_unet(cls=ADMUNet2DModel, channels=3, **extra):
    torch.manual_seed(0)
    return cls(sample_size=8, in_channels=channels, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
               attention_downsample_factors=(2,), num_classes=3, out_channels=2 * channels, **extra)


def _trained_card(kind, folder, **overrides):
    settings = dict(kind=kind, model_name="tiny", location=str(folder), resolution=8, training={"steps": 2}, dataset="a folder",
                    hub_dataset_id=None, id2label={0: "cat", 1: "dog", 2: "fox"}, flags={"num_channels": 32}, num_timesteps=20,
                    conditional=kind != "classifier", low_res_size=4 if kind == "super_res" else None)
    settings.update(overrides)
    card = render_trained_model_card(**settings)
    card.save(folder / "README.md")
    return ModelCard.load(folder / "README.md")


def test_trained_diffusion_card_names_its_base_model_and_license(tmp_path):
    folder = tmp_path / "diffusion"
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range")
    ClassifierGuidedPipeline(unet=_tiny_unet(), scheduler=scheduler, id2label={0: "cat", 1: "dog", 2: "fox"}).save_pretrained(folder)
    card = _trained_card("diffusion", folder, flags={"init_pipeline": "me/adm-base"}, license="cc-by-4.0",
                         hub_dataset_id="me/pets")
    data = check_hub_metadata(card)
    assert data["license"] == "cc-by-4.0" and data["base_model"] == "me/adm-base" and data["datasets"] == ["me/pets"]
    assert "Fine-tuned from `me/adm-base`" in card.text and "fine-tuned" in data["tags"]
    local = _trained_card("diffusion", folder, flags={"init_pipeline": str(folder)})  # a local folder is no Hub id
    assert "base_model" not in local.data.to_dict() and f"Fine-tuned from `{folder}`" in local.text
    assert local.data.license == "unknown" and "did not pass `--license`" in local.text
    with pytest.raises(ValueError, match="expected --license to be a Hub license identifier"):
        _trained_card("diffusion", folder, license="MIT License")


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
def test_trained_diffusion_card_runs_with_the_fast_recipe(tmp_path, channels):
    folder = tmp_path / "diffusion"
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range")
    ClassifierGuidedPipeline(unet=_tiny_unet(channels=channels), scheduler=scheduler, id2label={0: "cat", 1: "dog", 2: "fox"}).save_pretrained(folder)
    card = _trained_card("diffusion", folder)
    assert "FAST_RECIPE.apply(pipe)" in usage_snippet(card) and "instead of all 20 training steps" in card.text
    assert install_lines() in card.text
    check_samples(run_usage_snippet(card, tmp_path), 1, channels, 8)


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
def test_trained_super_res_card_runs(tmp_path, channels):
    folder = tmp_path / "super_res"
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range")
    ADMUpsamplingPipeline(unet=_tiny_unet(ADMSuperResUNet2DModel, channels), scheduler=scheduler, low_res_size=4,
                          id2label={0: "cat", 1: "dog", 2: "fox"}).save_pretrained(folder)
    card = _trained_card("super_res", folder)
    assert check_hub_metadata(card)["pipeline_tag"] == "image-to-image"
    check_samples(run_usage_snippet(card, tmp_path), 1, channels, 8)


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
def test_trained_classifier_card_builds_inputs_of_the_classifiers_channels(tmp_path, channels):
    folder = tmp_path / "classifier"
    ADMClassifier(sample_size=8, in_channels=channels, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_downsample_factors=(2,), num_classes=3, pool="adaptive").save_pretrained(folder)
    GuidedDDPMScheduler(num_train_timesteps=20).save_pretrained(folder)
    card = _trained_card("classifier", folder)
    assert check_hub_metadata(card)["pipeline_tag"] == "image-classification"
    namespace = run_usage_snippet(card, tmp_path)
    assert namespace["images"].shape[1] == channels and namespace["logits"].shape == (2, 3)


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
