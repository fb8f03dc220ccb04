"""A long clip on Ray: its frames split into chunks across workers, resumable like every batch job.

``run_video_job`` does what ``essence.video.apply_to_video`` does, in rounds of
``essence.scale.batch`` tasks on the same workers (each loads the models once):

1. **Find the face**: one task per chunk of frames writes that chunk's detections (JSON). The
   driver joins them and smooths the crop over the whole clip (cheap: a few numbers per frame), so
   chunk boundaries do not reset the smoothing; the track is written beside the chunks.
2. **Tune** (only with a ``tuning``): one task inverts the frames to tune on and tunes the generator
   to them (``essence.video.tuned_clip``, STIT's way: it needs every such frame's crop, so it is not
   split) and writes them beside the chunks, as a latent file with its tuned weights; each edit task
   reads it, draws with those weights and reuses those frames' latents instead of encoding them again.
3. **Edit**: one task per chunk writes that chunk's edited frames as a lossless FFV1 segment.

The final video is assembled (encoded once, with the clip's audio) only when every segment exists,
so it is the single-process output frame for frame. Every chunk file is written atomically; a rerun
skips the chunks whose files exist and hold the right number of frames and does the rest (and a
finished output of the clip's size, length and rate is left alone). The chunk
files live in ``<out folder>/.<out name>.parts/<job key>/``: the key covers the clip, the direction
file, the models and every setting, so a rerun with other settings never reuses stale chunks. They
are deleted once the video is written unless ``keep_parts``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import EssenceError
from ..faces import (Detections, FaceTrack, Smoothing, Tracking, join_detections, load_landmarker, smoothing_preset,
                     tracking_settings)
from ..latents import Direction, LatentSet, PivotalTuning, load_direction, load_latents
from ..networks import load_encoder, load_generator
from ..storage import atomic_write, file_sha256, find_weight, folder_lock
from ..video import (DEFAULT_BATCH, STAGES, FaceEditor, VideoInfo, assemble_video, check_audio_fits, detect_video,
                     edit_video_range, output_container, probe_video, tuned_clip, video_comment, video_track,
                     write_video)
from .batch import BatchReport, BatchRunner, BatchTask

DEFAULT_CHUNK = 240  # frames per task: 10 s of 24 fps video, a few minutes of work on a GPU

PathLike = str | os.PathLike


@dataclass(frozen=True)
class VideoJob:
    """What to do to which clip (the ``apply_to_video`` settings) and how to split it."""

    video: Path
    out: Path
    direction: Path
    strength: float = 1.0
    layers: str = "all"
    smoothing: str = "normal"
    face_index: int = 0
    feather: float = 0.1
    batch_size: int = DEFAULT_BATCH
    chunk_frames: int = DEFAULT_CHUNK
    face_tracking: bool | Tracking = True
    mask: str = "face"
    tuning: PivotalTuning | None = None  # the generator tuned to the clip first; its LPIPS file is the models'

    def check(self) -> None:
        """Refuse settings no worker could use, before any worker starts."""
        smoothing_preset(self.smoothing)
        if self.tuning is not None and (self.tuning.perceptual is not None or self.tuning.progress is not None):
            raise EssenceError("a video job's tuning may carry neither an LPIPS network nor a progress callback: "
                               "give the LPIPS file as VideoModels.perceptual; the worker that tunes loads it.")


@dataclass(frozen=True)
class VideoModels:
    """The model files every worker loads once (None: looked up as usual) and the device; the LPIPS
    backbone (``perceptual``) only for jobs with pivotal tuning, by the worker that tunes."""

    generator: str | None = None
    encoder: str | None = None
    landmarks: str | None = None
    device: str = "auto"
    perceptual: str | None = None


@dataclass
class VideoJobResult:
    """The output, the clip, its face track and the two rounds' batch reports (no track and no
    reports when the output was already there)."""

    path: Path
    info: VideoInfo
    track: FaceTrack | None
    reports: dict[str, BatchReport] = field(default_factory=dict)


class VideoWorker:
    """A batch worker for video chunks: the landmark model, e4e and the generator load once; a task
    either finds the face in a chunk (``stage`` 'detect'), tunes the generator to the clip ('tune')
    or edits a chunk ('edit')."""

    def __init__(self, models: VideoModels) -> None:
        self.models = models
        self.landmarks = load_landmarker(models.landmarks)
        self.encoder = load_encoder(models.encoder, device=models.device)
        self.generator = load_generator(models.generator, device=models.device)
        # a job's track, direction and tuned clip are written before its edit round and never
        # change: each worker reads them once, not once per chunk
        self._tracks: dict[Path, FaceTrack] = {}
        self._directions: dict[Path, Direction] = {}
        self._clips: dict[Path, LatentSet] = {}

    def run(self, task: BatchTask) -> dict[str, Any]:
        job: VideoJob = task.inputs["job"]
        start, stop = task.inputs["frames"]
        if task.inputs["stage"] == "detect":
            found = detect_video(task.inputs["info"], self.landmarks, job.face_index, start, stop,
                                 tracking=tracking_settings(job.face_tracking))
            with atomic_write(task.output) as tmp:
                tmp.write_text(json.dumps(found.to_dict()), encoding="utf-8")
            return {"frames": len(found.faces), "faces": sum(f is not None for f in found.faces)}
        track = self._track(Path(task.inputs["track"]))
        info: VideoInfo = task.inputs["info"]
        if task.inputs["stage"] == "tune":
            tuning = replace(job.tuning, perceptual=self.models.perceptual)
            clip = tuned_clip(info, track, self.encoder, self.generator, tuning, batch_size=job.batch_size)
            clip.save(task.output)
            return {"frames": len(clip), "passes": clip.tuned_rows()[0].info["steps"]}
        if job.direction not in self._directions:
            self._directions[job.direction] = load_direction(job.direction)
        clip = self._clip(Path(task.inputs["clip"])) if "clip" in task.inputs else None
        editor = FaceEditor(self.encoder, self.generator, self._directions[job.direction], job.strength, job.layers,
                            job.feather, job.batch_size, job.mask, clip)
        frames = edit_video_range(info, track, editor, start, stop)
        write_video(frames, task.output, info.rate, (info.width, info.height), segment=True)
        return {"frames": stop - start, "faces": sum(d is not None for d in track.detections[start:stop])}

    def _track(self, path: Path) -> FaceTrack:
        if path not in self._tracks:
            self._tracks[path] = load_track(path)
        return self._tracks[path]

    def _clip(self, path: Path) -> LatentSet:
        """A job's tuned clip, with its tuned weights read into memory once."""
        if path not in self._clips:
            clip = load_latents(path, self.generator)
            self._clips[path] = replace(clip, tuned=dict(zip(clip.tuned_keys(), clip.tuned_rows())))
        return self._clips[path]


def chunk_ranges(frames: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) frame ranges of at most ``chunk`` frames covering ``frames`` frames."""
    if chunk < 1:
        raise EssenceError(f"chunks must hold at least one frame, got {chunk}.")
    return [(start, min(start + chunk, frames)) for start in range(0, frames, chunk)]


def tracked_chunk(chunk: int, tracking: Tracking | None, rate: float) -> int:
    """``chunk`` rounded to a whole number of tracking refresh intervals (at least one): every chunk
    then starts on a frame where one process would detect too, so the chunks find what it finds."""
    if tracking is None or chunk < 1:
        return chunk
    every = tracking.interval(rate)
    return max(every, round(chunk / every) * every)


def job_key(job: VideoJob, models: VideoModels) -> str:
    """A short hash of everything the chunks' contents depend on (the clip by path, size and
    modification time; the direction by content; the model files by path, size and time)."""
    def identity(path: str | Path | None) -> list[Any]:
        if path is None:
            return [None]
        stat = Path(path).stat()
        return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]

    settings = {k: v for k, v in asdict(job).items() if k not in ("video", "out", "direction")}
    record = {"video": identity(job.video), "direction": file_sha256(job.direction), "settings": settings,
              "models": {role: identity(getattr(models, role))
                         for role in ("generator", "encoder", "landmarks", "perceptual")},
              "device": models.device}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parts_folder(job: VideoJob, models: VideoModels) -> Path:
    return job.out.parent / f".{job.out.name}.parts" / job_key(job, models)


def save_track(track: FaceTrack, detections: Detections, path: Path) -> None:
    """The joined detections and the smoothed quads, for the edit tasks."""
    data = {"detections": detections.to_dict(), "quads": [None if q is None else q.tolist() for q in track.quads],
            "cuts": track.cuts, "rate": track.rate,
            "smoothing": None if track.smoothing is None else asdict(track.smoothing)}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data), encoding="utf-8")


def load_track(path: Path) -> FaceTrack:
    data = json.loads(path.read_text(encoding="utf-8"))
    detections = Detections.from_dict(data["detections"])
    smoothing = None if data["smoothing"] is None else Smoothing(**data["smoothing"])
    quads = [None if q is None else np.array(q, dtype=np.float64) for q in data["quads"]]
    return FaceTrack(detections.faces, quads, [int(i) for i in data["cuts"]], float(data["rate"]), smoothing)


def _frames(task: BatchTask) -> int:
    start, stop = task.inputs["frames"]
    return stop - start


def _detections_done(tasks: list[BatchTask]) -> Callable[[Path], dict[str, Any]]:
    """``validate`` for detection chunks: the JSON reads back with the chunk's frame count."""
    expected = {task.output: _frames(task) for task in tasks}

    def validate(path: Path) -> dict[str, Any]:
        found = Detections.from_dict(json.loads(path.read_text(encoding="utf-8")))
        if len(found.faces) != expected[path]:
            raise ValueError(f"{path.name}: {len(found.faces)} frames, expected {expected[path]}")
        return {"frames": expected[path], "faces": sum(f is not None for f in found.faces)}
    return validate


def _segment_done(tasks: list[BatchTask]) -> Callable[[Path], dict[str, Any]]:
    """``validate`` for edited segments: the file reads as a video with the chunk's frame count."""
    expected = {task.output: _frames(task) for task in tasks}

    def validate(path: Path) -> dict[str, Any]:
        if probe_video(path).frames != expected[path]:
            raise ValueError(f"{path.name}: not {expected[path]} frames")
        return {"frames": expected[path]}
    return validate


def _clip_done(path: Path) -> dict[str, Any]:
    """``validate`` for the tuned clip: the latent file reads, with the tuned weights beside it."""
    clip = load_latents(path)
    clip.tuned_rows()
    return {"frames": len(clip)}


def _run(runner: BatchRunner, tasks: list[BatchTask], validate: Callable[[Path], dict[str, Any]], progress: bool,
         stage: str) -> BatchReport:
    """One round of tasks; an ``EssenceError`` naming the failed chunks when any failed."""
    report = runner.run(tasks, validate=validate, progress=progress, description=stage)
    if report.failed:
        shown = "; ".join(f"{r.key}: {r.error}" for r in report.failed[:5])
        raise EssenceError(f"{stage}: {len(report.failed)} of {len(tasks)} chunk(s) failed ({shown}). Run the same "
                           f"command again: finished chunks are kept and skipped.")
    return report


def _finished_video(out: Path, info: VideoInfo, comment: str) -> bool:
    """The output exists, is the clip's size, length and rate, and was made by this very job (its
    comment tag holds the job's key: another strength, direction or model is another job): a rerun
    leaves it alone. Otherwise it is made again."""
    if not out.is_file():
        return False
    try:
        done = probe_video(out)
        made_by = video_comment(out)
    except EssenceError:
        return False
    same_clip = (done.width, done.height, done.frames, done.rate) == (info.width, info.height, info.frames, info.rate)
    return same_clip and made_by == comment


def run_video_job(job: VideoJob, models: VideoModels = VideoModels(), *, workers: int | None = None,
                  address: str | None = None, gpus_per_worker: float | None = None, progress: bool = True,
                  keep_parts: bool = False) -> VideoJobResult:
    """Run ``job`` on Ray (see the module docstring; ``workers``, ``address`` and ``gpus_per_worker``
    as for ``essence.scale.batch.BatchRunner``); raises ``EssenceError`` naming the chunks that failed (a
    rerun does only those) and ``FaceNotFoundError`` when no frame has the face."""
    info = probe_video(job.video)
    output_container(job.out)
    check_audio_fits(job.out, info)
    job.check()  # refuse what no worker could do before any worker starts
    load_direction(job.direction)
    if job.tuning is not None:
        find_weight("perceptual", explicit_path=models.perceptual)  # the LPIPS file the tuning worker will need
    comment = f"essence video job {job_key(job, models)}"
    with folder_lock(job.out.parent, "another video job", f".{job.out.name}.lock"):
        if _finished_video(job.out, info, comment):
            return VideoJobResult(job.out, info, None, {})
        return _run_job(job, models, info, comment, workers, address, gpus_per_worker, progress, keep_parts)


def _run_job(job: VideoJob, models: VideoModels, info: VideoInfo, comment: str, workers: int | None,
             address: str | None, gpus_per_worker: float | None, progress: bool, keep_parts: bool) -> VideoJobResult:
    """``run_video_job``'s two rounds and the assembly, once the output is known to need them."""
    parts = parts_folder(job, models)
    ranges = chunk_ranges(info.frames, tracked_chunk(job.chunk_frames, tracking_settings(job.face_tracking),
                                                     float(info.rate)))
    reports: dict[str, BatchReport] = {}
    with BatchRunner(VideoWorker, models, workers=workers, address=address, gpus_per_worker=gpus_per_worker) as runner:
        detect = [BatchTask(f"faces {a}-{b}", parts / f"faces_{a:08d}_{b:08d}.json",
                            {"stage": "detect", "job": job, "frames": (a, b), "info": info}) for a, b in ranges]
        reports["detect"] = _run(runner, detect, _detections_done(detect), progress, STAGES["detect"])
        detections = join_detections([Detections.from_dict(json.loads(t.output.read_text(encoding="utf-8")))
                                      for t in detect])
        track = video_track(info, detections, job.smoothing)
        track_file = parts / "track.json"
        save_track(track, detections, track_file)
        shared: dict[str, Any] = {"job": job, "track": str(track_file), "info": info}
        if job.tuning is not None:
            tune = [BatchTask("tuning", parts / "clip.safetensors",
                              {"stage": "tune", "frames": (0, info.frames), **shared})]
            reports["tune"] = _run(runner, tune, _clip_done, progress, STAGES["tune"])
            shared["clip"] = str(tune[0].output)
        edit = [BatchTask(f"frames {a}-{b}", parts / f"frames_{a:08d}_{b:08d}.mkv",
                          {"stage": "edit", "frames": (a, b), **shared})
                for a, b in ranges]
        reports["edit"] = _run(runner, edit, _segment_done(edit), progress, STAGES["edit"])
    path = assemble_video(info, [t.output for t in edit], job.out, comment=comment)
    if not keep_parts:
        shutil.rmtree(parts, ignore_errors=True)
        with contextlib.suppress(OSError):
            parts.parent.rmdir()  # the .parts folder, unless another job's chunks are in it
    return VideoJobResult(path, info, track, reports)
