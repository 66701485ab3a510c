"""The web demo's uploads without a browser: an image above MAX_UPLOAD_PIXELS is refused in one line from its header,
before anything decodes it (a 9000 x 9000 upload took about 1 GB as Gradio's decoded copies; issue 23); a normal one
passes through the editor as before."""

import struct
import zlib

import gradio as gr
import numpy as np
import pytest
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData
from PIL import Image, ImageFile

from guided_diffusers.app import web
from guided_diffusers.app.inpaint import MAX_UPLOAD_PIXELS, check_upload, inpaint

TOO_LARGE = "expected an image of at most 16.8 megapixels, got 9000 x 9000 (81.0 megapixels): scale it down before uploading"


def _grey_png(path, width, height):
    """A valid grey PNG of any size (every pixel 0), written row by row: the test never holds its pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(1)
    row = bytes(width + 1)  # the filter byte, then the row
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    return _grey_png(tmp_path_factory.mktemp("uploads") / "huge.png", 9000, 9000)


@pytest.fixture
def no_decoding(monkeypatch):
    """Decoding an image above the limit fails the test."""
    decode = ImageFile.ImageFile.load

    def load(self):
        if self.size[0] * self.size[1] > MAX_UPLOAD_PIXELS:
            raise AssertionError(f"an image of {self.size} was decoded")
        return decode(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_an_oversized_upload_is_refused_from_its_header(huge, no_decoding):
    assert MAX_UPLOAD_PIXELS == 4096 * 4096
    for upload in (str(huge), huge.read_bytes()):
        with pytest.raises(ValueError) as error:
            check_upload(upload)
        assert str(error.value).startswith(TOO_LARGE) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="expected an image file .*, got one PIL cannot read"):
        check_upload(b"not an image")


def test_the_editor_refuses_an_oversized_upload_before_gradio_decodes_it(huge, tmp_path, no_decoding):
    editor = web._upload_editor(type="pil", layers=False)
    small = _grey_png(tmp_path / "small.png", 64, 48)
    for part in ("background", "layers", "composite"):  # the page sends each; a huge drawing layer alike
        files = dict(background=FileData(path=str(small)), layers=[], composite=None)
        files[part] = [FileData(path=str(huge))] if part == "layers" else FileData(path=str(huge))
        with pytest.raises(gr.Error) as error:
            editor.preprocess(EditorData(**files))
        assert str(error.value.message).startswith(TOO_LARGE), error.value.message


def test_the_editor_passes_a_normal_upload_on(tmp_path):
    editor = web._upload_editor(type="pil", layers=False)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    stroke = tmp_path / "stroke.png"
    Image.new("RGBA", (64, 48)).save(stroke)
    value = editor.preprocess(EditorData(background=FileData(path=str(photo)), layers=[FileData(path=str(stroke))], composite=None))
    assert value["background"].size == (64, 48) and [layer.size for layer in value["layers"]] == [(64, 48)]
    np.testing.assert_array_equal(np.asarray(value["background"].convert("RGB")), np.asarray(Image.open(photo)))


def test_inpaint_refuses_a_lazily_opened_oversized_image_before_decoding_it(huge, no_decoding):
    with Image.open(huge) as background, pytest.raises(ValueError) as error:
        inpaint(None, background, [], guidance=None, steps=2, seed=0)
    assert str(error.value).startswith(TOO_LARGE)
