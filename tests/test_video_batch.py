"""A clip edited on a local Ray (2 CPUs, tiny models) in chunks of frames: the same video as the
single-process edit, and a rerun that keeps finished chunks."""

from __future__ import annotations

import dataclasses

from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from workflow_tools import write_clip

import essence
from bench.jitter import noisy_still
from essence import cli
from essence.faces import Tracking
from essence.scale.video_batch import VideoJob, VideoModels, chunk_ranges, parts_folder, run_video_job, tracked_chunk
from essence.storage import find_weight
from essence.video import apply_to_video, probe_video, read_frames

ray = pytest.importorskip("ray", reason="batch jobs need Ray: pip install -r requirements-dev.txt")
av = pytest.importorskip("av")


@pytest.fixture()
def job_files(pictures, generator, tiny_files, tmp_path):
    """A 10-frame clip with sound, a direction file for the tiny generator, the model files."""
    face = Image.open(pictures.headshot).convert("RGB").resize((100, 100))
    scene = Image.new("RGB", (200, 150), (60, 80, 100))
    scene.paste(face, (50, 25))
    clip = write_clip(tmp_path / "clip.mp4", list(noisy_still(scene, 10, "jpeg")), rate=Fraction(24000, 1001))
    tensor = torch.randn(1, generator.n_latent, generator.style_dim, generator=torch.Generator().manual_seed(1))
    direction = essence.Direction(tensor * 0.5, {"name": "test"}).save(tmp_path / "d.safetensors")
    models = VideoModels(str(tiny_files.generator), str(tiny_files.encoder), str(find_weight("landmarks")), "cpu")
    return clip, direction, models


def _frames(path) -> np.ndarray:
    return np.stack(list(read_frames(path))).astype(np.int16)


def _audio(path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


@pytest.mark.slow
def test_chunked_on_ray_equals_single_process_and_a_rerun_keeps_finished_chunks(local_ray, job_files, tmp_path):
    clip, direction, models = job_files
    tracking = Tracking(refresh=4 / (24000 / 1001))  # detect every 4 frames: each chunk starts on a detection
    single = apply_to_video(clip, tmp_path / "single.mp4", direction, encoder=models.encoder,
                            generator=models.generator, landmarks=models.landmarks, batch_size=2,
                            face_tracking=tracking)
    job = VideoJob(clip, tmp_path / "ray.mp4", direction, batch_size=2, chunk_frames=4, face_tracking=tracking)
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    result = run_video_job(job, models, workers=2, progress=False, keep_parts=True)
    info = probe_video(result.path)
    assert (info.width, info.height, info.frames, info.rate) == (200, 150, 10, Fraction(24000, 1001))
    assert np.abs(_frames(result.path) - _frames(single.path)).max() <= 2  # the same edit, whoever did it
    assert _audio(result.path) == _audio(clip)
    assert [r.count("done") for r in result.reports.values()] == [3, 3]
    assert {r.worker for r in result.reports["edit"].records} and result.track.found == 10

    # a crash after two chunks: one segment and the video are missing; the rerun does only that chunk
    parts = parts_folder(job, models)
    (parts / "frames_00000004_00000008.mkv").unlink()
    result.path.unlink()
    again = run_video_job(job, models, workers=2, progress=False)
    assert [r.count("skipped") for r in again.reports.values()] == [3, 2]
    assert again.reports["edit"].count("done") == 1
    assert np.abs(_frames(again.path) - _frames(single.path)).max() <= 2
    assert not parts.exists()  # the chunks go once the video is written
    finished = run_video_job(job, models, progress=False)  # nothing left to do, no worker started
    assert finished.reports == {} and finished.path == job.out
    # the same output with another strength is another job: made again, never "already complete"
    before = _frames(job.out)
    stronger = run_video_job(dataclasses.replace(job, strength=2.0), models, workers=1, progress=False)
    assert stronger.reports and stronger.reports["edit"].count("done") == 3
    assert np.abs(_frames(job.out) - before).max() > 10
    assert run_video_job(dataclasses.replace(job, strength=2.0), models, progress=False).reports == {}


def test_chunks_are_whole_tracking_refresh_intervals():
    """A chunk starts where one process would detect the face anyway (1 s at 25 fps: 25 frames)."""
    assert tracked_chunk(240, Tracking(), 25.0) == 250
    assert tracked_chunk(240, Tracking(), 24.0) == 240
    assert tracked_chunk(10, Tracking(), 25.0) == 25
    assert tracked_chunk(240, None, 25.0) == 240


@pytest.mark.slow
def test_batch_video_command(local_ray, job_files, tmp_path, capsys):
    clip, direction, models = job_files
    out = tmp_path / "edited.mkv"
    code = cli.main(["batch", "video", str(direction), "--video", str(clip), "--out", str(out), "--chunk-frames", "5",
                     "--generator", models.generator, "--encoder", models.encoder, "--landmarks", models.landmarks,
                     "--device", "cpu", "--workers", "1", "--no-progress", "--face-tracking", "off"])
    assert code == 0, capsys.readouterr().err
    assert probe_video(out).frames == 10 and "editing: 2 task(s): 2 done" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "d.safetensors", "edited.mkv"]


def test_batch_video_refuses_several_strengths_before_starting(job_files, tmp_path, capsys):
    clip, direction, models = job_files
    out = tmp_path / "edited.mkv"
    code = cli.main(["batch", "video", str(direction), "--video", str(clip), "--out", str(out),
                     "--strength", "0.5,1", "--device", "cpu", "--no-progress"])
    assert code == 2 and "one number or 'auto'" in capsys.readouterr().err
    assert not out.exists()
