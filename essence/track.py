"""One face followed through the frames of a clip: detected in every frame, its crop smoothed over time.

A photo is aligned on its own; a frame is aligned knowing its neighbours. ``track_faces`` detects the
chosen face in every frame (the largest by default, as for photos: one face per frame keeps the work
per frame constant and the track unambiguous), notes scene cuts, and smooths the FFHQ quads over time
(``essence.smoothing``); ``align_tracked`` then crops each frame at its smoothed quad. Frames where
the face is not found are left out of the track (``None``): a video keeps them unedited rather than
stopping, since a face turned away for a moment is normal in a clip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .align import AlignedFace, FaceLandmarker, align_detected, detect_faces, ffhq_quad
from .images import MAX_PIXELS, ImageSource, Photo, load_photo, load_photos
from .smoothing import Smoothing, corner_movement, picture_change, smooth_quads, thumbnail


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

    def to_dict(self) -> dict[str, Any]:
        return {"faces": [None if f is None else f.to_dict() for f in self.faces],
                "changes": [float(c) for c in self.changes],
                "thumbnails": [None if t is None else t.tolist() for t in (self.first_thumbnail, self.last_thumbnail)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Detections":
        first, last = (None if t is None else np.array(t, dtype=np.float32) for t in data["thumbnails"])
        return cls([None if f is None else Detection.from_dict(f) for f in data["faces"]],
                   [float(c) for c in data["changes"]], first, last)


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


def detect_frames(frames: Iterable[ImageSource], landmarker: FaceLandmarker, face_index: int = 0,
                  progress: Callable[[int], None] | None = None) -> Detections:
    """Detect face number ``face_index`` (0 = the largest) in every frame, and how much each frame's
    picture changed. ``progress(frames done)`` is called after each frame; it may raise to stop."""
    faces: list[Detection | None] = []
    changes: list[float] = []
    first = previous = None
    for i, frame in enumerate(frames):
        photo = as_frame(frame, i)
        found = detect_faces(photo, landmarker)
        faces.append(Detection(*found[face_index]) if len(found) > face_index else None)
        small = thumbnail(photo.image)
        changes.append(0.0 if previous is None else picture_change(previous, small))
        first = small if first is None else first
        previous = small
        if progress is not None:
            progress(i + 1)
    return Detections(faces, changes, first, previous)


def join_detections(parts: Sequence[Detections]) -> Detections:
    """Runs of consecutive frames detected apart (e.g. chunks on several workers) as one run: the
    picture change across each boundary is measured from the runs' boundary thumbnails."""
    faces: list[Detection | None] = []
    changes: list[float] = []
    previous = None
    for part in parts:
        part_changes = list(part.changes)
        if previous is not None and part.first_thumbnail is not None and part_changes:
            part_changes[0] = picture_change(previous, part.first_thumbnail)
        faces += part.faces
        changes += part_changes
        previous = part.last_thumbnail if part.last_thumbnail is not None else previous
    first = next((p.first_thumbnail for p in parts if p.first_thumbnail is not None), None)
    return Detections(faces, changes, first, previous)


def build_track(detections: Detections, rate: float, smoothing: Smoothing | None) -> FaceTrack:
    """Smooth the detected quads over time, restarting at picture cuts (a change above
    ``smoothing.cut_pixels``), lost faces and quad jumps."""
    quads = [None if d is None else d.quad for d in detections.faces]
    cuts = [] if smoothing is None else [i for i, c in enumerate(detections.changes) if i > 0 and c > smoothing.cut_pixels]
    smoothed, starts = smooth_quads(quads, rate, smoothing, cuts)
    return FaceTrack(detections.faces, smoothed, starts, rate, smoothing)


def track_faces(frames: Iterable[ImageSource], landmarker: FaceLandmarker, rate: float,
                smoothing: Smoothing | None, face_index: int = 0,
                progress: Callable[[int], None] | None = None) -> FaceTrack:
    """Detect the face in every frame and smooth its crop over time (see the module's docstring)."""
    return build_track(detect_frames(frames, landmarker, face_index, progress), rate, smoothing)


def align_tracked(photo: Photo, track: FaceTrack, index: int, size: int) -> AlignedFace | None:
    """Frame ``index`` of the track (``photo``: that frame) aligned at its smoothed quad; None
    when the face was not found in that frame."""
    found = track.detections[index]
    if found is None:
        return None
    return align_detected(photo, found.box, found.points, size, quad=track.quads[index])


def align_clip(frames: ImageSource | Sequence[ImageSource], landmarker: FaceLandmarker, size: int, rate: float,
               smoothing: Smoothing | None, face_index: int = 0,
               progress: Callable[[int], None] | None = None) -> tuple[list[AlignedFace | None], FaceTrack]:
    """Every frame of a clip held in memory (e.g. a ComfyUI IMAGE batch [F, H, W, 3]) aligned at its
    smoothed quad: one ``AlignedFace`` or None (no face) per frame, and the track."""
    photos = [as_frame(photo, i) for i, photo in enumerate(load_photos(frames, work_pixels=MAX_PIXELS))]
    track = track_faces(photos, landmarker, rate, smoothing, face_index, progress)
    return [align_tracked(photo, track, i, size) for i, photo in enumerate(photos)], track
