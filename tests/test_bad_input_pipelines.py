"""Bad pipeline input, one row per case: a one-line error naming what was expected and what came, before any forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from guided_diffusers import (
    ADMClassifier,
    ADMSuperResUNet2DModel,
    ADMUNet2DModel,
    ADMUpsamplingPipeline,
    ClassifierGuidedPipeline,
    DDIMInversionPipeline,
    GuidedDDIMScheduler,
    GuidedDDPMScheduler,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")
NAN, INF = float("nan"), float("inf")


def _guided(scheduler=None) -> ClassifierGuidedPipeline:
    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_downsample_factors=(2,), num_classes=10, out_channels=6, class_dropout_prob=0.1)
    classifier = ADMClassifier(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                               attention_downsample_factors=(2,), num_classes=10, num_head_channels=16)
    scheduler = scheduler or GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range")
    pipe = ClassifierGuidedPipeline(unet=unet.eval(), scheduler=scheduler, classifier=classifier.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _upsampler() -> ADMUpsamplingPipeline:
    unet = ADMSuperResUNet2DModel(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                  attention_downsample_factors=(2,), num_classes=10, out_channels=6)
    pipe = ADMUpsamplingPipeline(unet=unet.eval(), scheduler=GuidedDDPMScheduler(num_train_timesteps=20,
                                 variance_type="learned_range"), low_res_size=8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inversion() -> DDIMInversionPipeline:
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_downsample_factors=(2,), num_classes=10, out_channels=6)
    pipe = DDIMInversionPipeline(unet=unet.eval(), scheduler=GuidedDDIMScheduler(num_train_timesteps=20,
                                 variance_type="learned_range"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES = [
    # (id, pipeline factory, call kwargs, message)
    ("float label", _guided, dict(class_labels=[1.7]), r"expected class labels as integer ids or class names, got 1\.7"),
    ("bool label", _guided, dict(class_labels=[True]), "expected class labels as integer ids or class names, got True"),
    ("float tensor label", _guided, dict(class_labels=torch.tensor([1.0])), "1-D integer tensor"),
    ("label out of range", _guided, dict(class_labels=[10]), r"expected class labels in \[0, 10\), got \[10\]"),
    ("unknown name", _guided, dict(class_labels=["zebra"]), "expected class ids in"),
    ("numpy latents", _guided, dict(class_labels=[1], latents=np.zeros((1, 3, 8, 8), np.float32)),
     "expected latents as a torch.Tensor of shape"),
    ("nan latents", _guided, dict(class_labels=[1], latents=torch.full((1, 3, 8, 8), NAN)), "expected latents as finite"),
    ("latents shape", _guided, dict(class_labels=[1], latents=torch.zeros(2, 3, 8, 8)), r"expected latents of shape \(1, 3, 8, 8\)"),
    ("fractional batch", _guided, dict(batch_size=2.5, guidance_scale=None), "expected batch_size as a whole number >= 1, got 2.5"),
    ("zero batch", _guided, dict(batch_size=0), "expected batch_size as a whole number >= 1, got 0"),
    ("empty step noise", _guided, dict(class_labels=[1], num_inference_steps=2, step_noise=[]),
     r"expected step_noise as 2 tensors of shape \(1, 3, 8, 8\), got 0"),
    ("step noise shape", _guided, dict(class_labels=[1], num_inference_steps=2,
                                        step_noise=[torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4)]),
     r"expected step_noise as 2 tensors of shape \(1, 3, 8, 8\), got \(1, 3, 4, 4\) at step 1"),
    ("step noise as a number", _guided, dict(class_labels=[1], num_inference_steps=2, step_noise=0.5),
     r"expected step_noise as 2 tensors of shape \(1, 3, 8, 8\), got float"),
    ("nan eta", _guided, dict(class_labels=[1], eta=NAN), "expected eta as a finite number >= 0, got nan"),
    ("negative eta", _guided, dict(class_labels=[1], eta=-1.0), "expected eta as a finite number >= 0, got -1.0"),
    ("nan classifier scale", _guided, dict(class_labels=[1], classifier_scale=NAN),
     "expected classifier_scale as a finite number, got nan"),
    ("inf guidance scale", _guided, dict(class_labels=[1], guidance_scale=INF),
     "expected guidance_scale as a finite number, got inf"),
    ("string scale", _guided, dict(class_labels=[1], classifier_scale="2"), "expected classifier_scale as a number, got str"),
    ("too many steps", _guided, dict(class_labels=[1], num_inference_steps=21), r"in \[1, 20\].*got 21"),
    ("zero steps", _guided, dict(class_labels=[1], num_inference_steps=0), r"in \[1, 20\].*got 0"),
    ("fractional steps", _guided, dict(class_labels=[1], num_inference_steps=2.5), "expected num_inference_steps as a whole number"),
    ("stock too many steps", lambda: _guided(DPMSolverMultistepScheduler(num_train_timesteps=20)),
     dict(class_labels=[1], num_inference_steps=21), r"in \[1, 20\].*got 21"),
    ("stock respacing spec", lambda: _guided(DPMSolverMultistepScheduler(num_train_timesteps=20)),
     dict(class_labels=[1], timestep_respacing="ddim5"), "expected a step count for DPMSolverMultistepScheduler"),
    ("bad output type", _guided, dict(class_labels=[1], output_type="jpeg"), "expected output_type"),
    ("0..255 low-res tensor", _upsampler, dict(low_res_images=torch.full((1, 3, 8, 8), 200.0), class_labels=[1]),
     r"expected low_res_images tensors in \[-1, 1\], got values in \[200, 200\]"),
    ("4-channel low-res array", _upsampler, dict(low_res_images=np.zeros((1, 8, 8, 4), np.float32), class_labels=[1]),
     r"expected low_res_images arrays as \(N\)HWC with 1 or 3 channels, got shape \(1, 8, 8, 4\)"),
    ("5-d low-res array", _upsampler, dict(low_res_images=np.zeros((1, 1, 8, 8, 3), np.float32), class_labels=[1]),
     r"expected low_res_images arrays as \(N\)HWC with 1 or 3 channels, got shape \(1, 1, 8, 8, 3\)"),
    ("nan upsampler eta", _upsampler, dict(low_res_images=torch.zeros(1, 3, 8, 8), class_labels=[1], eta=NAN),
     "expected eta as a finite number"),
    ("0..255 inversion tensor", _inversion, dict(images=torch.full((1, 3, 8, 8), 255.0), class_labels=[1]),
     r"expected image tensors in \[-1, 1\], got values in \[255, 255\]"),
    ("nan inversion scale", _inversion, dict(images=torch.zeros(1, 3, 8, 8), class_labels=[1], classifier_scale=NAN),
     "expected classifier_scale as a finite number"),
]


@pytest.mark.parametrize(("factory", "kwargs", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_any_forward(factory, kwargs, message):
    pipe = factory()
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=message) as error:
        pipe(**kwargs)
    assert "\n" not in str(error.value)
    assert calls == []


def test_non_finite_weights_stop_at_the_first_step_naming_it():
    pipe = _guided()
    with torch.no_grad():
        next(pipe.unet.parameters()).fill_(NAN)  # as corrupted bytes in a weights file would
    with pytest.raises(FloatingPointError, match=r"the model output is not finite at t = 12;"):
        pipe(class_labels=[1], num_inference_steps=3)


def test_non_finite_classifier_stops_naming_the_guidance():
    pipe = _guided()
    with torch.no_grad():
        next(pipe.classifier.parameters()).fill_(NAN)
    with pytest.raises(FloatingPointError, match="the guidance gradient is not finite at t = 12;"):
        pipe(class_labels=[1], num_inference_steps=3, classifier_scale=1.0)
