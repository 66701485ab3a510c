"""--write_reference from an image folder with a link back into it: each image is stored once (the folder is read
through data.py, as training reads it). One Inception pass with seeded random weights on CPU."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file


@pytest.mark.slow  # an Inception pass on CPU
def test_a_reference_batch_from_a_looping_folder_stores_each_image_once(tmp_path):
    from guided_diffusers.cli import evaluate
    from guided_diffusers.evaluation import random_fid_inception

    model = random_fid_inception(seed=0)
    weights = tmp_path / "random_inception.safetensors"
    save_file({key: value for key, value in model.state_dict().items() if not key.endswith("num_batches_tracked")}, str(weights))
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"img_{index}.png")
    (folder / "loop").symlink_to(".")  # read 41 levels deep, it stored every image 41 times
    out = tmp_path / "ref.npz"
    argv = ["--write_reference", str(out), "--source", str(folder), "--image_size", "32", "--batch_size", "8",
            "--inception_weights", str(weights), "--no_progress"]  # fmt: skip
    assert evaluate.main(argv) == 0
    with np.load(out, allow_pickle=False) as written:
        np.testing.assert_array_equal(written["arr_0"], pixels)  # every image once, in source order
