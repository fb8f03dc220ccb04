"""Experiment: does ``torch.compile`` of the generator make the exact training step faster?

The generator's elementwise passes at 1024 and 512 px (modulation, noise, bias, activation,
resampling) are memory-bound; a compiler that fuses them reads the activations fewer times. This
measures that with static shapes and a persistent compile cache, in two fresh processes sharing one
``TORCHINDUCTOR_CACHE_DIR``: the first compiles from an empty cache ("cold"), the second finds the
compiled graphs there ("warm", what every later run on the machine would pay). Each process times
``train`` eagerly and with ``generator.synthesize`` replaced by its compiled version
(an instance attribute: the library is not modified), and compares the losses of the first steps.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

# The loop is chaotic: each coefficient moves by +-lr on the sign of its gradient, so rounding flips
# one within a few steps (on the tiny fixtures eager and compiled agree to 2e-7 for steps 0-4, then
# step 5 differs by 3e-3). Exactness is therefore checked on one loss and gradient at the start,
# and the trajectories only over their first steps.
LOSS_STEPS = 3


def _train_timed(problem: dict, settings, device: torch.device) -> dict:
    """One ``train`` run: its losses, the time to the end of its first step (set-up, the
    sources' embedding, step 0: where compilation happens) and the median of the later steps."""
    from bench.measure import StepClock
    from essence.training import EssenceJob, train

    clock = StepClock(device)
    result = train(**problem, job=EssenceJob(settings), progress=clock).result
    later = clock.intervals()
    return {"losses": result.losses, "first_step_s": clock.stamps[0] - clock.started,
            "seconds_per_step": statistics.median(later) if later else float("nan")}


def loss_and_gradient(problem: dict, settings) -> tuple[float, torch.Tensor]:
    """The training loss at the start direction (every coefficient 1) and its gradient, computed by the
    library's own pieces; the generator is whatever ``problem["generator"].synthesize`` is now."""
    from essence.training import embed_faces, essence_losses

    generator, guide, sources = problem["generator"], problem["guide"], problem["sources"]
    device = sources.device
    target = problem["target"].embedding(guide).to(device)
    with torch.no_grad():
        e_src = embed_faces(sources, generator, guide, settings)
    direction = problem["start"].to(device).clone().requires_grad_(True)
    with torch.enable_grad():
        transfer, consistency = essence_losses(e_src, embed_faces(sources + direction, generator, guide, settings),
                                               target)
        loss = settings.lambda_transfer * transfer + settings.lambda_consistency * consistency
        loss.backward()
    return float(loss.detach()), direction.grad.detach().cpu()


def compile_step(problem: dict, settings, device: torch.device, peak: Callable[[], float] | None = None,
                 backend: str = "inductor") -> dict:
    """Eager vs compiled generator in this process: step times, compile time, loss agreement.

    ``backend`` is torch.compile's ("eager" only traces the graph: a quick check that it captures)."""
    from dataclasses import replace

    settings = replace(settings, progress_every=1)
    generator = problem["generator"]
    eager = _train_timed(problem, settings, device)
    eager_loss, eager_grad = loss_and_gradient(problem, settings)
    torch._dynamo.reset()
    generator.synthesize = torch.compile(generator.synthesize, dynamic=False, backend=backend)
    try:
        compiled = _train_timed(problem, settings, device)
        loss, grad = loss_and_gradient(problem, settings)
    finally:
        del generator.synthesize
    n = min(LOSS_STEPS, len(eager["losses"]))
    difference = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(compiled["losses"][:n], eager["losses"][:n]))
    return {"steps": settings.steps, "eager_seconds_per_step": eager["seconds_per_step"],
            "compiled_seconds_per_step": compiled["seconds_per_step"],
            "compile_seconds": max(compiled["first_step_s"] - eager["first_step_s"], 0.0),
            "loss_relative_difference": abs(loss - eager_loss) / max(abs(eager_loss), 1e-12),
            "gradient_relative_difference": float((grad - eager_grad).norm() / eager_grad.norm()),
            "trajectory_loss_max_relative_difference": difference, "loss_steps_compared": n,
            "backend": backend, "peak_mb": peak() if peak else None}


def compile_experiment(device: torch.device, cache_dir: Path, job: dict, timeout: float | None = None) -> list[dict]:
    """Run ``compile_step`` in a cold-cache and then a warm-cache process; their results (or failures)."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
           "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
           # the repository first, then the caller's path (packages installed beside, e.g. clip from wheels)
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    results = []
    for cache in ("cold", "warm"):
        if cache == "warm" and timeout is not None:  # a warm start slower than the cold one is no cache hit
            timeout = min(timeout, results[0]["process_seconds"] + 30)
        cmd = [sys.executable, "-m", "bench", "--device", str(device), "--threads", str(torch.get_num_threads()),
               "--one", json.dumps({**job, "kind": "compile"})]
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            results.append({"cache": cache, "error": f"still running after {timeout:.0f} s"})
            break
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            results.append({"cache": cache, "error": lines[-1] if lines else f"exit status {done.returncode}"})
            break
        row = json.loads(done.stdout.strip().splitlines()[-1])
        results.append({**row, "cache": cache, "process_seconds": time.perf_counter() - start})
    return results


def format_compile_row(row: dict) -> str:
    if "error" in row:
        return f"compile ({row['cache']} cache): failed: {row['error']}"
    return (f"compile ({row['cache']} cache): compile {row['compile_seconds']:.1f} s; step eager "
            f"{row['eager_seconds_per_step']:.4f} s, compiled {row['compiled_seconds_per_step']:.4f} s "
            f"({row['eager_seconds_per_step'] / row['compiled_seconds_per_step']:.2f}x); loss / gradient at "
            f"the start within {row['loss_relative_difference']:.2g} / {row['gradient_relative_difference']:.2g}, "
            f"losses of steps 0-{row['loss_steps_compared'] - 1} within "
            f"{row['trajectory_loss_max_relative_difference']:.2g} (relative)")
