"""Time of pivotal tuning per photo: PTI's step (render, L2 + LPIPS, Adam over the synthesis weights)
and STIT's (the same plus the locality probe), with peak memory; and what drawing a clip's frames
with tuned weights costs against the plain generator (the video path's render, per frame).

    python bench/tuning.py [--device cuda] [--steps 40] [--fixtures DIR] [--records DIR]

Full-size random-weight models (a 1024 px generator, LPIPS with a random AlexNet) unless
``--fixtures DIR`` names the tiny fixture generator (a quick run anywhere). The photo is another
face of the same generator, so no step reaches PTI's LPIPS stop and every step updates: the time
per photo at PTI's 350 steps is the upper bound; the median step is taken after 5 warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import _peak_tracker  # noqa: E402
from bench.records import device_label, record, write_records  # noqa: E402
from essence.latents import PTI, STIT, TuningSettings, tune_generator  # noqa: E402
from essence.networks import GeneratorConfig, build_generator, load_generator, load_perceptual, render  # noqa: E402

WARMUP = 5


def models(device: torch.device, fixtures: Path | None):
    """The generator and an LPIPS network whose AlexNet has random weights (what is timed does not
    depend on them)."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    if fixtures is not None:
        generator = load_generator(fixtures / "stylegan2_tiny64.pt", device=device, cache=False)
    else:
        generator = build_generator(GeneratorConfig.ffhq_config_f(), device=device).requires_grad_(False)
    with tempfile.TemporaryDirectory() as folder:  # a random AlexNet in torchvision's file format
        path = Path(folder) / "alexnet-random.pth"
        torch.save(alexnet().state_dict(), path)
        perceptual = load_perceptual(path, device=device, cache=False)
    return generator, perceptual


def time_tuning(generator, perceptual, settings: TuningSettings, device: torch.device) -> tuple[float, float]:
    """Median seconds per step after the warm-up, and the peak GB the tuning added."""
    pivot = generator.sample_wplus(1, seed=1, truncation=0.7)
    with torch.no_grad():
        photo = generator.synthesize(generator.sample_wplus(1, seed=2, truncation=0.7)).clamp(-1, 1)
    stamps: list[float] = []

    def progress(step, steps, last) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    peak = _peak_tracker(device)
    tune_generator(generator, pivot, photo, perceptual, settings, progress=progress)
    steps = [b - a for a, b in zip(stamps[WARMUP:-1], stamps[WARMUP + 1:])]
    return statistics.median(steps), peak() / 1024


def time_frames(generator, perceptual, device: torch.device, frames: int = 8, repeats: int = 3) -> dict[str, float]:
    """Seconds per frame to draw ``frames`` frames in one batch (as ``essence apply --video`` does),
    with the plain generator and with weights tuned to them; the median of ``repeats`` after a warm-up."""
    latents = generator.sample_wplus(frames, seed=3, truncation=0.7)
    with torch.no_grad():
        photo = generator.synthesize(generator.sample_wplus(1, seed=2, truncation=0.7)).clamp(-1, 1)
    tuned, _ = tune_generator(generator, latents[:1], photo, perceptual, replace(PTI, steps=1, lpips_stop=None))
    timings = {}
    for name, weights in (("plain", None), ("tuned", tuned)):
        stamps = []
        for _ in range(repeats + 1):
            began = time.perf_counter()
            render(generator, latents, batch_size=frames, tuned=weights)  # results come back to the CPU: synchronised
            stamps.append(time.perf_counter() - began)
        timings[name] = statistics.median(stamps[1:]) / frames
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40, help="steps timed per recipe (default 40)")
    parser.add_argument("--fixtures", type=Path, default=None, help="use the tiny fixture generator from here")
    parser.add_argument("--records", type=Path, default=None, help="save the records in this folder")
    args = parser.parse_args(argv)
    if args.steps < WARMUP + 3:
        parser.error(f"--steps must be at least {WARMUP + 3}")
    device = torch.device(args.device)
    generator, perceptual = models(device, args.fixtures)
    label = device_label(device)
    size = f"{generator.size} px"
    records = []
    for name, recipe in (("PTI", PTI), ("STIT (locality)", STIT)):
        settings = replace(recipe, steps=args.steps, lpips_stop=None)
        seconds, peak = time_tuning(generator, perceptual, settings, device)
        per_photo = seconds * recipe.steps
        print(f"  tuning {name:16s} {size}: {seconds:.4f} s/step, {per_photo:.1f} s per photo at "
              f"{recipe.steps} steps, {peak:.2f} GB", flush=True)
        records.append(record(label, f"pivotal tuning step, {name}", f"{size}, float32", True, 1, args.steps,
                              seconds, peak, recipe_steps=recipe.steps, seconds_per_photo=round(per_photo, 3)))
    frames = time_frames(generator, perceptual, device)
    print(f"  drawing video frames {size}, 8 a batch: {frames['plain']:.4f} s a frame with the plain generator, "
          f"{frames['tuned']:.4f} s with tuned weights", flush=True)
    for name, seconds in frames.items():
        records.append(record(label, f"video frames drawn, {name} generator", f"{size}, float32", True, 8, 3,
                              seconds, None, seconds_per_frame=round(seconds, 5)))
    if args.records is not None:
        print(f"wrote {write_records(records, args.records, run='tuning')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
