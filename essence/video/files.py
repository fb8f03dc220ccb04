"""Video files through PyAV (FFmpeg's libraries): what a clip is, its frames, and new clips.

Output clips keep the input's size, frame count and frame rate (the exact rational rate, e.g.
30000/1001; frames are timed at that constant rate, so a variable-frame-rate clip comes out at its
average rate), are encoded as H.264 at CRF 18 (visually lossless; VP9 for .webm) in 4:2:0 colour when
width and height are even, 4:4:4 when one is odd (4:2:0 cannot hold an odd size, and the size is kept
exactly), and carry the source's audio copied packet for packet (not re-encoded). An output container
that cannot hold that audio codec is refused before any work starts (nothing is dropped silently).
Outputs appear only when complete (written to a temporary file beside them, then renamed).

PyAV is imported only when a video is read or written, so the rest of Essence works without it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import EssenceError, EssenceWarning, VideoInputError
from ..faces import FULL_DECODE_PIXELS
from ..storage import atomic_write

PathLike = str | os.PathLike

# output container and video encoder by file extension
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
VIDEO_SUFFIXES = tuple(CONTAINERS)  # the endings a clip Essence writes may have
ENCODER_OPTIONS = {"libx264": {"crf": "18", "preset": "medium"}, "libvpx-vp9": {"crf": "24", "b": "0"}}
SEGMENT_FORMAT = ("matroska", "ffv1", "bgr0")  # lossless frames between workers (exact RGB round trip)


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
    streams = container.streams
    if not streams.video:
        found = [f"{len(group)} {kind} stream{'s' if len(group) > 1 else ''}" for kind, group in
                 (("audio", streams.audio), ("subtitle", streams.subtitles), ("data", streams.data),
                  ("attachment", streams.attachments)) if len(group)]
        container.close()
        raise VideoInputError(f"{path}: holds no video stream, " + (f"only {', '.join(found)}." if found else
                                                                     "no stream at all."))
    width, height = streams.video[0].codec_context.width, streams.video[0].codec_context.height
    if width * height > FULL_DECODE_PIXELS:  # every frame is decoded whole: refused before the first one
        container.close()
        raise VideoInputError(f"{path}: its frames are {width}x{height}, {width * height / 1e6:,.0f} megapixels "
                              f"each, more than the {FULL_DECODE_PIXELS / 1e6:,.0f}-megapixel limit for a decoded "
                              f"picture. Scale the clip down first (e.g. ffmpeg -i in.mp4 -vf scale=-2:2160 out.mp4).")
    return container


def probe_video(path: PathLike) -> VideoInfo:
    """Size, frame count (counted from the file's packets, not trusted from its header), exact frame
    rate and codecs of a clip. Raises ``VideoInputError`` for a missing or unreadable file."""
    path = Path(path)
    av = _av()
    with _open(path) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > FULL_DECODE_PIXELS:  # every frame is decoded whole: refused before the first one
            raise VideoInputError(f"{path}: its frames are {width}x{height}, {width * height / 1e6:,.0f} megapixels "
                                  f"each, more than the {FULL_DECODE_PIXELS / 1e6:,.0f}-megapixel limit for a "
                                  f"decoded picture. Scale the clip down first (e.g. ffmpeg -vf scale=-2:2160).")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoInputError(f"{path}: the video stream has no frame rate; re-mux it with a constant rate.")
        try:
            stamps = [packet.pts for packet in container.demux(stream) if packet.size]
        except av.error.FFmpegError as exc:
            raise VideoInputError(f"{path}: damaged video ({exc}).") from None
        if not stamps:
            raise VideoInputError(f"{path}: the video stream holds no frames.")
        if stream.frames and stream.frames != len(stamps):  # the header's count (0 when the container has none)
            warnings.warn(EssenceWarning(
                f"{path.name} declares {stream.frames} frames but holds {len(stamps)}: a truncated download or a "
                f"damaged file? Only the {len(stamps)} are read; copy or download it again for the rest."),
                stacklevel=2)
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
                progress: Callable[[int], None] | None = None, comment: str | None = None) -> Path:
    """Encode RGB frames [H, W, 3] uint8 (``size`` = (width, height)) at ``rate`` into ``out``,
    atomically, copying the audio of ``audio_from`` when given. ``segment=True`` writes a lossless
    FFV1 Matroska file instead (frames passed between workers). ``progress(frames written)``.
    ``comment`` goes into the container's comment tag (``video_comment`` reads it back)."""
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
        if comment is not None:
            container.metadata["comment"] = comment
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


def video_comment(path: PathLike) -> str | None:
    """The container's comment tag (``write_video``'s ``comment``), None when it has none."""
    with _open(Path(path)) as container:
        tags = {key.lower(): value for key, value in container.metadata.items()}
    return tags.get("comment")


def _mux(container: Any, packets: Sequence[Any], audio: _AudioCopier | None) -> None:
    for packet in packets:
        if audio is not None and packet.pts is not None:
            audio.mux_until(float(packet.pts * packet.time_base))
        container.mux(packet)
