"""Video: ``essence apply --video`` on short generated clips with the tiny models; the face crop's
temporal smoothing against landmark jitter, and its scene-cut reset."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401  (the in-process ComfyUI fixtures)
from PIL import Image
from workflow_tools import write_clip

import essence
from bench.jitter import noisy_still
from essence import cli
from essence.errors import FaceNotFoundError, VideoInputError
from essence.faces import build_track, detect_frames, load_landmarker
from essence.faces.smoothing import SMOOTHING_PRESETS, Smoothing, params_quad, smooth_quads
from essence.video import apply_to_video, probe_video, read_frames

av = pytest.importorskip("av")

RATE = Fraction(30000, 1001)  # NTSC: a rate that only an exact rational keeps


@pytest.fixture(scope="module")
def landmarker():
    return load_landmarker()


@pytest.fixture(scope="module")
def face_photo(pictures) -> Image.Image:
    """A face small enough that detecting it in a frame costs milliseconds: the headshot, 180 x 180."""
    return Image.open(pictures.headshot).convert("RGB")


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


@pytest.fixture(scope="module")
def tiny(generator, encoder):
    tensor = torch.randn(1, generator.n_latent, generator.style_dim, generator=torch.Generator().manual_seed(0))
    return generator, encoder, essence.Direction(tensor * 0.5, {"name": "test"})


@pytest.mark.slow
def test_apply_video_keeps_frame_count_size_rate_and_copies_the_audio(tiny_files, tmp_path, face_photo, tiny):
    scene = Image.new("RGB", (320, 240), (70, 90, 110))
    scene.paste(face_photo.resize((120, 120)), (100, 60))  # the face in the middle, plain background around
    clip = write_clip(tmp_path / "in.mp4", list(noisy_still(scene, 8, "gaussian")), rate=RATE)
    tiny[2].save(tmp_path / "d.safetensors")
    out = tmp_path / "out.mp4"
    code = cli.main(["apply", str(tmp_path / "d.safetensors"), "--video", str(clip), "--out", str(out),
                     "--strength", "1.5", "--generator", str(tiny_files.generator),
                     "--encoder", str(tiny_files.encoder), "--device", "cpu"])
    assert code == 0
    before, after = probe_video(clip), probe_video(out)
    assert (after.width, after.height, after.frames, after.rate) == (320, 240, 8, RATE)
    assert after.audio == "aac" and audio_packets(out) == audio_packets(clip)  # copied, not re-encoded
    edited = np.stack(list(read_frames(out))).astype(np.float32)
    original = np.stack(list(read_frames(clip))).astype(np.float32)
    assert edited.shape == original.shape == (8, 240, 320, 3)
    change = np.abs(edited - original).mean(axis=(0, 3))
    assert change[90:150, 130:190].mean() > 20  # the face changed...
    assert change[:, :20].mean() < 2 and change[:, -20:].mean() < 2  # ...the background far from it did not
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert before.frames == 8


def test_odd_sized_silent_clip_and_frames_without_a_face(tmp_path, face_photo, tiny, landmarker):
    frames = list(noisy_still(face_photo.resize((181, 179)), 5, "jpeg"))
    frames[2] = np.full_like(frames[2], 128)  # a blank frame: no face, left as it is
    clip = write_clip(tmp_path / "in.mkv", frames, rate=Fraction(25), audio=None)
    generator, encoder, direction = tiny
    result = apply_to_video(clip, tmp_path / "out.mkv", direction, encoder=encoder, generator=generator,
                            landmarks=landmarker)
    info = probe_video(result.path)
    assert (info.width, info.height, info.frames, info.rate, info.audio) == (181, 179, 5, 25, None)
    assert result.track.found == 4 and result.track.detections[2] is None
    blank = list(read_frames(result.path))[2]
    assert np.abs(blank.astype(int) - 128).max() <= 2  # unedited (only the codec's rounding)


def test_unreadable_video_and_no_face_are_clear_errors_and_write_nothing(tmp_path, tiny, landmarker):
    generator, encoder, direction = tiny
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoInputError, match="fake.mp4: not a readable video"):
        apply_to_video(fake, tmp_path / "out.mp4", direction, encoder=encoder, generator=generator, landmarks=landmarker)
    blank = write_clip(tmp_path / "blank.mp4", [np.full((64, 64, 3), 90, np.uint8)] * 3, rate=RATE)
    with pytest.raises(FaceNotFoundError, match="no face found in any of the 3 frames of blank.mp4"):
        apply_to_video(blank, tmp_path / "out.mp4", direction, encoder=encoder, generator=generator, landmarks=landmarker)
    with pytest.raises(VideoInputError, match="choose a video output"):
        apply_to_video(blank, tmp_path / "out.gif", direction, encoder=encoder, generator=generator, landmarks=landmarker)
    with pytest.raises(VideoInputError, match="aac audio cannot be copied into a .webm"):
        apply_to_video(blank, tmp_path / "out.webm", direction, encoder=encoder, generator=generator, landmarks=landmarker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.mp4", "fake.mp4"]


def test_smoothing_reduces_the_jitter_of_a_still_face(face_photo, landmarker):
    """dlib's landmarks jump under imperceptible noise; the smoothed crop must move far less."""
    detections = detect_frames(noisy_still(face_photo.resize((300, 300)), 16, "jpeg", seed=1), landmarker)
    raw = build_track(detections, 30.0, None).jitter()
    smoothed = build_track(detections, 30.0, SMOOTHING_PRESETS["normal"]).jitter()
    assert raw.mean() > 0.5  # the noise really moves the detected crop
    assert smoothed.mean() < 0.4 * raw.mean() and smoothed.max() < raw.max()


def _quads(centres: list[float], side: float = 100.0) -> list[np.ndarray]:
    return [params_quad(np.array([c, 50.0, side / 2, 0.0])) for c in centres]


def test_scene_cuts_restart_the_filter():
    settings = Smoothing()
    noisy = [100.0, 101.0, 99.0, 100.5, 99.5]
    # a jump of 60 px on a 100 px face: a cut, so the first frame after it is used as detected
    smoothed, starts = smooth_quads(_quads(noisy + [160.0, 161.0]), 30.0, settings)
    assert starts == [0, 5] and np.allclose(smoothed[5], _quads([160.0])[0])
    # without the reset the filter would drag the new face's crop back towards the old one
    merged, _ = smooth_quads(_quads(noisy + [160.0]), 30.0, Smoothing(cut_jump=10.0))
    assert merged[5][0, 0] < 160.0 - 25.0 - 10
    # a picture cut (from thumbnails) restarts it even when the face stays in place
    smoothed, starts = smooth_quads(_quads(noisy + [100.2, 99.8]), 30.0, settings, cuts=[5])
    assert starts == [0, 5] and np.allclose(smoothed[5], _quads([100.2])[0])
    # a lost face restarts it too
    smoothed, starts = smooth_quads([*_quads(noisy), None, *_quads([130.0])], 30.0, settings)
    assert starts == [0, 6] and smoothed[5] is None


def test_a_cut_between_two_shots_is_found_from_the_pictures(aligned_face, face_photo, landmarker):
    other = Image.open(aligned_face).convert("RGB").resize((180, 180))  # another shot: closer, another crop
    frames = [*noisy_still(face_photo, 3, "gaussian"), *noisy_still(other, 3, "gaussian", seed=1)]
    detections = detect_frames(frames, landmarker)
    assert detections.changes[3] > Smoothing().cut_pixels > max(detections.changes[1:3] + detections.changes[4:])
    track = build_track(detections, 25.0, Smoothing())
    assert 3 in track.cuts and np.allclose(track.quads[3], detections.faces[3].quad)


# ----------------------------------------------------------------------------- ComfyUI: frames as an IMAGE batch


@pytest.mark.slow
def test_face_nodes_take_video_frames_and_smooth_their_crops(comfy_env, face_photo):
    """Frames as Get Video Components / VideoHelperSuite give them ([F, H, W, 3] in 0..1), through
    Invert Face (smoothing on), Apply Essence, Render and Paste Back, inside inference mode."""
    frames = torch.from_numpy(np.stack(list(noisy_still(face_photo.resize((240, 240)), 6, "jpeg"))) / 255.0).float()
    (landmarks,) = comfy_env.run("EssenceLandmarkLoader", landmarks_file="auto")
    (encoder,) = comfy_env.run("EssenceEncoderLoader", encoder_file="e4e_tiny64.pt")
    invert = dict(encoder=encoder, landmarks=landmarks, images=frames, face_index=0)
    raw = comfy_env.run("EssenceInvertFace", **invert)[2]
    latents, aligned, alignment = comfy_env.run("EssenceInvertFace", **invert, smoothing="normal", frame_rate=25.0)
    assert len(latents) == 6 and aligned.shape == (6, 256, 256, 3) and alignment.photo_count == 6
    assert [f.photo_index for f in alignment.faces] == list(range(6))

    def movement(placements) -> float:
        corners = [p.transform.corners() for p in placements.faces]
        return float(np.mean([np.linalg.norm(b - a, axis=1).mean() for a, b in zip(corners, corners[1:])]))

    assert movement(alignment) < 0.5 * movement(raw)
    (crops, same) = comfy_env.run("EssenceAlignFace", images=frames, landmarks=landmarks, size="256", face_index=0,
                                  smoothing="normal", frame_rate=25.0)
    assert torch.equal(crops, aligned)  # Align Face crops the frames exactly where Invert Face did
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="[e4e] e4e_tiny64.pt")
    direction = comfy_env.pack.essence.Direction(torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(0)))
    (edited,) = comfy_env.run("EssenceApply", latents=latents, direction=direction, strength=1.0, layers="all")
    (faces,) = comfy_env.run("EssenceRender", generator=generator, latents=edited)
    (pasted,) = comfy_env.run("EssencePasteBack", photos=frames, faces=faces, alignment=alignment, feather=0.1)
    assert pasted.shape == frames.shape and (pasted - frames).abs().mean() > 0.01
    blank = torch.cat([frames[:2], torch.full_like(frames[:1], 0.5)])
    with pytest.raises(comfy_env.pack.essence.errors.FaceNotFoundError, match=r"frame 3 of 3.*'skip'"):
        comfy_env.run("EssenceInvertFace", **{**invert, "images": blank}, smoothing="normal")
    _, _, skipped = comfy_env.run("EssenceInvertFace", **{**invert, "images": blank}, smoothing="normal", no_face="skip")
    assert [f.photo_index for f in skipped.faces] == [0, 1] and skipped.photo_count == 3


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_range_of_frames_is_found_by_seeking_in_a_constant_rate_clip(tmp_path, suffix):
    frames = [np.full((32, 48, 3), 10 * i, np.uint8) for i in range(12)]
    clip = write_clip(tmp_path / f"ramp{suffix}", frames, rate=RATE, audio=None)
    info = probe_video(clip)
    assert info.first_pts is not None  # constant rate: seekable
    every = list(read_frames(clip))
    for start, stop in ((0, 4), (5, 9), (9, 12), (11, 40)):
        seeked = list(read_frames(clip, start, stop, info))
        assert [f[0, 0, 0] for f in seeked] == [f[0, 0, 0] for f in every[start:stop]]
