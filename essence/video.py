"""Video: an essence on every frame of a clip, with its sound kept.

``apply_to_video`` reads a clip with PyAV (FFmpeg's libraries), follows the main face through it
(``essence.track``: detected in every frame, its crop smoothed over time so the edit does not
shimmer), inverts the aligned crops in batches with e4e, applies the direction, renders, pastes each
edited face back into its frame (``essence.paste``) and encodes a new clip with

- the input's size, frame count and frame rate (the exact rational rate, e.g. 30000/1001). Frames
  are timed at that constant rate, so a variable-frame-rate clip comes out at its average rate;
- H.264 at CRF 18 (visually lossless; VP9 for .webm), 4:2:0 colour when width and height are even,
  4:4:4 when one is odd (4:2:0 cannot hold an odd size, and the size is kept exactly);
- the audio stream copied packet for packet (not re-encoded) when there is one. An output container
  that cannot hold that audio codec is refused before any work starts (nothing is dropped silently).

It reads the file twice: once to find the face in every frame (the smoothing and the scene cuts
need the whole track; a frame with no face is left unedited), once to edit and encode. Frames are
never all held in memory. The output appears only when complete (written to a temporary file
beside it, then renamed). Long clips can be split into frame ranges on several workers
(``detect_video`` / ``edit_video_range`` / ``assemble_video``; ``essence batch`` runs them on Ray).

PyAV is imported only when a video is read or written, so the rest of Essence works without it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .align import AlignedFace, FaceLandmarker, load_landmarker
from .apply import Strength, apply_direction
from .direction import Direction, load_direction
from .e4e import INPUT_SIZE, E4EEncoder
from .errors import EssenceError, FaceNotFoundError, VideoInputError
from .files import atomic_write
from .images import model_to_comfy
from .invert import invert_aligned
from .models import load_encoder, load_generator
from .paste import paste_back
from .render import render
from .stylegan2 import StyleGAN2Generator
from .smoothing import Smoothing, smoothing_preset
from .track import (Detections, FaceTrack, Tracking, align_tracked, as_frame, build_track, detect_frames,
                    tracking_settings)

PathLike = str | os.PathLike
Progress = Callable[[str, int, int], None]  # (stage, frames done, frames in all)
STAGES = {"detect": "finding the face", "edit": "editing"}  # the two passes over a clip, as progress bars name them

# output container and video encoder by file extension
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
ENCODER_OPTIONS = {"libx264": {"crf": "18", "preset": "medium"}, "libvpx-vp9": {"crf": "24", "b": "0"}}
SEGMENT_FORMAT = ("matroska", "ffv1", "bgr0")  # lossless frames between workers (exact RGB round trip)
DEFAULT_BATCH = 8  # frames inverted and rendered per pass


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise EssenceError("video needs PyAV: `pip install av` (ComfyUI installs it already).") from None
    return av


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class VideoInfo:
    """What a clip is: ``frames`` decodable video frames of ``width`` x ``height`` at ``rate``
    frames per second (exact), its video ``codec``, and its ``audio`` codec (None: silent).
    ``first_pts`` is set when every frame's timestamp is ``first_pts + i * frame_ticks`` (a
    constant-rate stream, in the stream's ``time_base``): frame ``i`` can then be found by seeking."""

    path: Path
    width: int
    height: int
    frames: int
    rate: Fraction
    codec: str
    audio: str | None
    time_base: Fraction | None = None
    first_pts: int | None = None

    @property
    def frame_ticks(self) -> Fraction | None:
        """One frame's duration in ``time_base`` units."""
        return None if self.time_base is None else 1 / (self.rate * self.time_base)

    @property
    def seconds(self) -> float:
        return float(self.frames / self.rate)

    def describe(self) -> str:
        sound = f", {self.audio} audio" if self.audio else ", no audio"
        return f"{self.path.name} ({self.width}x{self.height}, {self.frames} frames at {float(self.rate):.3f} fps{sound})"


def _open(path: Path) -> Any:
    av = _av()
    if not path.is_file():
        raise VideoInputError(f"{path}: no such video file.")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoInputError(f"{path}: not a readable video ({exc}). Give a video file FFmpeg can read "
                              f"(e.g. .mp4, .mov, .mkv, .webm).") from None
    if not container.streams.video:
        container.close()
        raise VideoInputError(f"{path}: holds no video stream (only {len(container.streams)} other stream(s)).")
    return container


def probe_video(path: PathLike) -> VideoInfo:
    """Size, frame count (counted from the file's packets, not trusted from its header), exact frame
    rate and codecs of a clip. Raises ``VideoInputError`` for a missing or unreadable file."""
    path = Path(path)
    av = _av()
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoInputError(f"{path}: the video stream has no frame rate; re-mux it with a constant rate.")
        try:
            stamps = [packet.pts for packet in container.demux(stream) if packet.size]
        except av.error.FFmpegError as exc:
            raise VideoInputError(f"{path}: damaged video ({exc}).") from None
        if not stamps:
            raise VideoInputError(f"{path}: the video stream holds no frames.")
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        info = VideoInfo(path, stream.codec_context.width, stream.codec_context.height, len(stamps), Fraction(rate),
                         stream.codec_context.name, audio, Fraction(stream.time_base))
        first = _constant_rate_start(stamps, info.frame_ticks)
        return info if first is None else dataclasses.replace(info, first_pts=first)


def _constant_rate_start(stamps: list[int | None], ticks: Fraction) -> int | None:
    """The first frame's timestamp when the sorted timestamps step by one frame each (to within a
    quarter frame: containers round them, e.g. Matroska to milliseconds), else None."""
    if any(t is None for t in stamps):
        return None
    ordered = sorted(stamps)
    first = ordered[0]
    return first if all(abs((t - first) / ticks - i) < 0.25 for i, t in enumerate(ordered)) else None


def read_frames(path: PathLike, start: int = 0, stop: int | None = None,
                info: VideoInfo | None = None) -> Iterator[np.ndarray]:
    """The RGB frames [H, W, 3] uint8 of a clip, from frame ``start`` up to (not including) ``stop``.

    With the clip's ``info`` (``probe_video``) and a constant-rate stream, it seeks to the keyframe
    before ``start`` and numbers frames by their timestamps; otherwise it decodes from the
    beginning and counts (exact whatever the timestamps, slower for late chunks of long clips).
    """
    path = Path(path)
    av = _av()
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        seek = start > 0 and info is not None and info.first_pts is not None
        if seek:
            container.seek(int(info.first_pts + start * info.frame_ticks), stream=stream, backward=True)
        index = 0
        first = True
        try:
            for frame in container.decode(stream):
                if seek:
                    index = _frame_index(frame.pts, info, path)
                    if first and index > start:  # the seek landed past it: count from the beginning instead
                        yield from read_frames(path, start, stop)
                        return
                first = False
                if stop is not None and index >= stop:
                    return
                if index >= start:
                    yield frame.to_ndarray(format="rgb24")
                index += 1
        except av.error.FFmpegError as exc:
            raise VideoInputError(f"{path}: damaged video at frame {index + 1} ({exc}).") from None


def _frame_index(pts: int | None, info: VideoInfo, path: Path) -> int:
    if pts is None:
        raise VideoInputError(f"{path}: a frame without a timestamp in a stream probed as constant-rate; "
                              f"re-encode the clip.")
    return round((pts - info.first_pts) / info.frame_ticks)


# ----------------------------------------------------------------------------- writing


def output_container(path: PathLike) -> str:
    """The container format for an output file name (by extension)."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise VideoInputError(f"{Path(path).name}: choose a video output ending in "
                              f"{', '.join(sorted(CONTAINERS))}.")
    return CONTAINERS[suffix]


def check_audio_fits(path: PathLike, info: VideoInfo) -> None:
    """Refuse (before any work) an output container that cannot hold the input's audio codec."""
    if info.audio is None:
        return
    av = _av()
    with av.open(os.devnull, "w", format=output_container(path)) as probe:
        supported = probe.supported_codecs
    if info.audio not in supported:
        raise VideoInputError(f"{info.path.name}'s {info.audio} audio cannot be copied into a {Path(path).suffix} "
                              f"file; choose .mkv or .mov (they hold most audio codecs).")


class _AudioCopier:
    """Copies the source's audio packets into the output, interleaved with the video by time."""

    def __init__(self, source: Path, output: Any):
        self._input = _open(source)
        stream = self._input.streams.audio[0]
        self._output = output
        self._stream = output.add_stream_from_template(stream)
        self._packets = (p for p in self._input.demux(stream) if p.dts is not None)
        self._pending: Any = None

    def mux_until(self, seconds: float | None) -> None:
        """Write every audio packet that starts before ``seconds`` (all of them for None)."""
        while True:
            packet = self._pending if self._pending is not None else next(self._packets, None)
            self._pending = None
            if packet is None:
                return
            if seconds is not None and packet.pts is not None and float(packet.pts * packet.time_base) > seconds:
                self._pending = packet
                return
            packet.stream = self._stream
            self._output.mux(packet)

    def close(self) -> None:
        self._input.close()


def _video_stream(container: Any, codec: str, rate: Fraction, width: int, height: int, pix_fmt: str) -> Any:
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.codec_context.time_base = 1 / rate
    stream.options = dict(ENCODER_OPTIONS.get(codec, {}))
    return stream


def write_video(frames: Iterable[np.ndarray], out: PathLike, rate: Fraction, size: tuple[int, int], *,
                audio_from: PathLike | None = None, segment: bool = False,
                progress: Callable[[int], None] | None = None) -> Path:
    """Encode RGB frames [H, W, 3] uint8 (``size`` = (width, height)) at ``rate`` into ``out``,
    atomically, copying the audio of ``audio_from`` when given. ``segment=True`` writes a lossless
    FFV1 Matroska file instead (frames passed between workers). ``progress(frames written)``."""
    av = _av()
    out = Path(out)
    width, height = size
    if segment:
        fmt, codec, pix_fmt = SEGMENT_FORMAT
    else:
        fmt = output_container(out)
        codec = "libvpx-vp9" if fmt == "webm" else "libx264"
        pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    written = 0
    with atomic_write(out) as tmp:
        container = av.open(str(tmp), "w", format=fmt)
        audio = None
        try:
            stream = _video_stream(container, codec, Fraction(rate), width, height, pix_fmt)
            audio = _AudioCopier(Path(audio_from), container) if audio_from is not None else None
            for pixels in frames:
                if pixels.shape != (height, width, 3):
                    raise VideoInputError(f"frame {written + 1} is {pixels.shape[1]}x{pixels.shape[0]}, "
                                          f"the video {width}x{height}.")
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
                frame.pts = written
                written += 1
                _mux(container, stream.encode(frame), audio)
                if progress is not None:
                    progress(written)
            _mux(container, stream.encode(None), audio)
            if audio is not None:
                audio.mux_until(None)
        finally:
            if audio is not None:
                audio.close()
            container.close()
        if written == 0:
            raise VideoInputError(f"{out.name}: no frames to write.")
    return out


def _mux(container: Any, packets: Sequence[Any], audio: _AudioCopier | None) -> None:
    for packet in packets:
        if audio is not None and packet.pts is not None:
            audio.mux_until(float(packet.pts * packet.time_base))
        container.mux(packet)


# ----------------------------------------------------------------------------- editing


@dataclass
class FaceEditor:
    """What happens to each tracked face: e4e inversion, ``w + strength * d``, rendering, paste-back."""

    encoder: E4EEncoder
    generator: StyleGAN2Generator
    direction: Direction
    strength: Strength = 1.0
    layers: str = "all"
    feather: float = 0.1
    batch_size: int = DEFAULT_BATCH

    def faces(self, aligned: Sequence[AlignedFace]) -> torch.Tensor:
        """Aligned faces -> the edited faces [N, S, S, 3] in 0..1, inverted and rendered in batches."""
        latents = invert_aligned(aligned, self.encoder, batch_size=self.batch_size).latents
        edited = apply_direction(latents, self.direction, self.strength, self.layers)
        return model_to_comfy(render(self.generator, edited, self.batch_size, what="video frames"))

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
            faces = self.faces([aligned[i] for i in present])
            for i, face in zip(present, faces):
                out[i] = paste_back(batch[i], face, aligned[i].transform, self.feather)
        return out


# ----------------------------------------------------------------------------- the whole job


@dataclass
class VideoResult:
    """What ``apply_to_video`` did: the output, the input's description, the face track (its
    ``jitter()`` measures how much the crop moved), and the seconds it took."""

    path: Path
    info: VideoInfo
    track: FaceTrack
    seconds: float



def detect_video(info: VideoInfo, landmarks: FaceLandmarker, face_index: int = 0, start: int = 0,
                 stop: int | None = None, progress: Callable[[int], None] | None = None,
                 tracking: Tracking | None = None) -> Detections:
    """The face in frames ``start`` .. ``stop`` of a clip, detected in each or followed between
    detections with ``tracking`` (see ``essence.track.detect_frames``)."""
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
                   progress: Callable[[int], None] | None = None) -> Path:
    """Concatenate the lossless segments of frame ranges (in order) into the final clip with the
    input's audio. Refuses when the segments do not hold exactly the clip's frame count."""
    def frames() -> Iterator[np.ndarray]:
        for segment in segments:
            yield from read_frames(segment)

    path = write_video(_counted(frames(), info.frames), out, info.rate, (info.width, info.height),
                       audio_from=info.path if info.audio else None, progress=progress)
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
                   progress: Progress | None = None, face_tracking: bool | Tracking | None = True) -> VideoResult:
    """Apply ``direction`` at ``strength`` to the main face of every frame of ``video``; write ``out``.

    ``encoder`` / ``generator`` / ``landmarks``: loaded models or their files (default: looked up).
    ``smoothing``: a preset name (off, light, normal, strong) or ``Smoothing`` settings.
    ``face_tracking``: follow the face between detections (True, the default, or ``Tracking``
    settings; about 10x less CPU per frame) or detect it in every frame (False).
    ``progress(stage, done, total)`` hears each frame of the "detect" and "edit" passes.
    Raises ``VideoInputError`` for an unreadable video or an unusable output name and
    ``FaceNotFoundError`` when no frame has a face; ``out`` is then not written.
    """
    began = time.perf_counter()
    info = probe_video(video)
    output_container(out)
    check_audio_fits(out, info)
    settings = smoothing_preset(smoothing)
    direction = direction if isinstance(direction, Direction) else load_direction(direction)
    editor = FaceEditor(_encoder(encoder), _generator(generator), direction, strength, layers,
                        feather, batch_size)
    direction.check_fits(editor.generator)
    landmarker = landmarks if isinstance(landmarks, FaceLandmarker) else load_landmarker(landmarks)
    detections = detect_video(info, landmarker, face_index, progress=_stage(progress, "detect", info.frames),
                              tracking=tracking_settings(face_tracking))
    track = video_track(info, detections, settings)
    frames = edit_video_range(info, track, editor)
    path = write_video(_counted(frames, info.frames), out, info.rate, (info.width, info.height),
                       audio_from=info.path if info.audio else None,
                       progress=_stage(progress, "edit", info.frames))
    return VideoResult(path, info, track, time.perf_counter() - began)


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[int], None] | None:
    return None if progress is None else (lambda done: progress(stage, done, total))


def _encoder(encoder: E4EEncoder | PathLike | None) -> E4EEncoder:
    return encoder if isinstance(encoder, E4EEncoder) else load_encoder(encoder)


def _generator(generator: StyleGAN2Generator | PathLike | None) -> StyleGAN2Generator:
    return generator if isinstance(generator, StyleGAN2Generator) else load_generator(generator)
