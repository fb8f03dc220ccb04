"""A face-shaped paste: the edited face goes back along its own outline (jaw line, brows, forehead),
so outside it the photo stays exactly the photo, and the seam does not cut through a background the
generator redrew. The square paste stays available."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401 (fixtures)
from PIL import Image

from essence.errors import ShapeError
from essence.faces import CropTransform, align_face, face_region, load_image, load_landmarker, paste_back, paste_mask
from essence.training import seam_energy


@pytest.fixture(scope="module")
def aligned(pictures):
    """The portrait's face aligned at 256 px, and the photo it came from."""
    face = align_face(pictures.portrait, 256, landmarks=load_landmarker())
    return face, load_image(pictures.portrait)


def _generator_like(face) -> Image.Image:
    """What a generator gives back for an aligned face: the face a little changed, and hair and
    background of its own (here flat grey, far from the photo's)."""
    crop = np.asarray(face.crop, dtype=np.float32)
    inside = face_region(face.transform.landmarks, face.transform.crop_size, 0.0, face.transform.crop_size)
    inside = inside.numpy()[..., None]
    return Image.fromarray((inside * crop * 0.9 + (1 - inside) * 128).clip(0, 255).astype(np.uint8))


def test_outside_the_face_the_photo_is_kept_exactly_and_the_change_is_face_shaped(aligned):
    face, photo = aligned
    edited = Image.fromarray(255 - np.asarray(face.crop))  # as different as a face can be
    pasted = np.asarray(paste_back(photo, edited, face.transform))
    original = np.asarray(photo)
    weights = paste_mask(face.transform).numpy()
    assert np.array_equal(pasted[weights == 0], original[weights == 0])
    changed = np.abs(pasted.astype(np.int16) - original.astype(np.int16)).max(axis=-1) > 0
    square = paste_mask(face.transform, mask="square").numpy() > 0
    assert changed.sum() <= (weights > 0).sum() and 0.1 * square.sum() < changed.sum() < 0.5 * square.sum()
    points = np.round(face.landmarks).astype(int)  # the photo's own landmarks
    for inner in (39, 42, 30, 62):  # the eyes' inner corners, the nose tip, the mouth: fully edited
        assert weights[points[inner, 1], points[inner, 0]] > 0.95
    crop_top = face.transform.to_photo(np.array([[127.5, 8.0]]))[0].round().astype(int)  # hair above the face
    assert weights[crop_top[1], crop_top[0]] == 0


def test_the_seam_is_lower_along_the_face_than_along_the_square(aligned):
    face, photo = aligned
    edited = _generator_like(face)
    seams = {}
    for kind in ("face", "square"):
        pasted = paste_back(photo, edited, face.transform, 0.1, kind)
        seams[kind] = seam_energy(photo, pasted, paste_mask(face.transform, 0.1, kind))
    print(f"seam energy, generator-like edit of the portrait: face mask {seams['face']:.3f}, "
          f"square {seams['square']:.3f}")
    assert seams["face"] < 0.5 * seams["square"]


def test_the_face_mask_needs_the_landmarks_and_the_alignment_carries_them(aligned, tmp_path):
    face, photo = aligned
    restored = CropTransform.from_dict(face.transform.to_dict())  # a JSON round trip (align --out, sockets)
    np.testing.assert_allclose(restored.landmarks, face.transform.landmarks, atol=1e-3)
    np.testing.assert_allclose(face.transform.landmarks, face.crop_landmarks)
    bare = CropTransform(face.transform.matrix, face.transform.crop_size, face.transform.photo_size)
    with pytest.raises(ShapeError, match="needs the face's landmarks.*paste with mask 'square'"):
        paste_back(photo, face.crop, bare)
    square = paste_back(photo, face.crop, bare, mask="square")
    assert np.array_equal(np.asarray(square), np.asarray(paste_back(photo, face.crop, face.transform, mask="square")))
    with pytest.raises(ValueError, match="mask must be one of face, square"):
        paste_back(photo, face.crop, face.transform, mask="oval")


def test_the_paste_back_node_pastes_along_the_face_by_default(comfy_env, pictures):
    landmarks = comfy_env.run("EssenceLandmarkLoader", landmarks_file="auto")[0]
    photo = torch.from_numpy(np.asarray(load_image(pictures.portrait), dtype=np.float32) / 255)[None]
    aligned, alignment = comfy_env.run("EssenceAlignFace", images=photo, landmarks=landmarks, size="256", face_index=0)
    edited = 1 - aligned
    (face_pasted,) = comfy_env.run("EssencePasteBack", photos=photo, faces=edited, alignment=alignment, feather=0.1)
    (square_pasted,) = comfy_env.run("EssencePasteBack", photos=photo, faces=edited, alignment=alignment,
                                     feather=0.1, mask="square")
    changed = lambda out: ((out - photo).abs().amax(-1) > 0).sum().item()  # noqa: E731
    assert 0 < changed(face_pasted) < 0.5 * changed(square_pasted)
