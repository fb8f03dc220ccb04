"""Temporal smoothing of the face alignment over the frames of a video.

dlib's landmarks move by several pixels between frames that look the same (noise, compression), and
the FFHQ crop follows them: pasted back, the edited face shimmers although the head is still. The
crop of each frame is therefore taken at a *filtered* quad instead of the detected one.

What is filtered: the FFHQ quad, as its centre (2 numbers) and its half-side vector (2 numbers: size
and rotation), in frame pixels. The quad stays a square and its four numbers are what the crop
transform is made of, so filtering them is filtering the crop transform itself.

The filter: a One-Euro filter (Casiez, Roussel, Vogel, CHI 2012), a low-pass filter whose cutoff
rises with speed, so a still face is smoothed hard and a moving one follows with little lag. It is a
dozen lines; scipy's Savitzky-Golay filter would be the library choice, but scipy is not a runtime
dependency of Essence and a fixed-window filter lags (or overshoots) on fast head turns, which the
adaptive cutoff avoids. Speeds are measured in face sizes per second, so one setting works at any
resolution and frame rate.

When the whole clip is known before it is cropped (a video file, or a ComfyUI batch of frames), the
``offline`` preset smooths each shot with a Gaussian over time instead, centred on the frame: it
looks both ways, so a face moving at constant speed is followed with no lag at all (STIT, Tzaban et
al. 2022, smooths its video alignment this way). ``bench/jitter.py`` measures both filters.

Scene cuts restart the filter (the first frame of a shot is used as detected), so a quad is never
pulled towards the face of the previous shot. A frame starts a new shot when
- no face was found in the previous frame (the track is lost), or
- the detected quad jumps: a corner moves more than ``cut_jump`` face sizes since the previous
  frame (heads do not move a fifth of their size in 1/25 s; a cut to another face or framing does), or
- the picture changes: the mean absolute difference of 32 x 32 greyscale thumbnails of the two
  frames exceeds ``cut_pixels`` (0..1 scale; noise and motion inside a shot stay far below 0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from .align import quad_side, square_quad

THUMBNAIL = 32  # side of the greyscale thumbnail compared for cuts


@dataclass(frozen=True)
class Smoothing:
    """The filter for the crop, and the scene-cut thresholds.

    ``kind="one-euro"`` (causal, frame by frame): ``min_cutoff`` (Hz) is the cutoff frequency of a
    still face, lower is smoother (and lags more when the face starts to move); ``beta``: how fast the
    cutoff rises with speed, per face size per second; ``d_cutoff`` (Hz): the cutoff of the speed
    estimate itself. ``kind="gaussian"`` (offline, the whole shot): a Gaussian of ``sigma`` seconds
    centred on each frame.
    """

    min_cutoff: float = 1.0
    beta: float = 5.0
    d_cutoff: float = 1.0
    cut_jump: float = 0.2
    cut_pixels: float = 0.1
    kind: Literal["one-euro", "gaussian"] = "one-euro"
    sigma: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in ("one-euro", "gaussian"):
            raise ValueError(f"smoothing kind must be 'one-euro' or 'gaussian', got {self.kind!r}.")
        for name in ("min_cutoff", "d_cutoff", "cut_jump", "cut_pixels", "sigma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"smoothing {name} must be a positive number, got {value}.")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"smoothing beta must be zero or positive, got {self.beta}.")


# Named settings for the CLI and the nodes. "off" crops every frame at its detected quad.
SMOOTHING_PRESETS: dict[str, Smoothing | None] = {
    "off": None,
    "light": Smoothing(min_cutoff=3.0),
    "normal": Smoothing(min_cutoff=1.0),
    "strong": Smoothing(min_cutoff=0.3),
    "offline": Smoothing(kind="gaussian", sigma=0.2),
}


def smoothing_preset(name: str | Smoothing | None) -> Smoothing | None:
    """A preset name (or a ``Smoothing``, or None for off) -> the settings."""
    if name is None or isinstance(name, Smoothing):
        return name
    if name not in SMOOTHING_PRESETS:
        raise ValueError(f"unknown smoothing {name!r}; choose one of {', '.join(SMOOTHING_PRESETS)}.")
    return SMOOTHING_PRESETS[name]


# ----------------------------------------------------------------------------- quads


def quad_params(quad: np.ndarray) -> np.ndarray:
    """FFHQ quad [4, 2] (top-left, bottom-left, bottom-right, top-right) -> [centre x, centre y,
    half-side vector x, half-side vector y]."""
    quad = np.asarray(quad, dtype=np.float64)
    return np.concatenate([quad.mean(axis=0), (quad[3] - quad[0]) / 2])


def params_quad(params: np.ndarray) -> np.ndarray:
    """The inverse of ``quad_params``: a square quad from centre and half-side vector."""
    return square_quad(params[:2], params[2:])


def corner_movement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance (px) the four corners moved from quad ``a`` to quad ``b``: how far the crop moved."""
    return float(np.linalg.norm(np.asarray(b) - np.asarray(a), axis=1).mean())


# ----------------------------------------------------------------------------- cuts


def thumbnail(frame: np.ndarray | Image.Image) -> np.ndarray:
    """A 32 x 32 greyscale float thumbnail in 0..1 (what scene-cut detection compares)."""
    image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame))
    small = image.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def picture_change(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (0..1): above ``Smoothing.cut_pixels`` is a cut."""
    return float(np.abs(current - previous).mean())


def quad_jumped(previous: np.ndarray, current: np.ndarray, settings: Smoothing) -> bool:
    """True when a corner of the detected quad moved more than ``cut_jump`` face sizes."""
    moved = np.linalg.norm(np.asarray(current) - np.asarray(previous), axis=1).max()
    return bool(moved > settings.cut_jump * quad_side(previous))


# ----------------------------------------------------------------------------- the filter


class OneEuroFilter:
    """One-Euro filter over quad parameters at a fixed frame rate (``reset`` at a cut)."""

    def __init__(self, settings: Smoothing, rate: float):
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"the frame rate must be a positive number, got {rate}.")
        self.settings = settings
        self.period = 1.0 / rate
        self.reset()

    def reset(self) -> None:
        self._value: np.ndarray | None = None
        self._speed = np.zeros(4)

    def _alpha(self, cutoff: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / self.period)

    def __call__(self, params: np.ndarray) -> np.ndarray:
        params = np.asarray(params, dtype=np.float64)
        if self._value is None:
            self._value = params
            return params
        side = 2 * float(np.hypot(*params[2:]))
        speed = (params - self._value) / self.period / side  # face sizes per second
        self._speed = self._speed + self._alpha(self.settings.d_cutoff) * (speed - self._speed)
        cutoff = self.settings.min_cutoff + self.settings.beta * float(np.linalg.norm(self._speed))
        self._value = self._value + self._alpha(cutoff) * (params - self._value)
        return self._value


def smooth_quads(quads: Sequence[np.ndarray | None], rate: float, settings: Smoothing | None,
                 cuts: Sequence[int] = ()) -> tuple[list[np.ndarray | None], list[int]]:
    """The quads of consecutive frames (None where a frame has no face), filtered over time.

    ``cuts``: frames known to start a new shot (e.g. a large ``picture_change``); frames after a
    lost track and quad jumps are found here. Returns the filtered quads and every frame at which
    the filter started again (sorted). ``settings=None`` returns the quads unchanged.
    """
    if settings is None:
        return [None if q is None else np.asarray(q, dtype=np.float64) for q in quads], sorted(set(cuts))
    known = set(cuts)
    shots: list[list[int]] = []  # the frames of each shot, in order
    previous = None
    for i, quad in enumerate(quads):
        if quad is None:
            previous = None
            continue
        quad = np.asarray(quad, dtype=np.float64)
        if previous is None or i in known or quad_jumped(previous, quad, settings):
            shots.append([])
        shots[-1].append(i)
        previous = quad
    out: list[np.ndarray | None] = [None] * len(quads)
    for shot in shots:
        params = np.stack([quad_params(quads[i]) for i in shot])
        smoothed = _gaussian(params, settings.sigma * rate) if settings.kind == "gaussian" else \
            _one_euro(params, settings, rate)
        for i, row in zip(shot, smoothed):
            out[i] = params_quad(row)
    return out, [shot[0] for shot in shots]


def _one_euro(params: np.ndarray, settings: Smoothing, rate: float) -> np.ndarray:
    """One shot's quad parameters [T, 4], One-Euro filtered frame by frame."""
    smoother = OneEuroFilter(settings, rate)
    return np.stack([smoother(row) for row in params])


def _gaussian(params: np.ndarray, sigma_frames: float) -> np.ndarray:
    """One shot's quad parameters [T, 4], each replaced by a line fitted to its neighbours within 3
    sigma, weighted by a Gaussian, at that frame. Inside the shot this is the Gaussian-weighted mean
    (the window is symmetric); near the shot's ends, where the window is cut, the line keeps a steady
    move steady instead of pulling the last frames back. A dozen lines of numpy: scipy's
    ``gaussian_filter1d`` has no such ends, and Essence does not depend on scipy."""
    radius = int(math.ceil(3 * sigma_frames))
    if radius < 1 or len(params) < 3:
        return params
    out = np.empty_like(params)
    for t in range(len(params)):
        lo, hi = max(0, t - radius), min(len(params), t + radius + 1)
        dx = np.arange(lo, hi, dtype=np.float64) - t
        w = np.exp(-0.5 * (dx / sigma_frames) ** 2)
        s0, s1, s2 = w.sum(), (w * dx).sum(), (w * dx * dx).sum()
        t0, t1 = (w[:, None] * params[lo:hi]).sum(axis=0), ((w * dx)[:, None] * params[lo:hi]).sum(axis=0)
        out[t] = (s2 * t0 - s1 * t1) / (s0 * s2 - s1 * s1)  # the weighted line's value at this frame
    return out
