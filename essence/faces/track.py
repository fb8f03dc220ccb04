"""One face followed through the frames of a clip: detected in every frame, its crop smoothed over time.

A photo is aligned on its own; a frame is aligned knowing its neighbours. ``track_faces`` detects the
chosen face in every frame (the largest by default, as for photos: one face per frame keeps the work
per frame constant and the track unambiguous), notes scene cuts, and smooths the FFHQ quads over time
(``essence.faces.smoothing``); ``align_tracked`` then crops each frame at its smoothed quad. Frames where
the face is not found are left out of the track (``None``): a video keeps them unedited rather than
stopping, since a face turned away for a moment is normal in a clip.

Finding the face costs most of a frame's time outside the networks (dlib's HOG detector, upsampled
once, about 1.5 s of CPU at 1080p), while the 68-point shape predictor alone costs milliseconds. With
``Tracking`` settings the detector therefore runs only on the first frame of a run, at scene cuts
(the picture test of ``essence.faces.smoothing``), when the face was lost or its follow-up looks doubtful,
and every ``Tracking.refresh`` seconds; in between the predictor runs on the previous frame's
detector-style box, moved and scaled as the landmarks moved (the predictor was trained on detector
boxes, so it is given one, not the landmarks' own bounding box).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import FaceNotFoundError
from .align import AlignedFace, FaceLandmarker, align_detected, detect_faces, ffhq_quad, nothing_found
from .images import MAX_PIXELS, ImageSource, Photo, load_photo, load_photos
from .smoothing import Smoothing, corner_movement, picture_change, smooth_quads, thumbnail

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Tracking:
    """When the detector runs while the face is followed from frame to frame (see the module docstring).

    ``refresh`` (seconds): the longest run of frames followed without detecting (at least one frame).
    ``max_shift`` (box sides): a followed box that moves or resizes more than this in one frame is
    doubtful, and the frame is detected instead. ``cut_pixels``: the picture change (0..1, as
    ``Smoothing.cut_pixels``) above which a frame is a scene cut and is detected; the same test on
    the face's box alone (its thumbnail against the previous frame's) catches a face that left its
    box without cutting the picture (the predictor would place landmarks on the background).
    """

    refresh: float = 1.0
    max_shift: float = 0.15
    cut_pixels: float = Smoothing.cut_pixels

    def __post_init__(self) -> None:
        for name in ("refresh", "max_shift", "cut_pixels"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"tracking {name} must be a positive number, got {value}.")

    def interval(self, rate: float) -> int:
        """Frames between forced detections at ``rate`` frames per second."""
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"the frame rate must be a positive number, got {rate}.")
        return max(1, round(self.refresh * rate))


def tracking_settings(on: bool | Tracking | None) -> Tracking | None:
    """``True`` -> the default ``Tracking``; ``False`` / None -> detect every frame; settings as given."""
    if isinstance(on, Tracking) or on is None:
        return on
    return Tracking() if on else None


@dataclass
class Detection:
    """The tracked face in one frame: its detector box and 68 landmarks (frame pixels)."""

    box: tuple[int, int, int, int]
    points: np.ndarray

    @property
    def quad(self) -> np.ndarray:
        return ffhq_quad(self.points)[0]

    def to_dict(self) -> dict[str, Any]:
        return {"box": [int(v) for v in self.box], "points": self.points.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Detection":
        return cls(tuple(int(v) for v in data["box"]), np.array(data["points"], dtype=np.float64))


@dataclass
class Detections:
    """What detection found in a run of frames: one ``Detection`` or None per frame, and how much
    each frame's picture differs from the previous one's (``changes``, 0..1, 0 for the first; a
    scene cut shows as a large value). ``first_thumbnail`` / ``last_thumbnail`` let runs detected
    apart be joined."""

    faces: list[Detection | None]
    changes: list[float] = field(default_factory=list)
    first_thumbnail: np.ndarray | None = None
    last_thumbnail: np.ndarray | None = None
    detected: list[bool] = field(default_factory=list)

    @property
    def detector_runs(self) -> int:
        """How many frames ran the face detector (the rest were followed from the previous frame)."""
        return sum(self.detected)

    def to_dict(self) -> dict[str, Any]:
        return {"faces": [None if f is None else f.to_dict() for f in self.faces],
                "changes": [float(c) for c in self.changes], "detected": [bool(d) for d in self.detected],
                "thumbnails": [None if t is None else t.tolist() for t in (self.first_thumbnail, self.last_thumbnail)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Detections":
        first, last = (None if t is None else np.array(t, dtype=np.float32) for t in data["thumbnails"])
        return cls([None if f is None else Detection.from_dict(f) for f in data["faces"]],
                   [float(c) for c in data["changes"]], first, last, [bool(d) for d in data.get("detected", [])])


@dataclass
class FaceTrack:
    """The tracked face over a clip: per frame its detection (or None), the quad its crop is taken at
    (the detected quad filtered over time), and the frames where the filter started again."""

    detections: list[Detection | None]
    quads: list[np.ndarray | None]
    cuts: list[int]
    rate: float
    smoothing: Smoothing | None

    def __len__(self) -> int:
        return len(self.detections)

    @property
    def found(self) -> int:
        """How many frames have the face."""
        return sum(d is not None for d in self.detections)

    def jitter(self, smoothed: bool = True) -> np.ndarray:
        """Frame-to-frame movement of the crop (mean corner distance, px) between consecutive frames
        of the same shot: of the quads cropped at, or of the detected ones (``smoothed=False``)."""
        quads = self.quads if smoothed else [None if d is None else d.quad for d in self.detections]
        starts = set(self.cuts)
        return np.array([corner_movement(quads[i - 1], quads[i]) for i in range(1, len(quads))
                         if i not in starts and quads[i - 1] is not None and quads[i] is not None])


def as_frame(frame: ImageSource, index: int) -> Photo:
    """A decoded frame (RGB array, PIL image, tensor or ``Photo``) as a full-size ``Photo`` named by
    its number, so messages say which frame."""
    photo = load_photo(frame, work_pixels=MAX_PIXELS)
    return dataclasses.replace(photo, name=f"frame {index + 1}")


def clip_frames(frames: ImageSource | Sequence[ImageSource]) -> list[Photo]:
    """Every frame of a clip held in memory (e.g. a ComfyUI IMAGE batch) as full-size ``Photo``s
    named by their number; ``align_clip`` reads them as they are, and pivotal tuning crops them again."""
    return [as_frame(photo, i) for i, photo in enumerate(load_photos(frames, work_pixels=MAX_PIXELS))]


def detect_frames(frames: Iterable[ImageSource], landmarker: FaceLandmarker, face_index: int = 0,
                  progress: Callable[[int], None] | None = None, tracking: Tracking | None = None,
                  rate: float = 30.0, start: int = 0) -> Detections:
    """Find face number ``face_index`` (0 = the largest) in every frame, and how much each frame's
    picture changed. Without ``tracking`` the detector runs on every frame; with it, the face is
    followed between detections (see the module docstring): ``rate`` (frames per second) sets the
    refresh interval, counted from frame number ``start`` of the clip (these frames' first), so runs
    of a clip cut at multiples of the interval find what one run finds. ``progress(frames done)`` is
    called after each frame; it may raise to stop."""
    every = None if tracking is None else tracking.interval(rate)
    faces: list[Detection | None] = []
    changes: list[float] = []
    detected: list[bool] = []
    first = previous = anchor = patch = None
    for i, frame in enumerate(frames):
        photo = as_frame(frame, start + i)
        small = thumbnail(photo.image)
        change = 0.0 if previous is None else picture_change(previous, small)
        last = faces[-1] if faces else None
        face = None
        if every is not None and last is not None and (start + i) % every and change <= tracking.cut_pixels:
            face = follow_face(photo, landmarker, last, anchor, tracking, patch)
        if face is None:
            found = detect_faces(photo, landmarker)
            face = anchor = Detection(*found[face_index]) if len(found) > face_index else None
            detected.append(True)
        else:
            detected.append(False)
        patch = None if face is None else box_thumbnail(photo, face.box)
        faces.append(face)
        changes.append(change)
        first = small if first is None else first
        previous = small
        if progress is not None:
            progress(i + 1)
    return Detections(faces, changes, first, previous, detected)


def follow_face(photo: Photo, landmarker: FaceLandmarker, previous: Detection, anchor: Detection,
                tracking: Tracking, patch: np.ndarray) -> Detection | None:
    """The face of the previous frame found again in ``photo`` without the detector, or None when
    the result is doubtful (then the caller detects).

    ``anchor``: the face where the detector last found it. The predictor runs on the previous
    frame's box; the anchor's detector box is then moved and scaled as the landmarks moved since the
    anchor (not since the previous frame, so small biases of the predictor do not add up from frame
    to frame), and the predictor runs again on that box. Doubtful: the box shifted or resized by more
    than ``tracking.max_shift`` box sides since the previous frame, its centre left the picture, or
    its picture differs from the previous frame's box (``patch``, see ``box_thumbnail``) by more
    than ``tracking.cut_pixels``.
    """
    rgb = np.asarray(photo.image)
    box = np.asarray(previous.box, dtype=np.float64)
    first_guess = landmarker.landmarks(rgb, previous.box)
    moved = moved_box(np.asarray(anchor.box, dtype=np.float64), anchor.points, first_guess)
    side = float(box[2] - box[0] + 1)
    centre = (moved[:2] + moved[2:]) / 2
    if (np.abs(moved - box).max() > tracking.max_shift * side
            or not (0 <= centre[0] < photo.image.width and 0 <= centre[1] < photo.image.height)):
        return None
    carried: Box = tuple(int(v) for v in np.rint(moved))  # type: ignore[assignment]
    if picture_change(patch, box_thumbnail(photo, carried)) > tracking.cut_pixels:
        return None
    return Detection(carried, landmarker.landmarks(rgb, carried))


def box_thumbnail(photo: Photo, box: Sequence[int]) -> np.ndarray:
    """The scene-cut thumbnail (``essence.faces.smoothing.thumbnail``) of the picture inside a face box."""
    left, top, right, bottom = box
    return thumbnail(photo.image.crop((left, top, right + 1, bottom + 1)))


def moved_box(box: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``box`` (left, top, right, bottom) moved and scaled as the landmarks moved from ``before`` to
    ``after``: a similarity fitted to the points (their RMS spread's ratio as scale, the least-squares
    rotation) carries the box's centre; the box stays upright, as the detector's boxes are."""
    a, b = before - before.mean(axis=0), after - after.mean(axis=0)
    scale = math.sqrt(float((b ** 2).sum()) / max(float((a ** 2).sum()), 1e-12))
    cross = float((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum())
    angle = math.atan2(cross, float((a * b).sum()))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = (box[:2] + box[2:]) / 2
    new_centre = after.mean(axis=0) + scale * rotation @ (centre - before.mean(axis=0))
    half = (box[2:] - box[:2]) / 2 * scale
    return np.concatenate([new_centre - half, new_centre + half])


def join_detections(parts: Sequence[Detections]) -> Detections:
    """Runs of consecutive frames detected apart (e.g. chunks on several workers) as one run: the
    picture change across each boundary is measured from the runs' boundary thumbnails."""
    faces: list[Detection | None] = []
    changes: list[float] = []
    detected: list[bool] = []
    previous = None
    for part in parts:
        part_changes = list(part.changes)
        if previous is not None and part.first_thumbnail is not None and part_changes:
            part_changes[0] = picture_change(previous, part.first_thumbnail)
        faces += part.faces
        changes += part_changes
        detected += part.detected if part.detected else [True] * len(part.faces)
        previous = part.last_thumbnail if part.last_thumbnail is not None else previous
    first = next((p.first_thumbnail for p in parts if p.first_thumbnail is not None), None)
    return Detections(faces, changes, first, previous, detected)


def build_track(detections: Detections, rate: float, smoothing: Smoothing | None) -> FaceTrack:
    """Smooth the detected quads over time, restarting at picture cuts (a change above
    ``smoothing.cut_pixels``), lost faces and quad jumps."""
    quads = [None if d is None else d.quad for d in detections.faces]
    cuts = [] if smoothing is None else [i for i, c in enumerate(detections.changes) if i > 0 and c > smoothing.cut_pixels]
    smoothed, starts = smooth_quads(quads, rate, smoothing, cuts)
    return FaceTrack(detections.faces, smoothed, starts, rate, smoothing)


def track_faces(frames: Iterable[ImageSource], landmarker: FaceLandmarker, rate: float,
                smoothing: Smoothing | None, face_index: int = 0,
                progress: Callable[[int], None] | None = None, tracking: Tracking | None = None) -> FaceTrack:
    """Find the face in every frame (detected, or followed with ``tracking``) and smooth its crop
    over time (see the module's docstring)."""
    return build_track(detect_frames(frames, landmarker, face_index, progress, tracking, rate), rate, smoothing)


def align_tracked(photo: Photo, track: FaceTrack, index: int, size: int) -> AlignedFace | None:
    """Frame ``index`` of the track (``photo``: that frame) aligned at its smoothed quad; None
    when the face was not found in that frame."""
    found = track.detections[index]
    if found is None:
        return None
    return align_detected(photo, found.box, found.points, size, quad=track.quads[index])


def align_clip_faces(frames: ImageSource | Sequence[ImageSource], landmarker: FaceLandmarker, size: int, rate: float,
                     smoothing: Smoothing | None, face_index: int = 0, skip_missing: bool = False,
                     progress: Callable[[int], None] | None = None,
                     tracking: Tracking | None = None) -> list[tuple[int, AlignedFace]]:
    """``align_clip``'s faces as (frame number, aligned face), with ``align_photos``' rule for frames
    without the face: an error naming the first, or with ``skip_missing`` left out; a clip with the
    face in no frame has nothing to align, which raises too."""
    faces, _ = align_clip(frames, landmarker, size, rate, smoothing, face_index, progress, tracking)
    missing = [i for i, face in enumerate(faces) if face is None]
    if len(missing) == len(faces):
        raise FaceNotFoundError(nothing_found(len(faces), "frame(s)"))
    if missing and not skip_missing:
        raise FaceNotFoundError(f"no face {face_index + 1} found in frame {missing[0] + 1} of {len(faces)} "
                                f"({len(missing)} frame(s) without it).")
    return [(i, face) for i, face in enumerate(faces) if face is not None]


def align_clip(frames: ImageSource | Sequence[ImageSource], landmarker: FaceLandmarker, size: int, rate: float,
               smoothing: Smoothing | None, face_index: int = 0,
               progress: Callable[[int], None] | None = None,
               tracking: Tracking | None = None) -> tuple[list[AlignedFace | None], FaceTrack]:
    """Every frame of a clip held in memory (e.g. a ComfyUI IMAGE batch [F, H, W, 3]) aligned at its
    smoothed quad: one ``AlignedFace`` or None (no face) per frame, and the track."""
    photos = clip_frames(frames)
    track = track_faces(photos, landmarker, rate, smoothing, face_index, progress, tracking)
    return [align_tracked(photo, track, i, size) for i, photo in enumerate(photos)], track
