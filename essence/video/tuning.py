"""A clip's own generator: pivotal tuning over its frames, before they are edited.

STIT (Tzaban et al. 2022, rotemtzaban/STIT, MIT) tunes one generator on the frames of a clip, each
frame around its own e4e pivot: the edited face is then the person in the clip, and the same person
from frame to frame (one generator for all, where tuning each frame alone would let the likeness
drift). The frames are those the face track crops: read once more from the file, each aligned at
256 px for e4e (the very crop the edit pass would invert, so the edit reuses these latents) and
cropped again at the generator's size for the tuning's target, which is kept as 8-bit pixels on the
CPU (3 MB a 1024 px frame). A long clip is tuned on at most ``PivotalTuning.frames`` frames spread
evenly over it. ``latents.invert_clip`` does the work; this module only reads the frames.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from ..errors import EssenceError
from ..faces import AlignedFace, FaceTrack, Photo, align_tracked, as_frame
from ..latents import LatentSet, PivotalTuning, invert_clip
from ..networks import INPUT_SIZE, E4EEncoder, StyleGAN2Generator
from .files import VideoInfo, read_frames


def tuned_clip(info: VideoInfo, track: FaceTrack, encoder: E4EEncoder, generator: StyleGAN2Generator,
               tuning: PivotalTuning, *, batch_size: int = 8) -> LatentSet:
    """The tracked face of the clip ``info`` on the frames ``tuning`` picks, inverted and with
    ``generator`` tuned to them (``tuning.settings.steps`` passes over them): their latents (each
    row's ``photo_index`` is its frame number), which the edit of those frames reuses, carrying the
    tuned weights that draw every frame of the clip."""
    chosen = tuning.picks([i for i, found in enumerate(track.detections) if found is not None])
    inversion = invert_clip(_tracked_frames(info, track, chosen), encoder, generator, tuning, batch_size=batch_size)
    if len(inversion.faces) != len(chosen):
        raise EssenceError(f"{info.path.name}: read {len(inversion.faces)} of the {len(chosen)} frames to tune on; "
                           f"was the file changed while it was being edited?")
    for tuned in inversion.tunings.values():
        tuned.info["source"]["clip"] = info.path.name
    return inversion.latent_set(generator)


def _tracked_frames(info: VideoInfo, track: FaceTrack,
                    chosen: Sequence[int]) -> Iterator[tuple[int, Photo, AlignedFace]]:
    """The ``chosen`` frames of the clip, read in one pass, each with its face aligned at the track."""
    wanted = set(chosen)
    for index, pixels in enumerate(read_frames(info.path, 0, chosen[-1] + 1, info)):
        if index in wanted:
            photo = as_frame(pixels, index)
            yield index, photo, align_tracked(photo, track, index, INPUT_SIZE)
