"""``python -m bench.video``: what one video frame costs outside the networks, per stage.

``essence apply --video`` spends each frame's time in decoding, finding the face (dlib), cropping it,
e4e, the generator, pasting the face back and encoding. The two networks are timed by
``python -m bench`` (generator and encoder sections); this times the rest on a real-size frame: a
still face photo placed in a ``--size`` frame (default 1920x1080), a short H.264 clip of it, and each
stage through the functions the video command uses. The face pasted back is a 1024 px image, as the
FFHQ generator renders it. Medians over the frames, in milliseconds, on one thread.

Finding the face is timed both ways ``--face-tracking`` offers: detected in every frame, and
followed from the previous frame (the shape predictor on a carried box, the tracked frames of a run
with face tracking on); "find face, tracking on" is their mix at the clip's rate, one detection per
second (the refresh interval) and the other frames followed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from essence.faces import (SMOOTHING_PRESETS, Detections, Tracking, align_tracked, as_frame, build_track, detect_frames,
                           load_landmarker, paste_back)
from essence.networks import INPUT_SIZE
from essence.video import probe_video, read_frames, write_video

from .jitter import noisy_still


def scene(photo: Path, size: tuple[int, int], face_height: float = 0.45) -> np.ndarray:
    """The photo scaled to ``face_height`` of the frame's height, centred on a grey frame."""
    picture = Image.open(photo).convert("RGB")
    height = int(size[1] * face_height)
    picture = picture.resize((int(picture.width * height / picture.height), height), Image.Resampling.LANCZOS)
    frame = Image.new("RGB", size, (90, 90, 90))
    frame.paste(picture, ((size[0] - picture.width) // 2, (size[1] - picture.height) // 2))
    return np.asarray(frame)


def timed(run, count: int) -> float:
    """Median milliseconds of ``run(i)`` over ``count`` calls."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(photo: Path, size: tuple[int, int], frames: int) -> dict[str, float]:
    torch.set_num_threads(1)
    clip_frames = list(noisy_still(Image.fromarray(scene(photo, size)), frames, "gaussian"))
    landmarker = load_landmarker()
    face = torch.rand(1024, 1024, 3)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        rate = Fraction(25)
        encode_ms = timed(lambda _: write_video(iter(clip_frames), clip, rate, size), 1) / frames
        info = probe_video(clip)
        decoded = []
        decode_ms = timed(lambda _: decoded.extend(read_frames(clip, 0, None, info)), 1) / frames
    photos = [as_frame(f, i) for i, f in enumerate(decoded)]
    detections = []
    detect_ms = timed(lambda i: detections.append(detect_frames([photos[i]], landmarker).faces[0]), frames)
    stamps = [time.perf_counter()]
    tracked = detect_frames(photos, landmarker, progress=lambda _: stamps.append(time.perf_counter()),
                            tracking=Tracking(refresh=frames / float(rate)), rate=float(rate))
    assert tracked.detected == [True] + [False] * (frames - 1)
    follow_ms = statistics.median(1000 * (b - a) for a, b in zip(stamps[1:-1], stamps[2:]))
    every = Tracking().interval(float(rate))
    track = build_track(Detections(detections, [0.0] * frames), float(rate),
                        SMOOTHING_PRESETS["normal"])
    aligned = []
    align_ms = timed(lambda i: aligned.append(align_tracked(photos[i], track, i, INPUT_SIZE)), frames)
    paste_ms = timed(lambda i: paste_back(decoded[i], face, aligned[i].transform), frames)
    return {"decode": decode_ms, "find face (dlib)": detect_ms, "follow face (tracked frame)": follow_ms,
            "find face, tracking on": (detect_ms + (every - 1) * follow_ms) / every, "align 256 px crop": align_ms,
            "paste back 1024 px face": paste_ms, "encode (H.264 CRF 18)": encode_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path, help="a still photo with one face")
    parser.add_argument("--size", default="1920x1080", help="frame size WxH (default 1920x1080)")
    parser.add_argument("--frames", type=int, default=8, help="frames to time (default 8)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    rows = measure(args.photo, (width, height), args.frames)
    print(f"per frame at {width}x{height}, median of {args.frames}:")
    for stage, ms in rows.items():
        print(f"  {stage:28} {ms:8.1f} ms")
    shared = sum(ms for stage, ms in rows.items() if not stage.startswith(("find", "follow")))
    print(f"  {'total, tracking off':28} {shared + rows['find face (dlib)']:8.1f} ms")
    print(f"  {'total, tracking on':28} {shared + rows['find face, tracking on']:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
