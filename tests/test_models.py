"""The ADM networks at the released checkpoints' configurations (small widths), their I/O, and their errors."""

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.resnet import ResnetBlock2D

from guided_diffusers import ADMClassifier, ADMSuperResUNet2DModel, ADMUNet2DModel
from guided_diffusers.conversion import (
    adm_classifier_config,
    adm_unet_config,
    classifier_kwargs_from_flags,
    ddpm_unet_config,
    unet_kwargs_from_flags,
)


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is fastest on a busy machine


def _unet_from_flags(flags, source="guided-diffusion"):
    kwargs = unet_kwargs_from_flags(flags, source)
    cls = ADMSuperResUNet2DModel if "large_size" in kwargs else ADMUNet2DModel
    return cls(**adm_unet_config(kwargs)).eval()


def _level_widths(model):
    return [block.resnets[-1].out_channels for block in model.down_blocks]


def _heads(model):
    down = [block.attentions[0].heads if block.attentions else None for block in model.down_blocks]
    up = [block.attentions[0].heads if block.attentions else None for block in model.up_blocks]
    return down, model.mid_block.attentions[0].heads, up


def test_512_model_half_width_first_level():
    # 512x512 ADM-G: channel_mult (0.5, 1, 1, 2, 2, 4, 4); the time embedding stays 4 * model_channels.
    model = _unet_from_flags(
        "--attention_resolutions 32,16,8 --class_cond True --image_size 512 --learn_sigma True "
        "--num_channels 64 --num_head_channels 32 --num_res_blocks 1 --resblock_updown True --use_scale_shift_norm True"
    )
    assert list(model.config.channel_mult) == [0.5, 1, 1, 2, 2, 4, 4]
    assert _level_widths(model) == [32, 64, 64, 128, 128, 256, 256]
    assert model.conv_in.out_channels == 32
    assert model.time_proj.num_channels == 64
    assert model.time_embedding.linear_1.in_features == 64 and model.time_embedding.linear_2.out_features == 256
    assert model.down_blocks[0].resnets[0].time_emb_proj.in_features == 256
    assert model.conv_out.in_channels == 32 and model.conv_out.out_channels == 6
    # attention at 32, 16, 8 px of 512 -> downsample factors 16, 32, 64 -> levels 4, 5, 6
    down, _, up = _heads(model)
    assert down == [None, None, None, None, 4, 8, 8]
    out = model(torch.randn(1, 3, 64, 64), torch.tensor([10]), class_labels=torch.tensor([3])).sample
    assert out.shape == (1, 6, 64, 64)


def test_128_model_fixed_head_count():
    # 128x128 ADM-G: --num_heads 4 at every attention level, whatever its width.
    model = _unet_from_flags(
        "--attention_resolutions 32,16,8 --class_cond True --image_size 128 --learn_sigma True --num_channels 32 "
        "--num_heads 4 --num_res_blocks 1 --resblock_updown True --use_scale_shift_norm True"
    )
    assert list(model.config.channel_mult) == [1, 1, 2, 3, 4]
    down, mid, up = _heads(model)
    assert down == [None, None, 4, 4, 4] and mid == 4 and up == [4, 4, 4, None, None]
    assert isinstance(model.down_blocks[0].downsamplers[0], torch.nn.Module)
    assert model.down_blocks[0].downsamplers[0].__class__.__name__ == "ResnetBlock2D"
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([1, 999]), class_labels=torch.tensor([0, 999])).sample
    assert out.shape == (2, 6, 32, 32)


def test_64_model_fixed_head_width_new_order():
    # 64x64 ADM-G: --num_head_channels 64 (here 32) so the head count grows with the width; new attention order.
    model = _unet_from_flags(
        "--attention_resolutions 32,16,8 --class_cond True --dropout 0.1 --image_size 64 --learn_sigma True "
        "--noise_schedule cosine --num_channels 64 --num_head_channels 32 --num_res_blocks 2 --resblock_updown True "
        "--use_new_attention_order True --use_scale_shift_norm True"
    )
    assert _level_widths(model) == [64, 128, 192, 256]
    down, mid, up = _heads(model)
    assert down == [None, 4, 6, 8] and mid == 8 and up == [8, 6, 4, None]
    assert len(model.up_blocks[0].resnets) == 3
    out = model(torch.randn(1, 3, 64, 64), 500, class_labels=torch.tensor([7])).sample
    assert out.shape == (1, 6, 64, 64)


def test_upsampler_from_flags_is_super_res():
    model = _unet_from_flags(
        "--attention_resolutions 32,16,8 --class_cond True --large_size 64 --small_size 16 --learn_sigma True "
        "--num_channels 32 --num_heads 4 --num_res_blocks 1 --resblock_updown True --use_scale_shift_norm True"
    )
    assert isinstance(model, ADMSuperResUNet2DModel)
    assert model.conv_in.in_channels == 6 and model.config.in_channels == 3
    out = model(torch.randn(1, 3, 64, 64), 3, low_res=torch.randn(1, 3, 16, 16), class_labels=torch.tensor([1])).sample
    assert out.shape == (1, 6, 64, 64)


def test_improved_diffusion_defaults_differ():
    kwargs = unet_kwargs_from_flags("--image_size 32 --num_channels 32 --learn_sigma True", "improved-diffusion")
    assert kwargs["channel_mult"] == (1, 2, 2, 2)
    assert "num_head_channels" not in kwargs  # improved-diffusion has no such flag
    from guided_diffusers.conversion import parse_flags

    assert parse_flags(None, "improved-diffusion")["rescale_timesteps"] is True
    assert parse_flags(None, "guided-diffusion")["rescale_timesteps"] is False


def test_classifier_from_flags():
    kwargs = classifier_kwargs_from_flags(
        "--image_size 64 --classifier_attention_resolutions 32,16,8 --classifier_depth 1 --classifier_width 32 "
        "--classifier_pool attention --classifier_resblock_updown True --classifier_use_scale_shift_norm True --classifier_scale 1.0"
    )
    assert kwargs["attention_resolutions"] == (2, 4, 8) and kwargs["num_head_channels"] == 64
    kwargs["num_head_channels"] = 32
    model = ADMClassifier(**adm_classifier_config(kwargs)).eval()
    assert model.head.spatial_size == 8 and model.head.num_heads == 4  # 128 channels at 8x8
    assert model(torch.randn(2, 3, 64, 64), torch.tensor([0, 5])).logits.shape == (2, 1000)


@pytest.mark.parametrize(
    "flags, message",
    [
        ("--num_channels 32 --bogus 1", "unknown flags --bogus"),
        ("--class_cond maybe", "expected a boolean for --class_cond"),
        ("--num_channels", "expected a value after --num_channels"),
        ("--image_size 48", r"expected image_size in \[64, 128, 256, 512\]"),
        ("--num_channels wide", "expected an integer for --num_channels"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        unet_kwargs_from_flags(flags)


def test_forward_input_errors():
    model = ADMUNet2DModel(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                           attention_downsample_factors=(2,), num_classes=10)
    with pytest.raises(ValueError, match=r"expected sample of shape \(batch, 3, height, width\), got \(1, 4, 16, 16\)"):
        model(torch.randn(1, 4, 16, 16), 1, class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="expected class_labels for a class-conditional model"):
        model(torch.randn(1, 3, 16, 16), 1)
    with pytest.raises(ValueError, match="expected a scalar timestep or one per sample"):
        model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2, 3]), class_labels=torch.tensor([1, 2]))
    unconditional = ADMUNet2DModel(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                   attention_downsample_factors=(2,))
    with pytest.raises(ValueError, match="expected no class_labels"):
        unconditional(torch.randn(1, 3, 16, 16), 1, class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="expected pool in"):
        ADMClassifier(pool="max")


def _tiny_models():
    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_downsample_factors=(2,), num_classes=10, out_channels=6, num_head_channels=16,
                          resblock_updown=True, dropout=0.1)
    sr = ADMSuperResUNet2DModel(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                attention_downsample_factors=(2,), num_heads=2)
    clf = ADMClassifier(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_downsample_factors=(2,), num_classes=10, num_head_channels=16)
    ddpm = UNet2DModel(**ddpm_unet_config(dict(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1,
                                               attn_resolutions=(8,), dropout=0.1, resolution=16, in_channels=3)))
    for model in (unet, sr, clf, ddpm):  # perturb everything so zero-initialised layers cannot hide a mismatch
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return unet, sr, clf, ddpm


def _call(model, x):
    t = torch.tensor([3, 700])
    if isinstance(model, ADMClassifier):
        return model(x, t).logits
    if isinstance(model, ADMSuperResUNet2DModel):
        return model(x, t, low_res=x[:, :, ::2, ::2]).sample
    if isinstance(model, ADMUNet2DModel):
        return model(x, t, class_labels=torch.tensor([1, 2])).sample
    return model(x, t).sample


def _plain(config):
    """A config as JSON stores it (tuples become lists), without where it was loaded from."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize("index", range(4), ids=["unet", "super_res", "classifier", "ddpm"])
def test_save_load_round_trip_is_exact(tmp_path, index):
    model = _tiny_models()[index].eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert _plain(loaded.config) == _plain(model.config)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(_call(model, x), _call(loaded, x))


@pytest.mark.parametrize("index", range(3), ids=["unet", "super_res", "classifier"])
def test_bf16_forward_close_to_fp32(index):
    model = _tiny_models()[index].eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = _call(model, x)
        out = _call(model.to(torch.bfloat16), x)
    assert out.dtype == torch.float32  # computed in bf16, returned in the input's dtype
    relative = (out - reference).norm() / reference.norm()
    assert relative < 0.05, f"bf16 relative error {relative:.3g}"


def test_fp16_weights_load_and_run(tmp_path):
    """fp16 weights saved as diffusers' fp16 variant load as float16 (the very values saved) and compute what the
    float32 model computes within float16 rounding: relative L2 error at most 4 eps (measured about 1 eps)."""
    model = _tiny_models()[0].eval()
    half = _tiny_models()[0].eval().to(torch.float16)
    half.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = ADMUNet2DModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16).eval()
    assert loaded.dtype == torch.float16
    for name, parameter in half.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], parameter), name
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = _call(model, x)
        out = _call(loaded, x.half())
    assert out.dtype == torch.float16
    error = ((out.float() - reference).norm() / reference.norm()).item()
    assert error < 4 * torch.finfo(torch.float16).eps, f"fp16 relative error {error:.3g}"


@pytest.mark.parametrize("index", range(3), ids=["unet", "super_res", "classifier"])
def test_gradient_checkpointing_gives_same_gradients(index):
    model = _tiny_models()[index].eval()  # eval: dropout off, so both passes see the same function
    x = torch.randn(2, 3, 16, 16)

    def grads():
        model.zero_grad()
        _call(model, x).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    calls = []
    for module in model.modules():  # count the sub-modules that really went through checkpointing
        checkpoint = getattr(module, "_gradient_checkpointing_func", None)
        if checkpoint is not None and getattr(module, "gradient_checkpointing", False):
            module._gradient_checkpointing_func = lambda *args, _f=checkpoint, **kwargs: (calls.append(args[0]), _f(*args, **kwargs))[1]
    checkpointed = grads()
    # Every residual block and attention of each level (and each residual down/upsampler) once, and the middle block's
    # residual blocks after its first (diffusers' UNetMidBlock2D checkpoints those): N calls, one per such module.
    expected = [module for block in [*model.down_blocks, *getattr(model, "up_blocks", [])]
                for i, resnet in enumerate(block.resnets) for module in (resnet, *block.attentions[i:i + 1])]
    expected += [module for block in [*model.down_blocks, *getattr(model, "up_blocks", [])]
                 for module in [*getattr(block, "downsamplers", []), *getattr(block, "upsamplers", [])] if isinstance(module, ResnetBlock2D)]
    expected += list(model.mid_block.resnets[1:])
    assert len(calls) == len(expected) and {id(m) for m in calls} == {id(m) for m in expected}, (len(calls), len(expected))
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    model.disable_gradient_checkpointing()
    calls.clear()
    grads()
    assert calls == []  # off again: nothing checkpointed


def test_super_res_forward_keeps_the_parent_argument_order():
    torch.manual_seed(0)
    sr = ADMSuperResUNet2DModel(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                attention_downsample_factors=(2,), num_classes=10).eval()
    x, low_res, labels = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        positional = sr(x, 5, labels, low_res=low_res).sample
        keywords = sr(sample=x, timestep=5, class_labels=labels, low_res=low_res).sample
    torch.testing.assert_close(positional, keywords, rtol=0, atol=0)
    with pytest.raises(TypeError):
        sr(x, 5, labels, True, low_res)  # low_res only as a keyword
    with pytest.raises(ValueError, match="expected low_res images for the super-resolution model, got None"):
        sr(x, 5, labels)


def test_dropout_only_in_training():
    model = _tiny_models()[0]
    x = torch.randn(2, 3, 16, 16)
    model.train()
    assert not torch.equal(_call(model, x), _call(model, x))
    model.eval()
    assert torch.equal(_call(model, x), _call(model, x))


def test_a_readme_command_line_pastes_as_it_is():
    """guided-diffusion's README puts model, diffusion, classifier and sampling flags on one command line."""
    line = (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
        "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
        "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True "
        "--classifier_scale 1.0 --classifier_path models/64x64_classifier.pt --classifier_depth 4 "
        "--model_path models/64x64_diffusion.pt --batch_size 4 --num_samples 100 --timestep_respacing 250"
    )
    unet = unet_kwargs_from_flags(line)
    assert unet["model_channels"] == 192 and unet["num_res_blocks"] == 3 and unet["out_channels"] == 6
    classifier = classifier_kwargs_from_flags(line)
    assert classifier["num_res_blocks"] == 4 and classifier["channel_mult"] == (1, 2, 3, 4)
