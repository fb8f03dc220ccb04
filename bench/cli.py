"""The benchmark's command line: ``python -m bench [options]`` from the repository root, or ``./run bench``.

Times the full-size generator (1024 px), the e4e encoder and TargetCLIP training with random
weights, prints a table and writes JSON; ``--records DIR`` also saves every measurement as records
(``bench.records``) from which ``python -m bench.tables`` makes the tables of docs/benchmarks.md.
Errors a user can cause are printed as ``error: ...`` with exit status 2, like the ``essence`` command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch

from essence import load_generator, load_guide
from essence.errors import EssenceError
from essence.faces import load_image, scikit_image_picture
from essence.latents import load_latents
from essence.runtime import resolve_device
from essence.storage import atomic_write
from essence.training import TrainingTarget

from . import records as rec
from .batch_rate import SIZES, batch_rows
from .encoder_study import add_options as add_study_options
from .encoder_study import study_main
from .measure import (LIBRARY_MODES, TRAIN_MODES, bench_precision, bench_quality, files_problem, format_precision,
                      format_quality_row, plan, profile_train, run_all, run_one, training_problem)

PROG = "python -m bench"
TIMED = ("generator", "encoder", "train", "candidates", "encode", "encoder_train")
SECTIONS = TIMED + ("quality", "precision", "breakdown", "compile", "batch", "encoder_study")
EXACT_MODES = {name for name, mode in LIBRARY_MODES.items() if mode.exact} | {"fast+chunk1", "fast+chunk2",
                                                                               "fast+recompute512"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Time the full-size generator (1024 px), the e4e encoder and TargetCLIP training ("
                    + ", ".join(TRAIN_MODES) + ") with random weights, print a table and write JSON.")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=["generator", "encoder", "train"],
                        help="sections (default: generator encoder train; 'candidates' times K directions "
                             "trained together; 'encode' and 'encoder_train' time the encoder variant; 'quality' compares the approximate training modes with the exact "
                             "one and 'precision' the exact objective bf16 reaches over seeds and targets, both with "
                             "the weight files unless --random-weights; 'breakdown' profiles training steps by "
                             "operator category and resolution; 'compile' times torch.compile of the generator; 'batch' measures tasks per hour of "
                             "`essence batch train` on a local Ray and needs Ray; 'encoder_study' measures the encoder "
                             "variant's warm start, quality and training data on the tiny fixture models: "
                             "bench/encoder_study.py, about 20 minutes on 2 CPU cores)")
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
    parser.add_argument("--records", type=Path, default=None, metavar="DIR",
                        help="also save every measurement as JSON records, one file per run, in DIR "
                             "(e.g. bench/results; python -m bench.tables makes docs/benchmarks.md's tables of them)")
    quality = parser.add_argument_group("quality and precision sections (real models: looked up or given)")
    quality.add_argument("--generator", type=Path, default=None,
                         help="generator file (also used by breakdown and compile instead of the full-size random one)")
    quality.add_argument("--guide", type=Path, default=None, help="CLIP file (likewise)")
    quality.add_argument("--random-weights", action="store_true",
                         help="quality and precision: the full-size models with random weights instead of files")
    quality.add_argument("--target", type=Path, nargs="+", default=None,
                         help="target picture(s): quality uses the first (default: scikit-image's Chelsea), "
                              "precision all (default: Chelsea and the astronaut)")
    quality.add_argument("--sources", type=Path, default=None, help="latent file (default: 4 samples, seed 1)")
    quality.add_argument("--quality-steps", type=int, default=100, help="training steps per mode (default 100)")
    quality.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                         help="precision: random starts per target (default 0 1 2 3 4)")
    quality.add_argument("--precision-mode", choices=[m for m in LIBRARY_MODES if not LIBRARY_MODES[m].exact],
                         default="fast+bf16", help="precision: the approximate mode to judge (default fast+bf16)")
    quality.add_argument("--models-for-timing", action="store_true",
                         help="train and candidates: time the --generator and --guide files instead of the full-size "
                              "random models (for quick checks with the tiny test fixtures)")
    study = parser.add_argument_group("breakdown and compile sections (full-size random models unless "
                                      "--generator and --guide are given)")
    study.add_argument("--profile-steps", type=int, default=2, help="breakdown: steps profiled (default 2)")
    study.add_argument("--breakdown-md", type=Path, default=Path("output/breakdown.md"),
                       help="breakdown: where to write its tables (Markdown; default output/breakdown.md)")
    study.add_argument("--compile-steps", type=int, default=None,
                       help="compile: training steps per run, eager and compiled (default: --train-steps)")
    study.add_argument("--compile-cache", type=Path, default=Path("output/inductor-cache"),
                       help="compile: the persistent compile cache (TORCHINDUCTOR_CACHE_DIR), emptied first")
    batch = parser.add_argument_group("batch section (tasks per hour of `essence batch train`)")
    batch.add_argument("--batch-sizes", nargs="+", choices=SIZES, default=list(SIZES),
                       help="tiny: the fixture models; full: full-size models with random weights (default both)")
    batch.add_argument("--batch-workers", nargs="+", type=int, default=[1, 2], metavar="N",
                       help="numbers of workers to compare (default 1 2)")
    batch.add_argument("--batch-tasks", type=int, default=None, metavar="N",
                       help="tasks per worker (default 8 tiny, 1 full)")
    add_study_options(parser.add_argument_group("encoder_study section (the tiny fixture models; whole study "
                                                "also: python -m bench.encoder_study)"), prefix="study-")
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
    timed = [section for section in args.only if section in TIMED]
    files = {"generator": str(args.generator), "guide": str(args.guide)} if args.generator and args.guide else None
    jobs = plan(device, timed, steps, modes=args.modes, batches=args.batches, candidates=args.candidates,
                candidate_chunk=args.candidate_chunk, files=files if args.models_for_timing else None)
    report = run_all(device, jobs, args.repeats, args.threads, args.job_timeout) if jobs else {"rows": []}
    label = rec.device_label(device)
    records = rec.records_from_rows(report["rows"], label, EXACT_MODES)
    if "quality" in args.only:
        rows = _quality(args, device)
        report["rows"] += rows
        records += [rec.record(label, "quality vs exact direction", r["mode"], r["mode"] in EXACT_MODES, 1, r["steps"],
                               r["seconds"] / r["steps"], None, exact_objective=r["exact_loss"],
                               cosine_to_exact=r["cosine_to_exact"], models=_models_name(args)) for r in rows]
    for section, run in (("precision", _precision), ("breakdown", _breakdown), ("compile", _compile)):
        if section in args.only:
            rows, new_records = run(args, device, steps, label)
            report["rows"] += rows
            records += new_records
    if "batch" in args.only:
        report["rows"] += batch_rows(args.batch_sizes, args.batch_workers, args.batch_tasks, steps, device.type)
    if "encoder_study" in args.only:  # its own JSON (output/encoder_study.json, bench/results/encoder_study/)
        study_main(args.study_full, args.study_identity, args.study_results)
    if args.json is not None:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    if args.records is not None and records:
        print(f"wrote {rec.write_records(records, args.records, run='-'.join(args.only))}")
    return 0


def _models_name(args: argparse.Namespace) -> str:
    if args.random_weights:
        return "full-size, random weights"
    return f"{args.generator.name if args.generator else 'generator looked up'} + " \
           f"{args.guide.name if args.guide else 'guide looked up'}"


def _models(args: argparse.Namespace, device: torch.device):
    """The generator and guide of the quality and precision sections."""
    if args.random_weights:
        problem = training_problem(device)
        return problem["generator"], problem["guide"]
    return load_generator(args.generator, device=device), load_guide(args.guide, device=device)


def _sources(args: argparse.Namespace, generator, device: torch.device) -> torch.Tensor:
    return (load_latents(args.sources, generator).latents if args.sources
            else generator.sample_wplus(4, seed=1, truncation=0.7)).to(device)


def _problem(args: argparse.Namespace, device: torch.device) -> dict:
    """The breakdown and compile sections' training problem: the files given, else full size, random weights."""
    if args.generator and args.guide:
        return files_problem(device, str(args.generator), str(args.guide))
    return training_problem(device)


def _quality(args: argparse.Namespace, device: torch.device) -> list[dict]:
    generator, guide = _models(args, device)
    target = load_image(args.target[0] if args.target else scikit_image_picture("chelsea.png"))
    sources = _sources(args, generator, device)
    print(f"Approximate training modes vs the exact one: {args.quality_steps} steps each, same random start "
          f"(cosine and distance of the trained direction to the exact one; distance relative to the exact "
          f"update; exact-objective = the loss of the direction under full-size float32 rendering)")
    rows = bench_quality(generator, guide, TrainingTarget.read(target), sources, args.quality_steps)
    for row in rows:
        print("  " + format_quality_row(row), flush=True)
    return rows


def _precision(args: argparse.Namespace, device: torch.device, steps: int, label: str) -> tuple[list, list]:
    generator, guide = _models(args, device)
    pictures = args.target or [scikit_image_picture("chelsea.png"), scikit_image_picture("astronaut.png")]
    targets = {Path(p).stem: TrainingTarget.read(load_image(p)) for p in pictures}
    sources = _sources(args, generator, device)
    print(f"The exact objective {args.precision_mode} reaches against the exact mode: {args.quality_steps} steps, "
          f"seeds {' '.join(map(str, args.seeds))}, targets {', '.join(targets)} ({_models_name(args)})", flush=True)
    study = bench_precision(generator, guide, targets, sources, args.quality_steps, args.seeds, args.precision_mode)
    print(format_precision(study), flush=True)
    runs = len(study["runs"])
    common = dict(runs=runs, seeds=len(study["seeds"]), targets=len(study["targets"]), models=_models_name(args))
    records = [
        rec.record(label, "precision study: exact objective reached", "fast", True, 1, study["steps"],
                   sum(r["seconds_exact"] for r in study["runs"]) / runs / study["steps"], None,
                   objective_mean=statistics.fmean(r["exact_objective"] for r in study["runs"]), **common),
        rec.record(label, "precision study: exact objective reached", study["mode"], False, 1, study["steps"],
                   sum(r["seconds_approx"] for r in study["runs"]) / runs / study["steps"], None,
                   objective_mean=statistics.fmean(r["approx_objective"] for r in study["runs"]),
                   ratio_mean=round(study["ratio_mean"], 5), ratio_worst=round(study["ratio_worst"], 5),
                   within_5_percent=study["within_5_percent"], **common),
    ]
    return [{"kind": "precision", **study}], records


def _breakdown(args: argparse.Namespace, device: torch.device, steps: int, label: str) -> tuple[list, list]:
    from dataclasses import replace

    from essence.training import TrainSettings

    from .breakdown import markdown, profile_breakdown, totals

    mode = (args.modes or ["fast"])[0]
    problem = _problem(args, device)
    size = problem["generator"].size
    print(f"Breakdown of {args.profile_steps} '{mode}' training step(s), {size} px generator, 4 sources", flush=True)
    result = profile_breakdown(problem, replace(TrainSettings(), **TRAIN_MODES[mode]), args.profile_steps, device,
                               warmup=2 if device.type == "cuda" else 1)
    title = f"Training step breakdown: {mode}, {size} px, {label}, torch {torch.__version__}"
    with atomic_write(args.breakdown_md) as tmp:
        tmp.write_text(markdown(result, title), encoding="utf-8")
    print(markdown(result, title, top=12), flush=True)
    print(f"wrote {args.breakdown_md}")
    total = sum(r["seconds_per_step"] for r in result["rows"])
    records = [rec.record(label, f"step breakdown {size}px: {r['category']}", mode, mode in EXACT_MODES, 1,
                          result["steps"], r["seconds_per_step"], None, share=round(r["seconds_per_step"] / total, 4),
                          gflop=round(r["gflop_per_step"], 3), gbytes=round(r["gb_per_step"], 4), timed=result["timed"])
               for r in totals(result["rows"], "category")]
    records.append(rec.record(label, f"step breakdown {size}px: total", mode, mode in EXACT_MODES, 1, result["steps"],
                              total, None, wall_seconds_per_step=round(result["wall_seconds_per_step"], 5),
                              timed=result["timed"]))
    return [{"kind": "breakdown", "mode": mode, **result}], records


def _compile(args: argparse.Namespace, device: torch.device, steps: int, label: str) -> tuple[list, list]:
    from .compiled import compile_experiment, format_compile_row

    job = {"steps": args.compile_steps or steps, "mode": (args.modes or ["fast"])[0]}
    if args.generator and args.guide:
        job.update(generator=str(args.generator), guide=str(args.guide))
    print(f"torch.compile of the generator, '{job['mode']}' training, {job['steps']} steps, cache "
          f"{args.compile_cache} (cold, then warm)", flush=True)
    rows = compile_experiment(device, args.compile_cache, job, args.job_timeout)
    records = []
    for row in rows:
        print("  " + format_compile_row(row), flush=True)
        if "error" in row:
            continue
        size = row["size"]
        exact = row["loss_relative_difference"] < 1e-4 and row["gradient_relative_difference"] < 1e-3
        common = dict(cache=row["cache"], compile_seconds=round(row["compile_seconds"], 2),
                      loss_relative_difference=row["loss_relative_difference"],
                      gradient_relative_difference=row["gradient_relative_difference"])
        records.append(rec.record(label, f"compile experiment {size}px: eager", job["mode"], True, 1, row["steps"],
                                  row["eager_seconds_per_step"], None, cache=row["cache"]))
        records.append(rec.record(label, f"compile experiment {size}px: torch.compile(generator)", job["mode"], exact,
                                  1, row["steps"], row["compiled_seconds_per_step"], rec.gb(row["peak_mb"]), **common))
    return [{"kind": "compile", **row} for row in rows], records

