"""How steady the person in an edited clip stays: STIT's temporal identity measures.

TL-ID (local) is the ArcFace similarity of each frame's face to the next frame's, averaged; TG-ID
(global) is the similarity of every pair of frames, averaged. STIT (Tzaban et al. 2022) gives each
for the edited clip over the same for the original: 1 means the edit kept the person as steady as
the footage itself, below 1 that it made the likeness flicker (TL-ID) or drift (TG-ID). Both clips
are cropped at the original's face track, so their crops differ only by the edit; neighbouring
frames across a scene cut are not compared.

Cropping at the original's track also means a blank or face-wiped edit is cropped where the face
was, and an identity network is perfectly self-consistent on blank crops: such a clip would score
as well as the original. So dlib's detector looks at a few of the edited crops spread over the clip
(``FacesFound``), and a warning says when some hold no face.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..errors import EssenceError, EssenceWarning, VideoInputError
from ..faces import (FaceLandmarker, FaceTrack, align_tracked, as_frame, landmarker_from, pil_to_model,
                     tracking_settings)
from ..networks import INPUT_SIZE, IdentityEncoder
from .edit import detect_video, video_track
from .files import VideoInfo, probe_video, read_frames

PathLike = str | os.PathLike
CropPair = tuple[Image.Image, Image.Image]  # a frame's crops in the original and in the edited clip
FACE_SAMPLES = 8  # edited crops checked for a face: enough to see a blank or wiped clip, ~30 ms each


@dataclass(frozen=True)
class Consistency:
    """One measure (mean cosine similarity) of the original clip, of the edited one, and their ratio."""

    original: float
    edited: float

    @property
    def ratio(self) -> float:
        return self.edited / self.original

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass(frozen=True)
class FacesFound:
    """Of the edited clip's crops sampled over the clip whose original crop holds a face (dlib's
    detector), how many hold one too: TL-ID and TG-ID speak of identity only where they do."""

    sampled: int
    with_face: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class TemporalIdentity:
    """TL-ID and TG-ID of an edited clip against its original, over ``frames`` frames with the face."""

    edited: str
    frames: int
    local: Consistency   # TL-ID: neighbouring frames
    overall: Consistency  # TG-ID: every pair of frames
    faces: FacesFound

    def to_dict(self) -> dict[str, Any]:
        return {"edited": self.edited, "frames": self.frames, "tl_id": self.local.to_dict(),
                "tg_id": self.overall.to_dict(), "faces_found": self.faces.to_dict()}

    def describe(self) -> str:
        return (f"TL-ID {self.local.ratio:.3f} (edited {self.local.edited:.3f} / original {self.local.original:.3f}), "
                f"TG-ID {self.overall.ratio:.3f} (edited {self.overall.edited:.3f} / original "
                f"{self.overall.original:.3f}) over {self.frames} frames")


def temporal_identity(original: PathLike, edited: PathLike, identity: IdentityEncoder,
                      landmarks: FaceLandmarker | PathLike | None = None, *, face_index: int = 0,
                      smoothing: str | None = "normal", face_tracking: bool = True, batch_size: int = 16,
                      progress: Callable[[int], None] | None = None) -> TemporalIdentity:
    """TL-ID and TG-ID of ``edited`` (a clip made from ``original``, frame for frame) with the
    ArcFace network ``identity``; the face is found in ``original`` as ``apply_to_video`` finds it
    (``face_index``, ``smoothing``, ``face_tracking``). ``progress(frames)`` hears the face search.
    Warns (``EssenceWarning``) when sampled crops of ``edited`` hold no face (see ``FacesFound``)."""
    info, other = probe_video(original), probe_video(edited)
    if (other.frames, other.width, other.height) != (info.frames, info.width, info.height):
        raise VideoInputError(f"{other.path.name} ({other.frames} frames, {other.width}x{other.height}) is not a "
                              f"frame-for-frame edit of {info.path.name} ({info.frames} frames, {info.width}x"
                              f"{info.height}); the measures compare the two clips frame by frame.")
    landmarker = landmarker_from(landmarks)
    detections = detect_video(info, landmarker, face_index, progress=progress,
                              tracking=tracking_settings(face_tracking))
    track = video_track(info, detections, smoothing)
    checked = _spread([i for i, found in enumerate(track.detections) if found is not None], FACE_SAMPLES)
    present, originals, edits, samples = _embeddings(info, other, track, identity, batch_size, checked)
    if len(present) < 2:
        raise EssenceError(f"{info.path.name}: the face is in {len(present)} frame(s); the temporal identity "
                           f"measures need at least 2.")
    pairs = [(a, b) for a, b in zip(range(len(present) - 1), range(1, len(present)))
             if present[b] == present[a] + 1 and present[b] not in track.cuts]
    if not pairs:
        raise EssenceError(f"{info.path.name}: no two neighbouring frames both show the face; TL-ID needs some.")
    faces = _faces_found(samples, landmarker)
    _warn_faceless(other.path.name, faces)
    return TemporalIdentity(other.path.name, len(present),
                            Consistency(_neighbours(originals, pairs), _neighbours(edits, pairs)),
                            Consistency(_all_pairs(originals), _all_pairs(edits)), faces)


def _spread(frames: list[int], count: int) -> set[int]:
    """At most ``count`` of ``frames``, evenly spread from the first to the last, so that a face
    wiped from only part of a clip is still seen."""
    if not frames:
        return set()
    return {frames[i] for i in np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)}


def _faces_found(samples: list[CropPair], landmarker: FaceLandmarker) -> FacesFound:
    """``FacesFound`` of (original crop, edited crop) pairs; a pair whose original crop holds no face
    either (a face the track followed turned away) says nothing about the edit and is not counted."""
    sampled = with_face = 0
    for original, edited in samples:
        if landmarker.detect(np.asarray(edited)):
            sampled, with_face = sampled + 1, with_face + 1
        elif landmarker.detect(np.asarray(original)):
            sampled += 1
    return FacesFound(sampled, with_face)


def _warn_faceless(name: str, faces: FacesFound) -> None:
    missing = faces.sampled - faces.with_face
    if missing:
        meaning = "say nothing about identity" if faces.with_face == 0 else "partly measure crops without a face"
        warnings.warn(EssenceWarning(f"{missing} of {faces.sampled} sampled crops of {name} hold no face at the "
                                     f"original's face track: its TL-ID/TG-ID {meaning}."), stacklevel=3)


def _embeddings(info: VideoInfo, other: VideoInfo, track: FaceTrack, identity: IdentityEncoder, batch_size: int,
                checked: set[int]) -> tuple[list[int], torch.Tensor, torch.Tensor, list[CropPair]]:
    """The frames with the face, the ArcFace unit vectors of their crops in both clips, and the
    (original, edited) crops of the ``checked`` frames."""
    present: list[int] = []
    samples: list[CropPair] = []
    vectors: dict[str, list[torch.Tensor]] = {"original": [], "edited": []}
    crops: dict[str, list] = {"original": [], "edited": []}

    def flush() -> None:
        for name, batch in crops.items():
            if batch:
                with torch.no_grad():
                    vectors[name].append(identity.embed(pil_to_model(batch), batch_size).float().cpu())
                batch.clear()

    pairs = zip(read_frames(info.path, info=info), read_frames(other.path, info=other))
    for index, (before, after) in enumerate(pairs):
        face = align_tracked(as_frame(before, index), track, index, INPUT_SIZE)
        if face is None:
            continue
        present.append(index)
        edited = align_tracked(as_frame(after, index), track, index, INPUT_SIZE).crop
        crops["original"].append(face.crop)
        crops["edited"].append(edited)
        if index in checked:
            samples.append((face.crop, edited))
        if len(crops["original"]) == batch_size:
            flush()
    flush()
    empty = torch.empty(0, identity.embed_dim)
    return present, *(torch.cat(v) if v else empty for v in vectors.values()), samples


def _neighbours(units: torch.Tensor, pairs: list[tuple[int, int]]) -> float:
    a, b = zip(*pairs)
    return float((units[list(a)] * units[list(b)]).sum(dim=1).mean())


def _all_pairs(units: torch.Tensor) -> float:
    """The mean cosine over every pair of distinct frames, without the F x F matrix: for unit
    vectors, the sum over i != j of e_i . e_j is |sum of e|^2 - F."""
    count = len(units)
    total = units.double().sum(dim=0)
    return float((total @ total - count) / (count * (count - 1)))
