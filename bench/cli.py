"""The benchmark's command line: ``python -m bench [options]`` from the repository root, or ``./run bench``.

Times the full-size generator (1024 px), the e4e encoder and TargetCLIP training with random
weights, prints a table and writes JSON. Errors a user can cause are printed as ``error: ...``
with exit status 2, like the ``essence`` command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from essence import load_generator, load_guide
from essence.demo import scikit_image_picture
from essence.errors import EssenceError
from essence.files import atomic_write
from essence.images import load_image
from essence.latents import load_latents
from essence.runtime import resolve_device
from essence.train import target_embedding

from .batch_rate import SIZES, batch_rows
from .measure import TRAIN_MODES, bench_quality, format_quality_row, plan, profile_train, run_all, run_one

PROG = "python -m bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Time the full-size generator (1024 px), the e4e encoder and TargetCLIP training ("
                    + ", ".join(TRAIN_MODES) + ") with random weights, print a table and write JSON.")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    parser.add_argument("--only", nargs="+",
                        choices=["generator", "encoder", "train", "candidates", "quality", "batch"],
                        default=["generator", "encoder", "train"],
                        help="sections (default: generator encoder train; 'candidates' times K directions "
                             "trained together; 'quality' compares the approximate training modes with the exact "
                             "one and needs the weight files; 'batch' measures tasks per hour of `essence batch "
                             "train` on a local Ray and needs Ray)")
    parser.add_argument("--modes", nargs="+", choices=list(TRAIN_MODES), default=None, metavar="MODE",
                        help="training modes to time (default: all)")
    parser.add_argument("--batches", nargs="+", type=int, default=None, metavar="N",
                        help="batch sizes for the generator and encoder sections (default: 1 4 16 / 1 32 128 "
                             "on CUDA, 1 4 / 1 8 on the CPU)")
    parser.add_argument("--candidates", nargs="+", type=int, default=None, metavar="K",
                        help="numbers of candidates for the candidates section (default 1 2 4 8; its mode: the "
                             "first of --modes, default fast)")
    parser.add_argument("--candidate-chunk", type=int, default=None, metavar="N",
                        help="candidates section: faces rendered per pass (default: all K x 4 at once)")
    parser.add_argument("--job-timeout", type=float, default=None, metavar="S",
                        help="skip a measurement still running after S seconds (default: no limit)")
    parser.add_argument("--profile", choices=list(TRAIN_MODES), default=None, metavar="MODE",
                        help="instead of timing, print torch.profiler's table of the operators in 3 steps of MODE")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="steps per training mode, the first a warm-up (default 3 on CPU, 30 on CUDA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    parser.add_argument("--json", type=Path, default=Path("output/bench.json"), help="where to write the results")
    quality = parser.add_argument_group("quality section (real models: looked up or given)")
    quality.add_argument("--generator", type=Path, default=None)
    quality.add_argument("--guide", type=Path, default=None)
    quality.add_argument("--target", type=Path, default=None, help="target picture (default: scikit-image's Chelsea)")
    quality.add_argument("--sources", type=Path, default=None, help="latent file (default: 4 samples, seed 1)")
    quality.add_argument("--quality-steps", type=int, default=100, help="training steps per mode (default 100)")
    batch = parser.add_argument_group("batch section (tasks per hour of `essence batch train`)")
    batch.add_argument("--batch-sizes", nargs="+", choices=SIZES, default=list(SIZES),
                       help="tiny: the fixture models; full: full-size models with random weights (default both)")
    batch.add_argument("--batch-workers", nargs="+", type=int, default=[1, 2], metavar="N",
                       help="numbers of workers to compare (default 1 2)")
    batch.add_argument("--batch-tasks", type=int, default=None, metavar="N",
                       help="tasks per worker (default 8 tiny, 1 full)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, printed as JSON
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when done, 2 for a user error (printed without a traceback)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        return _run(args)
    except EssenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.one:
        print(json.dumps(run_one(device, json.loads(args.one), args.repeats)))
        return 0
    if args.profile:
        print(profile_train(device, args.profile))
        return 0
    steps = args.train_steps or (30 if device.type == "cuda" else 3)
    timed = [section for section in args.only if section not in ("quality", "batch")]
    jobs = plan(device, timed, steps, modes=args.modes, batches=args.batches, candidates=args.candidates,
                candidate_chunk=args.candidate_chunk)
    report = run_all(device, jobs, args.repeats, args.threads, args.job_timeout) if jobs else {"rows": []}
    if "quality" in args.only:
        report["rows"] += _quality(args, device)
    if "batch" in args.only:
        report["rows"] += batch_rows(args.batch_sizes, args.batch_workers, args.batch_tasks, steps, device.type)
    if args.json is not None:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _quality(args: argparse.Namespace, device: torch.device) -> list[dict]:
    generator = load_generator(args.generator, device=device)
    guide = load_guide(args.guide, device=device)
    target = load_image(args.target or scikit_image_picture("chelsea.png"))
    sources = (load_latents(args.sources, generator).latents if args.sources
               else generator.sample_wplus(4, seed=1, truncation=0.7)).to(device)
    print(f"Approximate training modes vs the exact one: {args.quality_steps} steps each, same random start "
          f"(cosine and distance of the trained direction to the exact one; distance relative to the exact "
          f"update; exact-objective = the loss of the direction under full-size float32 rendering)")
    rows = bench_quality(generator, guide, target_embedding(guide, target), sources, args.quality_steps)
    for row in rows:
        print("  " + format_quality_row(row), flush=True)
    return rows
