"""The FID Inception-v3 in PyTorch: TensorFlow's 2015-12-05 ImageNet graph exactly as the originals' evaluator runs it.

The original evaluator (guided-diffusion ``evaluations/evaluator.py``) imports ``classify_image_graph_def.pb`` and
feeds NHWC float images in [0, 255] into its ``ExpandDims:0`` tensor. Inside the graph the images are resized to
299x299 with TensorFlow 1.x's bilinear resize (``align_corners=False``, no half-pixel centres) and scaled as
``(x - 128) / 128``. The evaluator reads three things from the graph, and this module gives the same three:

- ``pool_3``: the 2048-d global average of the last block (FID, precision, recall, and the Inception Score input);
- ``mixed_6/conv``: the ReLU output of the 1x1 branch of the fourth 17x17 block (``Mixed_6d``), of which the
  evaluator keeps the first 7 channels, flattened in NHWC order (17 * 17 * 7 = 2023 values, for sFID);
- ``softmax/logits/MatMul``: ``pool_3`` times the 2048x1008 classifier matrix, without the classifier's bias,
  whose softmax gives the Inception Score.

The graph differs from the paper's (and torchvision's) Inception-v3 in three places: its 3x3 average pools
exclude the zero padding from the average (TensorFlow's SAME pooling), the last block pools with a 3x3 max pool
instead of an average pool, and the classifier has 1008 outputs. Module names follow the PyTorch port of the
graph's weights (``pt_inception-2015-12-05-6726825d.pth``, the file pytorch-fid and torch-fidelity load), so that
file loads as it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..safe_loading import load_weights_only

INCEPTION_INPUT_SIZE = 299
POOL_FEATURES_DIM = 2048
# The original evaluator keeps the first 7 of mixed_6/conv's 192 channels at 17x17.
SPATIAL_CHANNELS_KEPT = 7
SPATIAL_SIZE = 17
SPATIAL_FEATURES_DIM = SPATIAL_SIZE * SPATIAL_SIZE * SPATIAL_CHANNELS_KEPT
NUM_INCEPTION_CLASSES = 1008

# Where the weights come from when no local file is given.
INCEPTION_WEIGHTS_ENV = "GUIDED_DIFFUSERS_INCEPTION_WEIGHTS"
INCEPTION_HUB_REPO_ID = "guided-diffusers/fid-inception-v3"
INCEPTION_HUB_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# The same file as published by pytorch-fid (the 2015-12-05 graph's weights ported to PyTorch).
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
# The TF graph's batch norm epsilon.
_BATCH_NORM_EPS = 1e-3


class InceptionWeightsUnavailableError(RuntimeError):
    """The FID Inception weights are neither in a local file nor obtainable from the Hub."""


class FIDInceptionFeatures(NamedTuple):
    """The evaluator's two feature tensors for a batch of images.

    Attributes:
        pool_features: ``pool_3``, shape ``(N, 2048)``.
        spatial_features: the first 7 channels of ``mixed_6/conv`` flattened in NHWC order, shape ``(N, 2023)``.
    """

    pool_features: torch.Tensor
    spatial_features: torch.Tensor


class ConvBatchNormReLU(nn.Module):
    """A convolution without bias, batch norm (eps 1e-3), ReLU: the graph's every ``conv`` node.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: ``(height, width)`` or a single size.
        stride: convolution stride.
        padding: symmetric zero padding ``(height, width)`` (the graph's SAME padding at stride 1, 0 for VALID).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BATCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _same_avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's SAME average pool divides by the number of real (unpadded) inputs under the window.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionBlock35(nn.Module):
    """A 35x35 block (``Mixed_5b/5c/5d``; the graph's ``mixed``, ``mixed_1``, ``mixed_2``).

    Branches, concatenated in this order: 1x1 (64); 1x1 (48) -> 5x5 (64); 1x1 (64) -> 3x3 (96) -> 3x3 (96);
    3x3 SAME average pool -> 1x1 (``pool_channels``).

    Args:
        in_channels: input channels (192, 256, 288).
        pool_channels: output channels of the pooling branch (32, 64, 64).
    """

    def __init__(self, in_channels: int, pool_channels: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBatchNormReLU(in_channels, 64, 1)
        self.branch5x5_1 = ConvBatchNormReLU(in_channels, 48, 1)
        self.branch5x5_2 = ConvBatchNormReLU(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBatchNormReLU(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBatchNormReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBatchNormReLU(96, 96, 3, padding=1)
        self.branch_pool = ConvBatchNormReLU(in_channels, pool_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_same_avg_pool_3x3(x)),
            ],
            dim=1,
        )


class InceptionReduction35To17(nn.Module):
    """The 35x35 -> 17x17 reduction (``Mixed_6a``; the graph's ``mixed_3``), 288 -> 768 channels.

    Branches: 3x3 stride 2 (384); 1x1 (64) -> 3x3 (96) -> 3x3 stride 2 (96); 3x3 stride 2 max pool.

    Args:
        in_channels: input channels (288).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBatchNormReLU(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBatchNormReLU(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBatchNormReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBatchNormReLU(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            dim=1,
        )


class InceptionBlock17(nn.Module):
    """A 17x17 block with factorised 7x7 convolutions (``Mixed_6b..6e``; the graph's ``mixed_4..mixed_7``).

    Branches: 1x1 (192); 1x1 (c7) -> 1x7 (c7) -> 7x1 (192); 1x1 (c7) -> 7x1 -> 1x7 -> 7x1 (c7) -> 1x7 (192);
    3x3 SAME average pool -> 1x1 (192). The first branch's output is the graph's ``mixed_N/conv`` node.

    Args:
        in_channels: input channels (768).
        channels_7x7: width of the factorised 7x7 branches (128, 160, 160, 192).
    """

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBatchNormReLU(in_channels, 192, 1)
        self.branch7x7_1 = ConvBatchNormReLU(in_channels, c7, 1)
        self.branch7x7_2 = ConvBatchNormReLU(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBatchNormReLU(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBatchNormReLU(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBatchNormReLU(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBatchNormReLU(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBatchNormReLU(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBatchNormReLU(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBatchNormReLU(in_channels, 192, 1)

    def forward_with_first_branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output and its 1x1 branch alone (the graph's ``mixed_N/conv``), computed once."""
        first_branch = self.branch1x1(x)
        factorised = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double_factorised = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            double_factorised = conv(double_factorised)
        double_factorised = self.branch7x7dbl_5(double_factorised)
        pooled = self.branch_pool(_same_avg_pool_3x3(x))
        return torch.cat([first_branch, factorised, double_factorised, pooled], dim=1), first_branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_first_branch(x)[0]


class InceptionReduction17To8(nn.Module):
    """The 17x17 -> 8x8 reduction (``Mixed_7a``; the graph's ``mixed_8``), 768 -> 1280 channels.

    Branches: 1x1 (192) -> 3x3 stride 2 (320); 1x1 (192) -> 1x7 -> 7x1 -> 3x3 stride 2 (192);
    3x3 stride 2 max pool.

    Args:
        in_channels: input channels (768).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBatchNormReLU(in_channels, 192, 1)
        self.branch3x3_2 = ConvBatchNormReLU(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBatchNormReLU(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBatchNormReLU(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBatchNormReLU(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBatchNormReLU(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3_2(self.branch3x3_1(x)),
                self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            dim=1,
        )


class InceptionBlock8(nn.Module):
    """An 8x8 block with split 1x3/3x1 outputs (``Mixed_7b``, ``Mixed_7c``; the graph's ``mixed_9``, ``mixed_10``).

    Branches: 1x1 (320); 1x1 (384) -> [1x3, 3x1] (2 x 384); 1x1 (448) -> 3x3 (384) -> [1x3, 3x1] (2 x 384);
    3x3 pool -> 1x1 (192). 1280 or 2048 in, 2048 out.

    Args:
        in_channels: input channels (1280, 2048).
        pool: ``"avg"`` (SAME average pool, ``Mixed_7b``) or ``"max"`` (the graph's ``mixed_10`` max-pools here,
            unlike the paper).
    """

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"expected pool 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBatchNormReLU(in_channels, 320, 1)
        self.branch3x3_1 = ConvBatchNormReLU(in_channels, 384, 1)
        self.branch3x3_2a = ConvBatchNormReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBatchNormReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBatchNormReLU(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBatchNormReLU(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBatchNormReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBatchNormReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBatchNormReLU(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "avg":
            pooled = _same_avg_pool_3x3(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(split),
                self.branch3x3_2b(split),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            dim=1,
        )


def resize_bilinear_like_tensorflow1(images: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` (``align_corners=False``, no half-pixel centres), as in the 2015 graph.

    Output pixel ``i`` samples the input at ``i * in_size / size`` (float32), between the floor index and the next
    one (clamped to the last), interpolating along width first, then height, in TensorFlow's order of operations.
    This is not ``F.interpolate(..., align_corners=False)``, which samples at half-pixel centres.

    Args:
        images: float ``(N, C, H, W)``.
        size: output height and width.

    Returns:
        float ``(N, C, size, size)``.
    """
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images

    def sample_points(in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size / size, dtype=torch.float32)
        position = torch.arange(size, dtype=torch.float32) * scale
        low = position.floor()
        high = (low + 1).clamp(max=in_size - 1)
        return low.long().to(images.device), high.long().to(images.device), (position - low).to(images)

    y_low, y_high, y_frac = sample_points(height)
    x_low, x_high, x_frac = sample_points(width)
    top_rows, bottom_rows = images.index_select(2, y_low), images.index_select(2, y_high)
    top_left, top_right = top_rows.index_select(3, x_low), top_rows.index_select(3, x_high)
    bottom_left, bottom_right = bottom_rows.index_select(3, x_low), bottom_rows.index_select(3, x_high)
    top = top_left + (top_right - top_left) * x_frac
    bottom = bottom_left + (bottom_right - bottom_left) * x_frac
    return top + (bottom - top) * y_frac[:, None]


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 feature network (TensorFlow's 2015-12-05 graph) returning the evaluator's features.

    Build it with weights through :func:`load_fid_inception` (the standard FID weights) or
    :func:`random_fid_inception` (seeded random weights, for tests and smoke runs).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBatchNormReLU(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBatchNormReLU(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBatchNormReLU(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBatchNormReLU(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBatchNormReLU(80, 192, 3)
        self.Mixed_5b = InceptionBlock35(192, pool_channels=32)
        self.Mixed_5c = InceptionBlock35(256, pool_channels=64)
        self.Mixed_5d = InceptionBlock35(288, pool_channels=64)
        self.Mixed_6a = InceptionReduction35To17(288)
        self.Mixed_6b = InceptionBlock17(768, channels_7x7=128)
        self.Mixed_6c = InceptionBlock17(768, channels_7x7=160)
        self.Mixed_6d = InceptionBlock17(768, channels_7x7=160)
        self.Mixed_6e = InceptionBlock17(768, channels_7x7=192)
        self.Mixed_7a = InceptionReduction17To8(768)
        self.Mixed_7b = InceptionBlock8(1280, pool="avg")
        self.Mixed_7c = InceptionBlock8(2048, pool="max")
        # Kept with its bias for the weights file; the evaluator's Inception Score uses the matrix alone.
        self.fc = nn.Linear(POOL_FEATURES_DIM, NUM_INCEPTION_CLASSES)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The graph's input path: pixel values in [0, 255] -> 299x299 TF1 bilinear resize -> ``(x - 128) / 128``.

        Args:
            images: ``(N, 3, H, W)`` uint8 or float with values in [0, 255].

        Returns:
            float32 ``(N, 3, 299, 299)`` network input.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        images = images.to(torch.float32)
        return (resize_bilinear_like_tensorflow1(images, INCEPTION_INPUT_SIZE) - 128.0) / 128.0

    def forward(self, images: torch.Tensor) -> FIDInceptionFeatures:
        """Compute ``pool_3`` and the kept ``mixed_6/conv`` features.

        Args:
            images: ``(N, 3, H, W)`` uint8 or float with values in [0, 255] (any H, W; resized to 299).

        Returns:
            :class:`FIDInceptionFeatures` with float32 ``(N, 2048)`` and ``(N, 2023)`` tensors.
        """
        x = self.preprocess(images)
        for stem_layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3):
            x = stem_layer(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        x, mixed_6_conv = self.Mixed_6d.forward_with_first_branch(x)
        for block in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool_features = x.mean(dim=(2, 3))
        # NHWC flattening, as the evaluator reshapes the TF tensor (precomputed mu_s/sigma_s use this order).
        spatial = mixed_6_conv[:, :SPATIAL_CHANNELS_KEPT].permute(0, 2, 3, 1)
        return FIDInceptionFeatures(pool_features, spatial.reshape(spatial.shape[0], -1))

    def class_logits(self, pool_features: torch.Tensor) -> torch.Tensor:
        """``softmax/logits/MatMul``: ``pool_3`` times the classifier matrix, without bias (the evaluator's IS input).

        Args:
            pool_features: ``(N, 2048)``.

        Returns:
            ``(N, 1008)`` logits.
        """
        return F.linear(pool_features.to(self.fc.weight), self.fc.weight)


def random_fid_inception(seed: int = 0) -> FIDInceptionV3:
    """A :class:`FIDInceptionV3` with seeded random weights that keep activations at unit scale (no download).

    Convolutions get He-normal weights (fan-in, ReLU gain), batch norms are identities, the classifier gets
    ``N(0, 1/2048)``; features then stay O(1) through the network, so metrics on them are well conditioned.

    Args:
        seed: seed of a private generator (the global RNG is left alone).

    Returns:
        the network in eval mode, on CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    model = FIDInceptionV3()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
        model.fc.weight.normal_(0.0, POOL_FEATURES_DIM**-0.5, generator=generator)
        model.fc.bias.zero_()
    return model.eval()


def resolve_inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """Find the FID Inception weights file: the given path, else ``$GUIDED_DIFFUSERS_INCEPTION_WEIGHTS``, else the Hub.

    The Hub file is ``INCEPTION_HUB_FILENAME`` in the model repo ``INCEPTION_HUB_REPO_ID``, fetched once into the
    Hugging Face cache by ``huggingface_hub`` (offline, ``HF_HUB_OFFLINE=1``, only the cache is looked at).

    Args:
        weights_path: a local ``.pth``/``.pt``/``.safetensors`` file, or None.

    Returns:
        the path of an existing weights file.

    Raises:
        FileNotFoundError: a path was given (argument or environment variable) and no file is there.
        InceptionWeightsUnavailableError: no path was given and the Hub file is neither cached nor downloadable.
    """
    source = "the given path"
    if weights_path is None and os.environ.get(INCEPTION_WEIGHTS_ENV):
        weights_path, source = os.environ[INCEPTION_WEIGHTS_ENV], f"${INCEPTION_WEIGHTS_ENV}"
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"expected the FID Inception weights file at {str(path)!r} ({source}), no such file"
            )
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=INCEPTION_HUB_REPO_ID, filename=INCEPTION_HUB_FILENAME))
    except Exception as error:  # noqa: BLE001 - offline, missing repo, network: all mean "not available"
        raise InceptionWeightsUnavailableError(
            f"FID Inception weights unavailable: no local file given (--inception_weights or ${INCEPTION_WEIGHTS_ENV}) "
            f"and {INCEPTION_HUB_REPO_ID}/{INCEPTION_HUB_FILENAME} is not in the Hub cache and could not be downloaded "
            f"({type(error).__name__}); download {INCEPTION_WEIGHTS_URL} and pass its path"
        ) from error


def load_inception_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read FID Inception weights from a ``.safetensors`` file or a PyTorch state dict (``weights_only=True``).

    Args:
        path: the weights file.

    Returns:
        the state dict, ``num_batches_tracked`` counters dropped (they do not affect inference).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state_dict = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - re-raised with what was expected
            raise ValueError(f"expected FID Inception weights at {str(path)!r}, could not read them: {error}") from error
    else:
        state_dict = load_weights_only(path, "FID Inception weights")
    if not isinstance(state_dict, Mapping) or not all(torch.is_tensor(value) for value in state_dict.values()):
        raise ValueError(f"expected a state dict of tensors at {str(path)!r}, got {type(state_dict).__name__}")
    return {key: value for key, value in state_dict.items() if not key.endswith("num_batches_tracked")}


def load_fid_inception(
    weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> FIDInceptionV3:
    """The FID Inception with the standard weights (see :func:`resolve_inception_weights` for where from).

    Args:
        weights_path: a local weights file; None looks at ``$GUIDED_DIFFUSERS_INCEPTION_WEIGHTS``, then the Hub.
        device: where to put the network.

    Returns:
        the network in eval mode, float32, on ``device``.

    Raises:
        FileNotFoundError, InceptionWeightsUnavailableError: see :func:`resolve_inception_weights`.
        ValueError: the file is not a state dict of this network (every missing, unexpected or misshapen key listed).
    """
    path = resolve_inception_weights(weights_path)
    state_dict = load_inception_state_dict(path)
    model = FIDInceptionV3()
    expected = {
        key: value.shape for key, value in model.state_dict().items() if not key.endswith("num_batches_tracked")
    }
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshapen = sorted(
        f"{key} {tuple(state_dict[key].shape)} != {tuple(shape)}"
        for key, shape in expected.items()
        if key in state_dict and state_dict[key].shape != shape
    )
    if missing or unexpected or misshapen:
        raise ValueError(
            f"expected FID Inception weights at {str(path)!r}, got missing keys {missing}, "
            f"unexpected keys {unexpected}, shape mismatches {misshapen}"
        )
    model.load_state_dict(state_dict, strict=False)
    return model.to(device=device, dtype=torch.float32).eval()
