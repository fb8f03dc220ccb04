"""A clip tuned together (STIT's way): how much closer the tuned generator draws its frames than e4e
alone, what a tuning step costs, and the temporal identity of the edits with and without it.

    python -m bench.clip_tuning PHOTO [--frames 8] [--passes 15,50] [--fixtures tests/fixtures]

The clip is ``PHOTO`` as a still shot with camera noise (``bench.jitter.noisy_still``), so every
frame is the same person; the models are the tiny fixtures (a quick run on a CPU), the LPIPS and
ArcFace networks have random weights, so LPIPS and TL-ID / TG-ID mean little here: the PSNR gap is
the figure this run is for. Full-size step times are ``bench/tuning.py``'s (STIT's step).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch
from PIL import Image

import essence
from essence.faces import align_tracked, as_frame, load_landmarker, pil_to_model
from essence.latents import invert_aligned, pivotal_tuning
from essence.networks import IdentityConfig, build_identity
from essence.video import (apply_to_video, detect_video, probe_video, read_frames, temporal_identity, tuned_clip,
                           video_track, write_video)

from .jitter import noisy_still
from .tuning import models


def psnr(images: torch.Tensor, targets: torch.Tensor) -> float:
    """PSNR with the [-1, 1] range as peak."""
    return float(10 * torch.log10(4 / ((images.clamp(-1, 1) - targets) ** 2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", help="a photo with one face")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--passes", default="15,50", help="comma-separated pass counts to tune (STIT: 50)")
    parser.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    args = parser.parse_args()
    torch.manual_seed(0)
    generator, perceptual = models(torch.device("cpu"), args.fixtures)
    encoder = essence.load_encoder(args.fixtures / "e4e_tiny64.pt", cache=False)
    landmarks = load_landmarker()
    with tempfile.TemporaryDirectory() as folder:
        clip = _clip(Path(args.photo), args.frames, Path(folder))
        info = probe_video(clip)
        track = video_track(info, detect_video(info, landmarks), "normal")
        photos = [as_frame(frame, i) for i, frame in enumerate(read_frames(clip))]
        pivots = invert_aligned([align_tracked(p, track, i, 256) for i, p in enumerate(photos)], encoder).latents
        targets = pil_to_model([align_tracked(p, track, i, generator.size).crop for i, p in enumerate(photos)])
        print(f"{info.describe()}: the frames' aligned crops at {generator.size} px, PSNR")
        print(f"  e4e alone: {psnr(essence.render(generator, pivots), targets):.2f} dB")
        tuned = None
        for passes in (int(p) for p in args.passes.split(",")):
            began = time.perf_counter()
            tuning = pivotal_tuning(clip=True, steps=passes, perceptual=perceptual)
            tuned = tuned_clip(info, track, encoder, generator, tuning).tuned_rows()[0]
            seconds = time.perf_counter() - began
            drawn = essence.render(generator, pivots, tuned=tuned)
            print(f"  e4e + {passes} passes of STIT tuning: {psnr(drawn, targets):.2f} dB ({seconds:.1f} s, "
                  f"{seconds / (passes * len(photos)):.3f} s a step with the reading and inversion)")
        _identity(clip, generator, encoder, perceptual, landmarks, Path(folder), int(args.passes.split(",")[-1]))


def _clip(photo: Path, frames: int, folder: Path) -> Path:
    scene = Image.new("RGB", (240, 180), (70, 90, 110))
    with Image.open(photo) as picture:
        face = picture.convert("RGB")
    side = min(face.size)
    face = face.crop(((face.width - side) // 2, 0, (face.width + side) // 2, side)).resize((110, 110))
    scene.paste(face, (65, 35))
    return write_video(noisy_still(scene, frames, "gaussian"), folder / "clip.mkv", Fraction(25), (240, 180),
                       segment=True)  # lossless


def _identity(clip: Path, generator, encoder, perceptual, landmarks, folder: Path, passes: int) -> None:
    """TL-ID and TG-ID of one random essence applied with e4e alone and with the clip tuned."""
    direction = essence.Direction(torch.randn(1, generator.n_latent, generator.style_dim,
                                              generator=torch.Generator().manual_seed(3)) * 0.5, {"name": "random"})
    identity = build_identity(IdentityConfig.ir_se50(widths=(8, 16, 24, 32), embed_dim=32)).eval()
    print("Temporal identity of a random essence at strength 1 (random ArcFace):")
    for name, tuning in (("none", None), ("pti", pivotal_tuning(clip=True, steps=passes, perceptual=perceptual))):
        edited = apply_to_video(clip, folder / f"edited_{name}.mkv", direction, encoder=encoder,
                                generator=generator, landmarks=landmarks, tuning=tuning)
        print(f"  refine {name}: {temporal_identity(clip, edited.path, identity, landmarks).describe()}")


if __name__ == "__main__":
    main()
