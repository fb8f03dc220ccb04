"""A clip's own generator: pivotal tuning over its frames, before they are edited.

STIT (Tzaban et al. 2022, rotemtzaban/STIT, MIT) tunes one generator on the frames of a clip, each
frame around its own e4e pivot: the edited face is then the person in the clip, and the same person
from frame to frame (one generator for all, where tuning each frame alone would let the likeness
drift). The frames are those the face track crops: read once more from the file, each aligned at
256 px for e4e (the very crop the edit pass inverts, so the pivots are the edit's latents) and at
the generator's size for the tuning's target, which is kept as 8-bit pixels on the CPU (3 MB a
1024 px frame). A long clip is tuned on at most ``max_frames`` frames spread evenly over it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import EssenceError
from ..faces import FaceTrack, align_tracked, as_frame, pil_to_pixels
from ..latents import STIT, TuningSettings, invert_aligned, tune_generator
from ..networks import INPUT_SIZE, E4EEncoder, StyleGAN2Generator, TunedWeights, perceptual_network
from .files import VideoInfo, read_frames

DEFAULT_TUNING_FRAMES = 300  # 10 s at 30 fps: 0.9 GB of 1024 px targets, 50 passes of 300 tuning steps


def check_tuning_frames(max_frames: int) -> None:
    if max_frames < 1:
        raise EssenceError(f"tuning a generator to a clip needs at least 1 frame, got {max_frames}.")


def tuning_frames(track: FaceTrack, max_frames: int = DEFAULT_TUNING_FRAMES) -> list[int]:
    """The frame numbers the generator is tuned on: every frame with the face, or ``max_frames`` of
    them spread evenly over the clip (first and last included)."""
    check_tuning_frames(max_frames)
    found = [i for i, detection in enumerate(track.detections) if detection is not None]
    if len(found) <= max_frames:
        return found
    picks = np.linspace(0, len(found) - 1, max_frames).round().astype(int)
    return [found[i] for i in sorted(set(picks.tolist()))]


def tune_to_clip(info: VideoInfo, track: FaceTrack, encoder: E4EEncoder, generator: StyleGAN2Generator,
                 perceptual: Any = None, settings: TuningSettings = STIT, *,
                 max_frames: int = DEFAULT_TUNING_FRAMES, batch_size: int = 8,
                 progress: Callable[[int, int], None] | None = None) -> TunedWeights:
    """``generator`` tuned to the tracked face of the clip ``info`` (STIT's settings by default:
    ``settings.steps`` passes over the frames); ``perceptual`` the LPIPS network or its backbone file
    (default: looked up). ``progress(pass, passes)`` hears every pass; it may raise to stop."""
    chosen = tuning_frames(track, max_frames)
    lpips = perceptual_network(perceptual, generator.latent_avg.device)
    wanted = set(chosen)
    pivots_from, targets = [], []
    for index, pixels in enumerate(read_frames(info.path, 0, chosen[-1] + 1, info)):
        if index in wanted:
            photo = as_frame(pixels, index)
            pivots_from.append(align_tracked(photo, track, index, INPUT_SIZE))
            targets.append(align_tracked(photo, track, index, generator.size).crop)
    if len(targets) != len(chosen):
        raise EssenceError(f"{info.path.name}: read {len(targets)} of the {len(chosen)} frames to tune on; "
                           f"was the file changed while it was being edited?")
    pivots = invert_aligned(pivots_from, encoder, batch_size=batch_size).latents
    heard = None if progress is None else (lambda done, steps, _last: progress(done, steps))
    tuned, _ = tune_generator(generator, pivots, pil_to_pixels(targets), lpips, settings, progress=heard)
    tuned.info.update(method="pivotal tuning over a clip (STIT)", source={"clip": info.path.name, "frames": chosen})
    return tuned
