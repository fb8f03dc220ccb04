"""Whole clips tuned together (STIT's way) and how steady the person stays in an edited clip.

One generator is tuned to a clip's frames around their e4e pivots before they are edited:
``apply_to_video(tuning=...)``, ``essence apply --video --refine pti``, ``batch video --refine pti``
and Invert Face with smoothing on. The temporal identity measures (TL-ID, TG-ID) are checked to see
a flickering edit. Tiny models, short generated clips, a random LPIPS backbone.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401  (the in-process ComfyUI fixtures)
from perceptual_weights import FILENAME, write_alexnet
from PIL import Image
from workflow_tools import write_clip

import essence
from bench.jitter import noisy_still
from essence import cli
from essence.errors import EssenceError, EssenceWarning, MissingWeightsError, VideoInputError
from essence.faces import Tracking, align_tracked, as_frame, load_landmarker, pil_to_model
from essence.latents import DEFAULT_TUNING_FRAMES, PTI, STIT, PivotalTuning, invert_aligned, pivotal_tuning
from essence.networks import E4EEncoder, IdentityConfig, build_identity, load_perceptual
from essence.storage import find_weight
from essence.video import (apply_to_video, detect_video, probe_video, read_frames, temporal_identity, tuned_clip,
                           video_track)

av = pytest.importorskip("av")

PASSES = 15  # STIT tunes 50 passes (+3.2 dB on this clip); 15 already show the tuning at work (+1.3 dB)
QUICK = replace(STIT, steps=PASSES)
FEW = replace(STIT, steps=3)  # where only the plumbing is tested


@pytest.fixture(scope="module")
def landmarker():
    return load_landmarker()


@pytest.fixture(scope="module")
def alexnet(tmp_path_factory):
    return write_alexnet(tmp_path_factory.mktemp("lpips") / FILENAME)


@pytest.fixture(scope="module")
def lpips_net(alexnet):
    return load_perceptual(alexnet, cache=False)


@pytest.fixture(scope="module")
def clip(pictures, tmp_path_factory):
    """8 frames of a still face with camera noise, 25 fps, with sound."""
    scene = Image.new("RGB", (240, 180), (70, 90, 110))
    scene.paste(Image.open(pictures.headshot).convert("RGB").resize((110, 110)), (65, 35))
    return write_clip(tmp_path_factory.mktemp("clip") / "in.mp4", list(noisy_still(scene, 8, "gaussian")),
                      rate=Fraction(25))


@pytest.fixture(scope="module")
def direction(generator):
    tensor = torch.randn(1, generator.n_latent, generator.style_dim, generator=torch.Generator().manual_seed(3))
    return essence.Direction(tensor * 0.5, {"name": "test"})


def _frames(path) -> np.ndarray:
    return np.stack(list(read_frames(path))).astype(np.float32)


def _psnr(images: torch.Tensor, targets: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / ((images.clamp(-1, 1) - targets) ** 2).mean()))


# ----------------------------------------------------------------------------- the library


def test_one_generator_tuned_to_the_clip_draws_every_frame_closer_than_e4e(clip, generator, encoder, landmarker,
                                                                          lpips_net):
    info = probe_video(clip)
    track = video_track(info, detect_video(info, landmarker), "normal")
    before = {name: value.clone() for name, value in generator.state_dict().items()}
    clip_set = tuned_clip(info, track, encoder, generator, PivotalTuning(QUICK, lpips_net))
    tuned = clip_set.tuned_rows()[0]
    assert tuned.info["source"] == {"clip": "in.mp4", "frames": list(range(8))}
    assert [source["photo_index"] for source in clip_set.sources] == list(range(8))
    assert tuned.info["steps"] == PASSES and tuned.info["updates"] == PASSES * 8  # one update a frame a pass
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())  # the generator is untouched
    photos = [as_frame(frame, i) for i, frame in enumerate(read_frames(clip))]
    pivots = invert_aligned([align_tracked(p, track, i, 256) for i, p in enumerate(photos)], encoder).latents
    targets = pil_to_model([align_tracked(p, track, i, generator.size).crop for i, p in enumerate(photos)])
    torch.testing.assert_close(clip_set.latents, pivots)  # the latents the edit reuses are the frames' own
    plain = _psnr(essence.render(generator, pivots), targets)
    tuned_psnr = _psnr(essence.render(generator, pivots, tuned=tuned), targets)
    print(f"\nclip frames reconstructed: e4e {plain:.2f} dB, e4e + tuning on the clip ({PASSES} passes) "
          f"{tuned_psnr:.2f} dB")
    assert tuned_psnr > plain + 1


def test_the_frames_tuned_on_are_spread_over_a_long_clip():
    found = [0, 1, 2, 4, 5, 6, 7, 8, 9]  # frame 3 has no face
    assert PivotalTuning(STIT).picks(found) == found
    assert PivotalTuning(STIT, frames=4).picks(found) == [0, 4, 6, 9]  # first and last included
    with pytest.raises(EssenceError, match="at least 1 frame, got 0"):
        PivotalTuning(STIT, frames=0)


def test_one_function_builds_the_tuning_every_front_end_passes_down():
    assert pivotal_tuning() == PivotalTuning(PTI) and pivotal_tuning(clip=True).settings == STIT
    assert pivotal_tuning(True, 7) == PivotalTuning(replace(STIT, steps=7), frames=DEFAULT_TUNING_FRAMES)
    assert pivotal_tuning(True, frames=None).picks(list(range(1000))) == list(range(1000))
    with pytest.raises(EssenceError, match="at least 1 step, got 0"):
        pivotal_tuning(True, 0)


@pytest.mark.slow
def _count_encoded(monkeypatch) -> list[int]:
    """A one-item list that counts the faces e4e encodes from now on."""
    count = [0]
    encode = E4EEncoder.encode

    def counted(self, images, *args, **kwargs):
        count[0] += len(images)
        return encode(self, images, *args, **kwargs)

    monkeypatch.setattr(E4EEncoder, "encode", counted)
    return count


def test_apply_to_video_with_pti_edits_with_the_tuned_generator(clip, generator, encoder, landmarker, lpips_net,
                                                                direction, tmp_path, monkeypatch):
    stages: dict[str, list[tuple[int, int]]] = {}
    encoded = _count_encoded(monkeypatch)
    plain = apply_to_video(clip, tmp_path / "plain.mp4", direction, encoder=encoder, generator=generator,
                           landmarks=landmarker)
    assert encoded == [8]
    tuned = apply_to_video(clip, tmp_path / "tuned.mp4", direction, encoder=encoder, generator=generator,
                           landmarks=landmarker, tuning=PivotalTuning(FEW, lpips_net),
                           progress=lambda stage, done, total: stages.setdefault(stage, []).append((done, total)))
    assert encoded == [16]  # each frame through e4e once: the edit reuses the latents the tuning was done around
    assert plain.tuned is None and tuned.tuned is not None and tuned.tuned.info["steps"] == 3
    assert list(stages) == ["detect", "tune", "edit"] and stages["tune"][-1] == (3, 3)
    a, b, original = _frames(plain.path), _frames(tuned.path), _frames(clip)
    assert np.abs(a - b).mean(axis=(0, 3))[60:120, 90:150].mean() > 3  # the tuned generator drew other faces
    assert np.abs(b - original).mean(axis=(0, 3))[:, :15].mean() < 2  # and the frame outside stays the clip's
    assert probe_video(tuned.path).frames == 8


def test_a_missing_lpips_file_stops_video_tuning_before_any_frame_is_read(clip, generator, encoder, landmarker,
                                                                          direction, tmp_path, monkeypatch):
    read: list[int] = []
    monkeypatch.setattr(essence.video.edit, "detect_video", lambda *a, **k: read.append(1))
    with pytest.raises(MissingWeightsError, match=FILENAME):
        apply_to_video(clip, tmp_path / "out.mp4", direction, encoder=encoder, generator=generator,
                       landmarks=landmarker, tuning=pivotal_tuning(True, perceptual=tmp_path / "nowhere" / FILENAME))
    assert read == [] and not (tmp_path / "out.mp4").exists()


# ----------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_apply_video_refine_pti(clip, tiny_files, alexnet, tmp_path, capsys):
    direction = tmp_path / "d.safetensors"
    essence.Direction(torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(3)) * 0.5).save(direction)
    out = tmp_path / "out.mkv"
    code = cli.main(["apply", str(direction), "--video", str(clip), "--out", str(out), "--refine", "pti",
                     "--pti-steps", "3", "--pti-frames", "4", "--lpips", str(alexnet),
                     "--generator", str(tiny_files.generator), "--encoder", str(tiny_files.encoder), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generator tuned on 4 frame(s), 3 pass(es)" in captured.out and "tuning the generator" in captured.err
    assert probe_video(out).frames == 8


@pytest.mark.slow
def test_batch_video_with_pti_equals_the_single_process_edit(local_ray, clip, tiny_files, alexnet, lpips_net,
                                                             direction, tmp_path):
    from essence.scale.video_batch import VideoJob, VideoModels, run_video_job

    direction_file = direction.save(tmp_path / "d.safetensors")
    tracking = Tracking(refresh=4 / 25)  # detect every 4 frames: each chunk starts on a detection
    single = apply_to_video(clip, tmp_path / "single.mp4", direction_file, encoder=tiny_files.encoder,
                            generator=tiny_files.generator, tuning=PivotalTuning(FEW, lpips_net), batch_size=2,
                            face_tracking=tracking)
    models = VideoModels(str(tiny_files.generator), str(tiny_files.encoder), str(find_weight("landmarks")), "cpu",
                         str(alexnet))
    job = VideoJob(clip, tmp_path / "ray.mp4", direction_file, batch_size=2, chunk_frames=4, face_tracking=tracking,
                   tuning=PivotalTuning(FEW))
    result = run_video_job(job, models, workers=1, progress=False)  # the edit still reads the tuning's file
    assert list(result.reports) == ["detect", "tune", "edit"] and result.reports["tune"].count("done") == 1
    # the workers read the tuned weights back from float16 (the single process keeps float32): after H.264 the clips
    # differ by 0.008 levels on average, at most 5; the edit itself moves this clip's frames by 5.4 on average
    difference = np.abs(_frames(result.path) - _frames(single.path))
    assert difference.mean() < 0.05 and difference.max() <= 10


def test_batch_video_refuses_bad_tuning_settings_before_starting(clip, tmp_path, capsys, direction):
    direction_file = direction.save(tmp_path / "d.safetensors")
    out = tmp_path / "edited.mkv"
    code = cli.main(["batch", "video", str(direction_file), "--video", str(clip), "--out", str(out),
                     "--pti-steps", "4", "--device", "cpu", "--no-progress"])
    assert code == 2 and "--pti-steps need(s) --refine pti" in capsys.readouterr().err
    code = cli.main(["batch", "video", str(direction_file), "--video", str(clip), "--out", str(out), "--refine", "pti",
                     "--lpips", str(tmp_path / FILENAME), "--device", "cpu", "--no-progress"])
    assert code == 2 and FILENAME in capsys.readouterr().err
    assert not out.exists()


def test_a_video_job_leaves_the_lpips_network_to_its_tuning_worker(clip, lpips_net, tmp_path):
    from essence.scale.video_batch import VideoJob

    job = VideoJob(clip, tmp_path / "out.mp4", tmp_path / "d.safetensors", tuning=PivotalTuning(FEW, lpips_net))
    with pytest.raises(EssenceError, match="give the LPIPS file as VideoModels.perceptual"):
        job.check()
    VideoJob(clip, tmp_path / "out.mp4", tmp_path / "d.safetensors", tuning=PivotalTuning(FEW)).check()


# ----------------------------------------------------------------------------- ComfyUI


def test_invert_face_with_smoothing_tunes_one_generator_to_all_the_frames(comfy_env, clip):
    write_alexnet(comfy_env.models_dir / "essence_lpips" / FILENAME)
    (landmarks,) = comfy_env.run("EssenceLandmarkLoader", landmarks_file="auto")
    (encoder,) = comfy_env.run("EssenceEncoderLoader", encoder_file="e4e_tiny64.pt")
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="[e4e] e4e_tiny64.pt")
    frames = torch.from_numpy(_frames(clip)[:5] / 255)
    latents, aligned, alignment = comfy_env.run("EssenceInvertFace", encoder=encoder, landmarks=landmarks,
                                                images=frames, face_index=0, smoothing="normal", frame_rate=25.0,
                                                refine="pti", generator=generator, pti_passes=3)
    rows = latents.tuned_rows()
    assert len(rows) == 5 and all(row is rows[0] for row in rows) and len(latents.tuned) == 1
    assert rows[0].info["steps"] == 3 and rows[0].info["settings"]["learning_rate"] == STIT.learning_rate
    (faces,) = comfy_env.run("EssenceRender", generator=generator, latents=latents)
    (plain,) = comfy_env.run("EssenceRender", generator=generator,
                             latents=essence.LatentSet(latents.latents, [{"kind": "photo"}] * 5))
    assert faces.shape == plain.shape and not torch.allclose(faces, plain, atol=1e-3)


# ----------------------------------------------------------------------------- temporal identity


@pytest.fixture(scope="module")
def identity():
    torch.manual_seed(0)
    return build_identity(IdentityConfig.ir_se50(widths=(8, 16, 24, 32), embed_dim=32)).eval()


def test_a_flickering_edit_lowers_tl_id_and_a_faithful_copy_keeps_it(clip, identity, landmarker, pictures, tmp_path):
    frames = list(read_frames(clip))
    copy = write_clip(tmp_path / "copy.mkv", frames, rate=Fraction(25), audio=None)
    cat = np.asarray(Image.open(pictures.cat).convert("RGB").resize((110, 110)))
    flicker = [f.copy() for f in frames]
    for f in flicker[1::2]:  # every other frame shows another face
        f[35:145, 65:175] = cat
    flickering = write_clip(tmp_path / "flicker.mkv", flicker, rate=Fraction(25), audio=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EssenceWarning)
        same = temporal_identity(clip, copy, identity, landmarker)
    with pytest.warns(EssenceWarning, match="4 of 8 sampled crops of flicker.mkv hold no face .* partly measure"):
        worse = temporal_identity(clip, flickering, identity, landmarker)
    assert same.frames == worse.frames == 8
    assert (same.faces.sampled, same.faces.with_face, worse.faces.with_face) == (8, 8, 4)
    assert same.local.ratio == pytest.approx(1, abs=0.01) and same.overall.ratio == pytest.approx(1, abs=0.01)
    assert worse.local.edited < worse.local.original and worse.local.ratio < same.local.ratio
    assert worse.local.original == pytest.approx(same.local.original)  # measured on the same original crops


def test_cli_evaluate_video_prints_tl_id_and_tg_id_and_writes_json(clip, tmp_path, capsys, identity):
    import json

    weights = tmp_path / "model_ir_se50.pth"
    torch.save(identity.state_dict(), weights)
    copy = write_clip(tmp_path / "copy.mkv", list(read_frames(clip)), rate=Fraction(25), audio=None)
    report = tmp_path / "t.json"
    code = cli.main(["evaluate", "--video", str(clip), str(copy), "--identity", str(weights), "--json", str(report),
                     "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "copy.mkv: TL-ID 1.0" in out and "TG-ID 1.0" in out
    data = json.loads(report.read_text())
    assert data["clips"][0]["frames"] == 8 and set(data["clips"][0]["tl_id"]) == {"original", "edited", "ratio"}
    assert cli.main(["evaluate", "--video", str(clip), "--identity", str(weights), "--device", "cpu"]) == 2
    assert "at least one edited clip" in capsys.readouterr().err
    short = write_clip(tmp_path / "short.mkv", list(read_frames(clip))[:5], rate=Fraction(25), audio=None)
    with pytest.raises(VideoInputError, match="short.mkv .5 frames, 240x180. is not a frame-for-frame edit"):
        temporal_identity(clip, short, identity)


def test_cli_evaluate_video_warns_when_the_edited_crops_hold_no_face(clip, tmp_path, capsys, identity):
    """A blank clip cropped at the original's track is as self-consistent as the face: only a face
    check tells the two apart."""
    import json

    weights = tmp_path / "model_ir_se50.pth"
    torch.save(identity.state_dict(), weights)
    blank = write_clip(tmp_path / "blank.mkv", [np.full((180, 240, 3), 128, np.uint8)] * 8, rate=Fraction(25),
                       audio=None)
    report = tmp_path / "t.json"
    code = cli.main(["evaluate", "--video", str(clip), str(clip), str(blank), "--identity", str(weights),
                     "--json", str(report), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: 8 of 8 sampled crops of blank.mkv hold no face at the original's face track: its TL-ID/TG-ID say "
        "nothing about identity."]
    clips = json.loads(report.read_text())["clips"]
    assert [c["faces_found"] for c in clips] == [{"sampled": 8, "with_face": 8}, {"sampled": 8, "with_face": 0}]
