"""Our pipelines' folders and the Hub (pipelines/hub.py): the model card of the folder a pipeline was loaded from (a local
folder, or a Hub id in a Hugging Face cache laid out as huggingface_hub lays it out) survives ``save_pretrained`` and
``from_pipe``; ``push_to_hub`` failures (offline, auth, missing repo) are the converter's one line with the retry command,
and the folder it names is there to retry from."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import huggingface_hub
import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from guided_diffusers import (
    ADMImg2ImgPipeline,
    ADMInpaintPipeline,
    ADMSuperResUNet2DModel,
    ADMUNet2DModel,
    ADMUpsamplingPipeline,
    ClassifierGuidedPipeline,
    DDIMInversionPipeline,
    GuidedDDPMScheduler,
)
from guided_diffusers.pipelines.hub import PipelineHubMixin
from guided_diffusers.publishing import HubPushError

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CARD = "---\nlicense: mit\n---\n\n# tiny\n\nThe card of the source folder.\n"


def _unet(cls=ADMUNet2DModel):
    torch.manual_seed(0)
    return cls(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,), out_channels=3)


@pytest.fixture
def carded_folder(tmp_path) -> Path:
    """A pipeline folder with a model card."""
    folder = tmp_path / "source"
    ClassifierGuidedPipeline(unet=_unet(), scheduler=GuidedDDPMScheduler(num_train_timesteps=20)).save_pretrained(folder)
    (folder / "README.md").write_text(CARD)
    return folder


def test_every_pipeline_class_has_the_hub_mixin():
    for pipeline_class in (ClassifierGuidedPipeline, ADMUpsamplingPipeline, DDIMInversionPipeline, ADMInpaintPipeline, ADMImg2ImgPipeline):
        assert issubclass(pipeline_class, PipelineHubMixin)
        assert pipeline_class.save_pretrained is PipelineHubMixin.save_pretrained, pipeline_class
        assert pipeline_class.push_to_hub is PipelineHubMixin.push_to_hub, pipeline_class


def test_save_pretrained_keeps_the_card_of_a_local_folder(carded_folder, tmp_path):
    pipe = DiffusionPipeline.from_pretrained(carded_folder)
    assert str(pipe.config._name_or_path) == str(carded_folder)
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "README.md").read_text() == CARD
    ADMInpaintPipeline.from_pipe(pipe).save_pretrained(tmp_path / "inpaint")  # from_pipe keeps where it came from
    assert (tmp_path / "inpaint" / "README.md").read_text() == CARD
    pipe.save_pretrained(carded_folder)  # saved over its own folder: the card stays as it is
    assert (carded_folder / "README.md").read_text() == CARD


def test_save_pretrained_keeps_the_card_of_an_upsampler(tmp_path):
    ADMUpsamplingPipeline(unet=_unet(ADMSuperResUNet2DModel), scheduler=GuidedDDPMScheduler(num_train_timesteps=20),
                          low_res_size=4).save_pretrained(tmp_path / "source")
    (tmp_path / "source" / "README.md").write_text(CARD)
    ADMUpsamplingPipeline.from_pretrained(tmp_path / "source").save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "README.md").read_text() == CARD


def test_save_pretrained_keeps_the_card_of_a_hub_cache_snapshot(carded_folder, tmp_path, monkeypatch):
    """A Hub id loaded offline from the cache: models--{owner}--{name}/refs/main names the snapshot folder."""
    cache = tmp_path / "hub"
    repo = cache / "models--me--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(carded_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    pipe = DiffusionPipeline.from_pretrained("me/tiny")
    assert pipe.config._name_or_path == "me/tiny"
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "README.md").read_text() == CARD


def test_a_pipeline_built_in_code_saves_no_card(tmp_path):
    ClassifierGuidedPipeline(unet=_unet(), scheduler=GuidedDDPMScheduler(num_train_timesteps=20)).save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model_index.json").is_file() and not (tmp_path / "saved" / "README.md").exists()


def _failing_api(error: Exception):
    class FailingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, exist_ok, private):
            raise error

    return FailingApi


def _retry_folder(message: str, repo_id: str) -> Path:
    """The folder a one-line push failure names in its retry command ``hf upload REPO FOLDER .``."""
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"push to the Hub repo {repo_id!r} failed (") and "`hf auth login`" in message, message
    prefix = f"retry with `hf upload {repo_id} "
    assert prefix in message, message
    return Path(message.split(prefix, 1)[1].split(" .", 1)[0])


def test_push_to_hub_offline_is_one_line_with_the_retry_command(carded_folder):
    """The test suite runs with HF_HUB_OFFLINE=1: the Hub is out of reach."""
    pipe = DiffusionPipeline.from_pretrained(carded_folder)
    with pytest.raises(HubPushError) as info:
        pipe.push_to_hub("me/tiny")
    folder = _retry_folder(str(info.value), "me/tiny")
    try:
        assert "OfflineModeIsEnabled" in str(info.value) and f"the folder {str(folder)!r} is intact" in str(info.value)
        assert (folder / "model_index.json").is_file() and (folder / "README.md").read_text() == CARD
    finally:
        shutil.rmtree(folder)


def _http_error(error_class, status: int, message: str) -> Exception:
    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    return error_class(message, response=httpx.Response(status, request=request))


@pytest.mark.parametrize("error", [
    _http_error(HfHubHTTPError, 401, "401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create\nInvalid token"),
    _http_error(RepositoryNotFoundError, 404, "404 Client Error. Repository Not Found for url: https://huggingface.co/api/models/me/tiny"),
    ConnectionError("Max retries exceeded\nwith url: /api/repos/create"),
], ids=["auth", "missing repo", "network"])
def test_push_to_hub_failures_are_the_converters_one_line(carded_folder, monkeypatch, error):
    monkeypatch.setattr(huggingface_hub, "HfApi", _failing_api(error))
    pipe = ClassifierGuidedPipeline.from_pretrained(carded_folder)
    with pytest.raises(HubPushError) as info:
        pipe.push_to_hub("me/tiny")
    folder = _retry_folder(str(info.value), "me/tiny")
    shutil.rmtree(folder)
    assert type(error).__name__ in str(info.value)


def test_save_pretrained_with_push_names_the_saved_folder(carded_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", _failing_api(ConnectionError("unreachable")))
    pipe = DiffusionPipeline.from_pretrained(carded_folder)
    with pytest.raises(HubPushError) as info:
        pipe.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="me/tiny")
    assert _retry_folder(str(info.value), "me/tiny") == tmp_path / "saved"
    assert (tmp_path / "saved" / "README.md").read_text() == CARD


def test_push_to_hub_uploads_the_folder_with_its_card_and_cleans_up(carded_folder, monkeypatch):
    uploaded = {}

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, exist_ok, private):
            uploaded["private"] = private

        def upload_folder(self, folder_path, repo_id, commit_message):
            uploaded.update(folder=Path(folder_path), repo_id=repo_id, message=commit_message,
                            files=sorted(p.name for p in Path(folder_path).iterdir()),
                            card=(Path(folder_path) / "README.md").read_text())
            return "https://huggingface.co/me/tiny/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    url = DiffusionPipeline.from_pretrained(carded_folder).push_to_hub("me/tiny", private=True)
    assert url == "https://huggingface.co/me/tiny/commit/1" and uploaded["repo_id"] == "me/tiny" and uploaded["private"] is True
    assert uploaded["card"] == CARD and {"README.md", "model_index.json", "unet", "scheduler"} <= set(uploaded["files"])
    assert not uploaded["folder"].exists()
    with pytest.raises(ValueError, match="expected create_pr=False and no subfolder"):
        DiffusionPipeline.from_pretrained(carded_folder).push_to_hub("me/tiny", create_pr=True)
