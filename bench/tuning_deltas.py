"""How far pivotal tuning moves a generator's weights, how far they must move before rendering
breaks, and what hashing every synthesis weight costs: the evidence for ``MAX_TUNED_DELTA`` and the
full synthesis fingerprint (essence/networks/tuned.py; docs/metrics.md, "Tuned weights").

    python -m bench.tuning_deltas [--fixtures tests/fixtures] [--steps N] [--frames 4] [--device cpu]

Each recipe (PTI, STIT) tunes the generator with PTI's early stop off, so every step updates: the
largest differences that many steps can make. Two kinds of photo: another face of the same
generator (what tuning meets) and uniform noise (a target no generator draws, so the gradients keep
their sign: the worst case for how far Adam walks). Adam moves a weight by about its learning rate
per update, so ``lr x updates`` is printed beside each measured maximum. Then 2 faces are drawn
with differences of growing size: PTI's own (the face photo's) scaled up, and random ones on every
synthesis weight; printed: the share of saturated pixels (|x| > 1), the mean change of the picture
(of the range's 2) and whether every value is finite. Full-size random-weight models unless
``--fixtures DIR`` names the tiny fixture generator (all of PTI's 350 steps take minutes on a CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tuning import models  # noqa: E402
from essence.latents import PTI, STIT, TuningSettings, tune_generator  # noqa: E402
from essence.networks import (MAX_TUNED_DELTA, TunedWeights, render, synthesis_fingerprint,  # noqa: E402
                              synthesis_parameters)

MAGNITUDES = (0.1, 0.3, 1.0, 2.0, 5.0, 10.0, 100.0, 1000.0)


def photos(generator, kind: str, count: int) -> torch.Tensor:
    """``count`` targets at the generator's size: other faces of it, or uniform noise in [-1, 1]."""
    if kind == "noise":
        size = generator.size
        noise = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(5)) * 2 - 1
        return noise.to(generator.latent_avg.device)
    with torch.no_grad():
        return generator.synthesize(generator.sample_wplus(count, seed=2, truncation=0.7)).clamp(-1, 1)


def measure_tuning(generator, perceptual, name: str, settings: TuningSettings, frames: int) -> TunedWeights:
    """Tune to faces and to noise, printing the largest differences; the weights tuned to faces."""
    pivots = generator.sample_wplus(frames, seed=1, truncation=0.7)
    updates = settings.steps * frames
    tuned = {}
    for kind in ("face", "noise"):
        began = time.perf_counter()
        weights, _ = tune_generator(generator, pivots, photos(generator, kind, frames), perceptual, settings)
        seconds = time.perf_counter() - began
        print(f"  {name:5s} {kind:5s} lr {settings.learning_rate:g}, {settings.steps} step(s) x {frames} frame(s): "
              f"max |delta| {weights.largest():.4f} (lr x updates {settings.learning_rate * updates:.4f}; "
              f"{seconds:.0f} s)", flush=True)
        tuned[kind] = weights
    return tuned["face"]


def measure_breakage(generator, tuned: TunedWeights) -> None:
    """2 faces drawn with ``tuned`` scaled so that its largest difference is each magnitude, and
    with random differences up to it on every weight."""
    latents = generator.sample_wplus(2, seed=3, truncation=0.7)
    plain = render(generator, latents)
    print(f"  no deltas: {float((plain.abs() > 1).float().mean()):.1%} of pixels saturated", flush=True)
    largest = tuned.largest()
    for magnitude in MAGNITUDES:
        rng = torch.Generator().manual_seed(0)
        kinds = {"PTI's scaled": {name: delta.float() * (magnitude / largest) for name, delta in tuned.deltas.items()},
                 "random": {name: (torch.rand(p.shape, generator=rng) * 2 - 1) * magnitude
                            for name, p in synthesis_parameters(generator).items()}}
        for kind, deltas in kinds.items():
            weights = TunedWeights({name: delta.half() for name, delta in deltas.items()}, generator.fingerprint(),
                                   synthesis_sha256=synthesis_fingerprint(generator))
            print(f"  {kind:12s} deltas up to {magnitude:g}: {drawn(generator, latents, weights, plain)}", flush=True)


def drawn(generator, latents: torch.Tensor, weights: TunedWeights, plain: torch.Tensor) -> str:
    try:
        images = render(generator, latents, tuned=weights)
    except Exception as exc:  # the render refuses non-finite images: that is a finding
        return f"{type(exc).__name__}: {str(exc)[:90]}"
    saturated = float((images.abs() > 1).float().mean())
    change = float((images.clamp(-1, 1) - plain.clamp(-1, 1)).abs().mean())
    return f"{saturated:.1%} of pixels saturated, mean |change| {change:.3f} of 2"


def time_fingerprint(generator) -> None:
    count = sum(p.numel() for p in synthesis_parameters(generator).values())
    began = time.perf_counter()
    synthesis_fingerprint(generator)
    first = time.perf_counter() - began
    began = time.perf_counter()
    synthesis_fingerprint(generator)
    again = time.perf_counter() - began
    print(f"  full synthesis hash ({count / 1e6:.1f} M weights): {first:.2f} s, then {again * 1e3:.2f} ms cached",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fixtures", type=Path, default=None, help="use the tiny fixture generator from here")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps (PTI) and passes (STIT) per tuning (default: the recipes' own, 350 and 50)")
    parser.add_argument("--frames", type=int, default=4, help="frames STIT tunes on together (default 4)")
    args = parser.parse_args(argv)
    generator, perceptual = models(torch.device(args.device), args.fixtures)
    print(f"generator {generator.size} px on {args.device}, {torch.get_num_threads()} thread(s); "
          f"MAX_TUNED_DELTA = {MAX_TUNED_DELTA:g}", flush=True)
    time_fingerprint(generator)
    tuned = {}
    for name, recipe, frames in (("PTI", PTI, 1), ("STIT", STIT, args.frames)):
        settings = replace(recipe, lpips_stop=None, steps=args.steps or recipe.steps)
        tuned[name] = measure_tuning(generator, perceptual, name, settings, frames)
    measure_breakage(generator, tuned["PTI"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
