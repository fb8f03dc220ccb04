"""Video: an essence on every frame of a clip, with its sound kept.

``apply_to_video`` reads a clip (``essence.video.files``), follows the main face through it
(``essence.faces.track``: detected at the first frame, at scene cuts and once a second, its
landmarks followed in between, its crop smoothed over time so the edit does not shimmer), inverts
the aligned crops in batches with e4e, applies the direction, renders, pastes each edited face back
into its frame (``essence.faces.paste``) and encodes a new clip with the input's size, rate and sound.

It reads the file twice: once to find the face in every frame (the smoothing and the scene cuts
need the whole track; a frame with no face is left unedited), once to edit and encode. Frames are
never all held in memory. Long clips can be split into frame ranges on several workers
(``detect_video`` / ``edit_video_range`` / ``assemble_video``; ``essence batch`` runs them on Ray).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..errors import FaceNotFoundError, VideoInputError
from ..faces import (AlignedFace, Detections, FaceLandmarker, FaceTrack, Smoothing, Tracking, align_tracked, as_frame,
                     build_track, detect_frames, landmarker_from, model_to_comfy, paste_back, smoothing_preset,
                     tracking_settings)
from ..latents import Direction, LatentSet, PivotalTuning, Strength, apply_direction, invert_aligned, load_direction
from ..networks import INPUT_SIZE, E4EEncoder, StyleGAN2Generator, TunedWeights, encoder_from, generator_from, render
from .files import VideoInfo, check_audio_fits, output_container, probe_video, read_frames, write_video
from .tuning import tuned_clip

PathLike = str | os.PathLike
Progress = Callable[[str, int, int], None]  # (stage, frames done, frames in all)
# the passes over a clip, as progress bars name them ("tune" only with pivotal tuning, and counted in passes)
STAGES = {"detect": "finding the face", "tune": "tuning the generator", "edit": "editing"}
DEFAULT_BATCH = 8  # frames inverted and rendered per pass


# ----------------------------------------------------------------------------- editing


@dataclass
class FaceEditor:
    """What happens to each tracked face: e4e inversion, ``w + strength * d``, rendering (with the
    clip's tuned generator weights when there are some), paste-back. With ``clip`` (``tuned_clip``),
    a frame it holds is not inverted again: its latent from the tuning is edited."""

    encoder: E4EEncoder
    generator: StyleGAN2Generator
    direction: Direction
    strength: Strength = 1.0
    layers: str = "all"
    feather: float = 0.1
    batch_size: int = DEFAULT_BATCH
    mask: str = "face"  # paste along the face's outline, or "square": the whole crop
    clip: LatentSet | None = None  # the clip's tuned frames (``tuned_clip``): their latents and tuned weights

    @cached_property
    def tuned(self) -> TunedWeights | None:
        """The generator weights tuned to this clip, which draw every frame; None without tuning."""
        return None if self.clip is None else self.clip.tuned_rows()[0]

    @cached_property
    def _clip_rows(self) -> dict[int, int]:
        """The row of ``clip`` that holds each frame it was tuned on, by frame number."""
        return {source["photo_index"]: row for row, source in enumerate(self.clip.sources)} if self.clip else {}

    def faces(self, aligned: Sequence[AlignedFace], frames: Sequence[int] = ()) -> torch.Tensor:
        """Aligned faces (of the frames numbered ``frames``, when known) -> the edited faces
        [N, S, S, 3] in 0..1, inverted and rendered in batches."""
        edited = apply_direction(self._latents(aligned, frames), self.direction, self.strength, self.layers)
        return model_to_comfy(render(self.generator, edited, self.batch_size, what="video frames", tuned=self.tuned))

    def _latents(self, aligned: Sequence[AlignedFace], frames: Sequence[int]) -> torch.Tensor:
        """The faces' latents: a frame the clip was tuned on keeps its latent from then, the others
        are e4e-encoded now."""
        known = [self._clip_rows.get(frame) for frame in frames] or [None] * len(aligned)
        todo = [face for face, row in zip(aligned, known) if row is None]
        if len(todo) == len(known):
            return invert_aligned(todo, self.encoder, batch_size=self.batch_size).latents
        encoded = iter(invert_aligned(todo, self.encoder, batch_size=self.batch_size).latents if todo else ())
        return torch.stack([next(encoded) if row is None else self.clip.latents[row] for row in known])

    def frames(self, frames: Iterable[np.ndarray], track: FaceTrack, start: int = 0) -> Iterator[np.ndarray]:
        """Frames ``start``, ``start + 1``, ... of the tracked clip, edited, ``batch_size`` at a time."""
        batch: list[np.ndarray] = []
        index = start
        for pixels in frames:
            batch.append(pixels)
            if len(batch) == self.batch_size:
                yield from self._edit_batch(batch, track, index)
                index += len(batch)
                batch = []
        if batch:
            yield from self._edit_batch(batch, track, index)

    def _edit_batch(self, batch: list[np.ndarray], track: FaceTrack, first: int) -> list[np.ndarray]:
        if first + len(batch) > len(track):
            raise VideoInputError(f"the clip has more frames than its face track ({len(track)}); was the file "
                                  f"changed while it was being edited?")
        aligned = [align_tracked(as_frame(pixels, first + i), track, first + i, INPUT_SIZE)
                   for i, pixels in enumerate(batch)]
        present = [i for i, face in enumerate(aligned) if face is not None]
        out = list(batch)
        if present:
            faces = self.faces([aligned[i] for i in present], [first + i for i in present])
            for i, face in zip(present, faces):
                out[i] = paste_back(batch[i], face, aligned[i].transform, self.feather, self.mask)
        return out


# ----------------------------------------------------------------------------- the whole job


@dataclass
class VideoResult:
    """What ``apply_to_video`` did: the output, the input's description, the face track (its
    ``jitter()`` measures how much the crop moved), the seconds it took, and with pivotal tuning the
    generator weights tuned to the clip."""

    path: Path
    info: VideoInfo
    track: FaceTrack
    seconds: float
    tuned: TunedWeights | None = None



def detect_video(info: VideoInfo, landmarks: FaceLandmarker, face_index: int = 0, start: int = 0,
                 stop: int | None = None, progress: Callable[[int], None] | None = None,
                 tracking: Tracking | None = None) -> Detections:
    """The face in frames ``start`` .. ``stop`` of a clip, detected in each or followed between
    detections with ``tracking`` (see ``essence.faces.track.detect_frames``)."""
    return detect_frames(read_frames(info.path, start, stop, info), landmarks, face_index, progress, tracking,
                         float(info.rate), start)


def video_track(info: VideoInfo, detections: Detections, smoothing: Smoothing | str | None) -> FaceTrack:
    """The smoothed face track of a whole clip; ``FaceNotFoundError`` when no frame has the face."""
    track = build_track(detections, float(info.rate), smoothing_preset(smoothing))
    if len(track) != info.frames:
        raise VideoInputError(f"{info.path}: decoded {len(track)} frames but the file lists {info.frames}; "
                              f"the file may be damaged (re-encode it).")
    if track.found == 0:
        raise FaceNotFoundError(f"no face found in any of the {info.frames} frames of {info.describe()}. dlib's "
                                f"frontal face detector needs a roughly frontal face at least about 40 pixels wide.")
    return track


def edit_video_range(info: VideoInfo, track: FaceTrack, editor: FaceEditor, start: int = 0,
                     stop: int | None = None) -> Iterator[np.ndarray]:
    """Frames ``start`` .. ``stop`` of the clip, edited."""
    return editor.frames(read_frames(info.path, start, stop, info), track, start)


def assemble_video(info: VideoInfo, segments: Sequence[PathLike], out: PathLike,
                   progress: Callable[[int], None] | None = None, comment: str | None = None) -> Path:
    """Concatenate the lossless segments of frame ranges (in order) into the final clip with the
    input's audio. Refuses when the segments do not hold exactly the clip's frame count."""
    def frames() -> Iterator[np.ndarray]:
        for segment in segments:
            yield from read_frames(segment)

    path = write_video(_counted(frames(), info.frames), out, info.rate, (info.width, info.height),
                       audio_from=info.path if info.audio else None, progress=progress, comment=comment)
    return path


def _counted(frames: Iterator[np.ndarray], expected: int) -> Iterator[np.ndarray]:
    count = 0
    for frame in frames:
        count += 1
        if count > expected:
            break
        yield frame
    if count != expected:
        raise VideoInputError(f"the edited segments hold {count} frame(s) for a clip of {expected}; "
                              f"run the job again (finished segments are kept).")


def apply_to_video(video: PathLike, out: PathLike, direction: Direction | PathLike, *,
                   encoder: E4EEncoder | PathLike | None = None,
                   generator: StyleGAN2Generator | PathLike | None = None,
                   landmarks: FaceLandmarker | PathLike | None = None, strength: Strength = 1.0,
                   layers: str = "all", smoothing: Smoothing | str | None = "normal", face_index: int = 0,
                   feather: float = 0.1, batch_size: int = DEFAULT_BATCH,
                   progress: Progress | None = None, face_tracking: bool | Tracking | None = True,
                   mask: str = "face", tuning: PivotalTuning | None = None) -> VideoResult:
    """Apply ``direction`` at ``strength`` to the main face of every frame of ``video``; write ``out``.

    ``encoder`` / ``generator`` / ``landmarks``: loaded models or their files (default: looked up;
    the generator: the encoder file's own decoder when the encoder was given as a file).
    ``smoothing``: a preset name (off, light, normal, strong) or ``Smoothing`` settings.
    ``face_tracking``: follow the face between detections (True, the default, or ``Tracking``
    settings; about 10x less CPU per frame) or detect it in every frame (False).
    ``mask``: paste each edited face along its outline (``"face"``, the default: the frame outside
    the face is kept exactly) or as the whole soft-edged crop (``"square"``); see ``paste_back``.
    ``tuning`` (``pivotal_tuning(clip=True)``: STIT's settings) first tunes the generator to the
    clip, one generator for all its frames (``tuned_clip``), then draws every edited frame with it.
    ``progress(stage, done, total)`` hears each frame of the "detect" and "edit" passes (and each
    pass of "tune", in place of ``tuning.progress``). Raises ``VideoInputError`` for an unreadable
    video or an unusable output name and ``FaceNotFoundError`` when no frame has a face; ``out`` is
    then not written.
    """
    began = time.perf_counter()
    info = probe_video(video)
    output_container(out)
    check_audio_fits(out, info)
    settings = smoothing_preset(smoothing)
    direction = direction if isinstance(direction, Direction) else load_direction(direction)
    e4e, decoder = encoder_from(encoder), generator_from(generator, fallback_encoder=encoder)
    direction.check_fits(decoder)
    landmarker = landmarker_from(landmarks)
    if tuning is not None:  # a missing LPIPS file stops here, before any frame is read
        tuning = _heard(tuning.loaded(decoder.latent_avg.device), progress)
    detections = detect_video(info, landmarker, face_index, progress=_stage(progress, "detect", info.frames),
                              tracking=tracking_settings(face_tracking))
    track = video_track(info, detections, settings)
    clip = None if tuning is None else tuned_clip(info, track, e4e, decoder, tuning, batch_size=batch_size)
    editor = FaceEditor(e4e, decoder, direction, strength, layers, feather, batch_size, mask, clip)
    frames = edit_video_range(info, track, editor)
    path = write_video(_counted(frames, info.frames), out, info.rate, (info.width, info.height),
                       audio_from=info.path if info.audio else None,
                       progress=_stage(progress, "edit", info.frames))
    return VideoResult(path, info, track, time.perf_counter() - began, editor.tuned)


def _heard(tuning: PivotalTuning, progress: Progress | None) -> PivotalTuning:
    """``tuning`` reporting its passes as the "tune" stage of ``progress``, when there is one."""
    return tuning if progress is None else replace(tuning, progress=_stage(progress, "tune", tuning.settings.steps))


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[..., None] | None:
    return None if progress is None else (lambda done, *_: progress(stage, done, total))
