"""Host cost of a training step: the eager ``fast`` loop against the ``graph`` loop, which captures the
whole step (render, CLIP, losses, both optimisers' updates, best-so-far tracking) once as a CUDA graph
and replays it, per training mode; and a check that the replay gives the eager numbers.

    python bench/graph_step.py --json OUT.json [--modes fast fast+256px fast+bf16+256px] [--steps 50]
                               [--window 10] [--candidates 1] [--fixtures DIR] [--device cuda]
                               [--kernels eager|fused]

Per mode, ``train`` with several starts runs three times from the same start on the full-size random-weight
models of ``python -m bench`` (4 sources): loop ``fast`` (eager, torch's optimisers), loop ``graph``
(captured after 3 warm-up steps, then replayed) and loop ``graph`` with every step run eagerly (the
same arithmetic, nothing captured). Seconds per step: the median over windows of ``--window`` steps,
the first window (warm-up, capture) left out. Peak memory as ``python -m bench`` measures it (on CUDA
``torch.cuda.max_memory_allocated`` above the models, the graph's memory pool included).

Checks (exit status 1 if one fails, after the records are written), over the first ``--check-steps``
steps: the reference's chaotic coefficients amplify any rounding difference after about 7 steps, as
the fixtures' README says, and cuDNN's default kernels are not deterministic (two eager runs of the
same step already differ by about 1e-7 on an H200), so later steps part even with nothing captured:
  replay == eager   the replayed graph's losses within 1e-5 relative of the same steps run eagerly
                    (the CUDA tests check every step with deterministic kernels);
  graph == fast     the losses within 1e-4 of the ``fast`` loop's (1e-3 in approximate modes): the
                    loops round Adam's arithmetic differently.
Each mode also prints both differences per step for its first 12 steps, and its records carry the
largest replay-vs-eager difference over all steps.

``--kernels fused`` runs the generator's fused Triton kernels (``StyleGAN2Generator.set_kernels``) in
all three runs, and a fourth run, ``fast`` on the eager kernels, in the same process: its record is
the baseline for the fused ones, and one more check compares the two:
  fused == eager    the fused ``fast`` run's losses within the ``graph == fast`` tolerance of the eager
                    kernels' (``fused_vs_eager_max_abs_loss``).
On the CPU the fused kernels need Triton's interpreter (TRITON_INTERPRET=1): a dry run of the logic.

``--json`` gets ``{"records": [...]}``, one record per (mode, loop) with the common benchmark fields
(device, what, mode, exact, batch, steps, seconds_per_step, peak_gb, torch, date) and the checks'
numbers. ``--fixtures DIR`` uses the tiny fixture models instead (a quick run of this script's logic
anywhere, the CPU included; modes there must not set render_size).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the loop's module itself: the eager comparison runs the graph loop with its capture switched off
import essence.training.loop as loop  # noqa: E402
from bench.measure import StepClock, _peak_tracker, training_problem  # noqa: E402
from bench.records import device_label, record  # noqa: E402
from essence.storage import atomic_write  # noqa: E402
from essence.training import TRAIN_MODES, EssenceJob, TrainingTarget, train  # noqa: E402

DEFAULT_MODES = ["fast", "fast+256px", "fast+bf16+256px"]
REPLAY_TOLERANCE = 1e-5  # relative, per step: replay against the same step run eagerly
FAST_TOLERANCE = {True: 1e-4, False: 1e-3}  # absolute, first check steps, graph against fast: exact modes
# to the fixtures' criterion; reduced precision may round a slightly different latent differently
RUNS = {  # name: (loop, capture allowed), in the order they run
    "fast": ("fast", True),
    "graph": ("graph", True),
    "graph-eager": ("graph", False),
}
WHAT = {"fast": "training step, fast loop (eager)",
        "graph": "training step, graph loop (CUDA graph replay)",
        "graph-eager": "training step, graph loop run eagerly (nothing captured)"}
NOT_CAPTURED = "training step, graph loop (eager: CUDA graphs need CUDA)"
EAGER_BASELINE = "fast-eager-kernels"  # with --kernels fused: the fast loop on the eager kernels, same process


def full_size_problem(device: torch.device, candidates: int) -> dict:
    """The benchmark's full-size random-weight models, 4 sources, ``candidates`` starts, a target."""
    problem = training_problem(device)
    generator = problem["generator"]
    inits = [problem.pop("start")] + [generator.sample_wplus(1, seed=3 + k, truncation=0.7)
                                      for k in range(candidates - 1)]
    return {**problem, "start": inits}


def tiny_problem(device: torch.device, candidates: int, fixtures: Path) -> dict:
    """The tiny fixture models and the official trace's sources, start and target embedding."""
    from safetensors.torch import load_file

    import essence

    trace = load_file(fixtures / "targetclip_public_trace.safetensors")
    generator = essence.load_generator(fixtures / "stylegan2_tiny64.pt", device=device, cache=False)
    guide = essence.load_guide(fixtures / "clip_tiny.pt", device=device, cache=False)
    inits = [trace["init_direction"]] + [generator.sample_wplus(1, seed=3 + k, truncation=0.7).cpu()
                                         for k in range(candidates - 1)]
    return {"target": TrainingTarget.from_embedding(trace["target_embedding"]), "sources": trace["sources"],
            "generator": generator, "guide": guide, "start": inits}


def timed_run(problem: dict, settings: loop.TrainSettings, capture: bool, window: int,
              device: torch.device) -> tuple[list[float], float | None, float]:
    """Losses of every step, seconds per step (None if too few windows) and peak GB of one training."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peak = _peak_tracker(device)
    clock = StepClock(device)
    warmup = loop.GRAPH_WARMUP_STEPS
    loop.GRAPH_WARMUP_STEPS = warmup if capture else settings.steps + 1  # never captured: every step eager
    try:
        results = train(**problem, job=EssenceJob(replace(settings, progress_every=window)), choose=None,
                        fit_memory=False, progress=clock).results
    finally:
        loop.GRAPH_WARMUP_STEPS = warmup
    windows = [seconds / window for seconds in clock.intervals()]  # the first window is left out
    losses = [loss for result in results for loss in result.losses]
    return losses, (statistics.median(windows) if windows else None), peak() / 1024


def eager_kernel_run(problem: dict, settings: loop.TrainSettings, window: int,
                     device: torch.device) -> tuple[list[float], float | None, float]:
    """``timed_run`` of the fast loop with the generator switched to its eager kernels for the run."""
    generator = problem["generator"]
    generator.set_kernels("eager")
    try:
        return timed_run(problem, replace(settings, loop="fast"), True, window, device)
    finally:
        generator.set_kernels("fused")


def measure_mode(problem: dict, mode: str, steps: int, window: int, check_steps: int,
                 device: torch.device, batch: int, kernels: str = "eager") -> tuple[list[dict], bool]:
    """Records of one mode's three runs (four with the fused kernels), and whether its checks passed."""
    settings = TRAIN_MODES[mode].settings(steps=steps)
    runs = {name: timed_run(problem, replace(settings, loop=loop), capture, window, device)
            for name, (loop, capture) in RUNS.items()}
    if kernels == "fused":
        runs[EAGER_BASELINE] = eager_kernel_run(problem, settings, window, device)
    replay, eager, fast = runs["graph"][0], runs["graph-eager"][0], runs["fast"][0]
    first = [i for i in range(len(fast)) if i % steps < check_steps]  # each candidate's first steps
    relative = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(replay, eager)]
    replay_error, replay_error_all = max(relative[i] for i in first), max(relative)
    fast_error = max(abs(replay[i] - fast[i]) for i in first)
    tolerance = FAST_TOLERANCE[TRAIN_MODES[mode].exact]
    passed = replay_error <= REPLAY_TOLERANCE and fast_error <= tolerance
    fused_check = {}
    if kernels == "fused":
        fused_error = max(abs(fast[i] - runs[EAGER_BASELINE][0][i]) for i in first)
        fused_check = {"fused_vs_eager_max_abs_loss": fused_error}
        passed = passed and fused_error <= tolerance
        print(f"{mode}: per step, fused vs eager kernels, fast loop (absolute) "
              + " ".join(f"{abs(fast[i] - runs[EAGER_BASELINE][0][i]):.1e}" for i in range(min(steps, 12))),
              flush=True)
    # where the runs part: a capture bug jumps at the first replayed step, rounding grows from step 0
    shown = range(min(steps, 12))
    print(f"{mode}: per step, replay vs eager (relative) "
          + " ".join(f"{abs(replay[i] - eager[i]) / max(abs(eager[i]), 1e-12):.1e}" for i in shown), flush=True)
    print(f"{mode}: per step, replay vs fast (absolute) "
          + " ".join(f"{abs(replay[i] - fast[i]):.1e}" for i in shown), flush=True)
    cuda = device.type == "cuda"
    records = []
    for name, (_, seconds, peak) in runs.items():
        run_kernels = "eager" if name == EAGER_BASELINE else kernels
        what = WHAT[name] if cuda or name == "fast" else NOT_CAPTURED
        if name == EAGER_BASELINE:
            what = WHAT["fast"]
        records.append(record(
            device_label(device), what if run_kernels == "eager" else f"{what}, fused kernels", mode,
            TRAIN_MODES[mode].exact, batch, steps - window, seconds, peak, loop=RUNS.get(name, ("fast",))[0],
            kernels=run_kernels, captured=name == "graph" and cuda,
            tf32=bool(torch.backends.cudnn.allow_tf32) if cuda else None,
            replay_vs_eager_max_rel_loss=replay_error, replay_vs_eager_max_rel_loss_all_steps=replay_error_all,
            graph_vs_fast_max_abs_loss=fast_error, **fused_check,
            check_steps=check_steps, checks_passed=passed))
    return records, passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the records")
    parser.add_argument("--modes", nargs="+", choices=list(TRAIN_MODES), default=DEFAULT_MODES)
    parser.add_argument("--steps", type=int, default=50, help="steps per run (default 50)")
    parser.add_argument("--window", type=int, default=10, help="steps per timing window (default 10)")
    parser.add_argument("--check-steps", type=int, default=5,
                        help="steps compared (default 5: at full size the runs part from step 5 on an H200)")
    parser.add_argument("--candidates", type=int, default=1, help="directions trained together (default 1)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--fixtures", type=Path, default=None, help="use the tiny fixture models from this folder")
    parser.add_argument("--kernels", choices=["eager", "fused"], default="eager",
                        help="the generator's kernels (default eager); fused adds an eager-kernel baseline run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA device (or --device cpu with --fixtures for a quick run)", file=sys.stderr)
        return 2
    if args.steps < 2 * args.window or args.steps % args.window or args.check_steps > args.steps:
        parser.error("--steps must be a multiple of --window, at least two windows, and at least --check-steps")
    problem = (tiny_problem(device, args.candidates, args.fixtures) if args.fixtures
               else full_size_problem(device, args.candidates))
    problem["generator"].set_kernels(args.kernels)
    batch = problem["sources"].shape[0] * args.candidates
    records, failed = [], []
    for mode in args.modes:
        mode_records, passed = measure_mode(problem, mode, args.steps, args.window, args.check_steps, device, batch,
                                            args.kernels)
        for rec in mode_records:
            print(json.dumps(rec), flush=True)
        records += mode_records
        if not passed:
            failed.append(mode)
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps({"records": records}, indent=1) + "\n", encoding="utf-8")
    if failed:
        print(f"checks failed for {', '.join(failed)} (see replay_vs_eager_max_rel_loss, "
              f"graph_vs_fast_max_abs_loss, fused_vs_eager_max_abs_loss)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
