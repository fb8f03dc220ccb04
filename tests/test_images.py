"""Input hygiene: every way a photo can arrive gives the same upright 8-bit RGB pixels, or a clear error."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from essence.faces import images
from essence.errors import EssenceError, ImageInputError


@pytest.fixture(scope="module")
def portrait(pictures) -> np.ndarray:
    """A JPEG photo of 384 x 336 pixels (tests/pictures.py)."""
    return np.asarray(Image.open(pictures.portrait).convert("RGB"))


def pixels(source, **kwargs) -> np.ndarray:
    return np.asarray(images.load_photo(source, **kwargs).image)


# ----------------------------------------------------------------------------- wrappings


def test_path_pil_array_and_comfy_tensor_give_the_same_photo(pictures, portrait: np.ndarray) -> None:
    path = pictures.portrait
    from_path = images.load_photo(path)
    from_str = images.load_photo(str(path))
    from_pil = images.load_photo(Image.open(path))
    from_array = images.load_photo(portrait)
    from_tensor = images.load_photo(torch.from_numpy(portrait.copy()).float()[None] / 255.0)
    for photo in (from_str, from_pil, from_array, from_tensor):
        assert np.array_equal(np.asarray(photo.image), portrait)
        assert photo.sha256 == from_path.sha256  # the cache key does not depend on the wrapping
    assert from_path.image.mode == "RGB" and from_path.size == (384, 336) and from_path.scale == 1
    assert from_path.name == "portrait.jpg" and from_pil.name == "portrait.jpg"
    assert len(from_path.file_sha256) == 64 and from_array.file_sha256 is None


def test_a_comfy_batch_is_several_photos(portrait: np.ndarray) -> None:
    batch = torch.from_numpy(np.stack([portrait, portrait[:, ::-1]]).copy()).float() / 255.0
    photos = images.load_photos([batch, Image.fromarray(portrait)])
    assert len(photos) == 3
    assert np.array_equal(np.asarray(photos[1].image), portrait[:, ::-1])
    assert photos[0].sha256 == photos[2].sha256 != photos[1].sha256


def test_tensor_conventions_round_trip(portrait: np.ndarray) -> None:
    image = Image.fromarray(portrait)
    comfy = images.pil_to_comfy([image, image])
    assert comfy.shape == (2, 336, 384, 3) and comfy.dtype == torch.float32
    assert 0.0 <= comfy.min() and comfy.max() <= 1.0
    assert np.array_equal(np.asarray(images.comfy_to_pil(comfy)[1]), portrait)
    model = images.pil_to_model(image)
    assert model.shape == (1, 3, 336, 384) and -1.0 <= model.min() and model.max() <= 1.0
    # e4e's ToTensor + Normalize(0.5, 0.5): x / 255 * 2 - 1
    assert torch.allclose(model[0, :, 10, 20], torch.tensor(portrait[10, 20] / 127.5 - 1.0, dtype=torch.float32),
                          atol=1e-6)
    assert np.array_equal(np.asarray(images.model_to_pil(model)[0]), portrait)
    assert images.pil_to_model(image, size=256).shape == (1, 3, 256, 256)


def test_bad_arrays_are_refused_clearly() -> None:
    with pytest.raises(ImageInputError, match="Channels must come last"):
        images.load_photo(torch.rand(1, 3, 64, 64))
    with pytest.raises(ImageInputError, match="NaN"):
        images.load_photo(np.full((8, 8, 3), np.nan, dtype=np.float32))
    with pytest.raises(ImageInputError, match="cannot read an image from a dict"):
        images.load_photo({"not": "an image"})


# ----------------------------------------------------------------------------- modes


def test_opaque_rgba_equals_rgb_and_transparency_is_composited_over_white(portrait: np.ndarray) -> None:
    rgba = np.dstack([portrait, np.full(portrait.shape[:2], 255, np.uint8)])
    assert np.array_equal(pixels(Image.fromarray(rgba, "RGBA")), portrait)
    assert np.array_equal(pixels(rgba), portrait)
    rgba[0, 0, 3] = 0
    rgba[0, 1, 3] = 128
    out = pixels(Image.fromarray(rgba, "RGBA"))
    assert tuple(out[0, 0]) == (255, 255, 255)
    expected = np.rint(portrait[0, 1].astype(float) * 128 / 255 + 255 * 127 / 255)
    assert np.abs(out[0, 1].astype(int) - expected).max() <= 1
    assert tuple(pixels(Image.fromarray(rgba, "RGBA"), background=(0, 0, 0))[0, 0]) == (0, 0, 0)


def test_greyscale_and_16_bit_photos_equal_the_8_bit_grey(portrait: np.ndarray, tmp_path: Path) -> None:
    grey = np.asarray(Image.fromarray(portrait).convert("L"))
    as_rgb = np.repeat(grey[..., None], 3, axis=2)
    sixteen = grey.astype(np.uint16) * 257
    Image.fromarray(sixteen).save(tmp_path / "grey16.png")
    Image.fromarray(sixteen).save(tmp_path / "grey16.tif")
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    for source in (tmp_path / "grey8.png", tmp_path / "grey16.png", tmp_path / "grey16.tif", sixteen,
                   Image.fromarray(sixteen.astype(np.int32), "I"), Image.fromarray(grey).convert("LA")):
        assert np.array_equal(pixels(source), as_rgb), source


def test_16_bit_rgb_png_equals_8_bit(portrait: np.ndarray, tmp_path: Path) -> None:
    crop = portrait[:64, :80]
    path = tmp_path / "rgb48.png"
    path.write_bytes(_png_rgb16(crop.astype(np.uint16) * 257))
    assert np.array_equal(pixels(path), crop)


def _png_rgb16(values: np.ndarray) -> bytes:
    """A minimal 48-bit RGB PNG (Pillow cannot write one)."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_palette_cmyk_and_bilevel_photos_become_rgb(portrait: np.ndarray) -> None:
    image = Image.fromarray(portrait)
    palette = image.quantize(64)
    assert np.array_equal(pixels(palette), np.asarray(palette.convert("RGB")))
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    expected = np.asarray(palette.convert("RGB")).copy()
    expected[np.asarray(palette) == 0] = 255
    assert np.array_equal(pixels(transparent), expected)
    cmyk = image.convert("CMYK")
    assert np.array_equal(pixels(cmyk), np.asarray(cmyk.convert("RGB")))
    assert set(np.unique(pixels(image.convert("1")))) <= {0, 255}


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(portrait: np.ndarray, tmp_path: Path, orientation: int) -> None:
    """A photo stored sideways with an EXIF orientation tag loads as the upright photo."""
    stored_by_orientation = {
        2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    stored = Image.fromarray(portrait).transpose(stored_by_orientation[orientation])
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "turned.png", exif=exif)
    photo = images.load_photo(tmp_path / "turned.png")
    assert np.array_equal(np.asarray(photo.image), portrait)
    assert photo.size == (384, 336)


# ----------------------------------------------------------------------------- damaged and hostile files


def test_truncated_files_give_a_clear_error(pictures, portrait: np.ndarray, tmp_path: Path) -> None:
    data = pictures.portrait.read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    buffer = io.BytesIO()
    Image.fromarray(portrait).save(buffer, "PNG")
    (tmp_path / "half.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "header.jpg").write_bytes(data[:200])
    for name in ("half.jpg", "half.png", "header.jpg"):
        with pytest.raises(ImageInputError) as info:
            images.load_photo(tmp_path / name)
        assert name in str(info.value)
        assert "truncated" in str(info.value) or "damaged" in str(info.value) or "cannot open" in str(info.value)


def test_non_images_and_missing_files_give_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not a photo")
    with pytest.raises(ImageInputError, match="notes.jpg: not an image file"):
        images.load_photo(tmp_path / "notes.jpg")
    with pytest.raises(ImageInputError, match="no such file"):
        images.load_photo(tmp_path / "missing.jpg")
    with pytest.raises(ImageInputError, match="not an image file"):
        images.load_photo(tmp_path)
    assert issubclass(ImageInputError, EssenceError)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """A PNG whose header claims 200000 x 200000 pixels (40 gigapixels) is refused from its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 1000)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                                        + chunk(b"IEND", b""))
    with pytest.raises(ImageInputError,
                       match="bomb.png: 200000x200000 is 40,000 megapixels, more than the 1,074-megapixel limit"):
        images.load_photo(tmp_path / "bomb.png")
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own limit is restored afterwards


def test_large_photos_are_reduced_jpeg_at_decode_time(portrait: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(portrait).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(portrait).save(tmp_path / "big.png")
    limit = 384 * 336 // 10
    jpeg = images.load_photo(tmp_path / "big.jpg", work_pixels=limit)
    assert jpeg.scale == 4 and jpeg.image.size == (96, 84) and jpeg.size == (384, 336)
    png = images.load_photo(tmp_path / "big.png", work_pixels=limit)
    assert png.scale == 4 and png.image.size == (96, 84) and png.size == (384, 336)
    # both reductions average 4x4 blocks: they agree up to JPEG's own loss
    assert np.abs(np.asarray(jpeg.image, dtype=int) - np.asarray(png.image, dtype=int)).mean() < 2.0
    assert np.allclose(png.to_original([[0.0, 0.0]]), [[1.5, 1.5]])  # centre of the first 4x4 block
    with pytest.raises(ImageInputError, match="big.jpg: 384x336 is 0.13 megapixels, more than the 0.001-megapixel"):
        images.load_photo(tmp_path / "big.jpg", max_pixels=1000)
