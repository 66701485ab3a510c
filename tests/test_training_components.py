"""Training pieces: EMA, sampler state, checkpoints, metrics, arguments, model building, output publishing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from guided_diffusers.conversion import adm_unet_config, unet_kwargs_from_flags
from guided_diffusers.training import LossSecondMomentResampler, UniformSampler
from guided_diffusers.training.args import build_parser, check_arguments, parse_training_args
from guided_diffusers.training.builders import build_classifier_setup, build_diffusion_setup, check_resolution
from guided_diffusers.training.checkpointing import (
    CHECKPOINT_STATE_FILE,
    TrainingProgress,
    list_checkpoints,
    prune_checkpoints,
    resolve_resume_checkpoint,
)
from guided_diffusers.training.ema import ExponentialMovingAverage, parse_ema_rates
from guided_diffusers.training.export import HUB_IGNORE_PATTERNS, publish_folder, push_output_to_hub
from guided_diffusers.training.losses import LossType
from guided_diffusers.training.metrics import summarize_terms, top_k_correct
from guided_diffusers.training.model_card import render_trained_model_card

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is fastest on a busy machine

BASE = ["--train_data_dir", "data", "--max_train_steps", "3"]


# -- EMA --------------------------------------------------------------------------------------------------------------


def test_ema_follows_the_originals_update_at_every_rate():
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = ExponentialMovingAverage([param], (0.9, 0.5))
    expected = {0.9: param.detach().clone(), 0.5: param.detach().clone()}
    for value in ([3.0, 0.0], [-1.0, 5.0]):
        param.data = torch.tensor(value)
        ema.update([param])
        for rate in expected:
            expected[rate] = expected[rate] * rate + param.detach() * (1 - rate)
    for rate, tensor in expected.items():
        torch.testing.assert_close(ema.average(rate)[0], tensor)
    restored = ExponentialMovingAverage([param], (0.9, 0.5))
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.average(0.5)[0], expected[0.5])
    assert restored.num_updates == 2
    target = torch.nn.Parameter(torch.zeros(2))
    restored.copy_to([target], 0.9)
    torch.testing.assert_close(target.detach(), expected[0.9])
    with pytest.raises(ValueError, match="expected a checkpoint with EMA rates \\[0.999\\] \\(--ema_rate\\), got \\[0.9, 0.5\\]"):
        ExponentialMovingAverage([param], (0.999,)).load_state_dict(ema.state_dict())


def test_ema_rates_parse_like_the_originals_flag():
    assert parse_ema_rates("0.9999,0.999") == (0.9999, 0.999)
    with pytest.raises(ValueError, match="expected EMA rates in \\[0, 1\\), got \\[1.5\\]"):
        parse_ema_rates("1.5")
    with pytest.raises(ValueError, match="comma-separated numbers"):
        parse_ema_rates("fast")


# -- timestep sampler state ----------------------------------------------------------------------------------------------


def test_loss_second_moment_state_round_trips():
    sampler = LossSecondMomentResampler(4, history_per_term=2)
    sampler.update_with_all_losses([0, 0, 1, 2, 3, 3, 1, 2], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    restored = LossSecondMomentResampler(4, history_per_term=2)
    restored.load_state_dict(sampler.state_dict())
    np.testing.assert_array_equal(restored.weights(), sampler.weights())
    assert restored.warmed_up()
    with pytest.raises(ValueError, match="expected a loss history of shape \\(5, 2\\)"):
        LossSecondMomentResampler(5, history_per_term=2).load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="expected an empty state for UniformSampler"):
        UniformSampler(4).load_state_dict(sampler.state_dict())


# -- checkpoints ---------------------------------------------------------------------------------------------------------


def _checkpoint(folder, complete=True):
    folder.mkdir(parents=True)
    if complete:
        (folder / CHECKPOINT_STATE_FILE).write_text("{}")
    return folder


def test_latest_takes_the_newest_complete_checkpoint_and_prune_keeps_the_limit(tmp_path):
    assert resolve_resume_checkpoint(tmp_path, "latest") is None
    for step in (2, 10, 4):
        _checkpoint(tmp_path / f"checkpoint-{step}")
    _checkpoint(tmp_path / "checkpoint-12", complete=False)  # never finished
    _checkpoint(tmp_path / ".checkpoint-14.partial")  # a save killed before its rename
    assert resolve_resume_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-10"
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 4, 10]
    prune_checkpoints(tmp_path, 2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 10]
    assert not (tmp_path / ".checkpoint-14.partial").exists()
    with pytest.raises(ValueError, match="expected a complete checkpoint folder .* got .*checkpoint-12"):
        resolve_resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-12"))
    with pytest.raises(ValueError, match="expected --resume_from_checkpoint 'latest' or a checkpoint folder, got .*nowhere"):
        resolve_resume_checkpoint(tmp_path, str(tmp_path / "nowhere"))


def test_progress_state_and_shape_changes():
    progress = TrainingProgress(2, 4, 3, 0)
    progress.global_step = 5
    assert progress.micro_batches_done == 15
    resumed = TrainingProgress(1, 4, 3, 0)
    resumed.load_state_dict(progress.state_dict())
    assert resumed.global_step == 5 and resumed.shape_changes() == ["num_processes 2 -> 1"]


# -- metrics -----------------------------------------------------------------------------------------------------------


def test_per_quartile_means_as_the_originals_log_them():
    summary = summarize_terms({"loss": torch.tensor([1.0, 3.0, 5.0, 7.0])}, torch.tensor([0, 24, 50, 99]), 100)
    assert summary == {"loss": 4.0, "loss_q0": 2.0, "loss_q2": 5.0, "loss_q3": 7.0}
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3]])
    labels = torch.tensor([1, 2])
    assert top_k_correct(logits, labels, 1).tolist() == [1.0, 0.0]
    assert top_k_correct(logits, labels, 5).tolist() == [1.0, 1.0]  # k capped at the 3 classes


# -- arguments ---------------------------------------------------------------------------------------------------------


def test_switches_take_the_originals_values_and_bare_flags():
    parser = build_parser("diffusion")
    assert parser.parse_args(BASE + ["--use_ema", "False"]).use_ema is False
    assert parser.parse_args(BASE + ["--random_flip"]).random_flip is True
    assert parser.parse_args(BASE).use_ema is True
    assert build_parser("classifier").parse_args(BASE).use_ema is False
    assert build_parser("super_res").parse_args(BASE + ["--large_size", "128"]).resolution == 128


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset_name", "x"], "expected one of --dataset_name or --train_data_dir, got both"),
        (["--class_dropout_prob", "1.0"], "expected --class_dropout_prob in \\[0, 1\\), got 1.0"),
        (["--ema_rate", "0.9,2"], "expected EMA rates in \\[0, 1\\), got \\[2.0\\]"),
        (["--gradient_accumulation_steps", "0"], "expected --gradient_accumulation_steps >= 1, got 0"),
        (["--push_to_hub"], "expected the Hub to be reachable for --push_to_hub, got HF_HUB_OFFLINE set"),
        (["--label_from", "subfolder"], "expected --label_from among \\('auto', 'folder', 'filename'\\), got 'subfolder'"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(extra, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=message):
        check_arguments(build_parser("diffusion").parse_args(BASE + extra), "diffusion")


def test_lr_scheduler_choices_are_diffusers_schedules_but_piecewise_constant():
    """The parser spells diffusers' schedule names (importing diffusers.optimization would import torch in --help)."""
    from diffusers.optimization import SchedulerType

    from guided_diffusers.training.args import LR_SCHEDULERS

    choices = next(action.choices for action in build_parser("diffusion")._actions if action.dest == "lr_scheduler")
    assert list(choices) == list(LR_SCHEDULERS) == [t.value for t in SchedulerType if t.value != "piecewise_constant"]


def test_argument_errors_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        parse_training_args("diffusion", ["--max_train_steps", "2"])
    assert "expected one of --dataset_name or --train_data_dir, got neither" in capsys.readouterr().err


# -- model building ----------------------------------------------------------------------------------------------------


def _args(task, *extra):
    args = build_parser(task).parse_args(BASE + list(extra))
    args.task = task
    return args


def test_diffusion_model_is_the_one_the_originals_flags_describe():
    flags = ["--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2", "--attention_resolutions", "4",
             "--learn_sigma", "True", "--class_cond", "True", "--noise_schedule", "cosine", "--use_kl", "True"]
    setup = build_diffusion_setup(_args("diffusion", "--resolution", "8", *flags), num_classes=3)
    given = dict(zip(flags[::2], flags[1::2]))
    kwargs = unet_kwargs_from_flags({k.lstrip("-"): v for k, v in given.items() if k != "--use_kl"} | {"image_size": 8})
    kwargs["num_classes"] = 3
    expected = adm_unet_config(kwargs)
    assert {k: setup.model.config[k] for k in expected} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in expected.items()}
    assert setup.scheduler.config.beta_schedule == "squaredcos_cap_v2" and setup.scheduler.config.variance_type == "learned_range"
    assert setup.loss_type == LossType.RESCALED_KL and setup.resolution == 8
    assert not setup.model.is_gradient_checkpointing
    checkpointed = build_diffusion_setup(_args("diffusion", "--resolution", "8", *flags, "--use_checkpoint", "True"), num_classes=3)
    assert checkpointed.model.is_gradient_checkpointing  # the originals' --use_checkpoint (counted in test_models)
    improved = build_diffusion_setup(_args("diffusion", "--resolution", "32", "--source", "improved-diffusion", "--num_channels", "32"), None)
    # improved-diffusion rescales timesteps: the network owns that scale (1000 / T), the scheduler has no such key
    assert improved.model.config.timestep_scale == 1000 / improved.scheduler.config.num_train_timesteps
    assert not improved.scheduler.config.get("rescale_timesteps") and improved.loss_type == LossType.RESCALED_MSE


@pytest.mark.parametrize(
    ("task", "extra", "message"),
    [
        ("diffusion", ["--resolution", "10", "--channel_mult", "1,2,2"], "expected --resolution divisible by 4 \\(3 levels"),
        ("diffusion", ["--resolution", "8", "--channel_mult", "1,2", "--attention_resolutions", "16,8"],
         "expected --attention_resolutions among the levels' resolutions \\[8, 4\\] at --resolution 8, got \\[16\\]"),
        ("diffusion", ["--resolution", "48"], "expected image_size in \\[64, 128, 256, 512\\] \\(or an explicit channel_mult\\), got 48"),
        ("diffusion", ["--source", "improved-diffusion", "--resblock_updown", "True"], "unknown flags --resblock_updown"),
        ("diffusion", ["--class_cond", "maybe"], "expected a boolean for --class_cond, got 'maybe'"),
        ("diffusion", ["--class_cond", "True", "--resolution", "8", "--channel_mult", "1,2", "--attention_resolutions", "4"],
         "expected labelled images .* for --class_cond True"),
        ("diffusion", ["--learn_sigma", "True", "--diffusion_steps", "20"], "expected betas below 1 for the vb loss term"),
        ("super_res", ["--large_size", "64", "--small_size", "16", "--channel_mult", "1,2"], "expected no --channel_mult for a super-resolution model"),
        ("super_res", ["--large_size", "64", "--small_size", "24"], "expected --small_size to divide --large_size 64"),
    ],
)
def test_architectures_the_run_cannot_take_are_refused(task, extra, message):
    with pytest.raises(ValueError, match=message):
        build_diffusion_setup(_args(task, *extra), num_classes=None)


def test_classifier_takes_the_datas_classes_and_the_process_flags():
    setup = build_classifier_setup(_args("classifier", "--classifier_width", "32", "--classifier_depth", "1",
                                         "--classifier_attention_resolutions", "8", "--noise_schedule", "cosine"), num_classes=7)
    assert setup.model.config.num_classes == 7 and setup.model.config.sample_size == 64
    assert setup.scheduler.config.beta_schedule == "squaredcos_cap_v2"  # the cosine schedule, by diffusers' name
    with pytest.raises(ValueError, match="expected --classifier_attention_resolutions among the levels' resolutions"):
        build_classifier_setup(_args("classifier", "--classifier_attention_resolutions", "12"), num_classes=2)
    check_resolution(64, 4, "32,16,8", "attention_resolutions")


def test_in_channels_1_builds_grey_models_whose_outputs_follow_the_variance_type():
    small = ["--resolution", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2", "--attention_resolutions", "4"]
    fixed = build_diffusion_setup(_args("diffusion", *small, "--in_channels", "1"), None).model.config
    learned = build_diffusion_setup(_args("diffusion", *small, "--in_channels", "1", "--learn_sigma", "True"), None).model.config
    assert (fixed.in_channels, fixed.out_channels) == (1, 1)
    assert (learned.in_channels, learned.out_channels) == (1, 2)  # prediction, then one variance channel
    assert build_diffusion_setup(_args("diffusion", *small), None).model.config.in_channels == 3  # the originals' default
    classifier = build_classifier_setup(_args("classifier", "--resolution", "8", "--classifier_width", "32", "--classifier_depth", "1",
                                              "--classifier_channel_mult", "1,2", "--classifier_attention_resolutions", "4",
                                              "--in_channels", "1"), num_classes=3).model
    assert classifier.config.in_channels == 1
    assert classifier(torch.zeros(2, 1, 8, 8), torch.zeros(2)).logits.shape == (2, 3)


# -- output ------------------------------------------------------------------------------------------------------------


def test_publish_moves_the_loadable_entry_last_and_replaces_old_parts(tmp_path):
    output = tmp_path / "out"
    (output / "unet").mkdir(parents=True)
    (output / "unet" / "old.bin").write_text("old")
    (output / "checkpoint-3").mkdir()
    staging = tmp_path / "stage"
    (staging / "unet").mkdir(parents=True)
    (staging / "unet" / "new.bin").write_text("new")
    (staging / "model_index.json").write_text("{}")
    moved = []
    real_replace = os.replace
    os.replace = lambda a, b: (moved.append(os.path.basename(str(b))), real_replace(a, b))[1]
    try:
        publish_folder(staging, output, "model_index.json")
    finally:
        os.replace = real_replace
    assert moved[-1] == "model_index.json"
    assert sorted(p.name for p in (output / "unet").iterdir()) == ["new.bin"]
    assert (output / "checkpoint-3").is_dir() and not staging.exists()


def test_push_uploads_without_checkpoints(monkeypatch, tmp_path):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, exist_ok, private):
            calls["repo"] = (repo_id, private)

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs
            return "https://huggingface.co/me/model/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert push_output_to_hub(tmp_path, "me/model", token="t", private=True).endswith("/commit/1")
    assert calls["repo"] == ("me/model", True) and calls["upload"]["ignore_patterns"] == HUB_IGNORE_PATTERNS
    assert "checkpoint-*" in HUB_IGNORE_PATTERNS


def test_model_card_lists_the_training_and_the_usage():
    card = render_trained_model_card(
        kind="diffusion", model_name="tiny", location="me/tiny", resolution=8, training={"optimizer steps": 4},
        dataset="image folder data", hub_dataset_id="me/pets", id2label={0: "cat", 1: "dog"}, flags={"num_channels": 32},
        num_timesteps=100, conditional=True,
    )
    text = str(card)
    assert 'DiffusionPipeline.from_pretrained("me/tiny")' in text and "class_labels=['cat']" in text
    assert "| optimizer steps | 4 |" in text and "--num_channels 32" in text and "2 classes (`cat`, `dog`)" in text
    assert card.data.datasets == ["me/pets"]
    json.dumps(card.data.to_dict())


def test_data_classes_map_to_a_fine_tuned_models_ids_by_name():
    from guided_diffusers.training.builders import map_data_classes

    model = {0: "cat", 1: "dog", 2: "fox"}
    assert map_data_classes({0: "dog", 1: "fox"}, True, model, 3, "model") == {0: 1, 1: 2}
    assert map_data_classes({0: "cat", 1: "dog"}, True, model, 3, "model") is None  # the same ids
    assert map_data_classes({0: "0", 1: "1"}, False, model, 3, "model") is None  # bare ids are the model's ids
    with pytest.raises(ValueError, match=r"got 1 it lacks: \['wolf'\] \(new classes cannot be added"):
        map_data_classes({0: "dog", 1: "wolf"}, True, model, 3, "model")
    with pytest.raises(ValueError, match="expected at most 3 classes"):
        map_data_classes({k: str(k) for k in range(4)}, False, model, 3, "model")
