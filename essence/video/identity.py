"""How steady the person in an edited clip stays: STIT's temporal identity measures.

TL-ID (local) is the ArcFace similarity of each frame's face to the next frame's, averaged; TG-ID
(global) is the similarity of every pair of frames, averaged. STIT (Tzaban et al. 2022) gives each
for the edited clip over the same for the original: 1 means the edit kept the person as steady as
the footage itself, below 1 that it made the likeness flicker (TL-ID) or drift (TG-ID). Both clips
are cropped at the original's face track, so their crops differ only by the edit; neighbouring
frames across a scene cut are not compared.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from ..errors import EssenceError, VideoInputError
from ..faces import (FaceLandmarker, FaceTrack, align_tracked, as_frame, load_landmarker, pil_to_model,
                     tracking_settings)
from ..networks import INPUT_SIZE, IdentityEncoder
from .edit import detect_video, video_track
from .files import VideoInfo, probe_video, read_frames

PathLike = str | os.PathLike


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
class TemporalIdentity:
    """TL-ID and TG-ID of an edited clip against its original, over ``frames`` frames with the face."""

    edited: str
    frames: int
    local: Consistency   # TL-ID: neighbouring frames
    overall: Consistency  # TG-ID: every pair of frames

    def to_dict(self) -> dict[str, Any]:
        return {"edited": self.edited, "frames": self.frames, "tl_id": self.local.to_dict(),
                "tg_id": self.overall.to_dict()}

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
    (``face_index``, ``smoothing``, ``face_tracking``). ``progress(frames)`` hears the face search."""
    info, other = probe_video(original), probe_video(edited)
    if (other.frames, other.width, other.height) != (info.frames, info.width, info.height):
        raise VideoInputError(f"{other.path.name} ({other.frames} frames, {other.width}x{other.height}) is not a "
                              f"frame-for-frame edit of {info.path.name} ({info.frames} frames, {info.width}x"
                              f"{info.height}); the measures compare the two clips frame by frame.")
    landmarker = landmarks if isinstance(landmarks, FaceLandmarker) else load_landmarker(landmarks)
    detections = detect_video(info, landmarker, face_index, progress=progress,
                              tracking=tracking_settings(face_tracking))
    track = video_track(info, detections, smoothing)
    present, originals, edits = _embeddings(info, other, track, identity, batch_size)
    if len(present) < 2:
        raise EssenceError(f"{info.path.name}: the face is in {len(present)} frame(s); the temporal identity "
                           f"measures need at least 2.")
    pairs = [(a, b) for a, b in zip(range(len(present) - 1), range(1, len(present)))
             if present[b] == present[a] + 1 and present[b] not in track.cuts]
    if not pairs:
        raise EssenceError(f"{info.path.name}: no two neighbouring frames both show the face; TL-ID needs some.")
    return TemporalIdentity(other.path.name, len(present),
                            Consistency(_neighbours(originals, pairs), _neighbours(edits, pairs)),
                            Consistency(_all_pairs(originals), _all_pairs(edits)))


def _embeddings(info: VideoInfo, other: VideoInfo, track: FaceTrack, identity: IdentityEncoder,
                batch_size: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The frames with the face, and the ArcFace unit vectors of their crops in both clips."""
    present: list[int] = []
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
        crops["original"].append(face.crop)
        crops["edited"].append(align_tracked(as_frame(after, index), track, index, INPUT_SIZE).crop)
        if len(crops["original"]) == batch_size:
            flush()
    flush()
    empty = torch.empty(0, identity.embed_dim)
    return present, *(torch.cat(v) if v else empty for v in vectors.values())


def _neighbours(units: torch.Tensor, pairs: list[tuple[int, int]]) -> float:
    a, b = zip(*pairs)
    return float((units[list(a)] * units[list(b)]).sum(dim=1).mean())


def _all_pairs(units: torch.Tensor) -> float:
    """The mean cosine over every pair of distinct frames, without the F x F matrix: for unit
    vectors, the sum over i != j of e_i . e_j is |sum of e|^2 - F."""
    count = len(units)
    total = units.double().sum(dim=0)
    return float((total @ total - count) / (count * (count - 1)))
