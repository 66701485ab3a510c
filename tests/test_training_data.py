"""Training data: folders labelled the originals' way, `datasets` sources, the originals' preprocessing, the order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusers.data import (
    EpochShuffledBatchSampler,
    TrainingImageDataset,
    center_crop_array,
    find_unreadable_images,
    images_from_dataset,
    images_from_folder,
    random_crop_array,
    split_held_out,
)


def _image(size=(10, 12), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _folder(root, names, size=(10, 12)):
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        _image(size, k).save(root / name)
    return root


def test_folder_labels_are_file_name_prefixes_in_sorted_order(tmp_path):
    folder = _folder(tmp_path / "data", ["dog_1.png", "cat_2.jpg", "cat_x_3.png"])
    _folder(folder / "sub", ["bird_9.webp"])
    (folder / "notes.txt").write_text("not an image")
    images = images_from_folder(folder)
    assert images.id2label == {0: "bird", 1: "cat", 2: "dog"}
    paths = [row["path"] for row in images.dataset["image"]]
    labels = images.dataset["label"]
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["cat_2.jpg", "cat_x_3.png", "dog_1.png", "bird_9.webp"]
    assert labels == [1, 1, 2, 0]
    held = images_from_folder(_folder(tmp_path / "val", ["dog_5.png"]), class_names=["bird", "cat", "dog"])
    assert held.dataset["label"] == [2]


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="expected an image folder, got .* \\(no such folder\\)"):
        images_from_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="expected image files .* found none"):
        images_from_folder(tmp_path / "empty")
    folder = _folder(tmp_path / "val", ["wolf_1.png"])
    with pytest.raises(ValueError, match="unknown classes \\['wolf'\\]"):
        images_from_folder(folder, class_names=["cat", "dog"])


def test_unreadable_images_are_found_by_header(tmp_path):
    folder = _folder(tmp_path / "data", ["a_1.png", "a_2.png"])
    (folder / "b_3.png").write_bytes(b"not a png at all")
    (folder / "b_4.jpg").write_bytes(b"")
    images = images_from_folder(folder)
    problems = find_unreadable_images(images, range(len(images)))
    assert len(problems) == 2 and "b_3.png" in problems[0] and "b_4.jpg" in problems[1]
    with pytest.raises(ValueError, match="could not read training image .*b_3.png"):
        TrainingImageDataset(images, 8)[2]


def _reference_center_crop(image, size):
    # Written out from the originals' description: BOX halving, bicubic resize of the short side, centre crop.
    while min(image.size) >= 2 * size:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), resample=Image.BICUBIC)
    array = np.array(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


@pytest.mark.parametrize("size", [(40, 30), (9, 17), (64, 64)])
def test_center_crop_matches_the_originals_steps(size):
    image = _image(size)
    np.testing.assert_array_equal(center_crop_array(image, 8), _reference_center_crop(image, 8))
    assert center_crop_array(image, 8).shape == (8, 8, 3)


def test_random_crop_and_flip_are_deterministic_per_epoch_and_index(tmp_path):
    rng = np.random.default_rng(0)
    crops = {random_crop_array(_image((40, 30)), 16, rng).shape for _ in range(5)}
    assert crops == {(16, 16, 3)}
    images = images_from_folder(_folder(tmp_path / "data", [f"c_{k}.png" for k in range(4)], size=(20, 16)))
    dataset = TrainingImageDataset(images, 8, random_crop=True, random_flip=True, seed=3)
    first = dataset[(0, 1)]
    torch.testing.assert_close(first["pixel_values"], dataset[(0, 1)]["pixel_values"])
    assert first["pixel_values"].shape == (3, 8, 8) and first["pixel_values"].dtype == torch.float32
    assert -1.0 <= first["pixel_values"].min() and first["pixel_values"].max() <= 1.0
    assert int(first["class_labels"]) == 0
    epochs = [dataset[(epoch, 1)]["pixel_values"] for epoch in range(8)]
    assert any(not torch.equal(epochs[0], other) for other in epochs[1:])  # augmentations change with the epoch
    plain = TrainingImageDataset(images, 8)[1]["pixel_values"]
    expected = torch.from_numpy(center_crop_array(Image.open(images.dataset[1]["image"]["path"]).convert("RGB"), 8))
    torch.testing.assert_close(plain, expected.float().permute(2, 0, 1) / 127.5 - 1)


def test_dataset_sources_save_to_disk_imagefolder_and_string_labels(tmp_path):
    import datasets

    rows = {"img": [_image((8, 8), k) for k in range(4)], "name": ["b", "a", "b", "a"]}
    datasets.Dataset.from_dict(rows, features=datasets.Features({"img": datasets.Image(), "name": datasets.Value("string")})).save_to_disk(tmp_path / "saved")
    images = images_from_dataset(str(tmp_path / "saved"), image_column="img", label_column="name")
    assert images.id2label == {0: "a", 1: "b"} and images.dataset["label"] == [1, 0, 1, 0]
    assert images.hub_dataset_id is None
    assert TrainingImageDataset(images, 8)[0]["pixel_values"].shape == (3, 8, 8)
    grey = TrainingImageDataset(images, 8, channels=1)[0]["pixel_values"]
    expected = torch.from_numpy(center_crop_array(rows["img"][0].convert("L"), 8)).float()[None] / 127.5 - 1
    torch.testing.assert_close(grey, expected)  # one channel: the image read as grey (PIL's L), not a slice of RGB
    with pytest.raises(ValueError, match="expected 1 \\(grey\\) or 3 \\(RGB\\) image channels, got 2"):
        TrainingImageDataset(images, 8, channels=2)

    for label in ("cat", "dog"):
        _folder(tmp_path / "imagefolder" / "train" / label, [f"{label}{k}.png" for k in range(2)])
    images = images_from_dataset(str(tmp_path / "imagefolder"), cache_dir=str(tmp_path / "cache"))
    assert images.id2label == {0: "cat", 1: "dog"} and sorted(images.dataset["label"]) == [0, 0, 1, 1]

    with pytest.raises(ValueError, match="expected an image column 'image' \\(--image_column\\)"):
        images_from_dataset(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="expected a label column 'label' \\(--label_column\\) for class-conditional training"):
        images_from_dataset(str(tmp_path / "saved"), image_column="img", require_labels=True)
    unlabelled = images_from_dataset(str(tmp_path / "saved"), image_column="img")
    assert "label" not in unlabelled.dataset.column_names and unlabelled.id2label is None


def test_held_out_split_is_seeded_and_disjoint(tmp_path):
    images = images_from_folder(_folder(tmp_path / "data", [f"c{k % 2}_{k}.png" for k in range(10)], size=(4, 4)))
    train, held = split_held_out(images, 0.2, seed=1)
    again, _ = split_held_out(images, 0.2, seed=1)
    paths = lambda part: [row["path"] for row in part.dataset["image"]]  # noqa: E731
    assert len(train) == 8 and len(held) == 2 and paths(train) == paths(again)
    assert not set(paths(train)) & set(paths(held))
    with pytest.raises(ValueError, match="held-out fraction in \\(0, 1\\)"):
        split_held_out(images, 1.5, seed=0)


def test_batch_sampler_shards_epochs_and_resumes_mid_stream():
    def take(sampler, count):
        stream = iter(sampler)
        return [next(stream) for _ in range(count)]

    one = take(EpochShuffledBatchSampler(10, 2, num_processes=2, process_index=0, seed=5), 6)
    two = take(EpochShuffledBatchSampler(10, 2, num_processes=2, process_index=1, seed=5), 6)
    assert EpochShuffledBatchSampler(10, 2, num_processes=2).batches_per_epoch == 2  # 10 // 4, the rest dropped
    for a, b in zip(one, two):
        assert a[0][0] == b[0][0] and not {i for _, i in a} & {i for _, i in b}  # same epoch, disjoint examples
    assert [batch[0][0] for batch in one] == [0, 0, 1, 1, 2, 2]
    assert take(EpochShuffledBatchSampler(10, 2, num_processes=2, process_index=0, seed=5, start_batch=3), 3) == one[3:]
    with pytest.raises(ValueError, match="expected at least train_batch_size x processes = 4 x 2 = 8 training images, got 5"):
        EpochShuffledBatchSampler(5, 4, num_processes=2)


# -- class-per-subfolder layouts ------------------------------------------------------------------------------------------


def _labels(images):
    return {row["path"].split("data/", 1)[1]: images.id2label[label] for row, label in zip(images.dataset["image"], images.dataset["label"])}


def test_class_subfolders_label_their_images_when_no_image_is_at_the_top(tmp_path):
    folder = tmp_path / "data"
    _folder(folder / "dog", ["001.png", "IMG2.jpg"])
    _folder(folder / "fox", ["003.png"])
    _folder(folder / "fox" / "more", ["004.png"])
    images = images_from_folder(folder)
    assert images.id2label == {0: "dog", 1: "fox"}
    assert _labels(images) == {"dog/001.png": "dog", "dog/IMG2.jpg": "dog", "fox/003.png": "fox", "fox/more/004.png": "fox"}


def test_agreeing_prefixes_in_class_subfolders_are_the_imagenet_layout(tmp_path):
    folder = tmp_path / "data"
    _folder(folder / "n01440764", ["n01440764_10026.JPEG"])
    _folder(folder / "n01443537", ["n01443537_2.JPEG"])
    assert images_from_folder(folder).id2label == {0: "n01440764", 1: "n01443537"}


def test_prefixes_that_disagree_with_subfolders_stop_with_both_named(tmp_path):
    folder = tmp_path / "data"
    _folder(folder / "dog", ["dog_1.png", "cat_2.png"])
    _folder(folder / "fox", ["fox_3.png"])
    with pytest.raises(ValueError) as raised:
        images_from_folder(folder)
    message = str(raised.value)
    assert "got 1 that disagree, e.g. 'dog/cat_2.png': subfolder 'dog', file-name prefix 'cat'" in message
    assert "--label_from folder or --label_from filename" in message and "\n" not in message
    # Either source on request; the labels are not checked when they are not used.
    assert images_from_folder(folder, label_from="folder").id2label == {0: "dog", 1: "fox"}
    assert images_from_folder(folder, label_from="filename").id2label == {0: "cat", 1: "dog", 2: "fox"}
    assert images_from_folder(folder, check_agreement=False).id2label == {0: "dog", 1: "fox"}


def test_an_image_at_the_top_makes_it_the_originals_layout_and_refuses_label_from_folder(tmp_path):
    folder = _folder(tmp_path / "data", ["cat_1.png"])
    _folder(folder / "dog", ["fox_2.png"])
    assert images_from_folder(folder).id2label == {0: "cat", 1: "fox"}
    with pytest.raises(ValueError, match="expected every image in a class subfolder of .* got 1 at its top level, e.g. 'cat_1.png'"):
        images_from_folder(folder, label_from="folder")


def test_a_validation_folder_in_subfolders_takes_the_training_classes(tmp_path):
    _folder(tmp_path / "data" / "fox", ["1.png"])
    images = images_from_folder(tmp_path / "data", class_names=["dog", "fox"])
    assert images.dataset["label"] == [1]


def test_a_png_cut_short_after_a_valid_header_is_found_by_the_scan(tmp_path):
    folder = _folder(tmp_path / "data", ["cat_1.png"], size=(32, 32))
    whole = (folder / "cat_1.png").read_bytes()
    (folder / "cat_2.png").write_bytes(whole[: len(whole) // 2])
    with Image.open(folder / "cat_2.png") as header_only:  # the header alone reads fine
        assert header_only.size == (32, 32)
    images = images_from_folder(folder)
    problems = find_unreadable_images(images, range(len(images)))
    assert len(problems) == 1 and problems[0].startswith(str(folder / "cat_2.png"))


# -- folder links --------------------------------------------------------------------------------------------------------


def test_a_folder_link_back_into_the_tree_is_read_once_at_its_own_place(tmp_path, caplog):
    folder = tmp_path / "data"
    _folder(folder / "cat", ["1.png", "2.png"])
    _folder(folder / "dog", ["3.png"])
    (folder / "cat" / "loop").symlink_to("..")  # a loop: data/cat/loop/dog/3.png would be a dog labelled cat
    with caplog.at_level("WARNING", logger="guided_diffusers.data"):
        images = images_from_folder(folder)
    assert _labels(images) == {"cat/1.png": "cat", "cat/2.png": "cat", "dog/3.png": "dog"}
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "not following 1 folder link(s)" in warnings[0] and "'cat/loop'" in warnings[0]
    assert "\n" not in warnings[0]
    # Two loops (each would multiply the other's paths) and a second name for a class folder: still each image once.
    (folder / "dog" / "up").symlink_to(folder)
    (folder / "a_cat").symlink_to("cat")  # sorted before cat: followed, it would name cat's images a_cat
    assert _labels(images_from_folder(folder)) == {"cat/1.png": "cat", "cat/2.png": "cat", "dog/3.png": "dog"}
    assert _labels(images_from_folder(folder, label_from="filename")) == {"cat/1.png": "1.png", "cat/2.png": "2.png", "dog/3.png": "3.png"}


def test_a_link_to_a_folder_elsewhere_is_followed_once(tmp_path):
    elsewhere = _folder(tmp_path / "foxes", ["4.png"])
    (elsewhere / "self").symlink_to(".")  # a loop outside the tree
    folder = tmp_path / "data"
    _folder(folder / "cat", ["1.png"])
    (folder / "fox").symlink_to(elsewhere)  # how a dataset is often put together from folders kept elsewhere
    assert _labels(images_from_folder(folder)) == {"cat/1.png": "cat", "fox/4.png": "fox"}
    (elsewhere / "above").symlink_to(tmp_path)  # above the tree: it holds the tree itself
    assert _labels(images_from_folder(folder)) == {"cat/1.png": "cat", "fox/4.png": "fox"}


def test_the_reference_writer_reads_a_looping_folder_once(tmp_path):
    from guided_diffusers.evaluation.image_data import open_evaluation_images

    folder = _folder(tmp_path / "data", ["cat_1.png", "cat_2.png", "dog_3.png"])
    (folder / "loop").symlink_to(".")
    assert len(open_evaluation_images(folder, image_size=8)) == 3
    (folder / "again").symlink_to(".")
    assert len(open_evaluation_images(folder, image_size=8)) == 3
