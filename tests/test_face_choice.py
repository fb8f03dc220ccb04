"""Which face of a photo is used, and what happens to a photo without one, is decided by the library
(``invert`` and ``align_photos`` take a face index and a missing-face policy; the face nodes only
pass their inputs on). Only the chosen face is aligned and encoded."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from essence.errors import FaceIndexError, FaceNotFoundError
from essence.faces import align_photos, load_landmarker, scikit_image_picture
from essence.latents import invert
from essence.networks import load_encoder


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> Image.Image:
    """The public-domain astronaut twice, large and small: a photo with several faces, largest first."""
    astronaut = Image.open(scikit_image_picture("astronaut.png")).convert("RGB")
    canvas = Image.new("RGB", (900, 520), (90, 90, 90))
    canvas.paste(astronaut, (0, 0))
    canvas.paste(astronaut.resize((300, 300)), (560, 100))
    return canvas


@pytest.fixture(scope="module")
def empty() -> Image.Image:
    return Image.new("RGB", (300, 300), (90, 90, 90))


def test_a_face_index_above_0_encodes_only_the_chosen_faces(group, fixtures, monkeypatch):
    encoder = load_encoder(fixtures / "e4e_tiny64.pt", cache=False)
    every = invert(group, encoder, all_faces=True, use_cache=False)
    assert len(every.faces) >= 2
    encoded: list[int] = []
    encode = encoder.encode

    def counting(faces, *args, **kwargs):
        encoded.append(faces.shape[0])
        return encode(faces, *args, **kwargs)

    monkeypatch.setattr(encoder, "encode", counting)
    second = invert([group, group.copy()], encoder, face_index=1, use_cache=False)
    assert sum(encoded) == 1  # one face (the same photo twice is encoded once), not every face of it
    assert [s["face"] for s in second.sources] == [1, 1] and [s["photo_index"] for s in second.sources] == [0, 1]
    torch.testing.assert_close(second.latents[0], every.latents[1], rtol=0, atol=1e-6)


def test_a_photo_with_too_few_faces_is_an_error_even_when_photos_without_one_are_skipped(group, empty, fixtures):
    encoder = load_encoder(fixtures / "e4e_tiny64.pt", cache=False)
    with pytest.raises(FaceIndexError, match=r"face_index 9 asks for face 10 of .* but only \d+ face\(s\) were found"):
        invert([empty, group], encoder, face_index=9, skip_missing=True, use_cache=False)
    kept = invert([empty, group], encoder, skip_missing=True, use_cache=False)
    assert [s["photo_index"] for s in kept.sources] == [1] and len(kept.failures) == 1
    with pytest.raises(FaceNotFoundError, match=r"no face found in any of the 2 photo\(s\); nothing to invert"):
        invert([empty, empty.copy()], encoder, skip_missing=True, use_cache=False)


def test_align_photos_chooses_the_same_faces_with_the_same_rules(group, empty):
    landmarker = load_landmarker()
    chosen = align_photos([empty, group], 256, landmarks=landmarker, face_index=1, skip_missing=True)
    assert [(index, face.index) for index, face in chosen] == [(1, 1)]
    with pytest.raises(FaceNotFoundError, match=r"no face found in"):
        align_photos([empty, group], 256, landmarks=landmarker)
    with pytest.raises(FaceNotFoundError, match="nothing to align"):
        align_photos([empty], 256, landmarks=landmarker, skip_missing=True)
